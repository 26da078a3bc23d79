"""The sending loop of a load run: pre-built requests over keep-alive sockets.

``concurrency`` lanes, each one connection; the origins are dealt out to the
lanes and a lane sends its origins' transactions round-robin, one at a time,
so an origin never has two transactions in flight (the spec's rule for a
sender). The loop writes bytes prepared by ``plan`` and reads just enough of
each response (status line, headers, ``Content-Length`` or chunked body) to
count it, so that the generator costs far less CPU than the server it
measures.

Pacing: closed loop by default (each lane sends its next transaction when
the previous is answered). With ``rate`` (transactions/s) the run is open
loop: transaction ``i`` is due at ``start + i / rate`` whatever the target
does, and its latency is counted from when it was due, so a slow target
shows as latency (and a backlog), not as a slower client. How late each
transaction left (``send_lag_ms``: every lane was still waiting for an
answer) tells whether the lanes were enough to hold the rate.

A 429 is counted and its transaction sent again after the answer's
``retry_after_ms`` (1 s when it has none). Everything is bounded: by the
requests given (the count cap) and by ``duration_s``; a lane stops at the
deadline, a connect (with its TLS handshake) is given 10 s, and the whole
loop is cancelled 30 s after the deadline (answers still in flight).
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import orjson
from anyio.abc import ByteStream

from federation_presence.clock import Clock

DEFAULT_RETRY_AFTER_MS = 1_000
GRACE_S = 30.0
CONNECT_TIMEOUT_S = 10.0
_MAX_ERROR_BODY = 64 * 1024


@dataclass
class Bucket:
    """One second of a run: answers by kind and the latencies of the 200s."""

    ok: int = 0
    other: int = 0  # non-200 answers, 429 included
    throttled: int = 0
    errors: int = 0  # connection failures
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class RunResult:
    elapsed_s: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    retry_after_ms_total: int = 0
    timeline: list[Bucket] = field(default_factory=list)
    # Open loop only: how long after it was due each transaction was sent (all
    # lanes busy: the schedule slipped; one in flight per origin was too few).
    send_lag_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def percentile_ms(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)

    @property
    def mean_ms(self) -> float:
        return sum(self.latencies_ms) / len(self.latencies_ms) if self.latencies_ms else 0.0

    def bucket(self, second: int) -> Bucket:
        while len(self.timeline) <= second:
            self.timeline.append(Bucket())
        return self.timeline[second]


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True, slots=True)
class Progress:
    """What the progress line shows, once a second."""

    elapsed_s: float
    ok: int
    other: int
    errors: int
    last_second_ok: int
    p50_ms: float
    p99_ms: float


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

    async def _exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            await self._fill()
        data, self._buffer = self._buffer[:length], self._buffer[length:]
        return data

    async def read_response(self) -> tuple[int, bytes]:
        """Read one response; its status and (for non-200s) up to 64 KiB of its body."""
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
            body = await self._exactly(length)
            return status, (b"" if status == 200 else body[:_MAX_ERROR_BODY])
        parts: list[bytes] = []
        while True:
            size = int((await self._line()).split(b";", 1)[0], 16)
            chunk = await self._exactly(size + 2)  # the chunk and its CRLF
            if status != 200 and sum(map(len, parts)) < _MAX_ERROR_BODY:
                parts.append(chunk[:-2])
            if size == 0:
                return status, b"".join(parts)[:_MAX_ERROR_BODY]


def retry_after_ms(body: bytes) -> int:
    """``retry_after_ms`` of a Matrix 429 body; the default when absent or malformed."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return DEFAULT_RETRY_AFTER_MS
    value = document.get("retry_after_ms") if isinstance(document, dict) else None
    return value if type(value) is int and 0 <= value <= 3_600_000 else DEFAULT_RETRY_AFTER_MS


def _lanes(requests_per_origin: Sequence[Sequence[bytes]], concurrency: int) -> list[list[bytes]]:
    """Deal the origins to ``concurrency`` lanes; each lane's requests, round-robin."""
    lanes: list[list[Sequence[bytes]]] = [[] for _ in range(concurrency)]
    for index, requests in enumerate(requests_per_origin):
        lanes[index % concurrency].append(requests)
    ordered: list[list[bytes]] = []
    for origins in lanes:
        longest = max((len(r) for r in origins), default=0)
        ordered.append([r[i] for i in range(longest) for r in origins if i < len(r)])
    return [lane for lane in ordered if lane]


async def send_requests(
    host: str,
    port: int,
    requests_per_origin: Sequence[Sequence[bytes]],
    clock: Clock,
    *,
    duration_s: float,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RunResult:
    """Send the requests until all are answered or ``duration_s`` has passed."""
    result = RunResult()
    started = clock.monotonic()
    deadline = started + duration_s
    lane_count = min(concurrency or len(requests_per_origin), len(requests_per_origin))
    lanes = _lanes(requests_per_origin, max(1, lane_count))
    next_ticket = 0

    async def connect() -> ByteStream:
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            if ssl_context is None:
                return await anyio.connect_tcp(host, port)
            return await anyio.connect_tcp(
                host,
                port,
                ssl_context=ssl_context,
                tls_hostname=server_hostname or host,
                tls_standard_compatible=False,
            )

    async def due_time() -> float:
        nonlocal next_ticket
        if rate is None:
            return clock.monotonic()
        due = started + next_ticket / rate
        next_ticket += 1
        wait_ms = int((due - clock.monotonic()) * 1000)
        if wait_ms > 0 and due < deadline:  # a ticket due after the end is not waited for
            await clock.sleep_ms(wait_ms)
        return due

    def record(status: int, due: float) -> None:
        now = clock.monotonic()
        bucket = result.bucket(int(now - started))
        result.statuses[status] += 1
        if status == 200:
            latency = (now - due) * 1000
            result.latencies_ms.append(latency)
            bucket.ok += 1
            bucket.latencies_ms.append(latency)
        else:
            bucket.other += 1

    def failed(kind: str) -> None:
        result.errors[kind] += 1
        result.bucket(int(clock.monotonic() - started)).errors += 1

    async def one_lane(requests: list[bytes]) -> None:
        stream: ByteStream | None = None
        reader: _ResponseReader | None = None
        try:
            for request in requests:
                due = await due_time()
                if due >= deadline:
                    return
                if rate is not None:
                    result.send_lag_ms.append(max(0.0, (clock.monotonic() - due) * 1000))
                while clock.monotonic() < deadline:
                    if stream is None:
                        try:
                            stream = await connect()
                            reader = _ResponseReader(stream)
                        except (OSError, TimeoutError) as exc:
                            failed(f"connect: {exc.__class__.__name__}")
                            return
                    assert reader is not None
                    try:
                        await stream.send(request)
                        status, body = await reader.read_response()
                    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                        failed(exc.__class__.__name__)
                        await stream.aclose()
                        stream = None
                        break  # on to the next transaction, on a new connection
                    record(status, due)
                    if status != 429:
                        break
                    wait_ms = retry_after_ms(body)
                    result.throttled += 1
                    result.bucket(int(clock.monotonic() - started)).throttled += 1
                    result.retry_after_ms_total += wait_ms
                    await clock.sleep_ms(min(wait_ms, int((deadline - clock.monotonic()) * 1000)))
                if clock.monotonic() >= deadline:
                    return
        finally:
            if stream is not None:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()

    async def report() -> None:
        assert progress is not None
        while True:
            await clock.sleep_ms(1_000)
            now = clock.monotonic() - started
            second = max(0, int(now) - 1)
            last = result.bucket(second)
            progress(
                Progress(
                    now,
                    result.ok,
                    sum(result.statuses.values()) - result.ok,
                    sum(result.errors.values()),
                    last.ok,
                    percentile(last.latencies_ms, 0.5),
                    percentile(last.latencies_ms, 0.99),
                )
            )

    with anyio.move_on_after(duration_s + GRACE_S):
        async with anyio.create_task_group() as tg:
            if progress is not None:
                tg.start_soon(report)
            async with anyio.create_task_group() as senders:
                for lane in lanes:
                    senders.start_soon(one_lane, lane)
            tg.cancel_scope.cancel()
    result.elapsed_s = clock.monotonic() - started
    return result
