"""Ingest benchmark: signed /send transactions through the real HTTP stack.

Targets (``--target``, repeatable, measured in the same run):

* ``worker``: ``federation-presence run`` as its own process, SQLite store,
  ``synchronous=full`` (fsync per group commit).
* ``synapse``: a real Synapse (see ``synapse_target.py``), SQLite, presence on.

Each target is pinned to one core (``taskset -c 0``). This process, pinned to
the other core, runs the synthetic origins' TLS key server and the load
generator: ``--origins`` connections, one transaction in flight per origin
(the spec's sender rule), requests pre-built and pre-signed so that the
generator does no JSON or signing while timed. A warm-up transaction per
origin is sent first so that key fetches are not timed.

Usage:
    python bench/bench_ingest.py --target worker --shape 1x1 --shape 1x50 \
        --shape 100x1 --origins 64 --seconds 10 --runs 3

Prints per target, shape and run: transactions/s and pushes/s (200s only),
p50/p99 latency and the status counts, then the median over runs. Bounded:
each run stops after ``--seconds`` or when its pre-built requests run out.
"""

from __future__ import annotations

import argparse
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
    SERVER_NAME as SYNAPSE_NAME,
)
from synapse_target import (
    start_synapse,
    wait_synapse,
    write_synapse_config,
)

from federation_presence.clock import SystemClock
from federation_presence.loadtest.origins import SyntheticOrigin, serving_origins
from federation_presence.loadtest.plan import (
    LoadShape,
    request_bytes,
    transaction_body,
)
from federation_presence.loadtest.runner import send_requests

WORKER_NAME = "bench.test"


@dataclass(frozen=True)
class RunFigures:
    txn_per_s: float
    pushes_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    server_cpu_share: float  # server process CPU seconds per wall second, timed part


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_shape(text: str, users_per_origin: int) -> LoadShape:
    edus, pushes = text.split("x")
    return LoadShape(int(edus), int(pushes), users_per_origin)


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


async def one_run(
    server_pid: int,
    port: int,
    destination: str,
    origins: list[SyntheticOrigin],
    shape: LoadShape,
    args: argparse.Namespace,
    run_label: str,
) -> RunFigures:
    clock = SystemClock()
    per_origin = max(2, args.max_txns // args.origins)
    now = clock.now_ms()
    requests = [
        [
            request_bytes(
                origin=origin.server_name,
                signing_key=origin.signing_key,
                destination=destination,
                host_header=f"127.0.0.1:{port}",
                txn_id=f"{run_label}-{i}",
                body=transaction_body(origin.server_name, shape, i, now),
            )
            for i in range(per_origin)
        ]
        for origin in origins
    ]
    cpu_before = cpu_seconds(server_pid)
    result = await send_requests("127.0.0.1", port, requests, clock, duration_s=args.seconds)
    cpu_share = (cpu_seconds(server_pid) - cpu_before) / result.elapsed_s
    if result.errors:
        print("  errors:", dict(result.errors), file=sys.stderr)
    txn_s = result.ok / result.elapsed_s
    return RunFigures(
        txn_s,
        txn_s * shape.pushes_per_txn,
        result.percentile_ms(0.5),
        result.percentile_ms(0.99),
        dict(result.statuses),
        cpu_share,
    )


async def measure(
    server_pid: int,
    target: str,
    port: int,
    destination: str,
    shapes: list[LoadShape],
    args: argparse.Namespace,
    cert: Path,
    key: Path,
) -> None:
    """All shapes and runs against one target, with one set of synthetic origins.

    The origins (and so their keys) live for the whole target: a new key under
    a reused port's server name would be a key rotation, which the receiver
    rightly rate-limits. A warm-up transaction per origin makes every key
    fetch happen before anything is timed.
    """
    clock = SystemClock()
    async with serving_origins(args.origins, clock, cert, key) as origins:
        warm = [
            [
                request_bytes(
                    origin=origin.server_name,
                    signing_key=origin.signing_key,
                    destination=destination,
                    host_header=f"127.0.0.1:{port}",
                    txn_id="warm-up",
                    body=transaction_body(origin.server_name, LoadShape(1, 1), 0, clock.now_ms()),
                )
            ]
            for origin in origins
        ]
        await send_requests("127.0.0.1", port, warm, clock, duration_s=120)
        for shape_index, shape in enumerate(shapes):
            label = f"{target}: {shape.edus_per_txn} EDU x {shape.pushes_per_edu} pushes"
            runs = []
            for run_index in range(args.runs):
                figures = await one_run(
                    server_pid, port, destination, origins, shape, args,
                    f"s{shape_index}r{run_index}",
                )  # fmt: skip
                runs.append(figures)
                print(
                    f"{label}: run {run_index + 1}: {figures.txn_per_s:,.0f} txn/s, "
                    f"{figures.pushes_per_s:,.0f} pushes/s, p50 {figures.p50_ms:.1f} ms, "
                    f"p99 {figures.p99_ms:.1f} ms, server CPU {figures.server_cpu_share:.0%}, "
                    f"{figures.server_cpu_share * 1e6 / max(figures.txn_per_s, 1e-9):,.0f} "
                    f"µs CPU/txn, statuses {figures.statuses}",
                    flush=True,
                )
            print(
                f"{label}: MEDIAN {statistics.median(r.txn_per_s for r in runs):,.0f} txn/s, "
                f"{statistics.median(r.pushes_per_s for r in runs):,.0f} pushes/s",
                flush=True,
            )


def _server_pid(process: subprocess.Popen[bytes]) -> int:
    """The pid doing the serving: through ``taskset`` (exec) and ``py-spy`` (a child)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return int(children[0]) if children else process.pid


def _measure(*arguments: object) -> None:
    anyio.run(measure, *arguments, backend="asyncio", backend_options={"use_uvloop": True})


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
    parser.add_argument("--origins", type=int, default=64)
    parser.add_argument("--users-per-origin", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-txns", type=int, default=60_000, help="per run, all origins")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--synapse-python", default="/opt/synapse-venv/bin/python")
    parser.add_argument("--py-spy", metavar="FILE", help="profile the worker (collapsed stacks)")
    args = parser.parse_args()
    shapes = [
        parse_shape(s, args.users_per_origin) for s in (args.shape or ["1x1", "1x50", "100x1"])
    ]
    if shutil.which("taskset") and args.client_core:
        os.sched_setaffinity(0, {int(args.client_core)})

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca_file, cert_file, key_file = (workdir / n for n in ("ca.pem", "cert.pem", "key.pem"))
        ca.cert_pem.write_to_path(str(ca_file))
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        for target in args.target or ["worker"]:
            port = free_port()
            if target == "worker":
                config = write_worker_config(workdir, port, ca_file, args.synchronous)
                process = start_worker(config, args.server_core, args.py_spy)
                destination = WORKER_NAME
                try:
                    wait_healthy(port)
                    _measure(
                        _server_pid(process),
                        target,
                        port,
                        destination,
                        shapes,
                        args,
                        cert_file,
                        key_file,
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
                    _measure(
                        _server_pid(process),
                        target,
                        port,
                        SYNAPSE_NAME,
                        shapes,
                        args,
                        cert_file,
                        key_file,
                    )
                finally:
                    stop(process)


if __name__ == "__main__":
    main()
