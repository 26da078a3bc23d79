"""The store's life and its callers' waits: ``Store.run`` in the owner's task
group, a clean close, and bounded waits that lose nothing.

Over SQLite and PostgreSQL. The stall is real: another connection holds the
tables' write lock (``Database.write_lock_held``) while a write is waiting.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from federation_presence.errors import StoreError
from federation_presence.ids import ServerName, UserId
from federation_presence.keeper import PresenceKeeper
from federation_presence.metrics import Metrics
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import InboundTxn
from federation_presence.store.postgres import PostgresStore
from federation_presence.store.sqlite import SqliteStore
from federation_presence.stream import PresenceStream
from tests.contract.conftest import POSTGRES_DSN, AnyStore, Database
from tests.contract.samples import NOW_TS, inbound_txn, notified, user
from tests.fakes import FakeClock

THEIRS = ServerName("theirs.example")
ALICE = UserId("@alice:theirs.example")
BOB = UserId("@bob:theirs.example")

# Waits that time out need wall time: this short one. The tests assert only
# that the timeout fired (and what happened after), never when.
SHORT_TIMEOUT_S = 0.2


def stalling_options(database: Database) -> dict[str, Any]:
    """A short caller timeout; SQLite waits out a held lock far longer than that."""
    options: dict[str, Any] = {"apply_timeout_s": SHORT_TIMEOUT_S}
    if database.backend == "sqlite":
        options["busy_timeout_ms"] = 60_000
    return options


def _store_threads(store: AnyStore) -> list[threading.Thread]:
    if not isinstance(store, SqliteStore):
        return []
    return [t for t in threading.enumerate() if t.name == f"sqlite {store.path}"]


async def test_the_store_runs_as_one_child_task_of_its_owner_and_closes_cleanly(
    database: Database,
) -> None:
    before = asyncio.all_tasks()
    store = await database.opened_store()
    started = asyncio.all_tasks() - before
    assert len(started) == 1  # the task ``run`` is, the owner's child; nothing else
    (run_task,) = started
    assert await store.apply(notified(user("@a:x"))) > 0

    await store.close()
    await anyio.wait_all_tasks_blocked()
    assert run_task.done()
    assert run_task.exception() is None
    assert _store_threads(store) == []
    with pytest.raises(StoreError, match="closed"):
        await store.apply(notified(user("@b:x")))
    reopened = await database.opened_store()
    try:
        assert [u.user_id for u in await reopened.load_users()] == ["@a:x"]
    finally:
        await reopened.close()


async def test_cancelling_the_owner_writes_what_is_queued_then_closes(
    database: Database,
) -> None:
    store = database.store()
    answers: dict[int, int | BaseException] = {}

    async def apply_one(n: int) -> None:
        try:
            answers[n] = await store.apply(notified(user(f"@u{n}:x")))
        except StoreError as exc:
            answers[n] = exc

    async with anyio.create_task_group() as callers:
        async with anyio.create_task_group() as owner:
            await owner.start(store.run)
            for n in range(10):
                callers.start_soon(apply_one, n)
            await checkpoint()  # every apply is queued
            owner.cancel_scope.cancel()
    assert sorted(answers) == list(range(10))
    assert all(isinstance(answer, int) for answer in answers.values())
    assert _store_threads(store) == []
    reopened = await database.opened_store()
    try:
        assert len(await reopened.load_users()) == 10
    finally:
        await reopened.close()


async def test_a_postgres_store_without_its_writer_refuses_writes_at_once() -> None:
    store = PostgresStore(POSTGRES_DSN)
    with pytest.raises(StoreError, match="not running"):
        await store.apply(notified(user("@a:x")))


@pytest.mark.slow
async def test_a_stalled_write_fails_with_store_error_after_the_timeout_and_commits_later(
    database: Database,
) -> None:
    """Tolerance: the stall lasts until the timeout fired, however long that took."""
    store = await database.opened_store(**stalling_options(database))
    async with database.write_lock_held():
        with pytest.raises(StoreError, match=r"no answer within 0\.2 s"):
            await store.apply(notified(user("@late:x")), inbound_txn("remote", "t-late"))
        assert store.stats.timeouts == 1
    # The lock is gone: the stalled write commits after all, then the next one.
    await store.apply(notified(user("@next:x")), inbound_txn("remote", "t-next"))
    rows = await store.stream_since(0, 10)
    assert [row.state.user_id for row in rows] == ["@late:x", "@next:x"]
    assert rows[0].stream_id < rows[1].stream_id
    assert await store.get_txn_response("remote", "t-late") == b'{"pdus":{}}'
    assert store.stats.failed_batches == 0


def push(user_id: UserId, state: PresenceState) -> RemotePush:
    return RemotePush(THEIRS, user_id, state, last_active_ago=0)


@pytest.mark.slow
async def test_a_timed_out_write_that_commits_later_is_harmless_to_the_keeper(
    database: Database,
) -> None:
    """The keeper owes the timed-out change to its next write; the stalled write
    commits too. Both land, in order, and a retry of the transaction is answered
    from the store. Tolerance as above."""
    store = await database.opened_store(**stalling_options(database))
    machine = PresenceMachine(ServerName("ours.example"))
    stream = PresenceStream(store, machine.is_local)
    await stream.open()
    keeper = PresenceKeeper(machine, store, FakeClock(), Metrics(), stream=stream)
    await keeper.restore()
    first = InboundTxn(THEIRS, "t1", b'{"pdus":{}}', NOW_TS)
    async with database.write_lock_held():
        with pytest.raises(StoreError):
            await keeper.apply_remote([push(ALICE, PresenceState.ONLINE)], first)
    await keeper.apply_remote([push(BOB, PresenceState.UNAVAILABLE)])

    alice = await store.get_user(ALICE)
    bob = await store.get_user(BOB)
    assert alice is not None
    assert alice.state is PresenceState.ONLINE
    assert bob is not None
    assert bob.state is PresenceState.UNAVAILABLE
    rows = await store.stream_since(0, 10)
    assert [row.state.user_id for row in rows] == [ALICE, BOB]
    assert stream.current_id == await store.current_stream_id() == rows[-1].stream_id
    assert await store.get_txn_response(THEIRS, "t1") == b'{"pdus":{}}'


@pytest.mark.slow
async def test_every_wait_of_a_stalled_store_is_bounded(database: Database) -> None:
    """Small writes and prunes give up like ``apply``. Tolerance as above."""
    store = await database.opened_store(**stalling_options(database))
    await store.apply(notified(user("@a:x")), inbound_txn("remote", "old", received_ts=0))
    async with database.write_lock_held():
        with pytest.raises(StoreError, match="no answer within"):
            await store.set_position("reader", 5)
        with pytest.raises(StoreError, match="no answer within"):
            await store.prune_txns(NOW_TS)
    assert store.stats.timeouts == 2
    await store.set_position("after", 1)  # a write behind the stalled one: it landed first
    assert await store.get_position("reader") == 5
    # SQLite kept the stalled prune queued and ran it once the lock went;
    # PostgreSQL rolled it back at the timeout: either way one prune took the row.
    again = await store.prune_txns(NOW_TS)
    assert again == (0 if database.backend == "sqlite" else 1)
    assert await store.get_txn_response("remote", "old") is None
