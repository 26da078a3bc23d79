"""Resident memory against what is live: remote users in, timed out, and steady load.

In-process, no sockets: pushes go through ``PresenceKeeper.apply_remote``
into a real ``SqliteStore`` (a file under a temporary directory), as the
``/send`` handler drives them after parsing and signature checks; time is a
``FakeClock``, so a FEDERATION_TIMEOUT passes in no wall time and the real
timer loop (``keeper.run_timers``) times everyone out. RSS is read from
``/proc/self/status`` (VmRSS; the peak is VmHWM).

Scenario ``a`` (the outside tester's finding): ``--users`` (1,000,000)
distinct remote users on ``--origins`` servers, pushed online in
transactions of ``--pushes`` (50) by ``--callers`` concurrent senders; then
the clock jumps past FEDERATION_TIMEOUT and every user times out to offline.
Reports RSS at start (after a warm-up cycle of ``--warmup`` users, so that
lazy imports and first-use allocations are behind us), at peak, and after
the timeout (the timer loop done, the journal folded, the store's idle
upkeep run), with glibc's and pymalloc's view of the heap at start and
after; the target is "after" within 50 MB of "start". ``--no-trim`` turns
``malloc_trim`` off (the keeper's after a mass eviction, the store's after
folding a burst), to show what it does. ``--skip-read-through`` leaves out
the keeper's store read of the users it does not hold (right here only
because every user is new), to measure what that read costs cold ingest.

Scenario ``b``: sustained 1x50 load (one EDU of 50 pushes per transaction)
over a population of ``--population`` (64,000) users, random states, for
``--seconds``; reports RSS at start, the maximum sampled, and at the end.
Target: under 150 MB.

    python bench/bench_memory.py a
    python bench/bench_memory.py a --no-trim
    python bench/bench_memory.py a --users 200000 --skip-read-through
    python bench/bench_memory.py b
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import io
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from federation_presence import keeper as keeper_module
from federation_presence.ids import ServerName, UserId
from federation_presence.keeper import PresenceKeeper
from federation_presence.memory import release_free_memory
from federation_presence.metrics import Metrics
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import PresenceSettings
from federation_presence.presence.states import PresenceState
from federation_presence.store import sqlite_writer as sqlite_writer_module
from federation_presence.store.journal import FoldReport
from federation_presence.store.sqlite import SqliteStore
from federation_presence.stream import PresenceStream
from tests.fakes import FakeClock

OURS = ServerName("ours.example")
MIB = 2**20
WAIT_S = 600.0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def heap_breakdown() -> str:
    """glibc's view (in use / free in its heaps / mmapped) and pymalloc's arenas."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    err = io.StringIO()
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(write)
        os.close(saved)
    with os.fdopen(read) as stats:
        err.write(stats.read())
    arenas = next(
        (
            line.split("=")[1].strip().replace(",", "")
            for line in err.getvalue().splitlines()
            if "arenas allocated current" in line
        ),
        "?",  # not pymalloc (PYTHONMALLOC=malloc, or tracemalloc's hooks)
    )
    return (
        f"malloc in use {info.uordblks / MIB:.0f} MiB, free {info.fordblks / MIB:.0f} MiB,"
        f" mmapped {info.hblkhd / MIB:.0f} MiB; pymalloc arenas {arenas} MiB"
    )


_STATUS_FD = os.open("/proc/self/status", os.O_RDONLY)


def rss_mib(field: str = "VmRSS") -> float:
    """From /proc/self/status, read with ``pread`` on one fd: sampling once per
    batch must not itself leave objects behind amid the burst (an ``open()``
    per sample did, and pinned pymalloc arenas)."""
    status = os.pread(_STATUS_FD, 8192, 0)
    start = status.index(field.encode() + b":") + len(field) + 1
    return int(status[start : status.index(b"kB", start)]) / 1024


class Journal:
    """Follows the store's folds: how many rows the journal still holds."""

    def __init__(self) -> None:
        self.rows_left: int | None = None  # unknown until a fold reports
        self.changed = asyncio.Event()

    def on_fold(self, report: FoldReport) -> None:
        self.rows_left = report.journal_rows_left
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    async def wait_empty(self) -> None:
        """Until a fold (the store's idle fold) leaves the journal empty."""
        self.rows_left = None
        while self.rows_left is None or self.rows_left > 0:
            await self.changed.wait()


async def ingest(
    keeper: PresenceKeeper,
    batches: int,
    callers: int,
    make_batch: Callable[[int], list[RemotePush]],
    on_batch: Callable[[], None],
) -> None:
    next_batch = iter(range(batches))

    async def sender() -> None:
        for n in next_batch:
            await keeper.apply_remote(make_batch(n))
            on_batch()

    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(sender)


async def scenario_a(args: argparse.Namespace, workdir: Path) -> None:
    journal = Journal()
    store = SqliteStore(workdir / "a.db", synchronous=args.synchronous, on_fold=journal.on_fold)
    await store.open()
    clock = FakeClock()
    settings = PresenceSettings()
    machine = PresenceMachine(OURS, settings, offline_cache_size=args.offline_cache)
    stream = PresenceStream(store, machine.is_local)  # as in the worker
    await stream.open()
    keeper = PresenceKeeper(machine, store, clock, Metrics(), stream=stream)
    await keeper.restore()
    origins = [f"origin{n}.example" for n in range(args.origins)]
    per_batch = args.pushes
    peak = 0.0

    def sample() -> None:
        nonlocal peak
        peak = max(peak, rss_mib())

    async def cycle(first_user: int, users: int) -> tuple[float, float, int]:
        """Push ``users`` new users online, then time them all out; (ingest s, timeout s, held)."""

        def make_batch(n: int) -> list[RemotePush]:
            first = first_user + n * per_batch
            return [
                RemotePush(
                    ServerName(origins[i % len(origins)]),
                    UserId(f"@user{i}:{origins[i % len(origins)]}"),
                    PresenceState.ONLINE,
                    last_active_ago=1_000,
                    currently_active=True,
                )
                for i in range(first, min(first + per_batch, first_user + users))
            ]

        started = time.perf_counter()
        await ingest(keeper, -(-users // per_batch), args.callers, make_batch, sample)
        ingest_s = time.perf_counter() - started
        held = machine.user_count
        sample()
        started = time.perf_counter()
        with anyio.fail_after(WAIT_S):
            await clock.advance(settings.federation_timeout_ms + 1)
            while machine.user_count > args.offline_cache:
                await stream.wait(stream.current_id)
                sample()
        timeout_s = time.perf_counter() - started
        with anyio.fail_after(WAIT_S):
            await journal.wait_empty()
            # a read is served only once the idle writer got past its upkeep
            # (``release_memory_if_due`` after the last fold)
            await store.get_users([UserId("@nobody:nowhere.example")])
        return ingest_s, timeout_s, held

    async with anyio.create_task_group() as tg:
        await tg.start(keeper.run_timers)
        # Warm up: every code path runs once (lazy imports, first folds), so
        # that nothing long-lived is first allocated amid the big burst.
        await cycle(10**9, args.warmup)
        gc.collect()
        start = rss_mib()
        start_breakdown = heap_breakdown()
        peak = start
        ingest_s, timeout_s, held_after_ingest = await cycle(0, args.users)
        tg.cancel_scope.cancel()
    gc.collect()
    after = rss_mib()
    breakdown = heap_breakdown()
    release_free_memory()
    after_trim = rss_mib()
    peak = max(peak, rss_mib("VmHWM"))
    await store.close()
    closed = rss_mib()
    print(
        f"a: {args.users:,} users in {ingest_s:.1f} s ({args.users / ingest_s:,.0f} pushes/s),"
        f" held after ingest {held_after_ingest:,}; timeout {timeout_s:.1f} s,"
        f" held after {machine.user_count:,}"
        f" (trim {'off' if args.no_trim else 'on'}, synchronous={args.synchronous},"
        f" warm-up {args.warmup:,} users)"
    )
    print(
        f"a: RSS start {start:.0f} MiB, peak {peak:.0f} MiB, after timeout {after:.0f} MiB"
        f" (+{after - start:.0f}); after one more malloc_trim {after_trim:.0f} MiB;"
        f" store closed {closed:.0f} MiB"
    )
    print(f"a: at start: {start_breakdown}")
    print(f"a: after timeout: {breakdown}")


async def scenario_b(args: argparse.Namespace, workdir: Path) -> None:
    store = SqliteStore(workdir / "b.db", synchronous=args.synchronous)
    await store.open()
    clock = FakeClock()
    machine = PresenceMachine(OURS, offline_cache_size=args.offline_cache)
    keeper = PresenceKeeper(machine, store, clock, Metrics())
    await keeper.restore()
    gc.collect()
    start = rss_mib()
    peak = start
    rng = random.Random(14)
    origins = [ServerName(f"origin{n}.example") for n in range(args.origins)]
    population = [
        (origins[i % len(origins)], UserId(f"@user{i}:{origins[i % len(origins)]}"))
        for i in range(args.population)
    ]
    states = list(PresenceState)
    deadline = time.perf_counter() + args.seconds
    pushes = 0

    def make_batch(n: int) -> list[RemotePush]:
        origin = origins[n % len(origins)]
        batch = []
        for _ in range(args.pushes):
            _, user_id = population[rng.randrange(len(population))]
            batch.append(
                RemotePush(
                    origin, user_id, rng.choice(states), last_active_ago=rng.randrange(10**6)
                )
            )
        return batch

    # pushes from one origin for users of any origin: fine in-process (the
    # keeper does not check that; the /send handler does, before it)
    def on_batch() -> None:
        nonlocal peak, pushes
        pushes += args.pushes
        peak = max(peak, rss_mib())
        clock.set(clock.now_ms() + 1)

    rounds = 0
    while time.perf_counter() < deadline:
        await ingest(keeper, 1_000, args.callers, make_batch, on_batch)
        rounds += 1
    end = rss_mib()
    await store.close()
    print(
        f"b: {pushes:,} pushes over {args.population:,} users in {args.seconds:.0f} s,"
        f" {machine.user_count:,} held (synchronous={args.synchronous})"
    )
    print(f"b: RSS start {start:.0f} MiB, max {peak:.0f} MiB, end {end:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["a", "b"])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=20_000, help="users of scenario a's warm-up")
    parser.add_argument("--population", type=int, default=64_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--origins", type=int, default=100)
    parser.add_argument("--pushes", type=int, default=50)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--offline-cache", type=int, default=10_000)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--no-trim", action="store_true", help="never call malloc_trim")
    parser.add_argument(
        "--skip-read-through",
        action="store_true",
        help="scenario a without the store read per transaction (its users are all new)",
    )
    args = parser.parse_args()
    if args.skip_read_through:
        # Right only because every user of scenario a is new: what the
        # read-through (one store read per transaction) costs cold ingest.
        async def no_read(self: PresenceKeeper, user_ids: object) -> None:
            return None

        PresenceKeeper._read_through = no_read  # type: ignore[method-assign,assignment]
    if args.no_trim:
        keeper_module.release_free_memory = lambda: False  # type: ignore[assignment]
        sqlite_writer_module.release_free_memory = lambda: False  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="bench_memory.") as tmp:
        run = scenario_a if args.scenario == "a" else scenario_b
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
