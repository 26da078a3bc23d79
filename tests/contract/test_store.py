"""The Store contract: what every database must do, run on SQLite and PostgreSQL."""

from __future__ import annotations

import anyio
import pytest

from federation_presence.errors import SchemaTooNewError, StoreError
from federation_presence.presence.model import NotifyReason, Outcome, StateChange
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import InboundTxn, ServerKeyRecord, StreamRow
from tests.contract.conftest import AnyStore, Database
from tests.contract.samples import NOW_TS, device, inbound_txn, notified, silent, user


async def test_applied_users_devices_and_txn_are_there_after_reopen(
    store: AnyStore, database: Database
) -> None:
    alice = user("@alice:here", PresenceState.BUSY, status_msg="in a meeting")
    bob = user("@bob:remote.example", PresenceState.UNAVAILABLE, currently_active=False)
    carol = user("@carol:here", PresenceState.ONLINE, currently_active=True, status_msg="")
    phone = device("@alice:here", "PHONE", PresenceState.BUSY)
    laptop = device("@alice:here", "LAPTOP", PresenceState.UNAVAILABLE)
    outcome = Outcome(changes=notified(alice, bob, carol).changes, devices=(phone, laptop))
    await store.apply(outcome, inbound_txn("remote.example", "t1"))
    await store.close()

    reopened = await database.opened_store()
    try:
        assert sorted(await reopened.load_users(), key=lambda u: u.user_id) == [alice, bob, carol]
        assert sorted(await reopened.load_devices(), key=lambda d: d.device_id) == [laptop, phone]
        assert await reopened.get_user("@alice:here") == alice
        assert await reopened.get_user("@nobody:here") is None
        assert await reopened.get_txn_response("remote.example", "t1") == b'{"pdus":{}}'
        assert await reopened.get_txn_response("remote.example", "t2") is None
    finally:
        await reopened.close()


async def test_each_notified_change_gets_a_higher_stream_id(store: AnyStore) -> None:
    first = await store.apply(notified(user("@a:x")))
    second = await store.apply(notified(user("@b:x")))
    third = await store.apply(notified(user("@a:x", PresenceState.UNAVAILABLE)))
    assert 0 < first < second < third
    assert await store.current_stream_id() == third


async def test_stream_gives_each_user_once_with_the_latest_state_in_id_order(
    store: AnyStore,
) -> None:
    await store.apply(notified(user("@a:x")))
    b_id = await store.apply(notified(user("@b:x")))
    a_latest = user("@a:x", PresenceState.OFFLINE, status_msg="gone")
    a_id = await store.apply(notified(a_latest, reason=NotifyReason.STATUS_MSG))
    assert await store.stream_since(0, 100) == [
        StreamRow(b_id, user("@b:x")),
        StreamRow(a_id, a_latest),
    ]
    assert await store.stream_since(b_id, 100) == [StreamRow(a_id, a_latest)]
    assert await store.stream_since(a_id, 100) == []
    assert await store.stream_since(0, 1) == [StreamRow(b_id, user("@b:x"))]


async def test_several_changes_to_one_user_in_one_apply_leave_the_last(store: AnyStore) -> None:
    last = user("@a:x", PresenceState.BUSY)
    stream_id = await store.apply(notified(user("@a:x"), user("@b:x"), last))
    assert await store.get_user("@a:x") == last
    rows = await store.stream_since(0, 10)
    assert [(r.state.user_id, r.stream_id) for r in rows] == [
        ("@b:x", stream_id - 1),
        ("@a:x", stream_id),
    ]


async def test_a_change_without_notify_keeps_the_users_stream_id(store: AnyStore) -> None:
    stream_id = await store.apply(notified(user("@a:x")))
    bumped = user("@a:x", last_active_ts=NOW_TS + 30_000, currently_active=True)
    assert await store.apply(silent(bumped)) == stream_id
    assert await store.get_user("@a:x") == bumped
    assert await store.stream_since(0, 10) == [StreamRow(stream_id, bumped)]
    assert await store.current_stream_id() == stream_id


async def test_a_change_without_notify_after_a_notified_one_in_one_group_keeps_the_new_id(
    store: AnyStore,
) -> None:
    await store.apply(notified(user("@a:x")))
    bumped = user("@a:x", last_active_ts=NOW_TS + 1)
    outcome = Outcome(
        changes=(
            StateChange(user("@a:x", PresenceState.BUSY), NotifyReason.PRESENCE),
            StateChange(bumped, None),
        )
    )
    stream_id = await store.apply(outcome)
    assert await store.stream_since(0, 10) == [StreamRow(stream_id, bumped)]


async def test_a_user_first_stored_without_notify_is_not_on_the_stream(store: AnyStore) -> None:
    await store.apply(silent(user("@quiet:x")))
    assert await store.get_user("@quiet:x") == user("@quiet:x")
    assert await store.stream_since(0, 10) == []
    assert await store.current_stream_id() == 0


async def test_a_repeated_txn_keeps_its_first_answer(store: AnyStore) -> None:
    await store.apply(notified(user("@a:x")), inbound_txn("remote", "t1"))
    await store.apply(Outcome(), InboundTxn("remote", "t1", b"other", NOW_TS + 1))
    assert await store.get_txn_response("remote", "t1") == b'{"pdus":{}}'


async def test_prune_forgets_only_txns_received_before_the_cutoff(store: AnyStore) -> None:
    for n, received_ts in enumerate((100, 200, 300)):
        await store.apply(Outcome(), inbound_txn("remote", f"t{n}", received_ts))
    assert await store.prune_txns(250) == 2
    assert await store.get_txn_response("remote", "t0") is None
    assert await store.get_txn_response("remote", "t1") is None
    assert await store.get_txn_response("remote", "t2") is not None
    assert await store.prune_txns(250) == 0


async def test_prune_is_bounded_oldest_first_and_repeats_to_the_cutoff(
    store: AnyStore,
) -> None:
    for n in range(7):
        await store.apply(Outcome(), inbound_txn("remote", f"t{n}", 100 + n))
    assert await store.prune_txns(105, limit=3) == 3
    assert await store.get_txn_response("remote", "t0") is None
    assert await store.get_txn_response("remote", "t3") is not None
    assert await store.prune_txns(105, limit=3) == 2
    assert await store.prune_txns(105, limit=3) == 0
    assert await store.get_txn_response("remote", "t4") is None
    assert await store.get_txn_response("remote", "t5") is not None
    assert await store.get_txn_response("remote", "t6") is not None


async def test_server_keys_roundtrip_and_a_refetch_replaces_them(
    store: AnyStore, database: Database
) -> None:
    current = ServerKeyRecord("remote.example", "ed25519:b", "Yfq0", NOW_TS + 86_400_000, None, 7)
    old = ServerKeyRecord("remote.example", "ed25519:a", "Xk9z", 0, NOW_TS - 1000, 7)
    other = ServerKeyRecord("other.example", "ed25519:a", "Qq8w", NOW_TS, None, 8)
    await store.put_server_keys([current, old, other])
    assert await store.get_server_keys("remote.example") == [old, current]
    refetched = ServerKeyRecord("remote.example", "ed25519:b", "Yfq0", NOW_TS + 2, None, 9)
    await store.put_server_keys([refetched])
    await store.put_server_keys([])
    await store.close()
    reopened = await database.opened_store()
    try:
        assert await reopened.get_server_keys("remote.example") == [old, refetched]
        assert await reopened.get_server_keys("other.example") == [other]
        assert await reopened.get_server_keys("unknown.example") == []
    finally:
        await reopened.close()


async def test_positions_start_at_zero_and_persist(store: AnyStore, database: Database) -> None:
    assert await store.get_position("sender:remote.example") == 0
    await store.set_position("sender:remote.example", 5)
    await store.set_position("sender:remote.example", 7)
    await store.set_position("sync:@a:x", 3)
    await store.close()
    reopened = await database.opened_store()
    try:
        assert await reopened.get_position("sender:remote.example") == 7
        assert await reopened.get_position("sync:@a:x") == 3
    finally:
        await reopened.close()


async def test_txn_ids_strictly_increase_per_destination_across_reopen(
    store: AnyStore, database: Database
) -> None:
    before = [await store.next_txn_id("a.example") for _ in range(3)]
    concurrent: list[int] = []

    async def take() -> None:
        concurrent.append(await store.next_txn_id("a.example"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(take)
    assert await store.next_txn_id("b.example") == 1
    await store.close()
    reopened = await database.opened_store()
    try:
        after = await reopened.next_txn_id("a.example")
    finally:
        await reopened.close()
    assert before == sorted(set(before))
    assert sorted(concurrent) == list(range(before[-1] + 1, before[-1] + 21))
    assert after > max(concurrent)


async def test_a_database_from_a_newer_program_is_refused_clearly(
    store: AnyStore, database: Database
) -> None:
    await store.close()
    await database.execute("INSERT INTO schema_version (version) VALUES (9999)")
    newer = database.store()
    with pytest.raises(SchemaTooNewError, match=r"schema version 9999.*knows versions up to 2"):
        await database.task_group.start(newer.run)
    await newer.close()


async def test_a_closed_store_refuses_calls(store: AnyStore) -> None:
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.apply(notified(user("@a:x")))
    with pytest.raises(StoreError, match="closed"):
        await store.get_user("@a:x")


async def test_two_stores_on_one_database_share_one_stream(
    store: AnyStore, database: Database
) -> None:
    other = await database.opened_store()
    try:
        ids = [
            await store.apply(notified(user("@a:x"))),
            await other.apply(notified(user("@b:x"))),
            await store.apply(notified(user("@c:x"))),
            await other.apply(notified(user("@a:x", PresenceState.BUSY))),
        ]
        assert ids == sorted(set(ids))
        rows = await other.stream_since(0, 10)
        assert [(r.state.user_id, r.stream_id) for r in rows] == [
            ("@b:x", ids[1]),
            ("@c:x", ids[2]),
            ("@a:x", ids[3]),
        ]
        assert await store.current_stream_id() == ids[3]
    finally:
        await other.close()
