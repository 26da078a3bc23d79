"""Group commit, failure and durability: the Store contract under concurrency."""

from __future__ import annotations

import itertools
import signal
import sys
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation_presence.errors import StoreError
from federation_presence.presence.model import NotifyReason, Outcome, StateChange, UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import StreamRow
from tests.contract.conftest import AnyStore, Database
from tests.contract.samples import INT64_OVERFLOW, inbound_txn, notified, user

REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_concurrent_applies_share_few_commits(store: AnyStore) -> None:
    commits_before = store.stats.commits
    results: dict[str, int] = {}

    async def apply_one(n: int) -> None:
        results[f"@u{n}:x"] = await store.apply(notified(user(f"@u{n}:x")))

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(apply_one, n)

    assert store.stats.commits - commits_before <= 5
    rows = await store.stream_since(0, 1000)
    assert len(rows) == 200
    assert len({r.stream_id for r in rows}) == 200
    assert all(r.stream_id <= results[r.state.user_id] for r in rows)


async def test_a_failing_batch_fails_every_caller_and_the_next_batch_works(
    store: AnyStore,
) -> None:
    """Applies started in one event-loop iteration share a transaction (both stores
    promise it), so one row no column can hold fails all 21 and writes nothing."""
    outcomes = [notified(user(f"@u{n}:x")) for n in range(20)]
    poison = notified(user("@poison:x", last_active_ts=INT64_OVERFLOW))
    failures: list[BaseException] = []

    async def apply_one(outcome: Outcome, n: int) -> None:
        try:
            await store.apply(outcome, inbound_txn("remote", f"t{n}"))
        except StoreError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for n, outcome in enumerate([*outcomes[:10], poison, *outcomes[10:]]):
            tg.start_soon(apply_one, outcome, n)

    assert len(failures) == 21
    assert all(exc.__cause__ is not None for exc in failures)
    assert await store.load_users() == []
    assert await store.get_txn_response("remote", "t0") is None
    assert store.stats.failed_batches == 1
    stream_id = await store.apply(notified(user("@after:x")), inbound_txn("remote", "t0"))
    assert await store.stream_since(0, 10) == [StreamRow(stream_id, user("@after:x"))]
    assert await store.get_txn_response("remote", "t0") is not None


async def test_close_writes_applies_still_in_flight(store: AnyStore, database: Database) -> None:
    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(store.apply, notified(user(f"@u{n}:x")))
        await checkpoint()
        await store.close()
    reopened = await database.opened_store()
    try:
        assert len(await reopened.load_users()) == 10
    finally:
        await reopened.close()


async def _read_line(stream: ByteReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        data += await stream.receive()
    return data.decode()


async def test_applies_that_returned_survive_kill_9(store: AnyStore, database: Database) -> None:
    await store.close()
    command = [
        sys.executable,
        "-m",
        "tests.contract.child_writer",
        database.backend,
        database.location(),
        "50",
    ]
    async with await anyio.open_process(command, cwd=REPO_ROOT) as child:
        assert child.stdout is not None
        with anyio.fail_after(30):
            line = await _read_line(child.stdout)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert line.startswith("durable ")

    reopened = await database.opened_store()
    try:
        users = {u.user_id for u in await reopened.load_users()}
        assert users == {f"@u{n}:killed.example" for n in range(50)}
        assert await reopened.current_stream_id() == int(line.split()[1])
        assert await reopened.get_txn_response("remote", "t49") is not None
    finally:
        await reopened.close()


_example_numbers = itertools.count()

_storable_character = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
Change = tuple[int, PresenceState, int, str | None, bool, NotifyReason | None]
_change = st.tuples(
    st.integers(0, 3),
    st.sampled_from(PresenceState),
    st.integers(0, 2**40),
    # no U+0000 (PostgreSQL text cannot hold it) nor lone surrogates (not UTF-8):
    # the edges never produce them (base.py)
    st.one_of(st.none(), st.text(_storable_character, max_size=8)),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(NotifyReason)),
)
# groups of concurrent applies (one transaction), each apply a list of changes
_groups = st.lists(st.lists(st.lists(_change, max_size=3), min_size=1, max_size=4), max_size=5)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(groups=_groups)
async def test_any_applies_then_reload_give_each_users_last_state(
    store: AnyStore, groups: list[list[list[Change]]]
) -> None:
    """Groups run one after another; the applies of a group run concurrently."""
    prefix = f"@e{next(_example_numbers)}u"
    position = await store.current_stream_id()
    last_state: dict[str, UserPresence] = {}
    notified_order: list[str] = []
    for group in groups:
        outcomes = []
        for changes in group:
            built = []
            for index, state, ts, status_msg, active, reason in changes:
                presence = user(
                    f"{prefix}{index}:x",
                    state,
                    last_active_ts=ts,
                    status_msg=status_msg,
                    currently_active=active,
                )
                built.append(StateChange(presence, reason))
                last_state[presence.user_id] = presence
                if reason is not None:
                    if presence.user_id in notified_order:
                        notified_order.remove(presence.user_id)
                    notified_order.append(presence.user_id)
            outcomes.append(Outcome(changes=tuple(built)))
        async with anyio.create_task_group() as tg:
            for outcome in outcomes:
                tg.start_soon(store.apply, outcome)

    stored = {u.user_id: u for u in await store.load_users() if u.user_id.startswith(prefix)}
    assert stored == last_state
    rows = await store.stream_since(position, 10_000)
    assert [r.state.user_id for r in rows] == notified_order
    assert [r.state for r in rows] == [last_state[u] for u in notified_order]
    assert [r.stream_id for r in rows] == sorted({r.stream_id for r in rows})
