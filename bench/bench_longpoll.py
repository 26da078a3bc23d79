"""Long-poll fan-out and bridge heartbeats through the real worker.

The worker runs as its own process (``federation-presence run``, SQLite,
``synchronous=full``, plain HTTP on loopback; pinned to core 0 with
``taskset`` when available). This process (core 1) plays the clients with
raw HTTP/1.1 over asyncio streams (uvloop), one keep-alive connection each.

``fanout``: ``--clients`` local users (one configured token each), in rooms
of ``--room-size``, each holding a ``/sync?since=..&timeout=60000``
long-poll (``set_presence=--set-presence``, default ``unavailable``: no
activity, so no ``currently_active`` expiry 60 s later wakes whole rooms in
the middle of the measurement), re-issued as soon as it answers. After the ramp (every client
synced once and the stream quiet), each round PUTs a new presence (and
status_msg) for one random user; the clients of that user's room (the user
included) must wake. Wake-up latency = from just before the PUT is written to
when a woken client has read its whole answer. Figures: p50/p99 over all
wake-ups of all rounds, plus "spurious": answers from clients outside the
changed room during a round (must be 0); "missed": expected clients not woken
within 30 s (must be 0). ``--warmup`` first rounds (default 3) are not
measured: the first round after the ramp pays for the ramp's backlog (seen:
5.3 s at 10,000 clients; its cause not investigated). Rounds are spaced ``--gap-ms`` so
the woken clients' next long-polls are registered before the next change.

``heartbeats``: ``POST /_presence/admin/v1/heartbeats`` batches of
``--batch`` entries (distinct bridged users, presence online, active), with
``--concurrency`` requests in flight, for ``--seconds``: heartbeats/s
acknowledged (each batch durable, one store write, before its 200).

    python bench/bench_longpoll.py fanout --clients 1000 --runs 3
    python bench/bench_longpoll.py fanout --clients 10000 --runs 3
    python bench/bench_longpoll.py heartbeats --batch 1000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADMIN = "bench-admin"
_RAMP = -(10**9)
SERVER = "bench.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(workdir: Path, port: int, users: int) -> Path:
    tokens = [
        {"token": f"t{i}", "user_id": f"@u{i}:{SERVER}", "device_id": "D"} for i in range(users)
    ]
    config = {
        "server_name": SERVER,
        "signing_key_path": str(workdir / "signing.key"),
        "listeners": [
            {"port": port, "bind_addresses": ["127.0.0.1"], "resources": ["client", "admin", "ops"]}
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "bench.db")}},
        "admin_token": ADMIN,
        "access_tokens": tokens,
        "log_level": "warning",
    }
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def start_worker(config: Path, core: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "federation_presence", "run", "-c", str(config)]
    if shutil.which("taskset") and core:
        command = ["taskset", "-c", core, *command]
    return subprocess.Popen(command)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Conn:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.port = port
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(port, reader, writer)

    def send(self, method: str, target: str, token: str, body: bytes = b"") -> None:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n"
        )
        self.writer.write(head.encode() + body)

    async def response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def request(
        self, method: str, target: str, token: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        """One request; a keep-alive connection the server closed (uvicorn closes
        idle ones after 5 s) is reopened once."""
        for attempt in (1, 2):
            try:
                self.send(method, target, token, body)
                return await self.response()
            except (asyncio.IncompleteReadError, ConnectionError):
                if attempt == 2:
                    raise
                self.writer.close()
                self.reader, self.writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, limit=1 << 22
                )
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.writer.close()


async def wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = await Conn.open(port)
            status, _ = await conn.request("GET", "/health", "x")
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("worker did not become healthy")


class Fanout:
    def __init__(self, port: int, clients: int, room_size: int, set_presence: str) -> None:
        self.port = port
        self.set_presence = set_presence
        self.errors: list[str] = []
        self.round_max: list[float] = []
        self.missed = 0
        self.clients = clients
        self.room_size = room_size
        self.round = _RAMP
        self.round_started = 0.0
        self.expected: set[int] = set()
        self.latencies: list[float] = []
        self.spurious = 0
        self.answers = 0
        self.last_answer = time.perf_counter()
        self.woken_this_round: set[int] = set()
        self.round_done = asyncio.Event()

    def room_of(self, i: int) -> list[int]:
        start = (i // self.room_size) * self.room_size
        return list(range(start, min(start + self.room_size, self.clients)))

    async def setup_rooms(self) -> None:
        conn = await Conn.open(self.port)
        for start in range(0, self.clients, self.room_size):
            members = [f"@u{i}:{SERVER}" for i in self.room_of(start)]
            body = json.dumps({"members": members}).encode()
            status, text = await conn.request(
                "PUT", f"/_presence/admin/v1/rooms/!r{start}:{SERVER}", ADMIN, body
            )
            assert status == 200, text
        conn.close()

    async def first_syncs(self, i: int, conn: Conn) -> str:
        """An initial sync, then one catching up with everyone else's first: a fresh since."""
        query = f"set_presence={self.set_presence}"
        status, body = await conn.request("GET", f"/_matrix/client/v3/sync?{query}", f"t{i}")
        assert status == 200, body
        return str(json.loads(body)["next_batch"])

    async def client(self, i: int, conn: Conn, since: str, ready: asyncio.Event) -> None:
        query = f"set_presence={self.set_presence}"
        status, body = await conn.request(
            "GET", f"/_matrix/client/v3/sync?{query}&since={since}&timeout=0", f"t{i}"
        )
        assert status == 200, body
        since = json.loads(body)["next_batch"]
        ready.set()
        while True:
            status, body = await conn.request(
                "GET", f"/_matrix/client/v3/sync?{query}&since={since}&timeout=60000", f"t{i}"
            )
            now = time.perf_counter()
            if status != 200:
                self.errors.append(f"{status} {body[:200]!r}")
                continue
            since = json.loads(body)["next_batch"]
            self.answers += 1
            self.last_answer = now
            if self.round == _RAMP:
                continue
            if i in self.expected and i not in self.woken_this_round:
                if self.round >= 0:
                    self.latencies.append(now - self.round_started)
                self.woken_this_round.add(i)
                if self.woken_this_round >= self.expected:
                    self.round_done.set()
            elif i not in self.expected and self.round >= 0:
                self.spurious += 1

    async def run(
        self, rounds: int, warmup: int, gap_ms: int, rng: random.Random
    ) -> dict[str, float]:
        await self.setup_rooms()
        # Ramp, without long-polls yet: each client's first sync (which
        # notifies its room), then one more each to catch up (a fresh since).
        conns = []
        for start in range(0, self.clients, 500):
            conns += await asyncio.gather(
                *(Conn.open(self.port) for _ in range(start, min(start + 500, self.clients)))
            )
        sinces: list[str] = []
        for start in range(0, self.clients, 500):
            sinces += await asyncio.gather(
                *(
                    self.first_syncs(i, conns[i])
                    for i in range(start, min(start + 500, self.clients))
                )
            )
        readies = [asyncio.Event() for _ in range(self.clients)]
        tasks = [
            asyncio.create_task(self.client(i, conns[i], sinces[i], readies[i]))
            for i in range(self.clients)
        ]
        for ready in readies:
            await ready.wait()
        # Ramp: everyone's first syncs notify their rooms; wait for quiet.
        while time.perf_counter() - self.last_answer < 2.0:  # noqa: ASYNC110 (quiet = no answers)
            await asyncio.sleep(0.2)
        changer = await Conn.open(self.port)
        states = ["online", "unavailable", "busy"]
        for r in range(-warmup, rounds):
            i = rng.randrange(self.clients)
            self.expected = set(self.room_of(i))
            self.woken_this_round = set()
            self.round_done = asyncio.Event()
            body = json.dumps({"presence": states[r % 3], "status_msg": f"round {r}"}).encode()
            self.round = r
            self.round_started = time.perf_counter()
            status, text = await changer.request(
                "PUT", f"/_matrix/client/v3/presence/@u{i}:{SERVER}/status", f"t{i}", body
            )
            assert status == 200, text
            try:
                await asyncio.wait_for(self.round_done.wait(), 30)
            except TimeoutError:
                missing = sorted(self.expected - self.woken_this_round)
                self.missed += len(missing)
                dead = [(i, repr(tasks[i].exception())[:200]) for i in missing if tasks[i].done()]
                print(
                    f"round {r}: {len(missing)} not woken in 30 s: {missing[:10]}; dead {dead[:3]}"
                )
                continue
            if r >= 0:
                self.round_max.append(max(self.latencies[-len(self.expected) :]))
            await asyncio.sleep(gap_ms / 1000)
        for task in tasks:
            task.cancel()
        for error in self.errors[:5]:
            print("error:", error)
        changer.close()
        lat = sorted(self.latencies)
        return {
            "wakeups": len(lat),
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "slowest_round_ms": 1000 * max(self.round_max),
            "slowest_round": float(self.round_max.index(max(self.round_max))),
            "median_round_max_ms": 1000 * statistics.median(self.round_max),
            "spurious": self.spurious,
            "errors": len(self.errors),
            "missed": self.missed,
        }


async def heartbeats(port: int, batch: int, concurrency: int, seconds: float) -> dict[str, float]:
    bodies = [
        json.dumps(
            {
                "heartbeats": [
                    {
                        "user_id": f"@bridged{c}_{j}:{SERVER}",
                        "device_id": "bridge",
                        "presence": "online",
                        "active": True,
                    }
                    for j in range(batch)
                ]
            }
        ).encode()
        for c in range(concurrency)
    ]
    done = 0
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def sender(c: int) -> None:
        nonlocal done
        conn = await Conn.open(port)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            status, text = await conn.request(
                "POST", "/_presence/admin/v1/heartbeats", ADMIN, bodies[c]
            )
            assert status == 200, text
            latencies.append(time.perf_counter() - started)
            done += batch
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "heartbeats_per_s": done / elapsed,
        "batch_p50_ms": 1000 * latencies[len(latencies) // 2],
    }


def one_run(args: argparse.Namespace, run: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        users = args.clients if args.mode == "fanout" else 1
        config = write_config(workdir, port, users)
        process = start_worker(config, args.worker_core)
        try:
            import uvloop

            async def main() -> dict[str, float]:
                await wait_healthy(port)
                if args.mode == "fanout":
                    fanout = Fanout(port, args.clients, args.room_size, args.set_presence)
                    return await fanout.run(
                        args.rounds, args.warmup, args.gap_ms, random.Random(run)
                    )
                return await heartbeats(port, args.batch, args.concurrency, args.seconds)

            return uvloop.run(main())
        finally:
            stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("mode", choices=["fanout", "heartbeats"])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--room-size", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--gap-ms", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured first rounds")
    parser.add_argument("--set-presence", default="unavailable")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-core", default="0")
    parser.add_argument("--client-core", default="1")
    args = parser.parse_args()
    if shutil.which("taskset") and args.client_core:
        subprocess.run(["taskset", "-pc", args.client_core, str(__import__("os").getpid())],
                       check=False, stdout=subprocess.DEVNULL)  # fmt: skip
    results = []
    for run in range(args.runs):
        result = one_run(args, run)
        print(f"run {run + 1}: " + ", ".join(f"{k}={v:,.1f}" for k, v in result.items()))
        results.append(result)
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("median: " + ", ".join(f"{k}={v:,.1f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
