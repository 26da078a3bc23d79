"""Key servers that never answer: the attack of issue 14, on loopback sockets.

``serve_hanging_key_servers(n, certificates)`` listens on ``n`` ports of
127.0.0.1, each the key server of one origin named ``127.0.0.1:<port>``. Two
kinds alternate:

* ``silent``: accepts the TCP connection, reads what comes (the TLS
  ClientHello) and never answers: the client hangs in the TLS handshake.
* ``stalling``: completes the TLS handshake, reads the request, answers the
  status line and headers of a 200 with a body it never sends.

Each holds its connection until the client goes away. ``accepted`` counts
connections; ``accepted_at_least(k)`` is an event set once ``k`` were
accepted (readiness by events, no polling). ``open_now`` and ``most_open``
count connections currently held.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from anyio.abc import AnyByteStream, ByteStream, SocketAttribute, TaskGroup
from anyio.streams.tls import TLSListener

from tests.integration.tls_peer import TlsCertificates

STALLED_HEADERS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{"
)


@dataclass
class HangingKeyServers:
    """The running servers: their origin names and what they saw."""

    server_names: list[str] = field(default_factory=list)
    accepted: int = 0
    open_now: int = 0
    most_open: int = 0
    _thresholds: list[tuple[int, anyio.Event]] = field(default_factory=list)

    def accepted_at_least(self, count: int) -> anyio.Event:
        event = anyio.Event()
        if self.accepted >= count:
            event.set()
        else:
            self._thresholds.append((count, event))
        return event

    async def hold(self, stream: ByteStream, *, stall: bool) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        for count, event in self._thresholds:
            if self.accepted >= count:
                event.set()
        try:
            if stall:
                await stream.receive()  # the request (its first bytes are enough)
                await stream.send(STALLED_HEADERS)
            while True:
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        except ssl.SSLError:
            pass
        finally:
            self.open_now -= 1
            with anyio.CancelScope(shield=True):
                await stream.aclose()


class _QuietTLSListener(TLSListener):
    """A TLS listener that does not log clients giving up in the handshake.

    They do so on purpose here (a preempted or timed-out key fetch).
    """

    @staticmethod
    async def handle_handshake_error(exc: BaseException, stream: AnyByteStream) -> None:
        await anyio.aclose_forcefully(stream)
        if not isinstance(exc, Exception):
            raise exc


async def _serve_one(
    servers: HangingKeyServers,
    tls: ssl.SSLContext,
    stall: bool,
    tg: TaskGroup,
) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.listeners[0].extra(SocketAttribute.local_port)
    servers.server_names.append(f"127.0.0.1:{port}")

    async def handle(stream: ByteStream) -> None:
        await servers.hold(stream, stall=stall)

    async def serve() -> None:
        async with listener:
            if stall:
                await _QuietTLSListener(listener, tls, standard_compatible=False).serve(handle)
            else:
                await listener.serve(handle)

    tg.start_soon(serve)


@contextlib.asynccontextmanager
async def serve_hanging_key_servers(
    count: int, certificates: TlsCertificates
) -> AsyncIterator[HangingKeyServers]:
    """``count`` hanging key servers, alternately silent and stalling."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificates.cert_path, certificates.key_path)
    servers = HangingKeyServers()
    async with anyio.create_task_group() as tg:
        for n in range(count):
            await _serve_one(servers, tls, stall=n % 2 == 1, tg=tg)
        try:
            yield servers
        finally:
            tg.cancel_scope.cancel()
