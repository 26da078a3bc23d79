"""A benchmark's runs summed up (pure): medians per cell, markdown tables.

``bench/bench_ingest.py`` measures a grid of *cells*, one per target
(``worker``, ``synapse``), shape (``1x50``), user kind (warm, cold) and
number of origins. A cell is run closed loop (one transaction in flight per
origin: its peak), then, at ``--paced`` percentages of that peak's median,
open loop. Every run becomes one ``RunRecord``; this module turns the records
into what ``BENCHMARKS.md`` shows: a closed-loop table (worker and Synapse
side by side, with their ratio and the load client's own CPU and ceiling),
a floor table (the bare handler of issue 18, ``bench/floor_target.py``, and
the worker's share of it) and a paced-latency table, each a median over runs
with every run's figures listed below it.

A paced run *held* its rate when it achieved nearly all of it and most of
its transactions left when due (``RunResult.send_lag_ms``); when it did not,
``shortfall_note`` says how many in flight the rate would have needed.

No I/O and no clock: figures in, text out.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CLOSED, PACED = "closed", "paced"
# A paced run "held" its rate if it achieved at least this share of it and
# most of its transactions left on time (a lane was free when one was due).
HELD_FRACTION = 0.95
HELD_SEND_LAG_P50_MS = 1.0


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One timed run: what it was and what it measured."""

    target: str  # "worker", "floor" or "synapse"
    shape: str  # "EDUSxPUSHES", e.g. "1x50"
    users: str  # "warm" or "cold"
    origins: int
    mode: str  # CLOSED (one in flight per origin, or a fixed --rate) or PACED
    run: int  # 1-based within the cell and mode (and percentage)
    txn_per_s: float
    pushes_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    server_cpu_share: float  # server CPU seconds per wall second, timed part
    client_cpu_share: float  # the load client's, the same
    ceiling_txn_per_s: float | None = None  # the same requests against a no-op server
    percent: int | None = None  # PACED: the share of the cell's peak asked
    asked_txn_per_s: float | None = None  # PACED (or --rate): the rate offered
    # Open loop: how long after it was due a transaction was sent (all lanes busy).
    send_lag_mean_ms: float = 0.0
    send_lag_p50_ms: float = 0.0
    send_lag_p99_ms: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def cpu_us_per_txn(self) -> float:
        return self.server_cpu_share * 1e6 / self.txn_per_s if self.txn_per_s else 0.0

    @property
    def cell(self) -> tuple[str, str, int]:
        return self.shape, self.users, self.origins

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "shape": self.shape,
            "users": self.users,
            "origins": self.origins,
            "mode": self.mode,
            "percent": self.percent,
            "asked_txn_per_s": self.asked_txn_per_s,
            "send_lag_mean_ms": self.send_lag_mean_ms,
            "send_lag_p50_ms": self.send_lag_p50_ms,
            "send_lag_p99_ms": self.send_lag_p99_ms,
            "run": self.run,
            "txn_per_s": self.txn_per_s,
            "pushes_per_s": self.pushes_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "server_cpu_share": round(self.server_cpu_share, 4),
            "cpu_us_per_txn": round(self.cpu_us_per_txn, 1),
            "client_cpu_share": round(self.client_cpu_share, 4),
            "ceiling_txn_per_s": self.ceiling_txn_per_s,
            "statuses": self.statuses,
            "errors": self.errors,
            "notes": list(self.notes),
        }


def held(record: RunRecord) -> bool:
    """Whether an open-loop run kept to its schedule with one transaction in flight per origin."""
    asked = record.asked_txn_per_s
    if asked is None:
        return True
    return (
        record.txn_per_s >= HELD_FRACTION * asked and record.send_lag_p50_ms <= HELD_SEND_LAG_P50_MS
    )


def in_flight_needed(rate: float, answer_ms: float) -> float:
    """Little's law: transactions in flight that ``rate`` needs when each takes ``answer_ms``."""
    return rate * answer_ms / 1000


def shortfall_note(record: RunRecord) -> str | None:
    """Why a paced run did not hold its rate with one transaction in flight per origin."""
    if held(record) or record.asked_txn_per_s is None:
        return None
    answer_ms = max(0.0, record.mean_ms - record.send_lag_mean_ms)  # from send to answer
    need = in_flight_needed(record.asked_txn_per_s, answer_ms)
    return (
        f"did not hold {record.asked_txn_per_s:,.0f} txn/s with one in flight per origin: "
        f"achieved {record.txn_per_s:,.0f}, sent p50 {record.send_lag_p50_ms:,.1f} ms "
        f"(p99 {record.send_lag_p99_ms:,.1f}) after due; at its mean answer time "
        f"{answer_ms:,.1f} ms the rate needs ~{need:,.1f} in flight on average, "
        f"{record.origins} origins allow {record.origins} (bursts need more)"
    )


# --- tables ------------------------------------------------------------------------


def rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def percent(share: float) -> str:
    return f"{share * 100:.0f}"


def shape_label(shape: str) -> str:
    return shape.replace("x", "×")


def _median(records: Iterable[RunRecord], value: Callable[[RunRecord], float]) -> float:
    values = [value(r) for r in records]
    return statistics.median(values) if values else 0.0


def _latencies(records: Sequence[RunRecord]) -> str:
    """Median p50 / median p99."""
    return (
        f"{ms(_median(records, lambda r: r.p50_ms))} / {ms(_median(records, lambda r: r.p99_ms))}"
    )


def _group(records: Iterable[RunRecord]) -> dict[tuple[Any, ...], list[RunRecord]]:
    """Records by (target, mode, shape, users, origins, percent), in first-seen order."""
    groups: dict[tuple[Any, ...], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.target, r.mode, *r.cell, r.percent), []).append(r)
    return groups


def _runs_line(label: str, records: Sequence[RunRecord]) -> str:
    def each(value: Callable[[RunRecord], str]) -> str:
        return " / ".join(value(r) for r in records)

    parts = [
        f"txn/s {each(lambda r: rate(r.txn_per_s))}",
        f"p50 {each(lambda r: ms(r.p50_ms))} ms",
        f"p99 {each(lambda r: ms(r.p99_ms))} ms",
        f"CPU {each(lambda r: percent(r.server_cpu_share))} %",
        f"{each(lambda r: f'{r.cpu_us_per_txn:,.0f}')} µs/txn",
        f"client CPU {each(lambda r: percent(r.client_cpu_share))} %",
    ]
    if any(r.asked_txn_per_s is not None for r in records):
        parts.insert(0, f"asked {each(lambda r: rate(r.asked_txn_per_s or 0.0))} txn/s")
        parts.append(
            f"sent after due p50 {each(lambda r: ms(r.send_lag_p50_ms))} ms, "
            f"p99 {each(lambda r: ms(r.send_lag_p99_ms))} ms"
        )
    ceilings = [r.ceiling_txn_per_s for r in records if r.ceiling_txn_per_s is not None]
    if ceilings:
        parts.append("ceiling " + " / ".join(rate(c) for c in ceilings) + " txn/s")
    statuses = {k for r in records for k in r.statuses} - {"200"}
    errors = sum(sum(r.errors.values()) for r in records)
    if statuses or errors:
        parts.append(f"non-200 {[r.statuses for r in records]}, connection errors {errors}")
    return f"- {label}: " + "; ".join(parts)


def _cell_label(r: RunRecord) -> str:
    return f"{r.target} {shape_label(r.shape)} {r.users} {r.origins} origins"


def closed_table(records: Sequence[RunRecord]) -> str:
    """Closed loop, medians per cell: the worker and Synapse side by side."""
    groups = _group(r for r in records if r.mode == CLOSED)
    cells = list(dict.fromkeys(key[2:5] for key in groups))
    lines = [
        "| shape | users | origins | worker txn/s | worker pushes/s | worker p50 / p99 ms "
        "| worker CPU % | worker CPU µs/txn | Synapse txn/s | Synapse pushes/s "
        "| Synapse p50 / p99 ms | Synapse CPU % | Synapse CPU µs/txn | worker ÷ Synapse "
        "| client CPU % (worker runs) | client ceiling txn/s (× worker) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_run: list[str] = []
    for shape, users, origins in cells:
        row = [shape_label(shape), users, str(origins)]
        rates: dict[str, float] = {}
        worker_runs: list[RunRecord] = []
        for target in ("worker", "synapse"):
            runs = groups.get((target, CLOSED, shape, users, origins, None), [])
            if not runs:
                row += ["—"] * 5
                continue
            rates[target] = _median(runs, lambda r: r.txn_per_s)
            row += [
                rate(rates[target]),
                rate(_median(runs, lambda r: r.pushes_per_s)),
                _latencies(runs),
                percent(_median(runs, lambda r: r.server_cpu_share)),
                f"{_median(runs, lambda r: r.cpu_us_per_txn):,.0f}",
            ]
            if target == "worker":
                worker_runs = runs
            per_run.append(_runs_line(_cell_label(runs[0]), runs))
        if "worker" in rates and rates.get("synapse"):
            row.append(f"**{rates['worker'] / rates['synapse']:,.1f}×**")
        else:
            row.append("—")
        ceilings = [r.ceiling_txn_per_s for r in worker_runs if r.ceiling_txn_per_s is not None]
        if worker_runs:
            row.append(percent(_median(worker_runs, lambda r: r.client_cpu_share)))
        else:
            row.append("—")
        if ceilings and rates.get("worker"):
            ceiling = statistics.median(ceilings)
            row.append(f"{rate(ceiling)} ({ceiling / rates['worker']:,.1f}×)")
        else:
            row.append("—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join([*lines, "", "Runs:", "", *per_run])


def floor_table(records: Sequence[RunRecord]) -> str:
    """Closed loop, medians per cell: the floor, and the worker's share of it."""
    groups = _group(r for r in records if r.mode == CLOSED)
    lines = [
        "| shape | users | origins | floor txn/s | floor pushes/s | floor p50 / p99 ms "
        "| floor CPU % | floor CPU µs/txn | worker txn/s | worker ÷ floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_run: list[str] = []
    for (target, _, shape, users, origins, _), runs in groups.items():
        if target != "floor":
            continue
        floor = _median(runs, lambda r: r.txn_per_s)
        row = [
            shape_label(shape), users, str(origins), rate(floor),
            rate(_median(runs, lambda r: r.pushes_per_s)), _latencies(runs),
            percent(_median(runs, lambda r: r.server_cpu_share)),
            f"{_median(runs, lambda r: r.cpu_us_per_txn):,.0f}",
        ]  # fmt: skip
        worker_runs = groups.get(("worker", CLOSED, shape, users, origins, None), [])
        if worker_runs:
            worker = _median(worker_runs, lambda r: r.txn_per_s)
            row.append(rate(worker))
            row.append(f"**{percent(worker / floor)} %**" if floor else "—")
        else:
            row += ["—", "—"]
        lines.append("| " + " | ".join(row) + " |")
        per_run.append(_runs_line(_cell_label(runs[0]), runs))
    return "\n".join([*lines, "", "Runs:", "", *per_run])


def paced_table(records: Sequence[RunRecord]) -> str:
    """Open loop at shares of each cell's peak, medians per point."""
    groups = _group(r for r in records if r.mode == PACED)
    lines = [
        "| target | shape | users | origins | % of peak | asked txn/s | achieved txn/s "
        "| p50 / p99 ms | CPU % | CPU µs/txn | client CPU % | sent after due p50 / p99 ms "
        "| held with 1 in flight per origin |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_run: list[str] = []
    for (target, _, shape, users, origins, share), runs in groups.items():
        asked = _median(runs, lambda r: r.asked_txn_per_s or 0.0)
        verdict = "yes" if all(held(r) for r in runs) else "**no**: see notes"
        lines.append(
            f"| {target} | {shape_label(shape)} | {users} | {origins} | {share} % "
            f"| {rate(asked)} | {rate(_median(runs, lambda r: r.txn_per_s))} "
            f"| {_latencies(runs)} "
            f"| {percent(_median(runs, lambda r: r.server_cpu_share))} "
            f"| {_median(runs, lambda r: r.cpu_us_per_txn):,.0f} "
            f"| {percent(_median(runs, lambda r: r.client_cpu_share))} "
            f"| {ms(_median(runs, lambda r: r.send_lag_p50_ms))} / "
            f"{ms(_median(runs, lambda r: r.send_lag_p99_ms))} | {verdict} |"
        )
        per_run.append(_runs_line(f"{_cell_label(runs[0])} at {share} %", runs))
        per_run.extend(f"  - note: {n}" for r in runs if (n := shortfall_note(r)))
    return "\n".join([*lines, "", "Runs:", "", *per_run])
