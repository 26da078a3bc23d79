"""A real TLS peer on loopback: any ASGI app served by uvicorn over HTTPS.

For integration tests that need "a remote homeserver": test origins (key
servers), recording peers, slow or broken peers. Certificates come from a
``trustme`` CA issued for ``localhost``, ``127.0.0.1`` and ``::1`` (plus any
extra names asked for); clients trust it through ``TlsCertificates.ca_path``.

Use::

    certificates = TlsCertificates.issue(tmp_path)
    async with serve_tls(app, certificates) as peer:
        ...  # peer.port, peer.ca_path, peer.sni_names

Invariants: the peer listens on 127.0.0.1 with a port the OS chose; the
context is entered only once the socket is listening (readiness through
``task_status.started``, no sleeps); leaving it shuts uvicorn down gracefully,
shielded and under a time limit, even when the test body failed. The peer
records the SNI name of every TLS handshake (``None`` when the client sent
none, as for IP literals).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import trustme
import uvicorn
from anyio.abc import TaskStatus

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SHUTDOWN_LIMIT_S = 10.0
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class TlsCertificates:
    """A trustme CA and one server certificate it issued, as PEM files."""

    ca_path: Path
    cert_path: Path
    key_path: Path
    names: tuple[str, ...]

    @classmethod
    def issue(cls, directory: Path, extra_names: tuple[str, ...] = ()) -> TlsCertificates:
        names = DEFAULT_NAMES + extra_names
        ca = trustme.CA()
        leaf = ca.issue_cert(*names)
        ca_path, cert_path, key_path = (
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
        )
        ca.cert_pem.write_to_path(str(ca_path))
        leaf.cert_chain_pems[0].write_to_path(str(cert_path))
        for pem in leaf.cert_chain_pems[1:]:
            pem.write_to_path(str(cert_path), append=True)
        leaf.private_key_pem.write_to_path(str(key_path))
        return cls(ca_path, cert_path, key_path, names)


@dataclass(slots=True)
class TlsPeer:
    """A running peer: where it listens and what it saw."""

    port: int
    ca_path: Path
    sni_names: list[str | None] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"


class _PeerServer(uvicorn.Server):
    """uvicorn, reporting readiness to a task group and leaving signals alone."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The test process keeps its own SIGINT/SIGTERM handling.
        yield


async def _run_server(
    config: uvicorn.Config, stopped: anyio.Event, *, task_status: TaskStatus[_PeerServer]
) -> None:
    server = _PeerServer(config, lambda: task_status.started(server))
    try:
        await server.serve()
    finally:
        stopped.set()


@contextlib.asynccontextmanager
async def serve_tls(
    app: ASGIApp,
    certificates: TlsCertificates,
    *,
    graceful_shutdown_s: int = 5,
) -> AsyncIterator[TlsPeer]:
    """Serve ``app`` over TLS on 127.0.0.1; yield the running ``TlsPeer``."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(certificates.cert_path),
        ssl_keyfile=str(certificates.key_path),
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        interface="asgi3",
        ws="none",
        timeout_graceful_shutdown=graceful_shutdown_s,
    )
    config.load()
    assert isinstance(config.ssl, ssl.SSLContext)
    peer = TlsPeer(port=0, ca_path=certificates.ca_path)

    def record_sni(_sock: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        peer.sni_names.append(server_name)

    config.ssl.sni_callback = record_sni
    stopped = anyio.Event()
    async with anyio.create_task_group() as tg:
        server: _PeerServer = await tg.start(_run_server, config, stopped)
        peer.port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield peer
        finally:
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.fail_after(SHUTDOWN_LIMIT_S):
                await stopped.wait()
