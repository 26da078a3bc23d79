"""Issue 14 at full size: 2,000 origins whose key servers hang, and legitimate ones.

The outside tester's attack: ``--origins`` origins (``127.0.0.1:<port>``),
each with a key server that accepts and never answers (half of them send the
headers of a 200 and stall), each sends one signed ``/send`` to a worker at
once. The worker runs as its own process (``federation-presence run``, pinned
to ``--server-core``, plain HTTP listener, SQLite) with the given key-fetch
settings; this process (the other core) runs the hanging key servers, the
flood and the legitimate origins (real TLS key servers, ``tests/integration``'s
``TestOrigin``).

Measured, once every key-fetch slot is held by a hung fetch:

* ``--fresh`` legitimate origins, never seen before, one per second: the time
  from sending their first ``/send`` to its answer (each needs a key fetch
  while the flood is on), and the status;
* a prober origin sending a new transaction every second, as the tester did,
  until the flood is over and for ``--after`` seconds more: every status;
* the flood's answers by status, how long it took to drain, and the most hung
  connections the key servers saw open at once.

Usage (from the repository root):
    PYTHONPATH=. python bench/bench_key_fetch_flood.py --origins 2000
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from signedjson.types import SigningKey

from federation_presence.federation.signing_keys import generate_signing_key
from federation_presence.federation.xmatrix import authorization_header
from tests.integration.hanging_peers import serve_hanging_key_servers
from tests.integration.origin import TestOrigin, presence_edu, running_origin
from tests.integration.tls_peer import TlsCertificates

WORKER_NAME = "bench.test"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(workdir: Path, port: int, ca: Path, args: argparse.Namespace) -> Path:
    config = workdir / "flood.yaml"
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
    database: "{workdir / "flood.db"}"
federation:
  ca_bundle: "{ca}"
  ip_range_whitelist: ["127.0.0.0/8", "::1/128"]
  key_fetch_concurrency: {args.concurrency}
  key_fetch_timeout: {args.timeout_ms}
  key_fetch_contended_timeout: {args.contended_ms}
log_level: warning
"""
    )
    return config


def start_worker(config: Path, core: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "federation_presence", "run", "-c", str(config)]
    if shutil.which("taskset") and core:
        command = ["taskset", "-c", core, *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env)


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


def flood_body(origin: str) -> dict[str, Any]:
    push = {"user_id": f"@a:{origin}", "presence": "online", "last_active_ago": 0}
    return {"origin": origin, "origin_server_ts": 0, "pdus": [], "edus": [presence_edu(push)]}


async def raw_send(port: int, key: SigningKey, origin: str) -> int:
    """One signed /send over its own connection; the status.

    Hand-written HTTP/1.1, not httpx: one httpx pool with 2,000 requests in
    flight spends its time re-assigning requests to connections, which made
    the flood itself (not the worker) the bottleneck.
    """
    body = flood_body(origin)
    path = "/_matrix/federation/v1/send/flood"
    content = orjson.dumps(body)
    authorization = authorization_header(key, "PUT", path, origin, WORKER_NAME, body)
    request = (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + content
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        head = b""
        while b"\r\n" not in head:
            head += await stream.receive()
    return int(head.split(b" ", 2)[1])


async def legit_send(http: httpx.AsyncClient, origin: TestOrigin, txn_id: str) -> tuple[int, float]:
    push = {"user_id": origin.user("alice"), "presence": "online", "last_active_ago": 0}
    body = origin.transaction(presence_edu(push))
    started = time.monotonic()
    response = await http.put(
        f"/_matrix/federation/v1/send/{txn_id}",
        content=orjson.dumps(body),
        headers={"Authorization": origin.authorization(txn_id, body, destination=WORKER_NAME)},
    )
    return response.status_code, (time.monotonic() - started) * 1000


async def attack(
    args: argparse.Namespace,
    port: int,
    certificates: TlsCertificates,
    stop_worker: Callable[[], None],
) -> None:
    flood_key = generate_signing_key("flood")
    flood_answers: list[int] = []
    fresh: list[tuple[int, float]] = []
    probes: list[tuple[float, int, float]] = []  # (seconds since slots full, status, ms)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with (
        serve_hanging_key_servers(args.origins, certificates) as hanging,
        running_origin(certificates) as prober,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as http,
    ):
        fresh_origins = [running_origin(certificates) for _ in range(args.fresh + 1)]
        legit = [await o.__aenter__() for o in fresh_origins]
        flood_done = anyio.Event()

        async def flood_send(server_name: str) -> None:
            flood_answers.append(await raw_send(port, flood_key, server_name))
            if len(flood_answers) == args.origins:
                flood_done.set()

        flood_started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for server_name in hanging.server_names:
                tg.start_soon(flood_send, server_name)
            with anyio.fail_after(120):
                await hanging.accepted_at_least(1).wait()
                first_fetch = time.monotonic()
                await hanging.accepted_at_least(args.concurrency).wait()
            slots_full = time.monotonic()
            print(
                f"first hung fetch {first_fetch - flood_started:.1f} s and every key-fetch slot "
                f"held by one {slots_full - flood_started:.1f} s after the flood started"
            )

            async def probe() -> None:
                n = 0
                after_deadline: float | None = None
                while after_deadline is None or time.monotonic() < after_deadline:
                    status, ms = await legit_send(http, prober, f"probe{n}")
                    probes.append((time.monotonic() - slots_full, status, ms))
                    n += 1
                    if flood_done.is_set() and after_deadline is None:
                        after_deadline = time.monotonic() + args.after
                    await anyio.sleep(1.0)

            tg.start_soon(probe)
            for n, origin in enumerate(legit[:-1]):
                fresh.append(await legit_send(http, origin, f"fresh{n}"))
                await anyio.sleep(1.0)
        drained_s = time.monotonic() - flood_started
        last = await legit_send(http, legit[-1], "after")
        stop_worker()  # first, so that the origins' servers need not wait for its connections
        for o in reversed(fresh_origins):
            await o.__aexit__(None, None, None)
    print(f"flood of {args.origins}: drained in {drained_s:.1f} s; answers:", end="")
    for status in sorted(set(flood_answers)):
        print(f" {flood_answers.count(status)} x {status}", end="")
    print(f"; most hung key-server connections open at once: {hanging.most_open}")
    print("fresh legitimate origins mid-flood (status, ms to answer):")
    for status, ms in fresh:
        print(f"  {status}  {ms:7.0f} ms")
    ok = [ms for status, ms in fresh if status == 200]
    if ok:
        print(f"  median {statistics.median(ok):.0f} ms, max {max(ok):.0f} ms over {len(ok)} x 200")
    statuses = [status for _, status, _ in probes]
    print(
        f"prober: {statuses.count(200)} of {len(statuses)} tries answered 200 over "
        f"{probes[-1][0]:.0f} s (first try {probes[0][1]} in {probes[0][2]:.0f} ms; "
        f"non-200: {[s for s in statuses if s != 200]})"
    )
    print(f"a fresh origin after the flood: {last[0]} in {last[1]:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--origins", type=int, default=2_000)
    parser.add_argument("--fresh", type=int, default=5)
    parser.add_argument("--after", type=float, default=12.0, help="probe seconds after the flood")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout-ms", type=int, default=10_000)
    parser.add_argument("--contended-ms", type=int, default=2_000)
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    args = parser.parse_args()
    if shutil.which("taskset") and args.client_core:
        os.sched_setaffinity(0, {int(args.client_core)})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        certificates = TlsCertificates.issue(workdir)
        port = free_port()
        config = write_config(workdir, port, certificates.ca_path, args)
        process = start_worker(config, args.server_core)
        try:
            wait_healthy(port)
            anyio.run(attack, args, port, certificates, lambda: stop(process))
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    main()
