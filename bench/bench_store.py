"""Store write throughput under group commit: applies/s and rows/s.

Scenarios (each apply also carries an ``InboundTxn``, as ``/send`` does):

* ``a``: 1 notified change per apply, 64 concurrent callers;
* ``b``: 50 notified changes per apply, 32 concurrent callers.

Backends: ``sqlite-full`` (WAL, synchronous=FULL: an fsync per group commit),
``sqlite-normal`` (WAL, synchronous=NORMAL), ``postgres`` (asyncpg, a fresh
schema per run in the ``test`` database, dropped afterwards).

Each run opens a fresh database, applies a fixed number of outcomes built
beforehand (only ``store.apply`` is timed) and is cut off after
``--max-seconds``; the figures are medians over ``--runs`` runs.

    python bench/bench_store.py                      # everything, 3 runs each
    python bench/bench_store.py --backends sqlite-full --scenarios a --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from federation_presence.ids import UserId
from federation_presence.presence.model import NotifyReason, Outcome, StateChange, UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import InboundTxn
from federation_presence.store.postgres import PostgresStore
from federation_presence.store.sqlite import SqliteStore

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
BASE_TS = 1_700_000_000_000


@dataclass(frozen=True)
class Scenario:
    name: str
    changes_per_apply: int
    callers: int
    applies: int


SCENARIOS = {
    "a": Scenario("a: 1 change/apply, 64 callers", 1, 64, 20_000),
    "b": Scenario("b: 50 changes/apply, 32 callers", 50, 32, 3_000),
}
BACKENDS = ("sqlite-full", "sqlite-normal", "postgres")


@dataclass(frozen=True)
class RunResult:
    applies_per_s: float
    rows_per_s: float
    commits: int
    applies: int


def build_outcomes(scenario: Scenario, users: int = 20_000) -> list[tuple[Outcome, InboundTxn]]:
    states = list(PresenceState)
    outcomes = []
    n = 0
    for i in range(scenario.applies):
        changes = []
        for _ in range(scenario.changes_per_apply):
            presence = UserPresence(
                UserId(f"@user{n % users}:origin{n % 97}.example"),
                states[n % len(states)],
                BASE_TS + n,
                None if n % 3 else "hello",
                bool(n % 2),
                BASE_TS + n,
                0,
            )
            changes.append(StateChange(presence, NotifyReason.PRESENCE))
            n += 1
        txn = InboundTxn(f"origin{i % 97}.example", f"txn{i}", b'{"pdus":{}}', BASE_TS + i)
        outcomes.append((Outcome(changes=tuple(changes)), txn))
    return outcomes


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
        await store.open()
        try:
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
            await asyncio.gather(*(caller() for _ in range(scenario.callers)))
            elapsed = time.perf_counter() - started
            commits = store.stats.commits
        finally:
            await store.close()
            if backend == "postgres":
                conn = await asyncpg.connect(POSTGRES_DSN)
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await conn.close()
    return RunResult(done / elapsed, done * scenario.changes_per_apply / elapsed, commits, done)


async def main(args: argparse.Namespace) -> None:
    header = f"{'backend':<14} {'scenario':<34} {'applies/s':>10} {'rows/s':>10}"
    print(f"{header} {'applies/commit':>15}")
    for key in args.scenarios:
        scenario = SCENARIOS[key]
        outcomes = build_outcomes(scenario)
        for backend in args.backends:
            results = [await run_once(backend, scenario, outcomes, args) for _ in range(args.runs)]
            applies_s = statistics.median(r.applies_per_s for r in results)
            rows_s = statistics.median(r.rows_per_s for r in results)
            per_commit = statistics.median(r.applies / max(r.commits, 1) for r in results)
            print(
                f"{backend:<14} {scenario.name:<34} {applies_s:>10,.0f} {rows_s:>10,.0f}"
                f" {per_commit:>15.1f}",
                flush=True,
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="cut a run off after")
    parser.add_argument("--backends", type=lambda s: s.split(","), default=list(BACKENDS))
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS))
    parser.add_argument("--dir", default=None, help="where SQLite files go (default: $TMPDIR)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
