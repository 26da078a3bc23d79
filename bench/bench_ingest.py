"""Ingest benchmark: signed /send transactions through the real HTTP stack.

A thin use of ``federation-presence loadtest`` (``federation_presence.loadtest``):
this script starts the targets, pins them, and runs the same load session
against each, in the same run.

Targets (``--target``, repeatable, measured in the same run):

* ``worker``: ``federation-presence run`` as its own process, SQLite store,
  ``synchronous=full`` (fsync per group commit).
* ``synapse``: a real Synapse (see ``synapse_target.py``), SQLite, presence on.

Each target is pinned to one core (``taskset -c 0``). This process, pinned to
the other core, runs the synthetic origins' TLS key server and the load
client: ``--origins`` origins, one transaction in flight per origin (the
spec's sender rule), requests pre-signed before the timed part. The origins
live for the whole target (a new key under a reused server name would be a
key rotation), and every run has its own tag, so every push of every run is a
real change for the target (issue 18). ``--users warm`` primes each origin's
users untimed before every run; ``--users cold`` sends users never seen.

Usage:
    python bench/bench_ingest.py --target worker --target synapse \
        --shape 1x1 --shape 1x50 --shape 100x1 --origins 16 --seconds 10 --runs 3

Prints per target, shape, users and run: transactions/s and pushes/s (200s
only), p50/p99 latency (from when each transaction was due), the status
counts, the server's and the client's CPU share over the timed part, and the
client's ceiling (the same requests against a no-op server); then the medians,
and the worker/Synapse ratio when both ran. Bounded: each run stops after
``--seconds`` or ``--count`` transactions.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synapse_target import (
    start_synapse,
    wait_synapse,
    write_synapse_config,
)

from federation_presence.clock import SystemClock
from federation_presence.loadtest.origins import SyntheticOrigin, serving_origins
from federation_presence.loadtest.session import LoadSettings, Target, TlsFiles, run_load

WORKER_NAME = "bench.test"


@dataclass(frozen=True)
class RunFigures:
    txn_per_s: float
    pushes_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    server_cpu_share: float  # server process CPU seconds per wall second, timed part
    client_cpu_share: float  # this process, the same
    ceiling_txn_per_s: float | None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_shape(text: str) -> tuple[int, int]:
    edus, pushes = text.split("x")
    return int(edus), int(pushes)


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


def wait_healthy(port: int, timeout_s: float = 30.0) -> None:
    """Poll the worker's /health (its startup is its own process's business)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("worker did not become healthy")


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


async def one_run(
    server_pid: int,
    target_name: str,
    target: Target,
    settings: LoadSettings,
    tls: TlsFiles,
    origins: list[SyntheticOrigin],
    args: argparse.Namespace,
    run_index: int,
) -> RunFigures:
    """One timed run; prints its line (and writes its HTML report with --html-dir)."""
    window = CpuWindow(server_pid)
    report = await run_load(
        target, settings, tls, SystemClock(), origins=origins, timed=window,
        ceiling=not args.no_ceiling,
    )  # fmt: skip
    data = report.as_json()
    figures = RunFigures(
        data["txn_per_s"], data["pushes_per_s"], data["p50_ms"], data["p99_ms"],
        data["statuses"], window.server_share, window.client_share, data["ceiling_txn_per_s"],
    )  # fmt: skip
    label = f"{settings.edus_per_txn}x{settings.pushes_per_edu}-{settings.users}"
    if args.html_dir:
        page = args.html_dir / f"{target_name}-{label}-{run_index + 1}.html"
        page.write_text(report.as_html(), encoding="utf-8")
    rate = max(figures.txn_per_s, 1e-9)
    ceiling = "ceiling not measured"
    if figures.ceiling_txn_per_s is not None:
        limited = ", CLIENT-LIMITED" if report.client_limited else ""
        ceiling = (
            f"ceiling {figures.ceiling_txn_per_s:,.0f} txn/s "
            f"({figures.ceiling_txn_per_s / rate:.1f}x{limited})"
        )
    print(
        f"{target_name} {label}: run {run_index + 1}: {figures.txn_per_s:,.0f} txn/s, "
        f"{figures.pushes_per_s:,.0f} pushes/s, p50 {figures.p50_ms:.1f} ms, "
        f"p99 {figures.p99_ms:.1f} ms, server CPU {figures.server_cpu_share:.0%} "
        f"({figures.server_cpu_share * 1e6 / rate:,.0f} µs/txn), "
        f"client CPU {figures.client_cpu_share:.0%}, {ceiling}, statuses {figures.statuses}",
        flush=True,
    )
    for note in report.notes:
        print(f"  note: {note}", flush=True)
    return figures


async def measure(
    server_pid: int,
    target_name: str,
    target: Target,
    shapes: list[tuple[int, int]],
    args: argparse.Namespace,
    tls: TlsFiles,
) -> dict[str, float]:
    """All shapes, user kinds and runs against one target, with one set of origins.

    Returns the median txn/s per ``"EDUSxPUSHES-users"`` label.
    """
    medians: dict[str, float] = {}
    async with serving_origins(args.origins, SystemClock(), tls.cert, tls.key) as origins:
        for (edus, pushes), users in itertools.product(shapes, args.users or ["warm"]):
            settings = LoadSettings(
                origins=args.origins,
                users_per_origin=args.users_per_origin,
                edus_per_txn=edus,
                pushes_per_edu=pushes,
                users=users,
                rate=args.rate,
                duration_s=args.seconds,
                count=args.count or max(10_000, 30_000 // (edus * pushes)),
            )
            runs = [
                await one_run(server_pid, target_name, target, settings, tls, origins, args, i)
                for i in range(args.runs)
            ]
            label = f"{edus}x{pushes}-{users}"
            medians[label] = statistics.median(r.txn_per_s for r in runs)
            ceiling = statistics.median(r.ceiling_txn_per_s or 0 for r in runs)
            print(
                f"{target_name} {label}: MEDIAN {medians[label]:,.0f} txn/s, "
                f"{medians[label] * edus * pushes:,.0f} pushes/s, "
                f"p50 {statistics.median(r.p50_ms for r in runs):.1f} ms, "
                f"p99 {statistics.median(r.p99_ms for r in runs):.1f} ms, "
                f"ceiling {ceiling:,.0f} txn/s",
                flush=True,
            )
    return medians


def _server_pid(process: subprocess.Popen[bytes]) -> int:
    """The pid doing the serving: through ``taskset`` (exec) and ``py-spy`` (a child)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return int(children[0]) if children else process.pid


def _measure(
    server_pid: int,
    target_name: str,
    target: Target,
    shapes: list[tuple[int, int]],
    args: argparse.Namespace,
    tls: TlsFiles,
) -> dict[str, float]:
    return anyio.run(
        measure, server_pid, target_name, target, shapes, args, tls,
        backend="asyncio", backend_options={"use_uvloop": True},
    )  # fmt: skip


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    process.send_signal(sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=["worker", "synapse"])
    parser.add_argument("--shape", action="append", help="EDUSxPUSHES, e.g. 1x50")
    parser.add_argument("--users", action="append", choices=["warm", "cold"])
    parser.add_argument("--origins", type=int, default=16)
    parser.add_argument("--users-per-origin", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, help="per run, all origins (default: by shape)")
    parser.add_argument("--rate", type=float, help="open loop, txn/s (default: closed loop)")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--synapse-python", default="/opt/synapse-venv/bin/python")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--html-dir", type=Path, help="write one HTML report per run here")
    parser.add_argument("--py-spy", metavar="FILE", help="profile the worker (collapsed stacks)")
    args = parser.parse_args()
    shapes = [parse_shape(s) for s in (args.shape or ["1x1", "1x50", "100x1"])]
    if shutil.which("taskset") and args.client_core:
        os.sched_setaffinity(0, {int(args.client_core)})
    print(f"load average before: {os.getloadavg()}", flush=True)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca_file, cert_file, key_file = (workdir / n for n in ("ca.pem", "cert.pem", "key.pem"))
        ca.cert_pem.write_to_path(str(ca_file))
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        tls = TlsFiles(cert_file, key_file)
        for target_name in args.target or ["worker"]:
            port = free_port()
            target = Target(False, "127.0.0.1", port)
            if target_name == "worker":
                config = write_worker_config(workdir, port, ca_file, args.synchronous)
                process = start_worker(config, args.server_core, args.py_spy)
                try:
                    wait_healthy(port)
                    results[target_name] = _measure(
                        _server_pid(process), target_name, target, shapes, args, tls
                    )
                finally:
                    # py-spy writes its profile when interrupted; the worker gets SIGINT.
                    stop(process, signal.SIGINT if args.py_spy else signal.SIGTERM)
            else:
                config = write_synapse_config(args.synapse_python, workdir / "synapse", port)
                process = start_synapse(
                    args.synapse_python, config, args.server_core, workdir / "synapse.log"
                )
                try:
                    wait_synapse(port, process)
                    results[target_name] = _measure(
                        _server_pid(process), target_name, target, shapes, args, tls
                    )
                finally:
                    stop(process)
    if "worker" in results and "synapse" in results:
        for label, worker_rate in results["worker"].items():
            synapse_rate = results["synapse"].get(label)
            if synapse_rate:
                print(f"ratio worker/synapse {label}: {worker_rate / synapse_rate:.1f}x")
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
