"""Micro-benchmarks of the presence core (no I/O): what one core step costs.

Run: ``python bench/bench_core.py`` (``--help`` for sizes). Each figure is the
median of ``--runs`` runs of a bounded number of operations, timed with
``time.perf_counter``. The machine under test is built once per figure and
warmed up, so the figures are steady-state costs, not first-sight costs.

Figures:

* ``handle_remote``: pushes/s and µs/push for batches of 50 (a full EDU) and
  of 1, over a population of known remote users (every push refreshes one).
* ``handle``: local inputs/s, a mix of SyncStarted/SyncEnded/Activity.
* ``notify_reason``: decisions/s.
* ``tick``: the cost of a tick with ``--users`` users holding timers when
  nothing is due, and per user when all of them expire at once.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.presence.inputs import (
    Activity,
    DeviceHeartbeat,
    LocalInput,
    RemotePush,
    SyncEnded,
    SyncStarted,
)
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import UserPresence
from federation_presence.presence.notify import notify_reason
from federation_presence.presence.states import PresenceState

OURS = ServerName("ours.example")
THEIRS = ServerName("theirs.example")
T0 = 1_700_000_000_000


def median_rate(runs: int, operations: int, run: Callable[[], None]) -> tuple[float, float]:
    """(operations per second, µs per operation), median over ``runs`` runs."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return operations / median, median / operations * 1e6


def remote_pushes(population: int) -> list[RemotePush]:
    return [
        RemotePush(
            THEIRS,
            UserId(f"@user{i}:theirs.example"),
            PresenceState.ONLINE,
            last_active_ago=i % 5_000,
            currently_active=True,
        )
        for i in range(population)
    ]


def bench_remote(runs: int, population: int, batch_size: int, batches: int) -> tuple[float, float]:
    machine = PresenceMachine(OURS)
    pushes = remote_pushes(population)
    now = [T0]
    machine.handle_remote(pushes, now[0])  # every user known: steady state
    chunks = [pushes[i : i + batch_size] for i in range(0, population, batch_size)]

    def run() -> None:
        handle_remote = machine.handle_remote
        for i in range(batches):
            now[0] += 1
            handle_remote(chunks[i % len(chunks)], now[0])

    return median_rate(runs, batches * batch_size, run)


def bench_local(runs: int, users: int, inputs: int) -> tuple[float, float]:
    machine = PresenceMachine(OURS)
    device = DeviceId("PHONE")
    ids = [UserId(f"@user{i}:ours.example") for i in range(users)]
    cycle: list[LocalInput] = []
    for user_id in ids:
        cycle += [
            SyncEnded(user_id, device),
            SyncStarted(user_id, device),
            Activity(user_id, device),
        ]
    now = [T0]
    for user_id in ids:
        machine.handle(SyncStarted(user_id, device), now[0])

    def run() -> None:
        handle = machine.handle
        for i in range(inputs):
            now[0] += 1
            handle(cycle[i % len(cycle)], now[0])

    return median_rate(runs, inputs, run)


def bench_notify(runs: int, decisions: int) -> tuple[float, float]:
    user = UserId("@user:theirs.example")
    prev = UserPresence(user, PresenceState.ONLINE, T0, None, True, T0)
    news = [
        UserPresence(user, PresenceState.ONLINE, T0 + 1_000, None, True, T0 + 1_000),
        UserPresence(user, PresenceState.ONLINE, T0 + 90_000, None, False, T0 + 90_000),
        UserPresence(user, PresenceState.UNAVAILABLE, T0, None, False, T0),
        UserPresence(user, PresenceState.ONLINE, T0, "lunch", True, T0),
    ]

    def run() -> None:
        for i in range(decisions):
            notify_reason(prev, news[i & 3], 60_000)

    return median_rate(runs, decisions, run)


def bench_tick(runs: int, users: int) -> tuple[float, float]:
    """(µs for a tick with nothing due, µs per user when all expire at once)."""
    idle_ticks = 1_000
    device = DeviceId("PHONE")

    def populated() -> PresenceMachine:
        machine = PresenceMachine(OURS)
        for i in range(users):
            user_id = UserId(f"@user{i}:ours.example")
            machine.handle(DeviceHeartbeat(user_id, device, PresenceState.UNAVAILABLE), T0)
        return machine

    machine = populated()
    deadline = machine.next_deadline_ms
    assert deadline is not None

    def run_idle() -> None:
        for i in range(idle_ticks):
            machine.tick(T0 + i % (deadline - T0))

    _, idle_us = median_rate(runs, idle_ticks, run_idle)
    fire_seconds = []
    for _ in range(runs):
        fresh = populated()
        start = time.perf_counter()
        outcome = fresh.tick(deadline)
        fire_seconds.append(time.perf_counter() - start)
        assert len(outcome.changes) == users
    return idle_us, statistics.median(fire_seconds) / users * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--population", type=int, default=10_000, help="remote users")
    parser.add_argument("--pushes", type=int, default=50_000, help="pushes per run")
    parser.add_argument("--inputs", type=int, default=20_000, help="local inputs per run")
    parser.add_argument("--decisions", type=int, default=200_000, help="notify decisions per run")
    parser.add_argument("--users", type=int, default=100_000, help="users with timers (tick)")
    args = parser.parse_args()

    for batch_size in (50, 1):
        batches = max(args.pushes // batch_size, 1)
        rate, us = bench_remote(args.runs, args.population, batch_size, batches)
        print(f"handle_remote batch={batch_size:<3} {rate:>12,.0f} pushes/s  {us:7.2f} µs/push")
    rate, us = bench_local(args.runs, min(args.population, args.inputs), args.inputs)
    print(f"handle (local inputs)  {rate:>12,.0f} inputs/s  {us:7.2f} µs/input")
    rate, us = bench_notify(args.runs, args.decisions)
    print(f"notify_reason          {rate:>12,.0f} decisions/s {us:5.3f} µs/decision")
    idle_us, per_user_us = bench_tick(min(args.runs, 3), args.users)
    print(f"tick, {args.users:,} users with timers, nothing due: {idle_us:7.2f} µs/tick")
    print(f"tick, {args.users:,} users all expiring at once:   {per_user_us:7.2f} µs/user")


if __name__ == "__main__":
    main()
