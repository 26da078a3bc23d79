"""The benchmark grid and its summary (pure): counts, paced rates, estimate, medians, tables."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from federation_presence.loadtest.grid import (
    Plan,
    cell_wall_s,
    estimate_wall_s,
    first_count,
    next_count,
    paced_count,
    paced_rate,
    parse_shape,
)
from federation_presence.loadtest.summary import (
    CLOSED,
    PACED,
    RunRecord,
    closed_table,
    floor_table,
    held,
    in_flight_needed,
    paced_table,
    shortfall_note,
)


def _run(
    target: str = "worker",
    txn_per_s: float = 1_000.0,
    *,
    shape: str = "1x1",
    users: str = "warm",
    origins: int = 16,
    run: int = 1,
    **extra: object,
) -> RunRecord:
    record = RunRecord(
        target=target,
        shape=shape,
        users=users,
        origins=origins,
        mode=CLOSED,
        run=run,
        txn_per_s=txn_per_s,
        pushes_per_s=txn_per_s * parse_shape(shape)[0] * parse_shape(shape)[1],
        p50_ms=5.0,
        p99_ms=20.0,
        mean_ms=6.0,
        server_cpu_share=0.5,
        client_cpu_share=0.1,
    )
    return replace(record, **extra)  # type: ignore[arg-type]


def _row(table: str, start: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


# --- grid ---------------------------------------------------------------------------


def test_paced_rates_are_shares_of_the_peak() -> None:
    assert [paced_rate(2_000, p) for p in (25, 50, 90)] == [500, 1_000, 1_800]


def test_a_paced_run_signs_its_duration_s_worth_with_a_margin_and_two_per_origin_at_least() -> None:
    assert paced_count(1_000, 8, 16) == 8_800
    assert paced_count(0.5, 2, 64) == 128


def test_the_first_closed_run_signs_for_the_targets_own_cap() -> None:
    # The worker's cap is bounded by pushes for big shapes, by transactions for small ones.
    assert first_count("worker", "1x1", 10, 16) == 60_000
    assert first_count("worker", "1x50", 10, 16) == 24_000
    assert first_count("worker", "100x1", 10, 16) == 12_000
    # Synapse is an order of magnitude slower: it is not given the worker's count to sign.
    assert first_count("synapse", "100x1", 10, 16) < first_count("worker", "100x1", 10, 16) / 5
    assert first_count("synapse", "1x1", 0.001, 64) == 128  # at least two per origin
    # The floor does a subset of the worker's work: it is given more to sign.
    for shape in ("1x1", "1x50", "100x1"):
        assert first_count("floor", shape, 10, 16) > first_count("worker", shape, 10, 16)


def test_later_closed_runs_sign_for_the_best_rate_seen_within_the_cap() -> None:
    assert next_count(1_000, 10, 16, cap=60_000) == 16_000
    assert next_count(10_000, 10, 16, cap=60_000) == 60_000
    assert next_count(0.0, 10, 16, cap=60_000) == 32


def test_the_estimate_grows_with_every_dimension_of_the_grid() -> None:
    base = Plan(["worker"], ["1x1"], ["warm"], [16], runs=1, seconds=10)
    one = estimate_wall_s(base)
    assert one > 10  # at least the timed part
    assert estimate_wall_s(replace(base, runs=3)) > one + 20
    assert estimate_wall_s(replace(base, origins=[16, 64])) > one + 10
    assert estimate_wall_s(replace(base, paced=[25, 50, 90])) > one + 3 * 8
    with_synapse = replace(base, targets=["worker", "synapse"], paced=[50])
    paced_too = replace(with_synapse, paced_targets=["worker", "synapse"])
    assert estimate_wall_s(paced_too) > estimate_wall_s(with_synapse) + 8


def test_a_slow_target_s_cell_lasts_past_its_duration_by_the_answers_in_flight() -> None:
    plan = Plan(["synapse"], ["100x1"], ["cold"], [64], runs=1, seconds=10, ceiling=False)
    # Synapse takes 100 EDUs at ~600 EDUs/s: 64 in flight take ~10 s to come back.
    assert cell_wall_s(plan, "synapse", "100x1", "cold", 64) > 20


# --- held and the shortfall note ------------------------------------------------------


def test_a_paced_run_held_when_it_achieved_its_rate_and_left_on_time() -> None:
    on_time = _run(mode=PACED, percent=50, asked_txn_per_s=1_000.0, txn_per_s=990.0)
    assert held(on_time)
    assert shortfall_note(on_time) is None
    assert not held(replace(on_time, txn_per_s=900.0))
    assert not held(replace(on_time, send_lag_p50_ms=25.0))
    assert held(_run())  # a closed run has nothing to hold


def test_the_shortfall_note_says_how_many_in_flight_the_rate_needed() -> None:
    late = _run(
        mode=PACED,
        percent=90,
        asked_txn_per_s=2_000.0,
        txn_per_s=1_500.0,
        mean_ms=30.0,
        send_lag_mean_ms=20.0,
        send_lag_p50_ms=18.0,
        send_lag_p99_ms=40.0,
    )
    # Each answer took 30 - 20 = 10 ms from its send: 2,000/s x 10 ms = 20 in flight.
    assert in_flight_needed(2_000, 10) == 20
    note = shortfall_note(late)
    assert note is not None
    assert "~20.0 in flight" in note
    assert "16 origins allow 16" in note


# --- tables --------------------------------------------------------------------------


def test_the_closed_table_shows_medians_side_by_side_with_the_ratio() -> None:
    records = [
        _run("worker", 1_000, run=1, ceiling_txn_per_s=30_000.0),
        _run("worker", 3_000, run=2, server_cpu_share=0.9),
        _run("worker", 2_000, run=3, server_cpu_share=0.8),
        _run("synapse", 100, run=1),
        _run("synapse", 300, run=2),
        _run("synapse", 200, run=3),
    ]
    table = closed_table(records)
    row = _row(table, "| 1×1 | warm | 16 |")
    assert row[3] == "2,000"  # the worker's median txn/s
    assert row[6] == "80"  # its median CPU %
    assert row[7] == "400"  # median of 500 / 300 / 400 µs per transaction
    assert row[8] == "200"  # Synapse's median
    assert row[13] == "**10.0×**"
    assert row[14] == "10"  # client CPU % in the worker's runs
    assert row[15] == "30,000 (15.0×)"  # the ceiling against the worker's median
    assert "- worker 1×1 warm 16 origins: txn/s 1,000 / 3,000 / 2,000" in table
    assert "- synapse 1×1 warm 16 origins: txn/s 100 / 300 / 200" in table


def test_a_cell_without_synapse_shows_dashes_not_a_ratio() -> None:
    table = closed_table([_run(origins=64, users="cold", shape="1x50")])
    row = _row(table, "| 1×50 | cold | 64 |")
    assert row[4] == "50,000"  # pushes/s
    assert row[8:14] == ["—"] * 6
    assert len(row) == len(_row(table, "| shape |"))


def test_one_row_per_cell_in_the_order_run() -> None:
    records = [
        _run(origins=16),
        _run(origins=64),
        _run(users="cold", origins=16),
        _run("synapse", origins=16),
    ]
    rows = [line for line in closed_table(records).splitlines() if line.startswith("| 1×1")]
    assert [r.split("|")[2:4] for r in rows] == [
        [" warm ", " 16 "],
        [" warm ", " 64 "],
        [" cold ", " 16 "],
    ]


def test_the_floor_table_states_the_worker_s_share_of_the_floor() -> None:
    records = [
        _run("floor", 4_000, run=1),
        _run("floor", 5_000, run=2),
        _run("floor", 3_000, run=3),
        _run("worker", 1_800),
        _run("floor", 900, users="cold", shape="1x50"),
    ]
    table = floor_table(records)
    warm = _row(table, "| 1×1 | warm | 16 |")
    assert warm[3] == "4,000"  # the floor's median txn/s
    assert warm[8:] == ["1,800", "**45 %**"]
    cold = _row(table, "| 1×50 | cold | 16 |")
    assert cold[4] == "45,000"  # pushes/s
    assert cold[8:] == ["—", "—"]  # no worker run in that cell
    assert "- floor 1×1 warm 16 origins: txn/s 4,000 / 5,000 / 3,000" in table
    assert "worker 1×1" not in table


def test_the_paced_table_has_a_row_per_point_and_flags_a_point_not_held() -> None:
    paced = [
        _run(mode=PACED, percent=p, asked_txn_per_s=a, txn_per_s=t, run=r)
        for p, a, t, r in [(50, 1_000.0, 1_000.0, 1), (90, 1_800.0, 1_500.0, 1)]
    ]
    table = paced_table([_run(), *paced])
    half = _row(table, "| worker | 1×1 | warm | 16 | 50 % |")
    assert half[5:7] == ["1,000", "1,000"]
    assert half[-1] == "yes"
    most = _row(table, "| worker | 1×1 | warm | 16 | 90 % |")
    assert most[-1].startswith("**no**")
    assert "note: did not hold 1,800 txn/s" in table
    assert "- worker 1×1 warm 16 origins at 90 %: asked 1,800 txn/s; txn/s 1,500;" in table
    assert "| worker | 1×1 | warm | 16 | None" not in table  # the closed run is not a row


@pytest.mark.parametrize(("shape", "expected"), [("1x50", (1, 50)), ("100X1", (100, 1))])
def test_shapes_parse(shape: str, expected: tuple[int, int]) -> None:
    assert parse_shape(shape) == expected


def test_the_grid_and_the_summary_import_no_io_module() -> None:
    program = (
        "import json, sys\n"
        "import federation_presence.loadtest.grid, federation_presence.loadtest.summary\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert "federation_presence.loadtest.summary" in loaded
    io = ("anyio", "asyncio", "httpx", "sqlite3", "socket", "ssl", "federation_presence.clock")
    assert sorted(name for name in loaded if name.split(".")[0] in io or name in io) == []
