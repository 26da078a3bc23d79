"""Reads behind the machine's eviction: ``get_users`` and ``load_live_users``."""

from __future__ import annotations

from pathlib import Path

from federation_presence.presence.states import PresenceState
from federation_presence.store.journal import FoldReport
from federation_presence.store.sqlite import SqliteStore
from tests.contract.conftest import AnyStore
from tests.contract.samples import notified, silent, user

OFF = PresenceState.OFFLINE


async def test_get_users_answers_the_stored_ones_in_one_call(store: AnyStore) -> None:
    alice = user("@alice:remote.example", OFF, status_msg="gone fishing")
    bob = user("@bob:remote.example", PresenceState.BUSY)
    await store.apply(notified(alice))
    await store.apply(silent(bob))

    found = await store.get_users(["@bob:remote.example", "@nobody:x", "@alice:remote.example"])

    assert sorted(found, key=lambda u: u.user_id) == [alice, bob]
    assert await store.get_users([]) == []


async def test_get_users_sees_the_latest_write_of_each_user(store: AnyStore) -> None:
    await store.apply(notified(user("@alice:x", PresenceState.ONLINE)))
    latest = user("@alice:x", OFF, last_active_ts=5)
    await store.apply(notified(latest))
    assert await store.get_users(["@alice:x"]) == [latest]


async def test_get_users_takes_more_ids_than_one_statement_binds(store: AnyStore) -> None:
    users = [user(f"@u{i}:x", OFF) for i in range(1_200)]
    await store.apply(notified(*users))
    asked = [f"@u{i}:x" for i in range(0, 1_200, 2)] + [f"@absent{i}:x" for i in range(700)]
    found = await store.get_users(asked)
    assert sorted(u.user_id for u in found) == sorted(f"@u{i}:x" for i in range(0, 1_200, 2))


async def test_load_live_users_is_users_not_offline_and_every_local_one(store: AnyStore) -> None:
    online = user("@on:remote.example", PresenceState.ONLINE)
    unavailable = user("@idle:remote.example", PresenceState.UNAVAILABLE)
    offline = user("@off:remote.example", OFF)
    local_offline = user("@me:ours.example", OFF)
    lookalike = user("@x:notours.example", OFF)
    await store.apply(notified(online, unavailable, offline, local_offline, lookalike))

    live = await store.load_live_users(":ours.example")

    assert sorted(live, key=lambda u: u.user_id) == [unavailable, local_offline, online]


async def test_sqlite_get_users_folds_only_through_the_newest_entry_it_needs(
    tmp_path: Path,
) -> None:
    reports: list[FoldReport] = []
    store = SqliteStore(
        tmp_path / "journal.db",
        idle_fold_delay_s=None,  # no idle folds: only the read folds
        fold_chunk_rows=1,
        on_fold=reports.append,
    )
    await store.open()
    try:
        reports.clear()
        old = user("@old:x", OFF)
        await store.apply(notified(old))
        await store.apply(notified(user("@newer:x")))
        await store.apply(notified(user("@newest:x")))

        assert await store.get_users(["@old:x"]) == [old]
        assert [r.journal_rows_left for r in reports] == [2]  # one entry folded, two left

        assert await store.get_users(["@never:x"]) == []
        assert len(reports) == 1  # a user the journal does not hold folds nothing
    finally:
        await store.close()
