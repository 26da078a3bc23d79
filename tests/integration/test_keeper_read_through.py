"""The keeper reads evicted users through from a real SQLite store.

The machine keeps no offline users here (``offline_cache_size=0``), so every
remote user that times out is evicted once its offline state is durable, and
comes back through ``store.get_users``: one call per transaction, whatever
the number of users missing. ``CountingStore`` is the real store, counting
those calls; ``FailingOnce`` fails one ``apply`` as an outage would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from federation_presence.errors import StoreError
from federation_presence.ids import ServerName, UserId
from federation_presence.keeper import PresenceKeeper
from federation_presence.metrics import Metrics
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import NotifyReason, PresenceSettings
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import InboundTxn
from federation_presence.stream import PresenceStream
from tests.contract.samples import notified, user
from tests.fakes import FakeClock
from tests.integration.failing_store import FailingOnce

OURS = ServerName("ours.example")
THEIRS = ServerName("theirs.example")
ALICE = UserId("@alice:theirs.example")
BOB = UserId("@bob:theirs.example")
TIMEOUT_MS = PresenceSettings().federation_timeout_ms
ON = PresenceState.ONLINE
OFF = PresenceState.OFFLINE


class CountingStore(FailingOnce):
    """The real store; counts ``get_users`` calls, fails one ``apply`` on request."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[list[str]] = []

    async def get_users(self, user_ids: Sequence[str]) -> list:  # type: ignore[type-arg]
        self.reads.append(list(user_ids))
        return await super().get_users(user_ids)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    opened = CountingStore(tmp_path / "store.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def machine() -> PresenceMachine:
    return PresenceMachine(OURS, offline_cache_size=0)


@pytest.fixture
async def stream(machine: PresenceMachine, store: CountingStore) -> PresenceStream:
    opened = PresenceStream(store, machine.is_local)
    await opened.open()
    return opened


@pytest.fixture
async def keeper(
    machine: PresenceMachine, store: CountingStore, clock: FakeClock, stream: PresenceStream
) -> AsyncIterator[PresenceKeeper]:
    running = PresenceKeeper(machine, store, clock, Metrics(), stream=stream)
    await running.restore()
    async with anyio.create_task_group() as tg:
        await tg.start(running.run_timers)
        yield running
        tg.cancel_scope.cancel()


def push(user_id: UserId, state: PresenceState, last_active_ago: int = 0) -> RemotePush:
    return RemotePush(THEIRS, user_id, state, last_active_ago=last_active_ago)


async def time_out(stream: PresenceStream, clock: FakeClock) -> None:
    """Advance past the federation timeout; return once the timeout is durable."""
    position = stream.current_id
    await clock.advance(TIMEOUT_MS + 1)
    with anyio.fail_after(10):
        await stream.wait(position)


async def test_a_timed_out_user_is_evicted_and_read_back_from_the_store(
    keeper: PresenceKeeper,
    machine: PresenceMachine,
    store: CountingStore,
    clock: FakeClock,
    stream: PresenceStream,
) -> None:
    await keeper.apply_remote([push(ALICE, ON)])
    await time_out(stream, clock)

    assert machine.get(ALICE) is None
    assert machine.user_count == 0
    stored = await keeper.get(ALICE)
    assert stored is not None
    assert stored.state is OFF


async def test_an_evicted_user_coming_back_online_is_a_presence_change(
    keeper: PresenceKeeper,
    machine: PresenceMachine,
    store: CountingStore,
    clock: FakeClock,
    stream: PresenceStream,
) -> None:
    await keeper.apply_remote([push(ALICE, ON)])
    await time_out(stream, clock)
    assert machine.get(ALICE) is None

    outcome = await keeper.apply_remote([push(ALICE, ON)])

    assert [(c.state.state, c.notify) for c in outcome.changes] == [(ON, NotifyReason.PRESENCE)]
    assert store.reads[-1] == [ALICE]


async def test_an_offline_push_for_an_evicted_offline_user_is_not_notified(
    keeper: PresenceKeeper,
    machine: PresenceMachine,
    clock: FakeClock,
    stream: PresenceStream,
) -> None:
    await keeper.apply_remote([push(ALICE, ON)])
    await time_out(stream, clock)
    position = stream.current_id

    outcome = await keeper.apply_remote([push(ALICE, OFF, last_active_ago=TIMEOUT_MS + 1)])

    assert [c.notify for c in outcome.changes] == [None]
    assert stream.current_id == position


async def test_one_batched_read_per_transaction_and_none_for_users_held(
    keeper: PresenceKeeper, store: CountingStore
) -> None:
    users = [UserId(f"@u{i}:theirs.example") for i in range(50)]
    local = UserId("@me:ours.example")

    await keeper.apply_remote([push(u, ON) for u in users] + [push(users[0], ON)])
    assert store.reads == [users]  # once each, in one read; never a local user

    await keeper.apply_remote([push(u, PresenceState.UNAVAILABLE) for u in users])
    await keeper.apply_remote([push(local, ON)])
    assert len(store.reads) == 1


async def test_restore_holds_only_live_users_and_reads_the_others_through(
    store: CountingStore, clock: FakeClock
) -> None:
    online = user("@on:theirs.example", ON)
    offline = user("@off:theirs.example", OFF)
    local = user("@me:ours.example", OFF)
    await store.apply(notified(online, offline, local))

    machine = PresenceMachine(OURS)
    keeper = PresenceKeeper(machine, store, clock, Metrics())
    await keeper.restore()

    assert machine.get(online.user_id) is not None
    assert machine.get(local.user_id) is not None
    assert machine.get(offline.user_id) is None
    assert await keeper.get(offline.user_id) == offline
    assert await keeper.get(UserId("@nobody:theirs.example")) is None


async def test_a_user_whose_write_failed_stays_held_until_a_write_carries_it(
    keeper: PresenceKeeper,
    machine: PresenceMachine,
    store: CountingStore,
    clock: FakeClock,
) -> None:
    await keeper.apply_remote([push(ALICE, ON)])
    store.fail_next = True
    await anyio.wait_all_tasks_blocked()  # the timer loop sleeps until Alice's timeout
    await clock.advance(TIMEOUT_MS + 1)  # the timer loop's write fails (and is logged)
    assert not store.fail_next
    held = machine.get(ALICE)
    assert held is not None
    assert held.state is OFF  # offline, but owed to the store: not evicted

    await keeper.apply_remote([push(BOB, ON)])  # carries Alice's owed change

    assert machine.get(ALICE) is None
    assert await store.get_users([ALICE]) == [held]


async def test_a_failed_write_that_owed_nothing_does_not_stop_eviction(
    keeper: PresenceKeeper,
    machine: PresenceMachine,
    store: CountingStore,
    clock: FakeClock,
    stream: PresenceStream,
) -> None:
    store.fail_next = True
    txn = InboundTxn("theirs.example", "t1", b"{}", clock.now_ms())
    with pytest.raises(StoreError):
        await keeper.apply_remote([], txn)  # a transaction without pushes
    await keeper.apply_remote([push(ALICE, ON)])
    await time_out(stream, clock)
    assert machine.get(ALICE) is None
