"""Ingest benchmark: signed /send transactions through the real HTTP stack.

A thin use of ``federation-presence loadtest`` (``federation_presence.loadtest``):
this script starts the targets, pins them, and runs the same load session
against each, in the same run.

Targets (``--target``, repeatable, measured in the same run):

* ``worker``: ``federation-presence run`` as its own process, SQLite store,
  ``synchronous=full`` (fsync per group commit).
* ``floor``: the bare handler of issue 18 (``floor_target.py``), its own
  process: plain HTTP on uvloop with httptools, the X-Matrix header parsed,
  the body ``orjson``-loaded, ONE ed25519 verify, then every push upserted
  into a table with the worker's ``user_presence`` schema by a writer thread
  that makes one group commit (WAL, ``synchronous=FULL``, the worker's
  ``cache_size``) per batch of waiting requests, each answered 200 after its
  commit. No txn dedup, no presence logic, no validation beyond not failing:
  the issue states the worker's target as a fraction of this floor, so it
  runs in the same invocation, pinned to the same core and measured with the
  same CPU accounting as the worker, for every cell. Closed loop only (the
  floor is a peak; it is not paced); the tables end with a floor table and
  the worker's share of it.
* ``synapse``: a real Synapse (see ``synapse_target.py``), SQLite, presence on.

Each target is pinned to one core (``taskset -c 0``). This process, pinned to
the other core, runs the synthetic origins' TLS key server and the load
client: ``--origins`` origins, one transaction in flight per origin (the
spec's sender rule), requests pre-signed before the timed part. The origins
live for the whole target (a new key under a reused server name would be a
key rotation), and every run has its own tag, so every push of every run is a
real change for the target (issue 18). ``--users warm`` primes each origin's
users untimed before every run; ``--users cold`` sends users never seen.

The grid (issue 18): every ``--shape`` x ``--users`` x ``--origins`` (all
three repeatable) is a *cell*. The origins are served once per target, as
many as the largest ``--origins``; a cell with fewer uses the first of them.
Per cell: ``--runs`` closed-loop runs (the peak; the first also measures the
client's ceiling: the same requests against a no-op server), then for every
``--paced PERCENT`` ``--paced-runs`` open-loop runs at that share of the
closed runs' median rate, still one transaction in flight per origin (a run
that cannot hold its rate that way says how many in flight it would need).
Synapse cells are paced only with ``--paced-synapse`` (Synapse is slow); floor
cells never are.

Usage (issue 18's full grid; ``--estimate`` prints its wall time and exits):
    python bench/bench_ingest.py --target worker --target floor --target synapse \
        --shape 1x1 --shape 1x50 --shape 100x1 --users warm --users cold \
        --origins 16 --origins 64 --seconds 10 --runs 3 \
        --paced 25 --paced 50 --paced 90 --json-out ingest.json

Prints a line per run: transactions/s and pushes/s (200s only), p50/p99
latency (from when each transaction was due), the status counts, the
server's and the client's CPU share over the timed part, the client's
ceiling; a median line per cell; at the end, markdown tables ready for
``BENCHMARKS.md`` (``federation_presence.loadtest.summary``): closed loop,
worker and Synapse side by side with their ratio, the floor with the
worker's share of it, and paced; medians, with every run's figures listed
below each table. ``--json-out`` writes every run's raw figures and whole
wall time (rewritten after each run).

Bounded: each run stops after its seconds or its count of pre-signed
transactions (by default enough for its seconds: ``loadtest.grid``); the
whole invocation's wall time is estimated before it starts (the grid above:
~31 min with its defaults of one 8 s run per paced point and Synapse not
paced; ~70 min with ``--paced-runs 3 --paced-seconds 10 --paced-synapse``;
the floor's share of either is ~9 min).
Without ``--synapse-python`` the interop suite's cached Synapse venv is used
(built on first use, ~2 min).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor_target import start_floor
from synapse_target import (
    start_synapse,
    wait_synapse,
    write_synapse_config,
)

from federation_presence.clock import SystemClock
from federation_presence.loadtest.grid import (
    Plan,
    estimate_wall_s,
    first_count,
    next_count,
    paced_count,
    paced_rate,
    parse_shape,
)
from federation_presence.loadtest.origins import SyntheticOrigin, serving_origins
from federation_presence.loadtest.plan import USER_KINDS
from federation_presence.loadtest.session import LoadSettings, Target, TlsFiles, run_load
from federation_presence.loadtest.summary import (
    CLOSED,
    PACED,
    RunRecord,
    closed_table,
    floor_table,
    paced_table,
    shortfall_note,
)

WORKER_NAME = "bench.test"
DEFAULT_PACED_SECONDS = 8.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_worker_config(workdir: Path, port: int, ca_file: Path, synchronous: str) -> Path:
    config = workdir / "bench.yaml"
    config.write_text(
        f"""
server_name: "{WORKER_NAME}"
signing_key_path: "{workdir / "keys" / "signing.key"}"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    resources: [federation, client, ops]
database:
  name: sqlite3
  args:
    database: "{workdir / "bench.db"}"
  synchronous: {synchronous}
federation:
  ca_bundle: "{ca_file}"
  rate_limit_per_second: 1000000
  rate_limit_burst: 1000000
  ip_range_whitelist: ["127.0.0.0/8", "::1/128"]
log_level: warning
"""
    )
    return config


def start_worker(config: Path, core: str, profile: str | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "federation_presence", "run", "-c", str(config)]
    if profile:
        spy = ["py-spy", "record", "--gil", "-r", "200", "-f", "raw", "-o", profile, "--"]
        command = [*spy, *command]
    if shutil.which("taskset") and core:
        command = ["taskset", "-c", core, *command]
    return subprocess.Popen(command)


def wait_healthy(
    port: int,
    process: subprocess.Popen[bytes],
    name: str = "worker",
    path: str = "/health",
    timeout_s: float = 30.0,
) -> None:
    """Poll the target's ``path`` until 200 (its startup is its own process's business)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{name} did not become healthy")


class CpuWindow:
    """Server and client CPU over the timed part of a run (``run_load``'s ``timed`` hook)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self._start = (0.0, 0.0, 0.0)
        self.server_share = self.client_share = 0.0

    def __call__(self, starting: bool) -> None:
        now = (time.monotonic(), cpu_seconds(self.server_pid), cpu_seconds(os.getpid()))
        if starting:
            self._start = now
            return
        wall = max(now[0] - self._start[0], 1e-9)
        self.server_share = (now[1] - self._start[1]) / wall
        self.client_share = (now[2] - self._start[2]) / wall


@dataclass
class Recorder:
    """Every run's record, printed as it ends and (with ``--json-out``) written at once."""

    json_out: Path | None
    command: list[str]
    records: list[RunRecord] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)

    def add(self, record: RunRecord, report: dict[str, Any], wall_s: float) -> None:
        self.records.append(record)
        self.raw.append({**record.as_json(), "wall_s": round(wall_s, 2), "report": report})
        if self.json_out is not None:
            document = {"command": self.command, "runs": self.raw}
            self.json_out.write_text(json.dumps(document, indent=1), encoding="utf-8")


@dataclass(frozen=True)
class Run:
    """Which run of which cell: what ``one_run`` is asked to do."""

    target_name: str
    settings: LoadSettings
    mode: str
    index: int
    ceiling: bool
    percent: int | None = None


async def one_run(
    server_pid: int,
    target: Target,
    run: Run,
    tls: TlsFiles,
    origins: list[SyntheticOrigin],
    args: argparse.Namespace,
    recorder: Recorder,
) -> RunRecord:
    """One timed run; prints its line (and writes its HTML report with --html-dir)."""
    settings = run.settings
    window = CpuWindow(server_pid)
    started = time.monotonic()  # the run's whole wall time: signing, priming, ceiling
    report = await run_load(
        target, settings, tls, SystemClock(), origins=origins, timed=window, ceiling=run.ceiling,
    )  # fmt: skip
    data = report.as_json()
    shape = f"{settings.edus_per_txn}x{settings.pushes_per_edu}"
    record = RunRecord(
        target=run.target_name, shape=shape, users=settings.users, origins=len(origins),
        mode=run.mode, run=run.index + 1, txn_per_s=data["txn_per_s"],
        pushes_per_s=data["pushes_per_s"], p50_ms=data["p50_ms"], p99_ms=data["p99_ms"],
        mean_ms=data["mean_ms"], send_lag_mean_ms=data["send_lag_mean_ms"],
        send_lag_p50_ms=data["send_lag_p50_ms"], send_lag_p99_ms=data["send_lag_p99_ms"],
        server_cpu_share=window.server_share, client_cpu_share=window.client_share,
        ceiling_txn_per_s=data["ceiling_txn_per_s"], percent=run.percent,
        asked_txn_per_s=None if settings.rate is None else round(settings.rate, 1),
        statuses=data["statuses"], errors=data["errors"], notes=tuple(report.notes),
    )  # fmt: skip
    recorder.add(record, data, time.monotonic() - started)
    mode = run.mode if run.percent is None else f"paced {run.percent} %"
    label = f"{shape}-{settings.users}-{len(origins)}o"
    if args.html_dir:
        page = f"{run.target_name}-{label}-{run.mode}{run.percent or ''}-{run.index + 1}.html"
        (args.html_dir / page).write_text(report.as_html(), encoding="utf-8")
    ceiling = "ceiling not measured"
    if record.ceiling_txn_per_s is not None:
        limited = ", CLIENT-LIMITED" if report.client_limited else ""
        ceiling = (
            f"ceiling {record.ceiling_txn_per_s:,.0f} txn/s "
            f"({record.ceiling_txn_per_s / max(record.txn_per_s, 1e-9):.1f}x{limited})"
        )
    asked = "" if settings.rate is None else (
        f" (asked {settings.rate:,.0f}; sent after due p50 {record.send_lag_p50_ms:.1f} ms, "
        f"p99 {record.send_lag_p99_ms:.1f} ms)"
    )  # fmt: skip
    print(
        f"{run.target_name} {label} {mode}: run {run.index + 1}: "
        f"{record.txn_per_s:,.0f} txn/s{asked}, "
        f"{record.pushes_per_s:,.0f} pushes/s, p50 {record.p50_ms:.1f} ms, "
        f"p99 {record.p99_ms:.1f} ms, server CPU {record.server_cpu_share:.0%} "
        f"({record.cpu_us_per_txn:,.0f} µs/txn), "
        f"client CPU {record.client_cpu_share:.0%}, {ceiling}, statuses {record.statuses}",
        flush=True,
    )
    for note in report.notes:
        print(f"  note: {note}", flush=True)
    if short := shortfall_note(record):
        print(f"  note: {short}", flush=True)
    return record


async def one_cell(
    server_pid: int,
    target_name: str,
    target: Target,
    cell: tuple[tuple[int, int], str, list[SyntheticOrigin]],
    args: argparse.Namespace,
    tls: TlsFiles,
    recorder: Recorder,
) -> None:
    """A cell's closed-loop runs, then its paced runs at shares of their median peak."""
    (edus, pushes), users, origins = cell
    shape = f"{edus}x{pushes}"
    cap = first_count(target_name, shape, args.seconds, len(origins))
    base = LoadSettings(
        origins=len(origins), users_per_origin=args.users_per_origin, edus_per_txn=edus,
        pushes_per_edu=pushes, users=users, rate=args.rate, duration_s=args.seconds,
        count=args.count or cap,
    )  # fmt: skip
    closed: list[RunRecord] = []
    runs = args.synapse_runs if target_name == "synapse" and args.synapse_runs else args.runs
    for i in range(runs):
        count = base.count
        if closed and not args.count and args.rate is None:
            best = max(r.txn_per_s for r in closed)
            count = next_count(best, args.seconds, len(origins), cap)
        settings = replace(base, count=count)
        ceiling = not args.no_ceiling and (i == 0 or args.ceiling_every_run)
        run = Run(target_name, settings, CLOSED, i, ceiling)
        closed.append(await one_run(server_pid, target, run, tls, origins, args, recorder))
    peak = statistics.median(r.txn_per_s for r in closed)
    print(
        f"{target_name} {shape}-{users}-{len(origins)}o: MEDIAN {peak:,.0f} txn/s, "
        f"{statistics.median(r.pushes_per_s for r in closed):,.0f} pushes/s, "
        f"p50 {statistics.median(r.p50_ms for r in closed):.1f} ms, "
        f"p99 {statistics.median(r.p99_ms for r in closed):.1f} ms",
        flush=True,
    )
    if target_name not in plan_of(args).paced_targets:
        return
    for share in args.paced or []:
        asked = paced_rate(peak, share)
        if asked <= 0:
            print(f"  paced {share} %: skipped, no peak measured", flush=True)
            continue
        seconds = paced_seconds(args)
        settings = replace(
            base, rate=asked, duration_s=seconds, count=paced_count(asked, seconds, len(origins))
        )
        for i in range(args.paced_runs):
            run = Run(target_name, settings, PACED, i, False, share)
            await one_run(server_pid, target, run, tls, origins, args, recorder)


async def measure(
    server_pid: int,
    target_name: str,
    target: Target,
    shapes: list[tuple[int, int]],
    args: argparse.Namespace,
    tls: TlsFiles,
    recorder: Recorder,
) -> None:
    """Every cell (shape x user kind x origin count) against one target.

    One set of origins for the whole target (the largest count asked); a cell
    with fewer origins uses the first of them, so an origin's key is never
    rotated under its name and warm users stay the same users.
    """
    users_kinds = args.users
    async with serving_origins(max(args.origins), SystemClock(), tls.cert, tls.key) as pool:
        for shape, users, count in itertools.product(shapes, users_kinds, args.origins):
            cell = (shape, users, pool[:count])
            await one_cell(server_pid, target_name, target, cell, args, tls, recorder)


def _server_pid(process: subprocess.Popen[bytes]) -> int:
    """The pid doing the serving: through ``taskset`` (exec) and ``py-spy`` (a child)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return int(children[0]) if children else process.pid


def _measure(
    process: subprocess.Popen[bytes],
    target_name: str,
    target: Target,
    shapes: list[tuple[int, int]],
    args: argparse.Namespace,
    tls: TlsFiles,
    recorder: Recorder,
) -> None:
    anyio.run(
        measure, _server_pid(process), target_name, target, shapes, args, tls, recorder,
        backend="asyncio", backend_options={"use_uvloop": True},
    )  # fmt: skip


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    process.send_signal(sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def synapse_python(given: str | None) -> str:
    """The Synapse interpreter: ``--synapse-python``, or the interop suite's cached venv."""
    if given:
        return given
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.interop.synapse_fixture import SynapseUnavailable, ensure_synapse_install

    try:
        install = ensure_synapse_install()  # builds it once per machine (~2 min)
    except SynapseUnavailable as exc:
        raise SystemExit(f"synapse: {exc}") from exc
    print(f"synapse: {install.version} at {install.python}", flush=True)
    return str(install.python)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=["worker", "floor", "synapse"])
    parser.add_argument("--shape", action="append", help="EDUSxPUSHES, e.g. 1x50")
    parser.add_argument("--users", action="append", choices=USER_KINDS)
    parser.add_argument("--origins", type=int, action="append", help="repeatable (default 16)")
    parser.add_argument("--users-per-origin", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3, help="closed-loop runs per cell")
    parser.add_argument("--synapse-runs", type=int, help="closed-loop runs per Synapse cell")
    parser.add_argument("--count", type=int, help="per closed run, all origins (default: adapts)")
    parser.add_argument("--rate", type=float, help="open loop, txn/s (default: closed loop)")
    parser.add_argument(
        "--paced", type=int, action="append", metavar="PERCENT",
        help="after a cell's closed runs, open loop at PERCENT of their median (repeatable)",
    )  # fmt: skip
    parser.add_argument("--paced-runs", type=int, default=1, help="runs per paced point")
    parser.add_argument(
        "--paced-seconds", type=float,
        help=f"seconds per paced run (default: --seconds, at most {DEFAULT_PACED_SECONDS:g})",
    )  # fmt: skip
    parser.add_argument("--paced-synapse", action="store_true", help="pace Synapse cells too")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--synapse-python", help="default: the interop suite's cached venv")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--ceiling-every-run", action="store_true", help="not only the first")
    parser.add_argument("--html-dir", type=Path, help="write one HTML report per run here")
    parser.add_argument("--json-out", type=Path, help="write every run's raw figures here")
    parser.add_argument("--py-spy", metavar="FILE", help="profile the worker (collapsed stacks)")
    parser.add_argument("--estimate", action="store_true", help="print the plan's time, exit")
    args = parser.parse_args()
    args.origins = args.origins or [16]
    args.target = args.target or ["worker"]
    args.users = args.users or ["warm"]
    args.shape = args.shape or ["1x1", "1x50", "100x1"]
    for name in ("runs", "paced_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.origins) < 1 or any(not 0 < p <= 100 for p in args.paced or []):
        parser.error("--origins must be at least 1 and --paced 1-100")
    return args


def plan_of(args: argparse.Namespace) -> Plan:
    return Plan(
        targets=args.target, shapes=args.shape, users=args.users, origins=args.origins,
        runs=args.runs, seconds=args.seconds, paced=args.paced or [],
        paced_runs=args.paced_runs, paced_seconds=paced_seconds(args),
        paced_targets=["worker", "synapse"] if args.paced_synapse else ["worker"],
        synapse_runs=args.synapse_runs, users_per_origin=args.users_per_origin,
        ceiling=not args.no_ceiling,
    )  # fmt: skip


def paced_seconds(args: argparse.Namespace) -> float:
    return float(args.paced_seconds or min(args.seconds, DEFAULT_PACED_SECONDS))


def print_tables(records: list[RunRecord], rate: float | None) -> None:
    print(f"load average after: {os.getloadavg()}", flush=True)
    if rate is None:
        print("\n## Closed loop (medians; one transaction in flight per origin)\n")
    else:
        print(f"\n## Open loop at {rate:,.0f} txn/s (medians; one in flight per origin)\n")
    print(closed_table(records))
    if any(r.target == "floor" and r.mode == CLOSED for r in records):
        print("\n## Floor (issue 18's bare handler; closed loop, medians)\n")
        print(floor_table(records))
    if any(r.mode == PACED for r in records):
        print("\n## Paced (open loop at shares of each cell's closed-loop median)\n")
        print(paced_table(records))


def run_target(
    target_name: str,
    workdir: Path,
    ca_file: Path,
    tls: TlsFiles,
    python: str,
    shapes: list[tuple[int, int]],
    args: argparse.Namespace,
    recorder: Recorder,
) -> None:
    """Start one target pinned to its core, measure every cell against it, stop it."""
    port = free_port()
    target = Target(False, "127.0.0.1", port)
    if target_name == "worker":
        config = write_worker_config(workdir, port, ca_file, args.synchronous)
        process = start_worker(config, args.server_core, args.py_spy)
        try:
            wait_healthy(port, process)
            _measure(process, target_name, target, shapes, args, tls, recorder)
        finally:
            # py-spy writes its profile when interrupted; the worker gets SIGINT.
            stop(process, signal.SIGINT if args.py_spy else signal.SIGTERM)
        return
    if target_name == "floor":
        database = workdir / "floor.db"
        process = start_floor(port, database, ca_file, args.server_core)
        try:
            wait_healthy(port, process, "floor", "/_matrix/federation/v1/version")
            _measure(process, target_name, target, shapes, args, tls, recorder)
        finally:
            stop(process)
        return
    config = write_synapse_config(python, workdir / "synapse", port)
    process = start_synapse(python, config, args.server_core, workdir / "synapse.log")
    try:
        wait_synapse(port, process)
        _measure(process, target_name, target, shapes, args, tls, recorder)
    finally:
        stop(process)


def main() -> None:
    args = parse_args()
    shapes = [parse_shape(s) for s in args.shape]
    estimate = estimate_wall_s(plan_of(args))
    print(f"estimated wall time: ~{estimate / 60:.0f} min (loadtest.grid)", flush=True)
    if args.estimate:
        return
    python = synapse_python(args.synapse_python) if "synapse" in args.target else ""
    if shutil.which("taskset") and args.client_core:
        os.sched_setaffinity(0, {int(args.client_core)})
    print(f"load average before: {os.getloadavg()}", flush=True)
    recorder = Recorder(args.json_out, sys.argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            ca_file, cert_file, key_file = (workdir / n for n in ("ca.pem", "cert.pem", "key.pem"))
            ca.cert_pem.write_to_path(str(ca_file))
            cert.cert_chain_pems[0].write_to_path(str(cert_file))
            cert.private_key_pem.write_to_path(str(key_file))
            tls = TlsFiles(cert_file, key_file)
            for name in args.target:
                run_target(name, workdir, ca_file, tls, python, shapes, args, recorder)
    finally:  # what was measured is shown even if a target failed part way
        print_tables(recorder.records, args.rate)


if __name__ == "__main__":
    main()
