"""The SQLite presence journal: appends, folds, their bounds, crash recovery.

SQLite only (the PostgreSQL store does not journal). The tables are checked
behind the store's back, with a plain ``sqlite3`` connection, where a store
read would itself fold the journal first.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation_presence.errors import StoreError
from federation_presence.presence.model import (
    DevicePresence,
    NotifyReason,
    Outcome,
    StateChange,
    UserPresence,
)
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import StreamRow
from federation_presence.store.journal import (
    FoldReport,
    FoldTrigger,
    JournalIndex,
    JournalLimits,
    decode_entry,
    encode_entry,
)
from federation_presence.store.sqlite import SqliteStore
from tests.contract.samples import NOW_TS, device, inbound_txn, notified, silent, user
from tests.contract.test_store_group_commit import REPO_ROOT, _read_line

# a store that folds only when asked to (a read, open, close)
QUIET: dict[str, Any] = {"idle_fold_delay_s": None, "journal_max_rows": 10**9}


@contextmanager
def behind_the_store(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def table_rows(path: Path, table: str) -> int:
    with behind_the_store(path) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


class Folds:
    """Collects the stores' fold reports; ``wait_for`` awaits a matching one."""

    def __init__(self) -> None:
        self.reports: list[FoldReport] = []
        self._changed = asyncio.Event()

    def __call__(self, report: FoldReport) -> None:
        self.reports.append(report)
        self._changed.set()

    def of(self, trigger: FoldTrigger) -> list[FoldReport]:
        return [r for r in self.reports if r.trigger is trigger]

    async def wait_for_rows_read(self, trigger: FoldTrigger, rows: int) -> None:
        """Until folds for ``trigger`` have read ``rows`` journal rows in all."""
        with anyio.fail_after(10):
            while sum(r.rows_read for r in self.of(trigger)) < rows:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "presence.db"


async def test_applied_rows_wait_in_the_journal_until_a_read_folds_them(path: Path) -> None:
    folds = Folds()
    store = SqliteStore(path, on_fold=folds, **QUIET)
    await store.open()
    try:
        alice = user("@alice:x", PresenceState.BUSY)
        phone = device("@alice:x", "PHONE", PresenceState.BUSY)
        stream_id = await store.apply(Outcome(notified(alice).changes, (phone,)))
        assert table_rows(path, "presence_journal") == 1
        assert table_rows(path, "user_presence") == 0
        assert await store.stream_since(0, 10) == [StreamRow(stream_id, alice)]
        assert await store.load_devices() == [phone]
        assert table_rows(path, "presence_journal") == 0
        assert [r.trigger for r in folds.reports] == [FoldTrigger.READ]
    finally:
        await store.close()


async def test_a_fold_writes_only_each_users_latest_row(path: Path) -> None:
    store = SqliteStore(path, **QUIET)
    await store.open()
    try:
        states = list(PresenceState)
        for n in range(8):
            await store.apply(notified(user("@alice:x", states[n % 4], last_active_ts=NOW_TS + n)))
        last_id = await store.apply(notified(user("@bob:x")))
        await store.apply(silent(user("@alice:x", PresenceState.BUSY, last_active_ts=NOW_TS + 9)))
        assert table_rows(path, "presence_journal") == 10
        before = (store.stats.fold_rows_read, store.stats.fold_rows_written)
        assert await store.get_user("@alice:x") == user(
            "@alice:x", PresenceState.BUSY, last_active_ts=NOW_TS + 9
        )
        assert store.stats.fold_rows_read - before[0] == 10
        assert store.stats.fold_rows_written - before[1] == 2
        # alice's latest row had no notify: it keeps the id of her last notified one
        rows = await store.stream_since(0, 10)
        assert [(r.state.user_id, r.stream_id) for r in rows] == [
            ("@alice:x", last_id - 1),
            ("@bob:x", last_id),
        ]
    finally:
        await store.close()


async def test_a_silent_row_folded_after_its_notified_one_was_skipped_keeps_that_id(
    path: Path,
) -> None:
    """One entry per fold, a fold once the journal holds two rows: the first
    fold skips the notified row (superseded), the second writes the silent one."""
    folds = Folds()
    store = SqliteStore(
        path, idle_fold_delay_s=None, journal_max_rows=1, fold_chunk_rows=1, on_fold=folds
    )
    await store.open()
    try:
        stream_id = await store.apply(notified(user("@a:x")))
        bumped = user("@a:x", last_active_ts=NOW_TS + 1)
        await store.apply(silent(bumped))
        await store.apply(notified(user("@b:x")))
        # a size fold runs after the group's callers were answered
        await folds.wait_for_rows_read(FoldTrigger.SIZE, 2)
        assert [(r.rows_read, r.rows_written) for r in folds.of(FoldTrigger.SIZE)] == [
            (1, 0),
            (1, 1),
        ]
        assert table_rows(path, "user_presence") == 1
        assert await store.stream_since(0, 10) == [
            StreamRow(stream_id, bumped),
            StreamRow(stream_id + 1, user("@b:x")),
        ]
    finally:
        await store.close()


async def test_size_folds_take_bounded_chunks_of_the_oldest_entries(path: Path) -> None:
    folds = Folds()
    store = SqliteStore(
        path,
        idle_fold_delay_s=None,
        journal_max_rows=100,
        fold_chunk_rows=30,
        fold_chunk_writes=20,
        on_fold=folds,
    )
    await store.open()
    try:
        for n in range(60):
            await store.apply(notified(*(user(f"@u{n * 5 + k}:x") for k in range(5))))
        size_folds = folds.of(FoldTrigger.SIZE)
        assert size_folds
        assert all(r.rows_written <= 20 and r.rows_read <= 30 for r in size_folds)
        assert all(r.journal_rows_left >= 100 - 30 for r in size_folds)
        assert table_rows(path, "presence_journal") * 5 <= 100 + 5
        assert len(await store.load_users()) == 300
    finally:
        await store.close()


async def test_an_idle_writer_folds_the_journal(path: Path) -> None:
    folds = Folds()
    store = SqliteStore(path, idle_fold_delay_s=0, fold_chunk_rows=10, on_fold=folds)
    await store.open()
    try:
        for n in range(5):
            await store.apply(notified(*(user(f"@u{n * 10 + k}:x") for k in range(10))))
        await folds.wait_for_rows_read(FoldTrigger.IDLE, 50)
        assert folds.reports[-1].journal_rows_left == 0
        assert table_rows(path, "presence_journal") == 0
        assert table_rows(path, "user_presence") == 50
        assert not folds.of(FoldTrigger.READ)
    finally:
        await store.close()


async def test_close_folds_and_reopen_finds_an_empty_journal(path: Path) -> None:
    folds = Folds()
    store = SqliteStore(path, on_fold=folds, **QUIET)
    await store.open()
    await store.apply(notified(user("@a:x")), inbound_txn("remote", "t1"))
    await store.close()
    assert [r.trigger for r in folds.reports] == [FoldTrigger.CLOSE]
    assert table_rows(path, "presence_journal") == 0
    assert table_rows(path, "user_presence") == 1


async def test_a_journal_left_by_kill_9_is_folded_at_reopen(path: Path) -> None:
    command = [sys.executable, "-m", "tests.contract.child_writer", "sqlite", str(path), "50"]
    command.append("journal")
    async with await anyio.open_process(command, cwd=REPO_ROOT) as child:
        assert child.stdout is not None
        with anyio.fail_after(30):
            line = await _read_line(child.stdout)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert table_rows(path, "presence_journal") >= 1
    assert table_rows(path, "user_presence") == 0

    folds = Folds()
    reopened = SqliteStore(path, on_fold=folds, **QUIET)
    await reopened.open()
    try:
        assert folds.of(FoldTrigger.OPEN)
        assert table_rows(path, "presence_journal") == 0
        assert table_rows(path, "user_presence") == 50
        assert await reopened.current_stream_id() == int(line.split()[1])
        assert await reopened.apply(notified(user("@after:x"))) == int(line.split()[1]) + 1
    finally:
        await reopened.close()


async def test_a_second_store_on_the_file_folds_the_first_ones_journal(path: Path) -> None:
    first = SqliteStore(path, **QUIET)
    second = SqliteStore(path, **QUIET)
    await first.open()
    await second.open()
    try:
        a_id = await first.apply(notified(user("@a:x")))
        b_id = await second.apply(notified(user("@b:x")))
        assert await second.stream_since(0, 10) == [
            StreamRow(a_id, user("@a:x")),
            StreamRow(b_id, user("@b:x")),
        ]
        c_id = await first.apply(notified(user("@a:x", PresenceState.BUSY)))
        assert a_id < b_id < c_id
        assert await first.get_user("@a:x") == user("@a:x", PresenceState.BUSY)
        assert await second.current_stream_id() == c_id
    finally:
        await first.close()
        await second.close()


def test_an_entry_roundtrips_and_refuses_integers_beyond_64_bits() -> None:
    users = [("@a:x", "online", 2**62, None, True, 2**53 + 1, -(2**63), 7)]
    devices = [("@a:x", "PHONE", "busy", 1, 2, 1)]
    assert decode_entry(encode_entry(users, devices)) == ([list(users[0])], [list(devices[0])])
    with pytest.raises(ValueError, match="64 bits"):
        encode_entry([("@a:x", "online", 2**63, None, True, 0, 0, 0)], [])
    with pytest.raises(ValueError, match="64 bits"):
        encode_entry([], [("@a:x", "PHONE", "busy", 1, 2**64 - 1, 1)])


def test_an_index_chunk_always_takes_the_oldest_entry_even_if_too_big() -> None:
    index = JournalIndex()
    rows = [(f"@u{n}:x", "online", 0, None, False, 0, 0, n + 1) for n in range(10)]
    index.record(1, rows, [])
    index.record(2, rows[:1], [])
    assert index.chunk(JournalLimits(fold_changes=3)) == 1
    assert index.chunk(JournalLimits(fold_changes=11, fold_writes=10)) == 2
    assert index.chunk(JournalLimits(fold_changes=11, fold_writes=9)) == 1
    assert index.live_rows == 10


_example_numbers = itertools.count()
UserChange = tuple[int, PresenceState, int, bool]
_user_change = st.tuples(
    st.integers(0, 5), st.sampled_from(PresenceState), st.integers(0, 2**40), st.booleans()
)
_device_change = st.tuples(st.integers(0, 2), st.sampled_from(["A", "B"]), st.integers(0, 9))
_apply = st.tuples(st.lists(_user_change, max_size=4), st.lists(_device_change, max_size=2))
_rounds = st.lists(st.lists(_apply, min_size=1, max_size=3), min_size=1, max_size=6)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rounds=_rounds, chunk=st.integers(1, 6), max_rows=st.integers(0, 8))
async def test_folding_in_any_chunks_leaves_each_users_last_row_and_notified_id(
    tmp_path: Path,
    rounds: list[list[tuple[list[UserChange], list[tuple[int, str, int]]]]],
    chunk: int,
    max_rows: int,
) -> None:
    """Rounds run one after another, the applies of a round concurrently; size
    folds of ``chunk`` rows run between rounds; close folds the rest."""
    path = tmp_path / f"fold-{next(_example_numbers)}.db"
    store = SqliteStore(
        path,
        idle_fold_delay_s=None,
        journal_max_rows=max_rows,
        fold_chunk_rows=chunk,
        fold_chunk_writes=chunk,
    )
    await store.open()
    last_user: dict[str, UserPresence] = {}
    last_device: dict[tuple[str, str], DevicePresence] = {}
    notified_order: list[str] = []
    ids: list[int] = []
    try:
        for round_ in rounds:
            outcomes = []
            for user_changes, device_changes in round_:
                changes = []
                for index, state, ts, notify in user_changes:
                    presence = user(f"@u{index}:x", state, last_active_ts=ts)
                    changes.append(StateChange(presence, NotifyReason.PRESENCE if notify else None))
                    last_user[presence.user_id] = presence
                    if notify:
                        if presence.user_id in notified_order:
                            notified_order.remove(presence.user_id)
                        notified_order.append(presence.user_id)
                devices = []
                for index, device_id, ts in device_changes:
                    row = device(f"@u{index}:x", device_id, PresenceState.ONLINE)
                    row = DevicePresence(row.user_id, row.device_id, row.state, ts, ts, 0)
                    devices.append(row)
                    last_device[(row.user_id, row.device_id)] = row
                outcomes.append(Outcome(changes=tuple(changes), devices=tuple(devices)))
            async with anyio.create_task_group() as tg:
                for outcome in outcomes:
                    tg.start_soon(_apply_and_note, store, outcome, ids)
    finally:
        await store.close()
    assert table_rows(path, "presence_journal") == 0
    reopened = SqliteStore(path, **QUIET)
    await reopened.open()
    try:
        assert {u.user_id: u for u in await reopened.load_users()} == last_user
        devices = await reopened.load_devices()
        assert {(d.user_id, d.device_id): d for d in devices} == last_device
        rows = await reopened.stream_since(0, 100)
        assert [r.state.user_id for r in rows] == notified_order
        assert [r.state for r in rows] == [last_user[u] for u in notified_order]
        assert [r.stream_id for r in rows] == sorted({r.stream_id for r in rows})
        assert await reopened.current_stream_id() == max(ids, default=0)
    finally:
        await reopened.close()


async def _apply_and_note(store: SqliteStore, outcome: Outcome, ids: list[int]) -> None:
    ids.append(await store.apply(outcome))


async def test_a_journal_entry_it_cannot_read_is_refused_at_open(path: Path) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with behind_the_store(path) as conn:
        conn.execute("INSERT INTO presence_journal (seq, payload) VALUES (1, x'5b395d')")
    broken = SqliteStore(path)
    with pytest.raises(StoreError, match="unknown format"):
        await broken.open()
    await broken.close()


async def test_a_fold_writes_every_value_exactly(path: Path) -> None:
    """Rows that reach the tables by a fold, not by an upsert: text, null,
    booleans and integers at the edges of 64 bits come back unchanged."""
    edge_users = [
        user("@unicode:x", status_msg="😀 é \\ \" \n\t end", currently_active=True),
        user("@empty:x", PresenceState.UNAVAILABLE, status_msg=""),
        user("@none:x", PresenceState.OFFLINE, status_msg=None, last_active_ts=0),
        user("@big:x", PresenceState.BUSY, last_active_ts=2**63 - 1),
        user("@negative:x", last_active_ts=-(2**63)),
    ]
    phone = device("@unicode:x", "PHONE ☎", PresenceState.BUSY)
    store = SqliteStore(path, **QUIET)
    await store.open()
    try:
        await store.apply(Outcome(notified(*edge_users).changes, (phone,)))
        assert table_rows(path, "user_presence") == 0  # still in the journal
        loaded = await store.load_users()  # a read folds the journal
        devices = await store.load_devices()
    finally:
        await store.close()

    assert sorted(loaded, key=lambda u: u.user_id) == sorted(edge_users, key=lambda u: u.user_id)
    assert devices == [phone]
    with behind_the_store(path) as conn:
        types = conn.execute(
            "SELECT DISTINCT typeof(last_active_ts), typeof(currently_active) FROM user_presence"
        ).fetchall()
    assert types == [("integer", "integer")]
