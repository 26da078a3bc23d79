"""A no-op HTTP server: the load client's ceiling is measured against it.

``python -m federation_presence.loadtest.noop [CERT KEY]`` listens on
127.0.0.1 (a port the OS picks, printed as the first line of stdout), reads
each request (head and ``Content-Length`` body) and answers ``200 {}``
without parsing, verifying or storing anything, over TLS when given a
certificate and key. It runs as its own process, so its CPU is not the
client's; it stops when its stdin closes (its parent exited or closed it).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import cast

import anyio

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class NoopProtocol(asyncio.Protocol):
    """Answers every complete request on the connection with ``RESPONSE``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they write alike.
        self._transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self._buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self._buffer) < end + 4 + length:
                return
            del self._buffer[: end + 4 + length]
            assert self._transport is not None
            self._transport.write(RESPONSE)


async def serve(certfile: str | None, keyfile: str | None) -> None:
    context = None
    if certfile and keyfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NoopProtocol, "127.0.0.1", 0, ssl=context, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Until stdin closes: the parent owns this process's lifetime.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def main() -> None:
    args = sys.argv[1:]
    anyio.run(
        serve,
        args[0] if args else None,
        args[1] if len(args) > 1 else None,
        backend="asyncio",
        backend_options={"use_uvloop": sys.platform != "win32"},
    )


if __name__ == "__main__":
    main()
