"""The one outbound HTTP stack: every byte this worker sends to another server.

Key fetches, notary queries, ``.well-known`` lookups (``resolver.py``) and
signed requests (``client.py``) all go through one ``OutboundHttp``: one
``httpx.AsyncClient`` over one transport, built here and nowhere else.

What this module owns:

* ``federation_tls_context``: the TLS policy (verification on with httpx's
  trust store or a CA file, TLS 1.2 at least).
* The transport: ``CertificateNamePools``, one connection pool per certificate
  name, each an ``address_guard.guarded_transport`` (only addresses the
  ``IpPolicy`` allows are dialled).
* ``read_bounded``: the response-body limit, enforced while streaming.
* The default headers (``User-Agent``; ``Accept-Encoding: identity``, so that
  the size limit bounds what is read, not a decompressed bomb), no redirects
  followed by httpx, no proxy settings taken from the environment.

Invariants:

* A TLS connection verified for one certificate name is never reused for
  another. httpx pools connections by URL origin (address and port) only, so
  two server names delegated to one address would otherwise share a
  connection checked for the first name's certificate. ``CertificateNamePools``
  therefore keys pools by the ``sni_hostname`` request extension (else the URL
  host, which is then the certificate name).
* The pool table is bounded by ``max_pools``, and in-flight requests cannot
  push it past the bound: a new certificate name first closes idle pools
  (least recently used first, never a busy one and never the one being
  created); when every pool has a request in flight it fails at once with
  ``PoolsExhausted`` (mapped to ``OutboundBusyError`` by the callers: our
  capacity, not the destination's fault). In-flight requests are bounded by
  their callers (the keyring's key-fetch slots, the sender's destinations), so
  the bound is reached only when far more distinct names are busy than that.
* An injected ``transport`` (tests: ``httpx.MockTransport``) replaces all of
  the above but the headers and the body limit.
* Timeouts are the callers': each passes its own per request and wraps the
  exchange in ``anyio.fail_after``.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from federation_presence import __version__
from federation_presence.errors import ConfigError, UpstreamError
from federation_presence.federation.address_guard import guarded_transport
from federation_presence.federation.ip_policy import IpPolicy

USER_AGENT = f"federation-presence/{__version__}"
DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
MAX_POOLS = 1024


class OutboundBusyError(UpstreamError):
    """A request was not sent: this worker has too much outbound work in flight.

    Our capacity, not the destination's fault: callers must not count it
    against the destination (no failure cache, no destination backoff).
    """


class PoolsExhausted(httpx.TransportError):
    """Every one of ``max_pools`` connection pools has a request in flight."""


class BodyTooLarge(Exception):
    """A response body over the limit; ``status`` is the response's status."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"response larger than {limit} bytes")
        self.status = status
        self.limit = limit


def federation_tls_context(
    verify_certificates: bool = True, ca_bundle: Path | None = None
) -> ssl.SSLContext:
    """The TLS policy of all outbound federation traffic.

    Verification on: the CA file ``ca_bundle`` alone when given (test
    networks), else httpx's default trust (certifi, or ``SSL_CERT_FILE``).
    ``verify_certificates=False`` turns checking off entirely.
    """
    if not verify_certificates:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_bundle is not None:
        try:
            context = ssl.create_default_context(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("federation.ca_bundle", f"cannot load {ca_bundle}: {exc}") from exc
    else:
        context = httpx.create_ssl_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def read_bounded(response: httpx.Response, max_bytes: int) -> bytes:
    """The body of a streamed ``response``; ``BodyTooLarge`` past ``max_bytes``.

    A ``Content-Length`` over the limit is refused before reading anything.
    """
    headers = response.headers
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(response.status_code, max_bytes)
    stream = response.stream
    chunks: AsyncIterable[bytes]
    if isinstance(stream, httpx.AsyncByteStream) and "content-encoding" not in headers:
        # Not encoded: the transport's bytes are the body. Read them as they
        # come, without httpx's decoder and chunker (~10 µs a response).
        chunks = stream
    else:
        chunks = response.aiter_bytes()
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLarge(response.status_code, max_bytes)
    return bytes(body)


class _Pool:
    """One certificate name's connection pool and its requests in flight."""

    __slots__ = ("in_flight", "transport")

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport
        self.in_flight = 0


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that marks its pool idle again once closed."""

    def __init__(self, stream: httpx.AsyncByteStream, pool: _Pool) -> None:
        self._stream = stream
        self._pool: _Pool | None = pool

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._pool is not None:
                self._pool.in_flight -= 1
                self._pool = None


class CertificateNamePools(httpx.AsyncBaseTransport):
    """Connection pools keyed by certificate name, at most ``max_pools`` of them.

    ``new_pool`` makes one pool (a ``guarded_transport`` in service). The
    certificate name is the ``sni_hostname`` extension, else the URL host.
    """

    def __init__(
        self,
        new_pool: Callable[[], httpx.AsyncBaseTransport],
        max_pools: int = MAX_POOLS,
    ) -> None:
        if max_pools < 1:
            raise ValueError("max_pools must be at least 1")
        self._new_pool = new_pool
        self._max_pools = max_pools
        self._pools: OrderedDict[str, _Pool] = OrderedDict()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = request.extensions.get("sni_hostname") or request.url.host
        pool = self._pools.get(name)
        if pool is None:
            await self._close_idle_until_below_limit()
            if len(self._pools) >= self._max_pools:
                raise PoolsExhausted(
                    f"all {self._max_pools} connection pools have a request in flight"
                )
            pool = self._pools[name] = _Pool(self._new_pool())
        else:
            self._pools.move_to_end(name)
        # Counted before any await: from here on, this pool is busy and safe.
        pool.in_flight += 1
        try:
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            pool.in_flight -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, pool),
            extensions=response.extensions,
        )

    async def _close_idle_until_below_limit(self) -> None:
        """Close least recently used idle pools until a new one fits."""
        excess = len(self._pools) - self._max_pools + 1
        if excess <= 0:
            return
        idle = [name for name, pool in self._pools.items() if pool.in_flight == 0][:excess]
        closing = [self._pools.pop(name) for name in idle]  # gone before the first await
        for pool in closing:
            await pool.transport.aclose()

    @property
    def names(self) -> list[str]:
        """The certificate names with an open pool, least recently used first."""
        return list(self._pools)

    async def aclose(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            await pool.transport.aclose()


class OutboundHttp:
    """The one outbound ``httpx.AsyncClient`` (``.client``); an async context manager.

    ``ip_policy`` None = ``IpPolicy()``, Synapse's default blocklist.
    ``transport`` replaces the TLS context, the pools and the address guard.
    ``.transport`` is the stack below the client (``FederationClient`` sends
    through it directly; see there).
    """

    def __init__(
        self,
        *,
        verify_certificates: bool = True,
        ca_bundle: Path | None = None,
        ip_policy: IpPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_pools: int = MAX_POOLS,
    ) -> None:
        if transport is None:
            tls_context = federation_tls_context(verify_certificates, ca_bundle)
            policy = ip_policy if ip_policy is not None else IpPolicy()
            transport = CertificateNamePools(
                lambda: guarded_transport(tls_context, policy), max_pools
            )
        self.transport = transport
        self.client = httpx.AsyncClient(
            transport=transport,
            headers=DEFAULT_HEADERS,
            follow_redirects=False,
            trust_env=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
