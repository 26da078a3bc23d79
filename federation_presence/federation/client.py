"""Outbound federation HTTP: the one way this worker talks to other servers.

``FederationClient`` sends through the worker's one outbound HTTP stack
(``outbound_http.OutboundHttp``). For every request it
resolves the destination's server name (``resolver.py``), connects to
``resolved.host:resolved.port``, sends ``Host: resolved.host_header`` and uses
``resolved.tls_server_name`` as the SNI and certificate name (httpx's
``sni_hostname`` request extension; for IP literals the certificate is checked
against the IP and no SNI is sent). Every request carries an X-Matrix
``Authorization`` header signed over the request target exactly as sent, with
``origin`` our server name and ``destination`` the server name asked for,
never the delegated host.

Invariants:

* Every failure, whatever its cause (resolution, connect, TLS, timeout,
  non-2xx, body too large, not JSON, not a JSON object), surfaces as one
  ``DestinationError`` (an ``UpstreamError``) with a readable message and the
  HTTP ``status`` when there was one. No httpx exception leaks.
* Everything is bounded: the whole exchange (resolution, connect, TLS, send,
  read) runs under ``timeout_ms``, and so do the connect (TCP and TLS) and
  each socket read and write; a caller may set each of the three apart per
  request (``RequestTimeouts``: the sender does). A response body larger
  than ``max_response_bytes`` is refused while streaming, before it is all
  read.
* A body given as ``xmatrix.CanonicalJson`` is sent as it is and signed
  around (no second encoding); any other body is encoded here.
* Requests go to the stack's transport (``OutboundHttp.transport``) as
  ``httpx.Request`` objects built here, not through ``httpx.AsyncClient.send``:
  federation has no use for its cookie jar (a shared jar would even carry
  one server's cookies to others), redirects (off) or auth hooks, and they
  cost ~80 µs per request, which a sender fanning out to a hundred
  destinations pays a hundred times on one core. For the same reason the
  request is built by ``wire_request`` from what is kept per resolved
  destination (base URL, fixed headers, SNI), without parsing the URL again,
  and the whole-request limit is ``asyncio.timeout`` (~4 µs) rather than
  ``anyio.fail_after`` (~10 µs: a backend lookup and a generator per use):
  the worker runs on asyncio only, and anyio's cancel scopes (around the
  request, and httpcore's inside it) interoperate with it.
* The HTTP stack is ``outbound_http.OutboundHttp``: one per worker, shared
  with the resolver (pass ``http=``), or built here from the same arguments
  (``transport``, ``verify_certificates``, ``ca_bundle``, ``ip_policy``) when
  none is given. It keeps one connection pool per certificate name, so a TLS
  connection verified for one name is never reused for another, and dials
  only addresses ``ip_policy`` allows (default: Synapse's blocklist); a
  refusal is a ``DestinationError`` saying "IP address blocked".
* When the stack has no room for another destination (every connection pool
  busy), the request is not sent and fails with ``DestinationBusyError``: a
  ``DestinationError`` that is also an ``OutboundBusyError``, our capacity,
  not the destination's fault.
* The client never retries: backoff belongs to the caller (the sender).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import orjson
from signedjson.types import SigningKey

from federation_presence.clock import Clock
from federation_presence.errors import PeerError, UpstreamError
from federation_presence.federation import wire_request
from federation_presence.federation.ip_policy import IpPolicy
from federation_presence.federation.outbound_http import (
    BodyTooLarge,
    OutboundBusyError,
    OutboundHttp,
    PoolsExhausted,
    read_bounded,
)
from federation_presence.federation.resolver import DestinationResolver, ResolvedDestination
from federation_presence.federation.xmatrix import CanonicalJson, authorization_header

DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_SHOWN_CHARS = 200


class DestinationError(UpstreamError):
    """A request to ``destination`` failed; ``status`` is the HTTP status if any.

    ``errcode`` and ``retry_after_ms`` are taken from a Matrix error body when
    the destination sent one.
    """

    def __init__(
        self,
        destination: str,
        message: str,
        *,
        status: int | None = None,
        errcode: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination
        self.status = status
        self.errcode = errcode
        self.retry_after_ms = retry_after_ms


class DestinationBusyError(DestinationError, OutboundBusyError):
    """The request to ``destination`` was not sent: no room in our HTTP stack."""


@dataclass(frozen=True, slots=True)
class RequestTimeouts:
    """One request's limits in ms; None takes the client's ``timeout_ms``.

    ``connect_ms``: TCP connect and TLS handshake (and waiting for a pooled
    connection); ``read_ms``: each read and each write of the socket;
    ``total_ms``: the whole exchange, resolution included.
    """

    connect_ms: int | None = None
    read_ms: int | None = None
    total_ms: int | None = None


@dataclass(frozen=True, slots=True)
class _Limits:
    total_ms: int
    extension: dict[str, float]  # httpx's "timeout" request extension


def request_url(resolved: ResolvedDestination, path: str) -> httpx.URL:
    """The URL that connects to ``resolved.host:resolved.port`` for ``path``."""
    return wire_request.request_url(resolved.host, resolved.port, path)


def _shown(data: bytes) -> str:
    text = data[:_SHOWN_CHARS].decode("utf-8", "replace")
    return text + ("…" if len(data) > _SHOWN_CHARS else "")


class FederationClient:
    """Signed JSON requests to other homeservers; an async context manager."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        resolver: DestinationResolver,
        clock: Clock,
        *,
        verify_certificates: bool = True,
        ca_bundle: Path | None = None,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ip_policy: IpPolicy | None = None,
        http: OutboundHttp | None = None,
    ) -> None:
        """``http``: the worker's shared stack (then ``verify_certificates``,
        ``ca_bundle``, ``transport`` and ``ip_policy`` are unused, and closing
        it is its owner's business); None builds one from those arguments.
        ``ip_policy`` None = ``IpPolicy()``, Synapse's default blocklist.
        """
        self._server_name = server_name
        self._signing_key = signing_key
        self._resolver = resolver
        self._clock = clock
        self._timeout_ms = timeout_ms
        self._max_response_bytes = max_response_bytes
        self._owns_http = http is None
        if http is None:
            http = OutboundHttp(
                verify_certificates=verify_certificates,
                ca_bundle=ca_bundle,
                ip_policy=ip_policy,
                transport=transport,
            )
        self._stack = http
        self._transport = http.transport
        self._limits: dict[RequestTimeouts | None, _Limits] = {}
        self._targets = wire_request.RequestTargets()

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
        if self._owns_http:
            await self._stack.aclose()

    async def get_json(
        self, destination: str, path: str, *, timeouts: RequestTimeouts | None = None
    ) -> dict[str, Any]:
        """GET ``path`` (the request target, query included) from ``destination``."""
        return await self.request_json("GET", destination, path, None, timeouts=timeouts)

    async def post_json(
        self,
        destination: str,
        path: str,
        body: object,
        *,
        timeouts: RequestTimeouts | None = None,
    ) -> dict[str, Any]:
        return await self.request_json("POST", destination, path, body, timeouts=timeouts)

    async def put_json(
        self,
        destination: str,
        path: str,
        body: object,
        *,
        timeouts: RequestTimeouts | None = None,
    ) -> dict[str, Any]:
        return await self.request_json("PUT", destination, path, body, timeouts=timeouts)

    async def request_json(
        self,
        method: str,
        destination: str,
        path: str,
        body: object | None,
        *,
        timeouts: RequestTimeouts | None = None,
    ) -> dict[str, Any]:
        """One signed request; the response's JSON object or ``DestinationError``."""
        limits = self._limits.get(timeouts) or self._limits_for(timeouts)
        started = self._clock.monotonic()
        resolved: ResolvedDestination | None = None
        try:
            # asyncio's timeout, not anyio.fail_after: the same deadline and
            # TimeoutError for ~4 µs instead of ~10 µs a request (the worker
            # runs on asyncio only; see the module docstring).
            async with asyncio.timeout(limits.total_ms / 1000):
                resolved = await self._resolve(destination)
                try:
                    request = self._build_request(
                        method, destination, resolved, path, body, limits.extension
                    )
                except httpx.InvalidURL as exc:
                    raise DestinationError(
                        destination, f"cannot address {_where(resolved)}: {exc}"
                    ) from exc
                if self._stack.client.is_closed:
                    raise DestinationError(destination, f"{method} not sent: the client is closed")
                response = await self._transport.handle_async_request(request)
                response.request = request
                try:
                    data = await read_bounded(response, self._max_response_bytes)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as exc:
            elapsed_ms = round((self._clock.monotonic() - started) * 1000)
            phase = f": {type(exc).__name__}: {exc}" if isinstance(exc, httpx.HTTPError) else ""
            where = "resolving" if resolved is None else f"at {_where(resolved)}"
            raise DestinationError(
                destination,
                f"{method} {path[:100]} timed out after {elapsed_ms} ms "
                f"({_shown_limits(limits)}) {where}{phase}",
            ) from exc
        except BodyTooLarge as exc:
            raise DestinationError(
                destination,
                f"{method} {path[:100]}: response larger than {self._max_response_bytes} bytes",
                status=exc.status,
            ) from exc
        except PoolsExhausted as exc:
            raise DestinationBusyError(
                destination, f"{method} {path[:100]} not sent: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            where = "" if resolved is None else f" at {_where(resolved)}"
            raise DestinationError(
                destination,
                f"{method} {path[:100]} failed{where}: {type(exc).__name__}: {exc}",
            ) from exc
        return _json_object(destination, method, path, response.status_code, data)

    def _limits_for(self, timeouts: RequestTimeouts | None) -> _Limits:
        default = self._timeout_ms
        given = timeouts if timeouts is not None else RequestTimeouts()
        connect = (given.connect_ms if given.connect_ms is not None else default) / 1000
        read = (given.read_ms if given.read_ms is not None else default) / 1000
        total = given.total_ms if given.total_ms is not None else default
        limits = _Limits(total, {"connect": connect, "read": read, "write": read, "pool": connect})
        if len(self._limits) < 16:  # callers use a handful of fixed settings
            self._limits[timeouts] = limits
        return limits

    async def _resolve(self, destination: str) -> ResolvedDestination:
        try:
            return await self._resolver.resolve(destination)
        except DestinationError:
            raise
        except OutboundBusyError as exc:
            raise DestinationBusyError(destination, f"cannot resolve: {exc}") from exc
        except UpstreamError as exc:
            raise DestinationError(destination, f"cannot resolve: {exc}") from exc

    def _build_request(
        self,
        method: str,
        destination: str,
        resolved: ResolvedDestination,
        path: str,
        body: object | None,
        timeout: dict[str, float],
    ) -> httpx.Request:
        content: bytes | None = None
        if isinstance(body, CanonicalJson):
            content = body.data  # encoded once by the caller; signed around below
        elif body is not None:
            try:
                content = orjson.dumps(body)
            except TypeError as exc:
                raise ValueError(f"request body is not JSON: {exc}") from exc
        target = self._targets.get(
            resolved.host, resolved.port, resolved.host_header, resolved.tls_server_name
        )
        url = target.url(path)
        # Sign the target exactly as it goes on the wire.
        uri = url.raw_path.decode("ascii")
        try:
            authorization = authorization_header(
                self._signing_key, method, uri, self._server_name, destination, body
            )
        except PeerError as exc:  # our own body is not canonical JSON: a bug here
            raise ValueError(exc.message) from exc
        return target.request(method, url, content, authorization, timeout)


def _shown_limits(limits: _Limits) -> str:
    ext = limits.extension
    return (
        f"limits: {limits.total_ms} ms in all, connect {round(ext['connect'] * 1000)} ms, "
        f"each read {round(ext['read'] * 1000)} ms"
    )


def _where(resolved: ResolvedDestination) -> str:
    host = f"[{resolved.host}]" if ":" in resolved.host else resolved.host
    return f"{host}:{resolved.port}"


def _json_object(
    destination: str, method: str, path: str, status: int, data: bytes
) -> dict[str, Any]:
    request = f"{method} {path[:100]}"
    try:
        document: object = orjson.loads(data)
    except orjson.JSONDecodeError:
        document = None
        parsed = False
    else:
        parsed = True
    if not 200 <= status < 300:
        errcode: str | None = None
        retry_after_ms: int | None = None
        detail = _shown(data)
        if isinstance(document, dict):
            code, error = document.get("errcode"), document.get("error")
            errcode = code if isinstance(code, str) else None
            retry = document.get("retry_after_ms")
            retry_after_ms = retry if type(retry) is int else None
            if errcode is not None:
                detail = f"{errcode}: {str(error)[:_SHOWN_CHARS]}"
        raise DestinationError(
            destination,
            f"{request} answered HTTP {status}: {detail}",
            status=status,
            errcode=errcode,
            retry_after_ms=retry_after_ms,
        )
    if not parsed:
        raise DestinationError(
            destination, f"{request}: response is not JSON: {_shown(data)}", status=status
        )
    if not isinstance(document, dict):
        raise DestinationError(
            destination,
            f"{request}: response is a JSON {type(document).__name__}, not an object",
            status=status,
        )
    return document
