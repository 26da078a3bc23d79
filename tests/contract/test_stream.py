"""The presence stream over a real store (SQLite and PostgreSQL): window, catch-up, wait."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.keeper import PresenceKeeper
from federation_presence.metrics import Metrics
from federation_presence.presence.inputs import RemotePush, SetPresence
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import NotifyReason
from federation_presence.presence.states import PresenceState
from federation_presence.stream import PresenceStream
from tests.contract.conftest import AnyStore, Database
from tests.fakes import FakeClock

HERE = ServerName("here.example")
THEIRS = ServerName("theirs.example")
ONLINE, UNAVAILABLE = PresenceState.ONLINE, PresenceState.UNAVAILABLE


def remote(
    localpart: str, state: PresenceState = ONLINE, status_msg: str | None = None
) -> RemotePush:
    return RemotePush(THEIRS, UserId(f"@{localpart}:{THEIRS}"), state, 0, False, status_msg)


async def keeper_and_stream(
    store: AnyStore, *, window_entries: int = 1_000
) -> tuple[PresenceKeeper, PresenceStream]:
    machine = PresenceMachine(HERE)
    stream = PresenceStream(store, machine.is_local, window_entries=window_entries)
    await stream.open()
    keeper = PresenceKeeper(machine, store, FakeClock(), Metrics(), stream=stream)
    await keeper.restore()
    return keeper, stream


async def test_a_durable_write_is_on_the_stream_with_its_reason_and_locality(
    store: AnyStore,
) -> None:
    keeper, stream = await keeper_and_stream(store)
    start = stream.current_id
    await keeper.apply_remote([remote("bob")])
    await keeper.apply_local(SetPresence(UserId("@alice:here.example"), DeviceId("D"), ONLINE))
    entries, position = await stream.since(start, 100)
    assert [(e.user_id, e.is_local, e.notify) for e in entries] == [
        ("@bob:theirs.example", False, NotifyReason.NEW_USER),
        ("@alice:here.example", True, NotifyReason.NEW_USER),
    ]
    assert position == stream.current_id == entries[-1].stream_id
    assert entries[0].stream_id < entries[1].stream_id
    assert await stream.since(position, 100) == ([], position)
    assert stream.store_reads == 0


async def test_a_suppressed_change_is_not_on_the_stream(store: AnyStore) -> None:
    keeper, stream = await keeper_and_stream(store)
    await keeper.apply_remote([remote("bob")])
    position = stream.current_id
    await keeper.apply_remote([remote("bob")])  # the same state again: nothing to tell
    assert stream.current_id == position
    assert await stream.since(position, 100) == ([], position)


async def test_a_limit_pages_through_without_splitting_one_write(store: AnyStore) -> None:
    keeper, stream = await keeper_and_stream(store)
    start = stream.current_id
    await keeper.apply_remote([remote("a"), remote("b"), remote("c")])
    await keeper.apply_remote([remote("d")])
    first, position = await stream.since(start, 1)
    # One write got one id: its three entries come together, past the limit.
    assert [e.user_id.split(":")[0] for e in first] == ["@a", "@b", "@c"]
    second, position = await stream.since(position, 1)
    assert [e.user_id.split(":")[0] for e in second] == ["@d"]
    assert position == stream.current_id


async def test_a_reader_behind_the_window_catches_up_from_the_store_latest_state_once(
    store: AnyStore,
) -> None:
    keeper, stream = await keeper_and_stream(store, window_entries=2)
    start = stream.current_id
    await keeper.apply_remote([remote("a")])
    await keeper.apply_remote([remote("b")])
    await keeper.apply_remote([remote("a", UNAVAILABLE)])
    await keeper.apply_remote([remote("c")])
    assert stream.window_floor > start
    entries, position = await stream.since(start, 100)
    assert stream.store_reads == 1
    assert [(e.user_id.split(":")[0], e.state.state) for e in entries] == [
        ("@b", ONLINE),
        ("@a", UNAVAILABLE),
        ("@c", ONLINE),
    ]
    assert all(e.notify is None for e in entries)
    assert position == stream.current_id


async def test_after_a_restart_a_stored_position_resumes_from_the_store(
    store: AnyStore, database: Database
) -> None:
    keeper, stream = await keeper_and_stream(store)
    await keeper.apply_remote([remote("a")])
    await store.set_position("reader", stream.current_id)
    await keeper.apply_remote([remote("b", status_msg="later")])
    await store.close()

    reopened = await database.opened_store()
    try:
        _, restarted = await keeper_and_stream(reopened)
        entries, position = await restarted.since(await reopened.get_position("reader"), 100)
        assert [(e.user_id, e.state.status_msg) for e in entries] == [
            ("@b:theirs.example", "later")
        ]
        assert position == restarted.current_id
        assert restarted.store_reads == 1
    finally:
        await reopened.close()


async def test_wait_returns_once_a_later_write_is_published(store: AnyStore) -> None:
    keeper, stream = await keeper_and_stream(store)
    position = stream.current_id
    woke = anyio.Event()

    async def reader(*, task_status: TaskStatus[None]) -> None:
        task_status.started()  # the parent resumes once this waits below
        await stream.wait(position)
        woke.set()

    async with anyio.create_task_group() as tg:
        await tg.start(reader)
        assert not woke.is_set()
        await keeper.apply_remote([remote("a")])
        with anyio.fail_after(5):
            await woke.wait()


async def test_writes_of_one_group_commit_are_all_seen_by_a_woken_reader(
    store: AnyStore,
) -> None:
    keeper, stream = await keeper_and_stream(store)
    # Known first, so that neither write below waits on a read-through (which
    # would put them in two group commits).
    await keeper.apply_remote([remote("a", status_msg="before"), remote("b", status_msg="before")])
    position = stream.current_id
    seen: list[str] = []

    async def reader() -> None:
        await stream.wait(position)
        entries, _ = await stream.since(position, 100)
        seen.extend(e.user_id for e in entries)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        # Started in one loop iteration: one group commit, one id for both.
        async with anyio.create_task_group() as writers:
            writers.start_soon(keeper.apply_remote, [remote("a")])
            writers.start_soon(keeper.apply_remote, [remote("b")])
    assert sorted(seen) == ["@a:theirs.example", "@b:theirs.example"]


async def test_a_window_must_hold_something(store: AnyStore) -> None:
    with pytest.raises(ValueError, match="window_entries"):
        PresenceStream(store, lambda _user: False, window_entries=0)
