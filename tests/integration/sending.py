"""Helpers of the outbound sender tests: a worker that sends, routes, local users.

The worker is the real one (``running_worker``: SQLite, HTTPS listener with
its key server, the real federation client) on a ``FakeClock``; destinations
are ``RecordingPeer``s that verify its signatures with the keys it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import random
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from pathlib import Path

import anyio
from anyio.lowlevel import checkpoint

from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.outbound.sender import OutboundSender
from federation_presence.outbound.settings import SenderSettings
from federation_presence.presence.inputs import SetPresence, SyncStarted
from federation_presence.presence.states import PresenceState
from federation_presence.worker import RunningWorker, running_worker
from tests.fakes import FakeClock
from tests.integration.conftest import WORKER_NAME, worker_config
from tests.integration.recording_peer import RecordingPeer
from tests.integration.tls_peer import TlsCertificates

DEVICE = DeviceId("DEVICE")
UNAVAILABLE = PresenceState.UNAVAILABLE


class Routes:
    """A ``DestinationSource`` from a dict: user → servers (``everyone`` for the rest)."""

    def __init__(self) -> None:
        self.servers: dict[UserId, set[ServerName]] = {}
        self.everyone: set[ServerName] = set()

    async def destinations_for(
        self, user_ids: Collection[UserId]
    ) -> Mapping[ServerName, Collection[UserId]]:
        out: dict[ServerName, list[UserId]] = {}
        for user_id in user_ids:
            for server in self.servers.get(user_id, self.everyone):
                out.setdefault(server, []).append(user_id)
        return out


def local(localpart: str) -> UserId:
    return UserId(f"@{localpart}:{WORKER_NAME}")


@contextlib.asynccontextmanager
async def sending_worker(
    tmp_path: Path,
    certificates: TlsCertificates,
    clock: FakeClock,
    routes: Routes,
    peers: Collection[RecordingPeer],
    **sender: object,
) -> AsyncIterator[RunningWorker]:
    """A worker whose sender has ``linger_ms=0`` unless told; peers trust its key server."""
    config = worker_config(tmp_path, certificates)
    settings = dataclasses.replace(SenderSettings(linger_ms=0), **sender)  # type: ignore[arg-type]
    config = dataclasses.replace(
        config,
        database=dataclasses.replace(config.database, synchronous="normal"),
        federation_sender=settings,
    )
    async with running_worker(
        config, clock=clock, destinations=routes, rng=random.Random(1)
    ) as worker:
        for peer in peers:
            peer.key_server_urls[WORKER_NAME] = f"https://localhost:{worker.ports[0]}"
        yield worker


def sender_of(worker: RunningWorker) -> OutboundSender:
    assert worker.sender is not None
    return worker.sender


async def present(worker: RunningWorker, localpart: str, status_msg: str | None = None) -> None:
    """A local user with a sync in flight, ``unavailable``: stable under any fake time."""
    user_id = local(localpart)
    await worker.keeper.apply_local(SyncStarted(user_id, DEVICE, UNAVAILABLE))
    if status_msg is not None:
        await set_status(worker, localpart, status_msg)


async def set_status(worker: RunningWorker, localpart: str, status_msg: str) -> None:
    await worker.keeper.apply_local(
        SetPresence(local(localpart), DEVICE, UNAVAILABLE, status_msg, status_msg_set=True)
    )


async def settle() -> None:
    """Return once every other task waits on a pending future (I/O, a thread, an event).

    ``anyio.wait_all_tasks_blocked`` polls every 100 ms, and so does each
    uvicorn server's main loop: the two can lock in phase, the check always
    landing just as uvicorn's timer fires, and never return. Here a runnable
    task is given the loop at once (a checkpoint) instead. Like anyio's, it
    reads asyncio's private ``Task._fut_waiter``.
    """
    this = asyncio.current_task()
    await checkpoint()
    while True:
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if waiter is None or waiter.done():
                await checkpoint()
                break
        else:
            return


class SettlingClock(FakeClock):
    """``FakeClock`` whose ``advance`` lets woken tasks run with ``settle``."""

    async def advance(self, ms: int) -> None:
        target = self._now_ms + ms
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now_ms = max(self._now_ms, deadline)
            event.set()
            await settle()
        self._now_ms = target


async def eventually(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Return once ``condition()`` holds, letting every task (and I/O) run meanwhile."""
    with anyio.fail_after(limit_s):
        while not condition():
            await settle()
            if not condition():
                await checkpoint()


def assert_schema_complete(*peers: RecordingPeer) -> None:
    """Every push received is schema-complete and every request was verified."""
    for peer in peers:
        assert peer.auth_failures == []
        for attempt in peer.attempts:
            assert attempt.origin == WORKER_NAME
            assert attempt.body["pdus"] == []
            assert len(attempt.body["edus"]) <= 100
            for push in attempt.pushes:
                assert set(push) >= {"user_id", "presence", "last_active_ago", "currently_active"}
                assert type(push["last_active_ago"]) is int
                assert push["last_active_ago"] >= 0
                assert type(push["currently_active"]) is bool
