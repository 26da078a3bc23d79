"""The connect step of every outbound federation connection, under ``IpPolicy``.

``AddressGuard`` is an ``httpcore`` network backend wrapping httpcore's default
one. Its ``connect_tcp(host, port)`` resolves ``host`` itself (the OS resolver,
through ``anyio.getaddrinfo``), drops every address the ``IpPolicy`` refuses
and connects to the remaining addresses in resolver order, the first that
answers winning. The check runs on the very address the socket connects to,
after resolution, so neither a hostname pointing at an internal address nor a
DNS answer rebound between two lookups gets past it.

``guarded_transport`` builds the ``httpx`` transport that uses it: httpx's own
``AsyncHTTPTransport`` (request/response conversion and exception mapping
unchanged) whose connection pool is rebuilt with ``network_backend=`` (httpx
has no public parameter for it; the pool is the one attribute replaced, with
httpx's default limits). TLS is untouched: httpcore still wraps the socket
with the SNI / certificate name of the URL host or the ``sni_hostname``
extension, so the certificate is verified for the server name, not the IP.

Invariants:

* No TCP connection is ever opened to an address the policy refuses.
* A connection cancelled during its TLS handshake is closed there and then.
  httpcore 1.0's ``start_tls`` closes the socket on ``Exception`` only, so a
  cancellation (a key fetch preempted or past its deadline while the peer
  sits on our ClientHello) would leave the socket to the garbage collector:
  under a flood of silent key servers, file descriptors piling up.
  ``connect_tcp`` therefore hands out ``_ClosingOnCancel`` streams.
* Every failure here is an ``httpcore.ConnectError`` (``ConnectTimeout`` for a
  resolution that outlives the connect timeout), which httpx maps to
  ``httpx.ConnectError``; a refusal says "IP address blocked" and names the
  addresses.
"""

from __future__ import annotations

import socket
import ssl
import typing

import anyio
import httpcore
import httpx

from federation_presence.federation.ip_policy import IpPolicy

BLOCKED_MESSAGE = "IP address blocked"


class AddressGuard(httpcore.AsyncNetworkBackend):
    """A network backend that connects only to addresses ``policy`` allows."""

    def __init__(self, policy: IpPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def addresses(self, host: str, port: int, limit_s: float | None) -> list[str]:
        """The addresses of ``host`` the policy allows, in resolver order."""
        try:
            with anyio.fail_after(limit_s):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(
                f"resolving {host[:300]} timed out after {limit_s} s"
            ) from exc
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host[:300]}: {exc}") from exc
        resolved = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allowed = [ip for ip in resolved if self._policy.allows(ip)]
        if not allowed:
            shown = ", ".join(resolved[:5]) or "no address"
            raise httpcore.ConnectError(f"{BLOCKED_MESSAGE}: {host[:300]} resolves to {shown}")
        return allowed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        options = list(socket_options) if socket_options is not None else None
        last: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for ip in await self.addresses(host, port, timeout):
            try:
                stream = await self._inner.connect_tcp(ip, port, timeout, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
            else:
                return _ClosingOnCancel(stream)
        assert last is not None  # addresses() never returns an empty list
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("outbound federation never uses Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ClosingOnCancel(httpcore.AsyncNetworkStream):
    """A network stream whose TLS handshake, if it fails in any way, closes it."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        try:
            return await self._stream.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            raise

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


def guarded_transport(tls_context: ssl.SSLContext, policy: IpPolicy) -> httpx.AsyncHTTPTransport:
    """httpx's transport with ``tls_context``, connecting through ``AddressGuard``."""
    transport = httpx.AsyncHTTPTransport(verify=tls_context, trust_env=False)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=tls_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AddressGuard(policy),
    )
    return transport
