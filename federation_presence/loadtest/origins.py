"""Synthetic origins: many server names, their keys, one key server.

Each origin is ``127.0.0.1:<port>`` (an IP-literal server name, so the
receiver's resolver connects straight to it without DNS); all ports are
served by one uvicorn server over TLS, whose ASGI app answers
``GET /_matrix/key/v2/server`` for the origin the request came in on. Ports
are bound before the server starts, so the names are known up front.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import uvicorn
from signedjson.types import SigningKey

from federation_presence.clock import Clock
from federation_presence.federation.signing_keys import (
    build_server_keys_response,
    generate_signing_key,
)

KEY_VALIDITY_MS = 24 * 3_600_000


@dataclass(frozen=True, slots=True)
class SyntheticOrigin:
    server_name: str
    signing_key: SigningKey


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class KeyServerApp:
    """ASGI: the key response of the origin whose port was connected to."""

    def __init__(self, origins_by_port: dict[int, SyntheticOrigin], clock: Clock) -> None:
        self._origins = origins_by_port
        self._clock = clock

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        origin = self._origins.get(scope["server"][1])
        if origin is None or scope["path"] != "/_matrix/key/v2/server":
            status, body = 404, b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}'
        else:
            status = 200
            body = orjson.dumps(
                build_server_keys_response(
                    origin.server_name,
                    origin.signing_key,
                    self._clock.now_ms(),
                    KEY_VALIDITY_MS,
                    {},
                )
            )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                # A target fetches each origin's key once: no keep-alive to
                # hold up (and be cut at) the key server's shutdown.
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serving_origins(
    count: int, clock: Clock, certfile: Path, keyfile: Path
) -> AsyncIterator[list[SyntheticOrigin]]:
    """``count`` origins with their key server running until the context exits."""
    sockets = [_bind_loopback() for _ in range(count)]
    by_port: dict[int, SyntheticOrigin] = {}
    for sock in sockets:
        port = sock.getsockname()[1]
        by_port[port] = SyntheticOrigin(f"127.0.0.1:{port}", generate_signing_key())
    config = uvicorn.Config(
        KeyServerApp(by_port, clock),
        lifespan="off",
        log_level="warning",
        access_log=False,
        # Only key fetches are served: nothing worth draining at shutdown.
        timeout_graceful_shutdown=1,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
    )
    server = _QuietServer(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    async with anyio.create_task_group() as tg:
        await server.startup(sockets=sockets)

        async def main_loop() -> None:
            try:
                await server.main_loop()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await server.shutdown(sockets=sockets)

        tg.start_soon(main_loop)
        try:
            yield list(by_port.values())
        finally:
            tg.cancel_scope.cancel()
    for sock in sockets:
        sock.close()
