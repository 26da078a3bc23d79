"""``SqliteWriter``: the SQLite store thread's side, its one connection and its journal.

Only the store thread (``sqlite.SqliteStore._serve``) calls into this module;
nothing here is shared with the event loop except the queue items, whose
futures are completed back on the loop. ``sqlite.py`` explains the design;
this module holds the statements, the write group (append one journal entry,
insert the txn rows, run the small writes, commit), the fold (the oldest
bounded chunk of the journal into ``user_presence`` / ``device_presence``,
superseded rows skipped, in one transaction) and the reads.

Invariants held here:

* The in-memory state (``JournalIndex``, the max stream id, the next
  journal seq) changes only after the transaction it mirrors committed.
* Every write transaction starts with ``_sync``: if ``PRAGMA data_version``
  says another connection committed since we last looked, that state is
  rebuilt from the database before anything uses it, so two stores (or
  processes) on one file still draw increasing stream ids and fold each
  other's entries correctly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from federation_presence.errors import StoreError
from federation_presence.ids import DeviceId, UserId
from federation_presence.memory import release_free_memory
from federation_presence.presence.model import DevicePresence, Outcome, UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import InboundTxn, ServerKeyRecord, StoreStats, StreamRow
from federation_presence.store.batch import USER_COLUMNS, coalesce
from federation_presence.store.journal import (
    FoldReport,
    FoldTrigger,
    JournalIndex,
    JournalLimits,
    encode_entry,
)
from federation_presence.store.schema import (
    CURRENT_VERSION_SQL,
    SCHEMA_VERSION_DDL,
    load_migrations,
    plan,
)
from federation_presence.store.txn_filter import TxnFilter
from federation_presence.store.user_filter import StoredUsers

logger = logging.getLogger(__name__)
Synchronous = Literal["full", "normal"]
Settled = list[tuple[asyncio.Future[Any], object, BaseException | None]]

_TUNING_PRAGMAS = (
    # The fold's upserts hit pages all over the table: a page cache that
    # holds the working set (64 MiB) saves re-reading them (7 -> 5 us/row).
    "PRAGMA cache_size=-65536",
    # The store checkpoints on its own (``checkpoint``), after callers were
    # answered; SQLite's own checkpoint, run inside whichever COMMIT crosses
    # the line and so delaying its callers by 100+ ms, is only a backstop.
    "PRAGMA wal_autocheckpoint=10000",
    # Truncate the WAL back to 64 MiB after a checkpoint; bounds the disk used.
    "PRAGMA journal_size_limit=67108864",
)

_UPSERT_USER = (
    f"INSERT INTO user_presence ({USER_COLUMNS}, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
    " last_active_ts = excluded.last_active_ts, status_msg = excluded.status_msg,"
    " currently_active = excluded.currently_active,"
    " last_federation_update_ts = excluded.last_federation_update_ts,"
    " last_user_sync_ts = excluded.last_user_sync_ts,"
    " stream_id = max(user_presence.stream_id, excluded.stream_id)"
)
_UPSERT_DEVICE = (
    "INSERT INTO device_presence"
    " (user_id, device_id, state, last_active_ts, last_sync_ts, syncing)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET"
    " state = excluded.state, last_active_ts = excluded.last_active_ts,"
    " last_sync_ts = excluded.last_sync_ts, syncing = excluded.syncing"
)
_INSERT_TXN = (
    "INSERT INTO inbound_txns (origin, txn_id, response, received_ts) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (origin, txn_id) DO NOTHING"
)
_APPEND_JOURNAL = "INSERT INTO presence_journal (seq, payload) VALUES (?, ?)"
_SELECT_JOURNAL = "SELECT seq, payload FROM presence_journal ORDER BY seq"
_SELECT_PAYLOAD = "SELECT payload FROM presence_journal WHERE seq = ?"
_DELETE_JOURNAL_UP_TO = "DELETE FROM presence_journal WHERE seq <= ?"
_MAX_STREAM_ID = "SELECT COALESCE(MAX(stream_id), 0) FROM user_presence"
_DATA_VERSION = "PRAGMA data_version"
SELECT_USER_IDS = "SELECT user_id FROM user_presence"
RELEASE_AFTER_ROWS = 100_000
"""Rows folded after which an idle writer with an empty journal releases memory."""
_PAGE_BYTES = 4096
CHECKPOINT_BYTES = 2 * 2**20
"""WAL written (estimated) after which the store checkpoints.

A checkpoint pauses the writer: a few ms of fsyncs plus ~25 us per distinct
page copied. Checkpointing more often pauses less each time but copies more
in all (a page rewritten by many commits is copied once per checkpoint).
Ingest latency decides (BENCHMARKS.md, issue 18; 1x50 transactions paced at
half the peak, per checkpoint p99): at 16 MiB a checkpoint paused the
writer for up to ~40 ms (p99 39 ms) every ~1.5 s and set the ingest p99
(14-16 ms); at 2 MiB p99 15 ms, at 1 MiB 9 ms. 2 MiB spent ~1.1 s in
checkpoints per minute of that load against ~0.4 s at 16 MiB, mostly
waiting on the disk with the GIL released, and the peak rates did not move.
"""
_UPSERT_KEY = (
    "INSERT INTO server_keys"
    " (server_name, key_id, key, valid_until_ts, expired_ts, fetched_ts)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (server_name, key_id) DO UPDATE SET"
    " key = excluded.key, valid_until_ts = excluded.valid_until_ts,"
    " expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts"
)


class ApplyWrite:
    __slots__ = ("fut", "outcome", "txn")

    def __init__(self, outcome: Outcome, txn: InboundTxn | None, fut: asyncio.Future[Any]):
        self.outcome = outcome
        self.txn = txn
        self.fut = fut


class CallWrite:
    """A small write run inside the group's transaction; its result is the answer."""

    __slots__ = ("fn", "fut")

    def __init__(self, fn: Callable[[sqlite3.Connection], object], fut: asyncio.Future[Any]):
        self.fn = fn
        self.fut = fut


class Read:
    """A read; ``presence`` reads see the journal folded first."""

    __slots__ = ("fn", "fut", "presence")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], object],
        fut: asyncio.Future[Any],
        presence: bool,
    ):
        self.fn = fn
        self.fut = fut
        self.presence = presence


class SeparateWrite:
    """A write in a transaction of its own (a prune), never in a group commit."""

    __slots__ = ("fn", "fut")

    def __init__(self, fn: Callable[[sqlite3.Connection], object], fut: asyncio.Future[Any]):
        self.fn = fn
        self.fut = fut


Write = ApplyWrite | CallWrite


def store_error(message: str, exc: BaseException) -> StoreError:
    error = StoreError(f"{message}: {exc}")
    error.__cause__ = exc
    return error


class SqliteWriter:
    """The connection and the journal of one ``SqliteStore`` (store thread only)."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous,
        busy_timeout_ms: int,
        limits: JournalLimits,
        stats: StoreStats,
    ) -> None:
        self.path = path
        self.limits = limits
        self.stats = stats
        self.index = JournalIndex()
        self.stored_users: StoredUsers | None = None
        """The users this store holds (``user_filter``), kept from the writer thread only."""
        self._stream_id = 0
        self._data_version = 0
        self._wal_bytes = 0  # an upper estimate of what was written since the last checkpoint
        self._folded_since_release = 0  # rows folds wrote since ``release_memory_if_due`` ran
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            for pragma in _TUNING_PRAGMAS:
                conn.execute(pragma)
            _migrate(conn, str(path))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        self._conn.close()

    # -- the journal ----------------------------------------------------------

    def recover(self) -> list[FoldReport]:
        """Fold whatever journal a previous run left (crash recovery); call once, first."""
        self._data_version = self._current_data_version()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._reload()
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return self.fold_all(FoldTrigger.OPEN)

    def over_limit(self) -> bool:
        return self.index.changes > self.limits.max_changes

    def checkpoint_due(self) -> bool:
        return self._wal_bytes >= CHECKPOINT_BYTES

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for other connections)."""
        self._wal_bytes = 0
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise store_error(f"checkpointing {self.path} failed", exc) from exc

    def fold_all(self, trigger: FoldTrigger) -> list[FoldReport]:
        """Fold the whole journal, one bounded chunk per transaction."""
        reports: list[FoldReport] = []
        while len(self.index) or self._current_data_version() != self._data_version:
            report = self.fold_chunk(trigger)
            if report is None:
                break
            reports.append(report)
            if self.checkpoint_due():
                try:
                    self.checkpoint()
                except StoreError:
                    logger.exception("a checkpoint failed; SQLite's automatic one remains")
        return reports

    def fold_chunk(self, trigger: FoldTrigger) -> FoldReport | None:
        """Fold the oldest bounded chunk in one transaction; None if the journal is empty."""
        conn = self._conn
        index = self.index
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._sync()
                limits = self.limits
                if trigger is FoldTrigger.SIZE:
                    limits = limits.size_fold(index.changes - limits.max_changes)
                last = index.chunk(limits)
                if last is None:
                    conn.execute("COMMIT")
                    return None
                live = [(seq, self._payload(seq)) for seq in index.live_entries(last)]
                fold = index.plan(last, live)
                if fold.users:
                    conn.executemany(_UPSERT_USER, fold.users)
                if fold.devices:
                    conn.executemany(_UPSERT_DEVICE, fold.devices)
                conn.execute(_DELETE_JOURNAL_UP_TO, (last,))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except Exception as exc:
            self.stats.failed_folds += 1
            raise store_error(f"folding the presence journal of {self.path} failed", exc) from exc
        index.forget(fold)
        written = len(fold.users) + len(fold.devices)
        self._folded_since_release += written
        self._wal_bytes += _PAGE_BYTES * (written + 1)
        stats = self.stats
        stats.folds += 1
        stats.fold_rows_read += fold.rows_read
        stats.fold_rows_written += written
        return FoldReport(trigger, fold.entries, fold.rows_read, written, index.changes)

    def fold_through(self, last_seq: int, trigger: FoldTrigger) -> list[FoldReport]:
        """Fold chunks until no entry up to ``last_seq`` is left in the journal."""
        reports: list[FoldReport] = []
        while (oldest := self.index.oldest_seq()) is not None and oldest <= last_seq:
            report = self.fold_chunk(trigger)
            if report is None:
                break
            reports.append(report)
        return reports

    def get_users(self, user_ids: list[str]) -> tuple[list[UserPresence], list[FoldReport]]:
        """The stored rows of ``user_ids``, exact: the journal is folded only as
        far as the newest entry holding one of them (a read of users evicted
        long ago, whose rows are old, folds little or nothing)."""
        reports: list[FoldReport] = []
        if self._current_data_version() != self._data_version:
            reports = self.fold_all(FoldTrigger.READ)  # another writer: rebuild first
        last = self.index.newest_entry_of(user_ids)
        if last is not None:
            reports.extend(self.fold_through(last, FoldTrigger.READ))
        users: list[UserPresence] = []
        for start in range(0, len(user_ids), _IN_LIST_MAX):
            chunk = user_ids[start : start + _IN_LIST_MAX]
            marks = ",".join("?" * len(chunk))
            users.extend(
                _user(row)
                for row in self._conn.execute(f"{_SELECT_USER} WHERE user_id IN ({marks})", chunk)
            )
        return users, reports

    def release_memory_if_due(self) -> None:
        """After folds wrote ``RELEASE_AFTER_ROWS`` rows, and now the journal is
        empty and the writer idle: give SQLite's page cache (up to 64 MiB, see
        ``_TUNING_PRAGMAS``) and the freed heap back to the system. A burst of
        a million users would otherwise leave it all resident for good; the
        cost is a cold cache for the next reads."""
        if self._folded_since_release < RELEASE_AFTER_ROWS:
            return
        self._folded_since_release = 0
        try:
            self._conn.execute("PRAGMA shrink_memory")
        except sqlite3.Error:
            logger.exception("PRAGMA shrink_memory failed")
        release_free_memory()

    def _payload(self, seq: int) -> bytes:
        row = self._conn.execute(_SELECT_PAYLOAD, (seq,)).fetchone()
        if row is None:
            raise StoreError(f"presence journal entry {seq} is missing from {self.path}")
        payload: bytes = row[0]
        return payload

    def _sync(self) -> None:
        """Inside a write transaction: rebuild from the file if another connection wrote."""
        version = self._current_data_version()
        if version != self._data_version:
            if self.stored_users is not None:
                # another connection wrote rows this journal never saw
                self.stored_users.off = True
            self._reload()
            self._data_version = version

    def _reload(self) -> None:
        conn = self._conn
        journal_max = self.index.rebuild(conn.execute(_SELECT_JOURNAL))
        table_max: int = conn.execute(_MAX_STREAM_ID).fetchone()[0]
        self._stream_id = max(journal_max, table_max)

    def _current_data_version(self) -> int:
        version: int = self._conn.execute(_DATA_VERSION).fetchone()[0]
        return version

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- writes ---------------------------------------------------------------

    def run_writes(self, writes: list[Write], settled: Settled) -> None:
        """One transaction for the group: a journal entry, txn rows, small writes."""
        applies = [(w.outcome, w.txn) for w in writes if type(w) is ApplyWrite]
        answers: list[object] = []
        conn = self._conn
        seq: int | None = None
        payload = b""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._sync()
                rows = coalesce(applies, itertools.count(self._stream_id + 1))
                if rows.users or rows.devices:
                    seq = self.index.next_seq
                    payload = encode_entry(rows.users, rows.devices)
                    conn.execute(_APPEND_JOURNAL, (seq, payload))
                if rows.txns:
                    conn.executemany(_INSERT_TXN, rows.txns)
                for w in writes:
                    if type(w) is CallWrite:
                        answers.append(w.fn(conn))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except Exception as exc:
            self.stats.failed_batches += 1
            for w in writes:
                settled.append((w.fut, None, store_error("write transaction failed", exc)))
            return
        if seq is not None:
            new_users = self.index.record(seq, rows.users, rows.devices)
            if new_users and self.stored_users is not None:
                # before the callers are answered: a get_users after this
                # group's apply returned finds these users maybe stored
                self.stored_users.add(new_users)
        if rows.last_stream_id > self._stream_id:
            self._stream_id = rows.last_stream_id
        stats = self.stats
        stats.commits += 1
        stats.applies += len(applies)
        stats.user_rows += len(rows.users)
        stats.device_rows += len(rows.devices)
        stats.journal_appends += seq is not None
        small_writes = len(writes) - len(applies)
        self._wal_bytes += len(payload) + _PAGE_BYTES * (len(rows.txns) + small_writes)
        stream_id = self._stream_id
        call_answers = iter(answers)
        for w in writes:
            if type(w) is ApplyWrite:
                settled.append((w.fut, stream_id, None))
            else:
                settled.append((w.fut, next(call_answers), None))

    def run_separate(self, item: SeparateWrite, settled: Settled) -> None:
        """``item`` alone in one transaction (it touches no journal or stream state)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                answer = item.fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except Exception as exc:
            settled.append((item.fut, None, store_error("write transaction failed", exc)))
            return
        self.stats.prunes += 1
        rows = answer if isinstance(answer, int) else 0
        self._wal_bytes += _PAGE_BYTES * (1 + rows // 32)  # ~32 txn rows a page
        settled.append((item.fut, answer, None))

    # -- reads ----------------------------------------------------------------

    def run_read(self, item: Read) -> tuple[asyncio.Future[Any], object, BaseException | None]:
        try:
            return (item.fut, item.fn(self._conn), None)
        except Exception as exc:
            return (item.fut, None, store_error("read failed", exc))

    def load_txn_filter(self, capacity: int, retention_ms: int) -> TxnFilter:
        """A filter holding every stored transaction's key, oldest first."""
        txn_filter = TxnFilter(capacity, retention_ms=retention_ms)
        for origin, txn_id, received_ts in self._conn.execute(
            "SELECT origin, txn_id, received_ts FROM inbound_txns ORDER BY received_ts"
        ):
            txn_filter.add(origin, txn_id, received_ts)
        return txn_filter


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A second, read-only connection to the store's file (WAL: it never blocks the writer)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)


def _statements(script: str) -> list[str]:
    """``script`` split into complete statements (comments and blank lines dropped)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise StoreError(f"incomplete SQL statement in a migration: {buffer.strip()[:80]!r}")
    return statements


def _migrate(conn: sqlite3.Connection, where: str) -> None:
    """Bring the file to the newest schema, all in one write transaction."""
    conn.execute(SCHEMA_VERSION_DDL)
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute(CURRENT_VERSION_SQL).fetchone()[0]
        for migration in plan(current, load_migrations("sqlite"), where):
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (migration.version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- statements run on the store thread (one connection, no shared state) ----

_SELECT_USER = f"SELECT {USER_COLUMNS} FROM user_presence"
_IN_LIST_MAX = 500  # bound parameters per ``IN (...)`` (SQLite allows 32,766)
_SELECT_DEVICE = (
    "SELECT user_id, device_id, state, last_active_ts, last_sync_ts, syncing FROM device_presence"
)


def _user(row: tuple[Any, ...]) -> UserPresence:
    return UserPresence(
        UserId(row[0]), PresenceState(row[1]), row[2], row[3], bool(row[4]), row[5], row[6]
    )


def load_users(conn: sqlite3.Connection) -> list[UserPresence]:
    return [_user(row) for row in conn.execute(_SELECT_USER)]


def load_live_users(conn: sqlite3.Connection, local_suffix: str) -> list[UserPresence]:
    cursor = conn.execute(
        f"{_SELECT_USER} WHERE state != 'offline' OR substr(user_id, ?) = ?",
        (-len(local_suffix), local_suffix),
    )
    return [_user(row) for row in cursor]


def load_devices(conn: sqlite3.Connection) -> list[DevicePresence]:
    return [
        DevicePresence(UserId(r[0]), DeviceId(r[1]), PresenceState(r[2]), r[3], r[4], r[5])
        for r in conn.execute(_SELECT_DEVICE)
    ]


def get_user(conn: sqlite3.Connection, user_id: str) -> UserPresence | None:
    row = conn.execute(f"{_SELECT_USER} WHERE user_id = ?", (user_id,)).fetchone()
    return None if row is None else _user(row)


def current_stream_id(conn: sqlite3.Connection) -> int:
    value: int = conn.execute(_MAX_STREAM_ID).fetchone()[0]
    return value


def stream_since(conn: sqlite3.Connection, after: int, limit: int) -> list[StreamRow]:
    cursor = conn.execute(
        f"SELECT {USER_COLUMNS}, stream_id FROM user_presence"
        " WHERE stream_id > ? ORDER BY stream_id LIMIT ?",
        (after, limit),
    )
    return [StreamRow(row[7], _user(row)) for row in cursor]


def get_txn_response(conn: sqlite3.Connection, origin: str, txn_id: str) -> bytes | None:
    row = conn.execute(
        "SELECT response FROM inbound_txns WHERE origin = ? AND txn_id = ?", (origin, txn_id)
    ).fetchone()
    return None if row is None else bytes(row[0])


def prune_txns(conn: sqlite3.Connection, older_than_ts: int, limit: int) -> int:
    return conn.execute(
        "DELETE FROM inbound_txns WHERE (origin, txn_id) IN ("
        " SELECT origin, txn_id FROM inbound_txns WHERE received_ts < ?"
        " ORDER BY received_ts LIMIT ?)",
        (older_than_ts, limit),
    ).rowcount


def get_server_keys(conn: sqlite3.Connection, server_name: str) -> list[ServerKeyRecord]:
    cursor = conn.execute(
        "SELECT server_name, key_id, key, valid_until_ts, expired_ts, fetched_ts"
        " FROM server_keys WHERE server_name = ? ORDER BY key_id",
        (server_name,),
    )
    return [ServerKeyRecord(*row) for row in cursor]


def put_server_keys(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(_UPSERT_KEY, rows)


def get_position(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT position FROM stream_positions WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def set_position(conn: sqlite3.Connection, name: str, position: int) -> None:
    conn.execute(
        "INSERT INTO stream_positions (name, position) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (name, position),
    )


def next_txn_id(conn: sqlite3.Connection, destination: str) -> int:
    row = conn.execute(
        "INSERT INTO destination_txn_ids (destination, last_txn_id) VALUES (?, 1)"
        " ON CONFLICT (destination) DO UPDATE SET last_txn_id = last_txn_id + 1"
        " RETURNING last_txn_id",
        (destination,),
    ).fetchone()
    return int(row[0])
