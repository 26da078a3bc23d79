"""Store write throughput under group commit: applies/s and rows/s, folds included.

Scenarios (each apply also carries an ``InboundTxn``, as ``/send`` does):

* ``a``: 1 notified change per apply, 64 concurrent callers;
* ``b``: 50 notified changes per apply, 32 concurrent callers.

Backends: ``sqlite-full`` (WAL, synchronous=FULL: an fsync per group commit),
``sqlite-normal`` (WAL, synchronous=NORMAL), ``postgres`` (asyncpg, a fresh
schema per run in the ``test`` database, dropped afterwards).

Each run opens a fresh database, stores every user of the population once
(``--users``, default 64,000; not timed), then applies outcomes built
beforehand, each change for a user drawn at random from the population, until
they are used up or ``--max-seconds`` passed. Only ``store.apply`` is timed
(``applies/s``, ``rows/s``); ``rows/s+close`` also counts ``close()``, which
for a journalling store folds what the journal still holds, so it is the
sustained figure. ``cpu us/row`` is the process's CPU time (all threads,
``time.process_time``) over the same span per change applied: what the
store costs the worker's one core, whatever the second core did. ``folds``
and ``written/row`` (rows a fold wrote to the
presence tables per change applied) show how much coalescing saved. The
figures are medians over ``--runs`` runs.

    python bench/bench_store.py                      # everything, 3 runs each
    python bench/bench_store.py --backends sqlite-full --scenarios a --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg

from federation_presence.ids import UserId
from federation_presence.presence.model import NotifyReason, Outcome, StateChange, UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import InboundTxn
from federation_presence.store.postgres import PostgresStore
from federation_presence.store.sqlite import SqliteStore

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
BASE_TS = 1_700_000_000_000
POPULATE_CHUNK = 4_000


@dataclass(frozen=True)
class Scenario:
    name: str
    changes_per_apply: int
    callers: int
    applies: int


SCENARIOS = {
    "a": Scenario("a: 1 change/apply, 64 callers", 1, 64, 200_000),
    "b": Scenario("b: 50 changes/apply, 32 callers", 50, 32, 30_000),
}
BACKENDS = ("sqlite-full", "sqlite-normal", "postgres")


@dataclass(frozen=True)
class RunResult:
    applies_per_s: float
    rows_per_s: float
    rows_per_s_with_close: float
    cpu_us_per_row: float
    commits: int
    applies: int
    folds: int
    written_per_row: float


def user_id(n: int) -> UserId:
    return UserId(f"@user{n}:origin{n % 97}.example")


def presence(n: int, user: int) -> UserPresence:
    states = list(PresenceState)
    return UserPresence(
        user_id(user),
        states[n % len(states)],
        BASE_TS + n,
        None if n % 3 else "hello",
        bool(n % 2),
        BASE_TS + n,
        0,
    )


def build_outcomes(scenario: Scenario, users: int) -> list[tuple[Outcome, InboundTxn]]:
    rng = random.Random(1)
    outcomes = []
    n = 0
    for i in range(scenario.applies):
        changes = []
        for _ in range(scenario.changes_per_apply):
            changes.append(StateChange(presence(n, rng.randrange(users)), NotifyReason.PRESENCE))
            n += 1
        txn = InboundTxn(f"origin{i % 97}.example", f"txn{i}", b'{"pdus":{}}', BASE_TS + i)
        outcomes.append((Outcome(changes=tuple(changes)), txn))
    return outcomes


async def populate(store: SqliteStore | PostgresStore, users: int) -> None:
    for start in range(0, users, POPULATE_CHUNK):
        changes = tuple(
            StateChange(presence(0, u), NotifyReason.NEW_USER)
            for u in range(start, min(users, start + POPULATE_CHUNK))
        )
        await store.apply(Outcome(changes=changes))
    await store.current_stream_id()  # a read: a journalling store folds first


async def run_once(
    backend: str,
    scenario: Scenario,
    outcomes: list[tuple[Outcome, InboundTxn]],
    args: argparse.Namespace,
) -> RunResult:
    schema = f"fp_bench_{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store: SqliteStore | PostgresStore
        if backend == "postgres":
            store = PostgresStore(POSTGRES_DSN, schema=schema)
        else:
            synchronous = "full" if backend == "sqlite-full" else "normal"
            store = SqliteStore(Path(tmp) / "bench.db", synchronous=synchronous)
        owner = contextlib.AsyncExitStack()  # the task group ``store.run`` is a child of
        owner_group = await owner.enter_async_context(anyio.create_task_group())
        await owner_group.start(store.run)
        closed = False
        try:
            await populate(store, args.users)
            commits_before = store.stats.commits
            folds_before = getattr(store.stats, "folds", 0)
            written_before = getattr(store.stats, "fold_rows_written", 0)
            queue = iter(outcomes)
            deadline = time.perf_counter() + args.max_seconds
            done = 0

            async def caller() -> None:
                nonlocal done
                for outcome, txn in queue:
                    await store.apply(outcome, txn)
                    done += 1
                    if time.perf_counter() > deadline:
                        return

            started = time.perf_counter()
            cpu_started = time.process_time()
            await asyncio.gather(*(caller() for _ in range(scenario.callers)))
            elapsed = time.perf_counter() - started
            commits = store.stats.commits - commits_before
            await store.close()
            closed = True
            with_close = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            folds = getattr(store.stats, "folds", 0) - folds_before
            written = getattr(store.stats, "fold_rows_written", 0) - written_before
        finally:
            if not closed:
                await store.close()
            await owner.aclose()
            if backend == "postgres":
                conn = await asyncpg.connect(POSTGRES_DSN)
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await conn.close()
    rows = done * scenario.changes_per_apply
    return RunResult(
        done / elapsed,
        rows / elapsed,
        rows / with_close,
        cpu / rows * 1e6,
        commits,
        done,
        folds,
        written / rows if folds else 1.0,
    )


async def main(args: argparse.Namespace) -> None:
    header = f"{'backend':<14} {'scenario':<34} {'applies/s':>10} {'rows/s':>10}"
    print(
        f"{header} {'rows/s+close':>13} {'cpu us/row':>11} {'applies/commit':>15}"
        f" {'folds':>6} {'written/row':>12}"
    )
    for key in args.scenarios:
        scenario = SCENARIOS[key]
        outcomes = build_outcomes(scenario, args.users)
        for backend in args.backends:
            results = [await run_once(backend, scenario, outcomes, args) for _ in range(args.runs)]
            applies_s = statistics.median(r.applies_per_s for r in results)
            rows_s = statistics.median(r.rows_per_s for r in results)
            rows_close = statistics.median(r.rows_per_s_with_close for r in results)
            cpu = statistics.median(r.cpu_us_per_row for r in results)
            per_commit = statistics.median(r.applies / max(r.commits, 1) for r in results)
            folds = statistics.median(r.folds for r in results)
            written = statistics.median(r.written_per_row for r in results)
            print(
                f"{backend:<14} {scenario.name:<34} {applies_s:>10,.0f} {rows_s:>10,.0f}"
                f" {rows_close:>13,.0f} {cpu:>11.2f} {per_commit:>15.1f} {folds:>6.0f}"
                f" {written:>12.3f}",
                flush=True,
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="cut a run off after")
    parser.add_argument("--users", type=int, default=64_000, help="user population")
    parser.add_argument("--backends", type=lambda s: s.split(","), default=list(BACKENDS))
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS))
    parser.add_argument("--dir", default=None, help="where SQLite files go (default: $TMPDIR)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
