"""The sending loop of a load run: pre-built requests over keep-alive sockets.

One connection per synthetic origin, one transaction in flight per origin
(the spec's rule for a sender: no new txnId before the previous got a 200),
so concurrency is the number of origins. The loop writes bytes prepared by
``plan`` and reads just enough of each response (status line, headers,
``Content-Length`` body) to count it, so that the generator costs far less
CPU than the server it measures. Bounded by request count and by a deadline.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteStream

from federation_presence.clock import Clock


@dataclass
class RunResult:
    elapsed_s: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class _ResponseReader:
    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def _fill(self) -> None:
        chunk = await self._stream.receive(65536)
        self._buffer += chunk

    async def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            await self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    async def _exactly(self, length: int) -> None:
        while len(self._buffer) < length:
            await self._fill()
        self._buffer = self._buffer[length:]

    async def read_response(self) -> int:
        """Read one response (Content-Length or chunked body); return its status."""
        while b"\r\n\r\n" not in self._buffer:
            await self._fill()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            await self._exactly(length)
            return status
        while True:
            size = int((await self._line()).split(b";", 1)[0], 16)
            await self._exactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return status


async def send_requests(
    host: str,
    port: int,
    requests_per_origin: Sequence[Sequence[bytes]],
    clock: Clock,
    *,
    duration_s: float,
    ssl_context: ssl.SSLContext | None = None,
) -> RunResult:
    """Send each origin's requests in order on its own connection until done or deadline."""
    result = RunResult()
    started = clock.monotonic()
    deadline = started + duration_s

    async def one_origin(requests: Sequence[bytes]) -> None:
        try:
            stream: ByteStream = (
                await anyio.connect_tcp(
                    host, port, ssl_context=ssl_context, tls_standard_compatible=False
                )
                if ssl_context
                else await anyio.connect_tcp(host, port)
            )
        except OSError as exc:
            result.errors[f"connect: {exc.__class__.__name__}"] += 1
            return
        async with stream:
            reader = _ResponseReader(stream)
            for request in requests:
                if clock.monotonic() >= deadline:
                    return
                sent_at = clock.monotonic()
                try:
                    await stream.send(request)
                    status = await reader.read_response()
                except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                    result.errors[exc.__class__.__name__] += 1
                    return
                result.statuses[status] += 1
                result.latencies_ms.append((clock.monotonic() - sent_at) * 1000)

    with anyio.move_on_after(duration_s + 30):
        async with anyio.create_task_group() as tg:
            for requests in requests_per_origin:
                tg.start_soon(one_origin, requests)
    result.elapsed_s = clock.monotonic() - started
    return result
