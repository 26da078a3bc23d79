"""A benchmark grid (pure): how much each run pre-signs, its paced rates, its wall time.

``bench/bench_ingest.py`` measures every *cell* (target x shape x user kind x
number of origins): closed-loop runs first (the peak), then open-loop runs
at ``--paced`` percentages of their median. This module decides, without
I/O or a clock:

* **How many transactions a run pre-signs.** Enough that the run ends at its
  duration, not at its count, but not many times what the target can take:
  signing is wall time outside the timed part (~55 µs a 1x1 transaction,
  ~350 µs a 100x1 one, on this project's machine kind). A cell's first
  closed run signs for a rate above any seen for its target (``COUNT_CAPS``);
  its later runs for the best rate seen so far with a margin; a paced run for
  its rate with a margin. A run that still runs out ends early and says so;
  its rate (answers / elapsed) stays right.
* **The rate of a paced point**: a percentage of the cell's median peak.
* **An estimate of the invocation's wall time** (``estimate_wall_s``), from
  the same counts and typical rates (``TYPICAL``), so that a long grid can be
  cut before it starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rates:
    """Transactions/s, pushes/s and EDUs/s: a rate is bounded by all three."""

    txn_per_s: float
    pushes_per_s: float
    edus_per_s: float

    def for_shape(self, shape: str) -> float:
        edus, pushes = parse_shape(shape)
        return min(self.txn_per_s, self.pushes_per_s / (edus * pushes), self.edus_per_s / edus)


# Above any rate seen on this machine kind (the first closed run's count). The
# floor (bench/floor_target.py) does a subset of the worker's work: its cap is
# above the worker's.
COUNT_CAPS = {
    "worker": Rates(6_000, 120_000, 120_000),
    "floor": Rates(10_000, 200_000, 200_000),
    "synapse": Rates(1_000, 10_000, 2_000),
}
# What a target typically reached here (only for the estimate; the floor's
# from short runs on a shared machine).
TYPICAL = {
    "worker": Rates(3_500, 60_000, 60_000),
    "floor": Rates(4_000, 80_000, 80_000),
    "synapse": Rates(250, 5_000, 600),
}
# Later closed runs: the best rate seen in the cell times this margin.
COUNT_MARGIN = 1.6
# Paced runs: the asked rate times this margin (some lanes finish their share early).
PACED_MARGIN = 1.1
# The estimate's costs outside the timed part.
SIGN_US_FIXED, SIGN_US_PER_PUSH, SIGN_US_PER_EDU = 50.0, 1.5, 1.5
RUN_FIXED_S = 0.3  # discovery, connects
NOOP_TXN_PER_S = 30_000  # the client against the no-op server (the ceiling run)
START_S = {"worker": 3.0, "floor": 1.0, "synapse": 8.0}


def parse_shape(shape: str) -> tuple[int, int]:
    """``"1x50"`` → (EDUs per transaction, pushes per EDU)."""
    edus, _, pushes = shape.lower().partition("x")
    return int(edus), int(pushes)


def first_count(target: str, shape: str, seconds: float, origins: int) -> int:
    """Transactions for a cell's first closed-loop run: above any rate seen here."""
    cap = COUNT_CAPS.get(target, COUNT_CAPS["worker"]).for_shape(shape)
    return max(2 * origins, math.ceil(cap * seconds))


def next_count(best_txn_per_s: float, seconds: float, origins: int, cap: int) -> int:
    """Transactions for a later closed-loop run: the best rate so far, with a margin."""
    return min(cap, max(2 * origins, math.ceil(best_txn_per_s * COUNT_MARGIN * seconds)))


def paced_rate(peak_txn_per_s: float, percent: int) -> float:
    """The open-loop rate at ``percent`` % of a measured peak (transactions/s)."""
    return peak_txn_per_s * percent / 100


def paced_count(rate: float, seconds: float, origins: int) -> int:
    """Transactions for an open-loop run at ``rate``: its duration's worth, and a margin."""
    return max(2 * origins, math.ceil(rate * seconds * PACED_MARGIN))


# --- the wall time of an invocation ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What one invocation will run."""

    targets: Sequence[str]
    shapes: Sequence[str]
    users: Sequence[str]
    origins: Sequence[int]
    runs: int
    seconds: float
    paced: Sequence[int] = ()
    paced_runs: int = 1
    paced_seconds: float = 8.0
    paced_targets: Sequence[str] = ("worker",)
    synapse_runs: int | None = None
    users_per_origin: int = 100
    ceiling: bool = True


def signing_s(shape: str, count: int) -> float:
    edus, pushes = parse_shape(shape)
    per_txn_us = SIGN_US_FIXED + SIGN_US_PER_PUSH * edus * pushes + SIGN_US_PER_EDU * edus
    return count * per_txn_us / 1e6


def cell_wall_s(plan: Plan, target: str, shape: str, users: str, origins: int) -> float:
    """One cell: its closed runs (the first with the ceiling), then its paced runs."""
    typical = TYPICAL.get(target, TYPICAL["worker"])
    rate = typical.for_shape(shape)
    priming = 0.0
    if users == "warm":  # every warm user once, untimed, before every run
        priming = origins * plan.users_per_origin / typical.pushes_per_s
    tail = origins / rate  # the answers in flight at the deadline (Little's law)
    runs = plan.synapse_runs if target == "synapse" and plan.synapse_runs else plan.runs
    cap = first_count(target, shape, plan.seconds, origins)
    counts = [cap] + [next_count(rate, plan.seconds, origins, cap)] * (runs - 1)
    total = sum(RUN_FIXED_S + priming + signing_s(shape, n) + plan.seconds + tail for n in counts)
    if plan.ceiling:
        total += min(plan.seconds, cap / NOOP_TXN_PER_S)
    if target in plan.paced_targets:
        for percent in plan.paced:
            asked = paced_rate(rate, percent)
            count = paced_count(asked, plan.paced_seconds, origins)
            one = RUN_FIXED_S + priming + signing_s(shape, count) + plan.paced_seconds + tail
            total += plan.paced_runs * one
    return total


def estimate_wall_s(plan: Plan) -> float:
    """A rough wall time of the invocation, in seconds."""
    total = 0.0
    for target in plan.targets:
        total += START_S.get(target, START_S["worker"])
        for shape in plan.shapes:
            for users in plan.users:
                for origins in plan.origins:
                    total += cell_wall_s(plan, target, shape, users, origins)
    return total
