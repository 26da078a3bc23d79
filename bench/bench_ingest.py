"""Ingest benchmark: signed /send transactions through the real HTTP stack.

The worker under test runs as its own process (``federation-presence run``)
pinned to one core (``taskset -c 0``), SQLite store, synchronous=full.
This process, pinned to the other core, runs the synthetic origins' key
server (TLS, trustme CA) and the load generator: ORIGINS connections, one
transaction in flight per origin, pre-signed requests.

Usage:
    python bench/bench_ingest.py --shape 1x1 --shape 1x50 --shape 100x1 \
        --origins 64 --seconds 10 --runs 3

Prints, per shape and run, transactions/s and pushes/s with latency
percentiles, then the median over runs. Bounded: each run stops after
--seconds or when its pre-built requests are used up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx
import trustme

from federation_presence.clock import SystemClock
from federation_presence.loadtest.origins import serving_origins
from federation_presence.loadtest.plan import LoadShape, request_bytes, transaction_body
from federation_presence.loadtest.runner import send_requests

DESTINATION = "bench.test"


def parse_shape(text: str) -> LoadShape:
    edus, pushes = text.split("x")
    return LoadShape(edus_per_txn=int(edus), pushes_per_edu=int(pushes))


def write_config(workdir: Path, port: int, ca_file: Path, synchronous: str) -> Path:
    config = workdir / "bench.yaml"
    config.write_text(
        f"""
server_name: "{DESTINATION}"
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
log_level: warning
"""
    )
    return config


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(config: Path, core: str, profile: str | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "federation_presence", "run", "-c", str(config)]
    if profile:
        command = ["py-spy", "record", "-r", "200", "-f", "raw", "-o", profile, "--", *command]
    if shutil.which("taskset") and core:
        command = ["taskset", "-c", core, *command]
    return subprocess.Popen(command)


def wait_healthy(port: int, timeout_s: float = 30.0) -> None:
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
    port: int,
    shape: LoadShape,
    origins_count: int,
    seconds: float,
    per_origin: int,
    cert: Path,
    key: Path,
    run_index: int,
) -> tuple[float, float, float, float, dict[int, int]]:
    clock = SystemClock()
    async with serving_origins(origins_count, clock, cert, key) as origins:
        requests = []
        now = clock.now_ms()
        for origin in origins:
            requests.append(
                [
                    request_bytes(
                        origin=origin.server_name,
                        signing_key=origin.signing_key,
                        destination=DESTINATION,
                        host_header=f"127.0.0.1:{port}",
                        txn_id=f"r{run_index}-{i}",
                        body=transaction_body(origin.server_name, shape, i, now),
                    )
                    for i in range(per_origin)
                ]
            )
        # Warm-up: one transaction per origin, so key fetches are not timed.
        warm = [[r[0]] for r in requests]
        await send_requests("127.0.0.1", port, warm, clock, duration_s=60)
        result = await send_requests(
            "127.0.0.1", port, [r[1:] for r in requests], clock, duration_s=seconds
        )
    txn_s = result.ok / result.elapsed_s
    statuses = dict(result.statuses)
    if result.errors:
        print("  errors:", dict(result.errors), file=sys.stderr)
    return (
        txn_s,
        txn_s * shape.pushes_per_txn,
        result.percentile_ms(0.5),
        result.percentile_ms(0.99),
        statuses,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="EDUSxPUSHES, e.g. 1x50")
    parser.add_argument("--origins", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-txns", type=int, default=60_000, help="per run, all origins")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--worker-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--py-spy", metavar="FILE", help="profile the worker (collapsed stacks)")
    args = parser.parse_args()
    shapes = [parse_shape(s) for s in (args.shape or ["1x1", "1x50", "100x1"])]
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
        port = free_port()
        config = write_config(workdir, port, ca_file, args.synchronous)
        worker = start_worker(config, args.worker_core, args.py_spy)
        try:
            wait_healthy(port)
            for shape in shapes:
                label = f"{shape.edus_per_txn} EDU x {shape.pushes_per_edu} pushes"
                per_origin = max(2, args.max_txns // args.origins)
                runs = []
                for run_index in range(args.runs):
                    run = anyio.run(
                        one_run,
                        port,
                        shape,
                        args.origins,
                        args.seconds,
                        per_origin,
                        cert_file,
                        key_file,
                        run_index + 1000 * shapes.index(shape),
                        backend="asyncio",
                        backend_options={"use_uvloop": True},
                    )
                    runs.append(run)
                    print(
                        f"{label}: run {run_index + 1}: {run[0]:,.0f} txn/s, "
                        f"{run[1]:,.0f} pushes/s, p50 {run[2]:.1f} ms, p99 {run[3]:.1f} ms, "
                        f"statuses {run[4]}",
                        flush=True,
                    )
                print(
                    f"{label}: MEDIAN {statistics.median(r[0] for r in runs):,.0f} txn/s, "
                    f"{statistics.median(r[1] for r in runs):,.0f} pushes/s",
                    flush=True,
                )
        finally:
            # py-spy writes its profile when interrupted; the worker gets the SIGINT.
            worker.send_signal(signal.SIGINT if args.py_spy else signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()


if __name__ == "__main__":
    main()
