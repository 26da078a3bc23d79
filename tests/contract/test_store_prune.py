"""Pruning stored ``/send`` answers: its own transaction, never a ``/send`` group
commit's, and the txn filter expiring by time alongside it.

Over SQLite and PostgreSQL; time comes from a ``FakeClock`` (the stores read
no clock: answers carry ``received_ts``, prunes a cutoff).
"""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from federation_presence.errors import StoreError
from federation_presence.presence.model import Outcome
from federation_presence.store.base import PRUNE_BATCH_ROWS
from federation_presence.store.sqlite import SqliteStore
from tests.contract.conftest import POSTGRES_DSN, AnyStore, Database
from tests.contract.samples import INT64_OVERFLOW, NOW_TS, inbound_txn, notified, user
from tests.fakes import FakeClock

ANSWER = b'{"pdus":{}}'


async def test_a_prune_never_shares_a_commit_with_send_writes(store: AnyStore) -> None:
    """Started in the same event-loop iteration as a ``/send`` write whose group
    fails, the prune still commits: it was never part of that group."""
    for n in range(5):
        await store.apply(Outcome(), inbound_txn("remote", f"old{n}", received_ts=NOW_TS - 1))
    commits, prunes = store.stats.commits, store.stats.prunes
    poison = notified(user("@poison:x", last_active_ts=INT64_OVERFLOW))
    outcomes: dict[str, object] = {}

    async def send() -> None:
        try:
            await store.apply(poison, inbound_txn("remote", "new"))
        except StoreError as exc:
            outcomes["send"] = exc

    async def prune() -> None:
        outcomes["prune"] = await store.prune_txns(NOW_TS)

    async with anyio.create_task_group() as tg:
        tg.start_soon(prune)
        tg.start_soon(send)
    assert isinstance(outcomes["send"], StoreError)
    assert outcomes["prune"] == 5
    assert store.stats.prunes == prunes + 1
    assert store.stats.commits == commits  # the failed group committed nothing
    assert store.stats.failed_batches == 1
    for n in range(5):
        assert await store.get_txn_response("remote", f"old{n}") is None


async def test_send_writes_are_answered_before_a_prune_called_with_them(store: AnyStore) -> None:
    """The prune runs beside (PostgreSQL) or after (SQLite) the group commit,
    so the ``/send`` writes never wait for it."""
    for n in range(50):
        await store.apply(Outcome(), inbound_txn("remote", f"old{n}", received_ts=NOW_TS - 1))
    answered: list[str] = []

    async def send(n: int) -> None:
        await store.apply(notified(user(f"@u{n}:x")), inbound_txn("remote", f"new{n}"))
        answered.append("send")

    async def prune() -> None:
        await store.prune_txns(NOW_TS)
        answered.append("prune")

    async with anyio.create_task_group() as tg:
        tg.start_soon(prune)
        for n in range(3):
            tg.start_soon(send, n)
    assert sorted(answered) == ["prune", "send", "send", "send"]
    if isinstance(store, SqliteStore):  # one writer: the prune waits its turn
        assert answered == ["send", "send", "send", "prune"]
    # (PostgreSQL prunes on a connection of its own: either may finish first)


async def test_a_stalled_prune_does_not_hold_up_send_writes(postgres_database: Database) -> None:
    """PostgreSQL: a prune stuck on a row lock, while ``/send`` writes commit."""
    store = await postgres_database.opened_store()
    await store.apply(Outcome(), inbound_txn("remote", "old", received_ts=NOW_TS - 1))
    blocker = await asyncpg.connect(
        POSTGRES_DSN, server_settings={"search_path": str(postgres_database.schema)}
    )
    pruned: list[int] = []

    async def prune() -> None:
        pruned.append(await store.prune_txns(NOW_TS))

    try:
        async with anyio.create_task_group() as tg:
            holding = blocker.transaction()
            await holding.start()
            await blocker.execute("SELECT * FROM inbound_txns WHERE txn_id = 'old' FOR UPDATE")
            tg.start_soon(prune)
            await anyio.wait_all_tasks_blocked()  # its DELETE is sent; it waits for the row
            for n in range(5):
                await store.apply(notified(user(f"@u{n}:x")), inbound_txn("remote", f"t{n}"))
            assert pruned == []  # still waiting
            assert len(await store.load_users()) == 5
            await holding.rollback()  # the prune goes on and finishes
    finally:
        await blocker.close()
    assert pruned == [1]
    assert await store.get_txn_response("remote", "old") is None


async def test_the_txn_filter_expires_by_time_under_a_sustained_rate(database: Database) -> None:
    """Six retentions of ``/send`` answers at the rate the filter is sized for,
    pruned as the worker's pruner does (every 1/24 retention): the filter keeps
    a bounded number of generations, finds every answer still stored, and still
    answers nearly every unknown txn without the database."""
    retention_ms = 24_000
    step_ms = retention_ms // 24
    per_step = 20
    store = await database.opened_store(
        txn_filter_capacity=per_step * 24, txn_retention_ms=retention_ms
    )
    txn_filter = store.txn_filter
    assert txn_filter is not None
    clock = FakeClock(NOW_TS)
    steps = 6 * 24
    for step in range(steps):
        now = clock.now_ms()
        async with anyio.create_task_group() as tg:
            for n in range(per_step):
                tg.start_soon(
                    store.apply, Outcome(), inbound_txn("remote", f"{step}-{n}", received_ts=now)
                )
        while await store.prune_txns(now - retention_ms) == PRUNE_BATCH_ROWS:
            pass
        assert txn_filter.generations_in_use <= txn_filter.generations
        await clock.advance(step_ms)

    last_cutoff = NOW_TS + (steps - 1) * step_ms - retention_ms
    for step in range(steps):
        stored = NOW_TS + step * step_ms >= last_cutoff
        expected = ANSWER if stored else None
        assert await store.get_txn_response("remote", f"{step}-0") == expected, step
    filtered = store.stats.txn_lookups_filtered
    for n in range(500):
        assert await store.get_txn_response("remote", f"unknown{n}") is None
    assert store.stats.txn_lookups_filtered - filtered >= 490


@pytest.mark.parametrize("limit", [3, PRUNE_BATCH_ROWS])
async def test_only_a_prune_that_reached_its_cutoff_lets_the_filter_forget(
    database: Database, limit: int
) -> None:
    store = await database.opened_store(txn_filter_capacity=40, txn_retention_ms=400)
    txn_filter = store.txn_filter
    assert txn_filter is not None
    for n in range(10):  # slots of 400 / 6 = 67 ms: one generation every few txns
        await store.apply(Outcome(), inbound_txn("remote", f"t{n}", received_ts=100 * n))
    in_use = txn_filter.generations_in_use
    pruned = await store.prune_txns(650, limit=limit)
    if limit == 3:
        assert pruned == 3
        assert txn_filter.generations_in_use == in_use  # rows before 650 are still stored
    else:
        assert pruned == 7
        assert txn_filter.generations_in_use < in_use
    for n in range(10):
        gone = n < pruned
        assert await store.get_txn_response("remote", f"t{n}") == (None if gone else ANSWER)
