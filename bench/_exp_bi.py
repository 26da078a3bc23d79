"""Ingest without HTTP: ``InboundTransactions.receive`` driven in-process.

The same parts as the worker (X-Matrix parse, canonical JSON, keyring verify
with the key already cached, EDU validation, the core, the SQLite store with
group commit and fsync) minus uvicorn and sockets, so that comparing with
``bench_ingest.py`` tells what the HTTP stack costs, and so that the Python
side can be profiled with cProfile (``--profile FILE``).

Usage:
    taskset -c 0 python bench/bench_inbound.py --pushes 50 --origins 64 --txns 20000
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import orjson

from federation_presence.clock import SystemClock
from federation_presence.federation.inbound import InboundTransactions
from federation_presence.federation.keyring import Keyring
from federation_presence.federation.origin_policy import OriginPolicy, OriginRateLimiter
from federation_presence.federation.signing_keys import (
    build_server_keys_response,
    generate_signing_key,
)
from federation_presence.federation.xmatrix import authorization_header
from federation_presence.ids import ServerName
from federation_presence.keeper import PresenceKeeper
from federation_presence.loadtest.plan import USER_KINDS, LoadShape, transaction_body
from federation_presence.metrics import Metrics
from federation_presence.presence.machine import PresenceMachine
from federation_presence.store.sqlite import SqliteStore
from federation_presence.stream import PresenceStream
from federation_presence.worker import GC_THRESHOLDS

DESTINATION = ServerName("bench.test")


class _KeyServers:
    """A KeyFetcher answering from in-memory origins (no network)."""

    def __init__(self, keys: dict[str, object]) -> None:
        self._keys = keys
        self._clock = SystemClock()

    async def get_json(self, destination: str, path: str) -> dict[str, object]:
        return build_server_keys_response(
            destination, self._keys[destination], self._clock.now_ms(), 86_400_000, {}
        )

    async def post_json(self, destination: str, path: str, body: dict[str, object]) -> dict:  # type: ignore[type-arg]
        raise AssertionError("no notary in this benchmark")


async def run(args: argparse.Namespace, workdir: Path) -> tuple[float, float, int]:
    clock = SystemClock()
    shape = LoadShape(args.edus, args.pushes, 1_000, args.users)
    origins = {f"127.0.0.1:{40000 + i}": generate_signing_key() for i in range(args.origins)}
    import os; from federation_presence.store.journal import JournalLimits; JournalLimits.__init__.__defaults__ = (500000, 20000, 2000, int(os.environ.get("SM","1000"))); store = SqliteStore(workdir / "bench.db", synchronous=args.synchronous, fold_chunk_rows=int(os.environ.get("FR","20000")), fold_chunk_writes=int(os.environ.get("FW","2000")))
    await store.open()
    metrics = Metrics()
    machine = PresenceMachine(DESTINATION)
    stream = PresenceStream(store, machine.is_local)  # as the worker: the keeper publishes
    await stream.open()
    keeper = PresenceKeeper(machine, store, clock, metrics, stream=stream)
    inbound = InboundTransactions(
        server_name=DESTINATION,
        keyring=Keyring(
            fetcher=_KeyServers(origins),  # type: ignore[arg-type]
            cache=store,
            clock=clock,
            own_server_name=DESTINATION,
        ),
        keeper=keeper,
        store=store,
        clock=clock,
        policy=OriginPolicy(),
        rate_limiter=OriginRateLimiter(1e9, 10**9),
        metrics=metrics,
    )
    per_origin = args.txns // args.origins
    now = clock.now_ms()
    requests: dict[str, list[tuple[str, str, bytes]]] = {}
    for origin, key in origins.items():
        requests[origin] = []
        for i in range(per_origin + 1):
            txn_id = f"t{i}"
            body = transaction_body(origin, shape, i, now)
            uri = f"/_matrix/federation/v1/send/{txn_id}"
            auth = authorization_header(key, "PUT", uri, origin, DESTINATION, body)
            requests[origin].append((txn_id, auth, orjson.dumps(body)))

    async def send(origin: str, items: list[tuple[str, str, bytes]]) -> None:
        for txn_id, auth, raw in items:
            await inbound.receive(
                txn_id=txn_id,
                method="PUT",
                uri=f"/_matrix/federation/v1/send/{txn_id}",
                authorization=[auth],
                body=raw,
            )

    async with anyio.create_task_group() as tg:  # warm-up: key fetches
        for origin, items in requests.items():
            tg.start_soon(send, origin, items[:1])
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for origin, items in requests.items():
            tg.start_soon(send, origin, items[1:])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await store.close()
    return wall, cpu, per_origin * args.origins


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--edus", type=int, default=1)
    parser.add_argument("--pushes", type=int, default=50)
    parser.add_argument("--origins", type=int, default=64)
    parser.add_argument(
        "--users",
        choices=USER_KINDS,
        default="warm",
        help="warm: 1,000 users per origin, cycled; cold: every push names a new user",
    )
    parser.add_argument("--txns", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--profile", metavar="FILE", help="cProfile stats of the last run")
    args = parser.parse_args()
    figures = []
    for run_index in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            profiler = cProfile.Profile() if args.profile and run_index == args.runs - 1 else None
            if profiler:
                profiler.enable()
            wall, cpu, txns = anyio.run(
                run, args, Path(tmp), backend="asyncio", backend_options={"use_uvloop": True}
            )
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
        figures.append((txns / wall, cpu * 1e6 / txns))
        print(
            f"run {run_index + 1}: {txns / wall:,.0f} txn/s, "
            f"{txns * args.edus * args.pushes / wall:,.0f} pushes/s, "
            f"{cpu * 1e6 / txns:,.0f} µs CPU/txn (process, all threads)",
            flush=True,
        )
    print(
        f"MEDIAN {statistics.median(f[0] for f in figures):,.0f} txn/s, "
        f"{statistics.median(f[1] for f in figures):,.0f} µs CPU/txn; pid {os.getpid()}"
    )


if __name__ == "__main__":
    main()
