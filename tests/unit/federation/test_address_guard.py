"""``AddressGuard``: the connect step asks ``IpPolicy`` about every resolved address.

The inner backend is a recording stand-in (no socket is opened); the hosts are
IP literals, which ``getaddrinfo`` answers without any lookup.
"""

from __future__ import annotations

import ssl
import typing

import anyio
import httpcore
import pytest

from federation_presence.federation.address_guard import BLOCKED_MESSAGE, AddressGuard
from federation_presence.federation.ip_policy import LOOPBACK_RANGES, IpPolicy


class Connected(httpcore.AsyncNetworkStream):
    """What the recording backend hands back: a stream whose TLS handshake never ends."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.closed = False
        self.handshaking = anyio.Event()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        self.handshaking.set()
        await anyio.Event().wait()  # a peer sitting on our ClientHello
        raise AssertionError("unreachable")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        raise AssertionError("not used")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        raise AssertionError("not used")

    async def aclose(self) -> None:
        self.closed = True


class RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.dialled: list[tuple[str, int]] = []
        self.streams: list[Connected] = []
        self.refuse = refuse

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append((host, port))
        if host in self.refuse:
            raise httpcore.ConnectError(f"{host} refused")
        self.streams.append(Connected(host))
        return self.streams[-1]


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "0.0.0.0"])
async def test_a_blocked_address_is_never_dialled(host: str) -> None:
    inner = RecordingBackend()
    guard = AddressGuard(IpPolicy(), inner)
    with pytest.raises(httpcore.ConnectError, match=BLOCKED_MESSAGE):
        await guard.connect_tcp(host, 8448, timeout=5)
    assert inner.dialled == []


async def test_an_allowed_address_is_dialled_as_resolved() -> None:
    inner = RecordingBackend()
    await AddressGuard(IpPolicy(), inner).connect_tcp("8.8.8.8", 8448, timeout=5)
    assert inner.dialled == [("8.8.8.8", 8448)]


async def test_the_whitelist_opens_loopback() -> None:
    inner = RecordingBackend()
    guard = AddressGuard(IpPolicy(whitelist=LOOPBACK_RANGES), inner)
    await guard.connect_tcp("127.0.0.1", 1, timeout=5)
    await guard.connect_tcp("::1", 2, timeout=5)
    assert inner.dialled == [("127.0.0.1", 1), ("::1", 2)]


async def test_a_failed_dial_is_a_connect_error() -> None:
    inner = RecordingBackend(refuse=frozenset({"8.8.4.4"}))
    with pytest.raises(httpcore.ConnectError, match=r"8\.8\.4\.4 refused"):
        await AddressGuard(IpPolicy(), inner).connect_tcp("8.8.4.4", 8448, timeout=5)


async def test_unix_sockets_are_refused() -> None:
    with pytest.raises(httpcore.ConnectError, match="Unix"):
        await AddressGuard(IpPolicy(), RecordingBackend()).connect_unix_socket("/run/x.sock")


async def test_a_connection_cancelled_in_its_tls_handshake_is_closed_at_once() -> None:
    # httpcore closes it on an exception only; a preempted key fetch is a cancellation.
    inner = RecordingBackend()
    stream = await AddressGuard(IpPolicy(), inner).connect_tcp("8.8.8.8", 8448, timeout=5)
    (connected,) = inner.streams
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.start_tls, ssl.create_default_context(), "x.example")
        await connected.handshaking.wait()
        assert not connected.closed
        tg.cancel_scope.cancel()
    assert connected.closed
