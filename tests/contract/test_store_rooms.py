"""Room memberships in the store (both databases): set, replace, delete, reload."""

from __future__ import annotations

from tests.contract.conftest import AnyStore, Database


async def test_set_members_are_loaded_back_after_reopen(database: Database) -> None:
    store = await database.opened_store()
    await store.set_room_members("!a:x", ["@u:x", "@v:y", "@u:x"])
    await store.set_room_members("!b:x", ["@u:x"])
    await store.close()
    reopened = await database.opened_store()
    try:
        assert sorted(await reopened.load_room_members()) == [
            ("!a:x", "@u:x"),
            ("!a:x", "@v:y"),
            ("!b:x", "@u:x"),
        ]
    finally:
        await reopened.close()


async def test_setting_members_replaces_the_previous_list(store: AnyStore) -> None:
    await store.set_room_members("!a:x", ["@u:x", "@v:y"])
    await store.set_room_members("!a:x", ["@w:z"])
    assert await store.load_room_members() == [("!a:x", "@w:z")]


async def test_delete_room_says_whether_it_existed(store: AnyStore) -> None:
    await store.set_room_members("!a:x", ["@u:x"])
    assert await store.delete_room("!a:x") is True
    assert await store.delete_room("!a:x") is False
    assert await store.load_room_members() == []
