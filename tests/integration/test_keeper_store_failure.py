"""A failed store write owes its changes to the next write; none is lost.

The store is real SQLite; ``FailingOnce`` (a fake, not a mock) makes exactly
one ``apply`` fail the way a database outage does, with ``StoreError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from federation_presence.errors import StoreError
from federation_presence.ids import ServerName, UserId
from federation_presence.keeper import PresenceKeeper
from federation_presence.metrics import Metrics
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.states import PresenceState
from tests.fakes import FakeClock
from tests.integration.failing_store import FailingOnce

THEIRS = ServerName("theirs.example")
ALICE = UserId("@alice:theirs.example")
BOB = UserId("@bob:theirs.example")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FailingOnce]:
    opened = FailingOnce(tmp_path / "store.db")
    await opened.open()
    yield opened
    await opened.close()


def push(user: UserId, state: PresenceState) -> RemotePush:
    return RemotePush(THEIRS, user, state, last_active_ago=0)


async def test_a_change_whose_write_failed_reaches_the_store_and_stream_with_the_next_write(
    store: FailingOnce,
) -> None:
    clock = FakeClock()
    keeper = PresenceKeeper(PresenceMachine(ServerName("ours.example")), store, clock, Metrics())
    await keeper.restore()

    store.fail_next = True
    with pytest.raises(StoreError):
        await keeper.apply_remote([push(ALICE, PresenceState.ONLINE)])
    # The sender retries the same transaction: the machine already holds the
    # state, so this outcome alone would persist nothing and notify nobody.
    retry = await keeper.apply_remote([push(ALICE, PresenceState.ONLINE)])
    assert retry.to_notify == ()

    stored = await store.get_user(ALICE)
    assert stored is not None
    assert stored.state is PresenceState.ONLINE
    assert [row.state.user_id for row in await store.stream_since(0, 10)] == [ALICE]


async def test_an_owed_change_never_overwrites_a_newer_state(store: FailingOnce) -> None:
    clock = FakeClock()
    keeper = PresenceKeeper(PresenceMachine(ServerName("ours.example")), store, clock, Metrics())
    await keeper.restore()

    store.fail_next = True
    with pytest.raises(StoreError):
        await keeper.apply_remote([push(ALICE, PresenceState.ONLINE)])
    await clock.advance(1_000)
    await keeper.apply_remote(
        [push(ALICE, PresenceState.UNAVAILABLE), push(BOB, PresenceState.BUSY)]
    )

    alice = await store.get_user(ALICE)
    bob = await store.get_user(BOB)
    assert alice is not None
    assert alice.state is PresenceState.UNAVAILABLE
    assert bob is not None
    assert bob.state is PresenceState.BUSY
