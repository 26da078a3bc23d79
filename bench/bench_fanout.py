"""Fan-out benchmark of the outbound sender: U local users x D destinations.

What runs: the real keeper (presence machine + SQLite store, synchronous=normal),
the real presence stream and the real ``OutboundSender`` on the system clock.
Every local user is routed to every destination. The wire is replaced by one
of two clients that stamp the time where the socket would be:
"change-to-wire" is from the keeper's durable write returning to that stamp.
``--client recording`` (default) signs (X-Matrix around the already
canonical body, as ``FederationClient`` does) and stamps;
``--client federation`` runs the real ``FederationClient`` and httpx client
on a transport that stamps (adds building the httpx request, the timeouts,
reading and checking the answer). No TLS or network is involved (measured
elsewhere: bench_ingest).

Activity mix, per round (every ``--round-ms``): each user with probability
``--active`` sends a message (``Activity``: a ``last_active`` bump, suppressed
while ``currently_active``), with probability ``--status`` changes its status
message (notified), and with probability ``--away`` toggles between online
and unavailable (notified).

Reported: transactions, EDUs and pushes sent; the naive count (every input
sent to every destination); the suppression ratio; change-to-wire p50/p99
for the 1st and the last destination (by routing order).

    python bench/bench_fanout.py --users 1000 --destinations 100 --rounds 20
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

from federation_presence.clock import SystemClock
from federation_presence.federation.client import FederationClient, RequestTimeouts
from federation_presence.federation.resolver import ResolvedDestination
from federation_presence.federation.signing_keys import generate_signing_key
from federation_presence.federation.xmatrix import CanonicalJson, authorization_header
from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.keeper import PresenceKeeper
from federation_presence.metrics import Metrics
from federation_presence.outbound.metrics import SenderMetrics
from federation_presence.outbound.sender import OutboundSender
from federation_presence.outbound.settings import SenderSettings
from federation_presence.presence.inputs import Activity, SetPresence, SyncStarted
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import PresenceSettings
from federation_presence.presence.states import PresenceState
from federation_presence.store.sqlite import SqliteStore
from federation_presence.stream import PresenceStream

HERE = ServerName("bench.local")
ANSWER = b'{"pdus":{}}'
ANSWER_HEADERS = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(ANSWER))]
DEVICE = DeviceId("D")


class AllDestinations:
    def __init__(self, destinations: list[ServerName]) -> None:
        self.destinations = destinations

    async def destinations_for(
        self, user_ids: Collection[UserId]
    ) -> Mapping[ServerName, Collection[UserId]]:
        users = list(user_ids)
        return dict.fromkeys(self.destinations, users)


class Stamps:
    """When each destination's body reached the wire; read after the run.

    Parsing a body to find its users is the benchmark's own work: it happens
    in ``settle`` (between rounds), never between two destinations' sends,
    so it does not delay the next destination.
    """

    def __init__(self, changed_at: dict[UserId, float]) -> None:
        self.changed_at = changed_at
        self.pending: list[tuple[str, float, bytes]] = []
        self.latency_ms: dict[str, list[float]] = {}
        self.transactions = 0
        self.edus = 0
        self.pushes = 0

    def stamp(self, destination: str, data: bytes) -> None:
        self.pending.append((destination, time.perf_counter(), data))

    def settle(self) -> None:
        for destination, stamped, data in self.pending:
            body = orjson.loads(data)
            self.transactions += 1
            self.edus += len(body["edus"])
            samples = self.latency_ms.setdefault(destination, [])
            for edu in body["edus"]:
                for push in edu["content"]["push"]:
                    self.pushes += 1
                    changed = self.changed_at.get(push["user_id"])
                    if changed is not None:
                        samples.append((stamped - changed) * 1000)
        self.pending.clear()


class RecordingClient:
    """Does what ``FederationClient`` does to a body before the socket, then stamps.

    That is: the X-Matrix signature over the request, made around the
    already-canonical body (``CanonicalJson``: no encoding, the body goes
    out as it is). Not done: resolving, building the httpx request, the
    connection; ``--client federation`` measures those too.
    """

    def __init__(self, stamps: Stamps) -> None:
        self.key = generate_signing_key()
        self.stamps = stamps

    async def put_json(
        self, destination: str, path: str, body: Any, *, timeouts: RequestTimeouts
    ) -> dict[str, Any]:
        assert isinstance(body, CanonicalJson)
        authorization_header(self.key, "PUT", path, HERE, destination, body)
        self.stamps.stamp(destination, body.data)
        await anyio.lowlevel.checkpoint()  # the network wait: others run meanwhile
        return {"pdus": {}}


class FixedResolver:
    """Every destination resolves to itself on 8448 (no DNS, no .well-known)."""

    async def resolve(self, server_name: str) -> ResolvedDestination:
        return ResolvedDestination(server_name, server_name, 8448, server_name, server_name)


def federation_client(stamps: Stamps, clock: SystemClock) -> FederationClient:
    """The real ``FederationClient`` and httpx client, on a transport that stamps.

    Everything up to the transport is real (resolve call, httpx request,
    headers, signature, timeouts, reading and checking the answer); the
    transport replaces the connection pools, the address guard, TLS and the
    socket.
    """

    async def answer(request: httpx.Request) -> httpx.Response:
        stamps.stamp(request.url.host, request.content)
        await anyio.lowlevel.checkpoint()  # the network wait: others run meanwhile
        # Shaped as httpx's own transport returns a response (header list,
        # body stream), not encoded here with the stdlib's json per answer.
        return httpx.Response(200, headers=ANSWER_HEADERS, stream=httpx.ByteStream(ANSWER))

    return FederationClient(
        HERE,
        generate_signing_key(),
        FixedResolver(),
        clock,
        transport=httpx.MockTransport(answer),
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    clock = SystemClock()
    changed_at: dict[UserId, float] = {}
    stamps = Stamps(changed_at)
    client: RecordingClient | FederationClient = (
        RecordingClient(stamps) if args.client == "recording" else federation_client(stamps, clock)
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db", synchronous="normal")
        await store.open()
        try:
            machine = PresenceMachine(HERE, PresenceSettings())
            stream = PresenceStream(store, machine.is_local)
            await stream.open()
            keeper = PresenceKeeper(machine, store, clock, Metrics(), stream=stream)
            await keeper.restore()
            destinations = [ServerName(f"d{i:03}.example") for i in range(args.destinations)]
            metrics = SenderMetrics()
            sender = OutboundSender(
                server_name=HERE,
                stream=stream,
                store=store,
                client=client,
                destinations=AllDestinations(destinations),
                current=keeper.get,
                clock=clock,
                settings=SenderSettings(linger_ms=args.linger_ms),
                presence=PresenceSettings(),
                rng=rng,
                metrics=metrics,
            )
            users = [UserId(f"@u{i}:{HERE}") for i in range(args.users)]
            inputs = 0
            async with anyio.create_task_group() as tg:
                await tg.start(sender.run)
                for user in users:  # everyone online, currently active
                    await keeper.apply_local(SyncStarted(user, DEVICE, None))
                    inputs += 1
                    changed_at[user] = time.perf_counter()
                await _drain(sender, stream, destinations)
                stamps.settle()
                stamps.latency_ms.clear()
                start_counts = (stamps.transactions, stamps.edus, stamps.pushes, inputs)
                away: set[UserId] = set()
                for round_index in range(args.rounds):
                    round_started = time.perf_counter()
                    for user in users:
                        draw = rng.random()
                        if draw < args.away:
                            state = (
                                PresenceState.ONLINE if user in away else PresenceState.UNAVAILABLE
                            )
                            away.symmetric_difference_update({user})
                            await keeper.apply_local(SetPresence(user, DEVICE, state))
                        elif draw < args.away + args.status:
                            await keeper.apply_local(
                                SetPresence(
                                    user,
                                    DEVICE,
                                    PresenceState.UNAVAILABLE
                                    if user in away
                                    else PresenceState.ONLINE,
                                    f"r{round_index}",
                                    status_msg_set=True,
                                )
                            )
                        elif draw < args.away + args.status + args.active:
                            await keeper.apply_local(Activity(user, DEVICE))
                        else:
                            continue
                        inputs += 1
                        changed_at[user] = time.perf_counter()
                    await _drain(sender, stream, destinations)
                    stamps.settle()
                    spent = time.perf_counter() - round_started
                    await anyio.sleep(max(0.0, args.round_ms / 1000 - spent))
                tg.cancel_scope.cancel()
            transactions = stamps.transactions - start_counts[0]
            edus = stamps.edus - start_counts[1]
            pushes = stamps.pushes - start_counts[2]
            naive = (inputs - start_counts[3]) * args.destinations
            first, last = destinations[0], destinations[-1]
            return {
                "client": args.client,
                "users": args.users,
                "destinations": args.destinations,
                "rounds": args.rounds,
                "inputs": inputs - start_counts[3],
                "transactions": transactions,
                "edus": edus,
                "pushes": pushes,
                "naive_pushes": naive,
                "suppression_ratio": round(1 - pushes / naive, 3) if naive else None,
                "first_p50_ms": round(percentile(stamps.latency_ms.get(first, []), 0.5), 2),
                "first_p99_ms": round(percentile(stamps.latency_ms.get(first, []), 0.99), 2),
                "last_p50_ms": round(percentile(stamps.latency_ms.get(last, []), 0.5), 2),
                "last_p99_ms": round(percentile(stamps.latency_ms.get(last, []), 0.99), 2),
                "suppressed_in_queues": metrics.pushes_suppressed._value.get(),
            }
        finally:
            if isinstance(client, FederationClient):
                await client.aclose()
            await store.close()


async def _drain(
    sender: OutboundSender, stream: PresenceStream, destinations: list[ServerName]
) -> None:
    """Wait (polling: this is a benchmark) until every change has left."""
    with anyio.fail_after(60):
        # The sender offers no "drained" event; polling is fine in a benchmark.
        while sender.position < stream.current_id or any(  # noqa: ASYNC110
            sender.busy(d) for d in destinations
        ):
            await anyio.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--destinations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--round-ms", type=int, default=200)
    parser.add_argument("--linger-ms", type=int, default=20)
    parser.add_argument("--active", type=float, default=0.30)
    parser.add_argument("--status", type=float, default=0.01)
    parser.add_argument("--away", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--client",
        choices=("recording", "federation"),
        default="recording",
        help="recording: sign, then stamp; federation: the real FederationClient and httpx "
        "up to the transport",
    )
    args = parser.parse_args()
    for index in range(args.runs):
        args.seed += index
        print(orjson.dumps(anyio.run(run, args, backend="asyncio")).decode())


if __name__ == "__main__":
    main()
