"""``SqliteStore``: the embedded default ``Store``, one file in WAL mode.

Design. One dedicated thread owns the only connection and runs every
statement (STYLE.md seam 3); the event loop never touches SQLite. The loop
talks to it through one FIFO ``queue.SimpleQueue``:

* Writes (``apply`` and the small writes: positions, keys, counters, prune)
  are collected on the loop in ``_pending`` and handed over as ONE queue item
  per event-loop iteration (``_flush`` is scheduled with ``call_soon``), so
  everything started in the same iteration is certain to share a transaction.
* The thread drains whatever is queued, runs the reads, then runs every
  queued write in one ``BEGIN IMMEDIATE ... COMMIT`` (``executemany`` per
  table, rows coalesced by ``batch.coalesce``): one fsync for the whole group
  with ``synchronous=FULL``. While it commits (SQLite releases the GIL during
  the fsync) the loop keeps queueing: that is the group commit.
* Results go back in one ``loop.call_soon_threadsafe`` per drain, which
  completes every future. A future whose caller was cancelled is skipped; its
  write may still have happened (as with any request cut off mid-flight).

Ordering: everything in one drain was pending at the same moment, so running
its reads before its writes is still linearizable; a caller that awaited a
write sees it in any later read.

Failure: if anything in a write group fails, the transaction is rolled back
and every caller in the group gets its own ``StoreError`` (``__cause__`` is
the driver error); nothing of the group is written, the next group starts
afresh.

Stream ids are ``MAX(stream_id) + 1 ...`` read inside the write transaction
(an index seek): ``BEGIN IMMEDIATE`` holds SQLite's single write lock, so ids
commit in order even if another process writes the same file.

Durability: ``synchronous=FULL`` fsyncs the WAL at every commit (survives
power loss); ``normal`` fsyncs only at checkpoints (survives ``kill -9`` of
this process, may lose the latest commits on power loss).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from federation_presence.errors import StoreError
from federation_presence.ids import DeviceId, UserId
from federation_presence.presence.model import DevicePresence, Outcome, UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import InboundTxn, ServerKeyRecord, StoreStats, StreamRow
from federation_presence.store.batch import coalesce
from federation_presence.store.schema import (
    CURRENT_VERSION_SQL,
    SCHEMA_VERSION_DDL,
    load_migrations,
    plan,
)

Synchronous = Literal["full", "normal"]
T = TypeVar("T")

MAX_DRAIN_ITEMS = 256
"""Queue items taken per round; bounds one transaction's size and a read's wait."""

_TUNING_PRAGMAS = (
    # Presence upserts hit pages all over the table: a page cache that holds
    # the working set (64 MiB) saves re-reading them (profile: 7 -> 5 us/row).
    "PRAGMA cache_size=-65536",
    # Checkpoint every ~40 MiB of WAL instead of 4 MiB: a page rewritten by
    # many group commits is copied to the db (and fsynced) once per
    # checkpoint, not once per two commits (profile: commit 10 -> 5 ms for
    # 1,600 rows over 20,000 users).
    "PRAGMA wal_autocheckpoint=10000",
    # Truncate the WAL back to 64 MiB after a checkpoint; bounds the disk used.
    "PRAGMA journal_size_limit=67108864",
)

_USER_COLUMNS = (
    "user_id, state, last_active_ts, status_msg, currently_active,"
    " last_federation_update_ts, last_user_sync_ts"
)
_UPSERT_USER = (
    f"INSERT INTO user_presence ({_USER_COLUMNS}, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
_MAX_STREAM_ID = "SELECT COALESCE(MAX(stream_id), 0) FROM user_presence"
_UPSERT_KEY = (
    "INSERT INTO server_keys"
    " (server_name, key_id, key, valid_until_ts, expired_ts, fetched_ts)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (server_name, key_id) DO UPDATE SET"
    " key = excluded.key, valid_until_ts = excluded.valid_until_ts,"
    " expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts"
)


class _ApplyWrite:
    __slots__ = ("fut", "outcome", "txn")

    def __init__(self, outcome: Outcome, txn: InboundTxn | None, fut: asyncio.Future[Any]):
        self.outcome = outcome
        self.txn = txn
        self.fut = fut


class _CallWrite:
    """A small write run inside the group's transaction; its result is the answer."""

    __slots__ = ("fn", "fut")

    def __init__(self, fn: Callable[[sqlite3.Connection], object], fut: asyncio.Future[Any]):
        self.fn = fn
        self.fut = fut


class _Read:
    __slots__ = ("fn", "fut")

    def __init__(self, fn: Callable[[sqlite3.Connection], object], fut: asyncio.Future[Any]):
        self.fn = fn
        self.fut = fut


class _Stop:
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Any]):
        self.fut = fut


_Write = _ApplyWrite | _CallWrite
_Item = list[_Write] | _Read | _Stop
_Settled = list[tuple[asyncio.Future[Any], object, BaseException | None]]


def _store_error(message: str, exc: BaseException) -> StoreError:
    error = StoreError(f"{message}: {exc}")
    error.__cause__ = exc
    return error


def _settle(settled: _Settled) -> None:
    for fut, value, exc in settled:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)


class SqliteStore:
    """The ``Store`` on one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Synchronous = "full",
        busy_timeout_ms: int = 5_000,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.stats = StoreStats()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._pending: list[_Write] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle (event loop side) ------------------------------------------

    async def open(self) -> None:
        if self._loop is not None or self._closed:
            raise StoreError("this store was already opened")
        loop = asyncio.get_running_loop()
        self._loop = loop
        opened: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._serve, args=(loop, opened), name=f"sqlite {self.path}", daemon=True
        )
        self._thread.start()
        try:
            await opened
        except BaseException:
            self._closed = True
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is None or self._thread is None:
            return
        self._flush()
        stopped: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(_Stop(stopped))
        await stopped
        self._thread.join()

    # -- the Store protocol ---------------------------------------------------

    async def apply(self, outcome: Outcome, txn: InboundTxn | None = None) -> int:
        loop = self._running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append(_ApplyWrite(outcome, txn, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    async def load_users(self) -> list[UserPresence]:
        return await self._read(_load_users)

    async def load_devices(self) -> list[DevicePresence]:
        return await self._read(_load_devices)

    async def get_user(self, user_id: str) -> UserPresence | None:
        return await self._read(lambda conn: _get_user(conn, user_id))

    async def current_stream_id(self) -> int:
        return await self._read(_current_stream_id)

    async def stream_since(self, after: int, limit: int) -> list[StreamRow]:
        return await self._read(lambda conn: _stream_since(conn, after, limit))

    async def get_txn_response(self, origin: str, txn_id: str) -> bytes | None:
        return await self._read(lambda conn: _get_txn_response(conn, origin, txn_id))

    async def prune_txns(self, older_than_ts: int) -> int:
        return await self._call_write(lambda conn: _prune_txns(conn, older_than_ts))

    async def get_server_keys(self, server_name: str) -> list[ServerKeyRecord]:
        return await self._read(lambda conn: _get_server_keys(conn, server_name))

    async def put_server_keys(self, records: Sequence[ServerKeyRecord]) -> None:
        rows = [
            (r.server_name, r.key_id, r.key, r.valid_until_ts, r.expired_ts, r.fetched_ts)
            for r in records
        ]
        if rows:
            await self._call_write(lambda conn: _executemany(conn, _UPSERT_KEY, rows))

    async def get_position(self, name: str) -> int:
        return await self._read(lambda conn: _get_position(conn, name))

    async def set_position(self, name: str, position: int) -> None:
        await self._call_write(lambda conn: _set_position(conn, name, position))

    async def next_txn_id(self, destination: str) -> int:
        return await self._call_write(lambda conn: _next_txn_id(conn, destination))

    # -- event loop side plumbing ---------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed or self._loop is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")
        return self._loop

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            group, self._pending = self._pending, []
            self._queue.put(group)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        fut: asyncio.Future[T] = self._running_loop().create_future()
        self._queue.put(_Read(fn, fut))
        return await fut

    async def _call_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = self._running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append(_CallWrite(fn, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    # -- the store thread -----------------------------------------------------

    def _serve(self, loop: asyncio.AbstractEventLoop, opened: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:
            error = exc
            if not isinstance(exc, StoreError):
                error = _store_error(f"cannot open {self.path}", exc)
            _post(loop, [(opened, None, error)])
            return
        _post(loop, [(opened, None, None)])
        while True:
            items = [self._queue.get()]
            while len(items) < MAX_DRAIN_ITEMS:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            settled: _Settled = []
            writes: list[_Write] = []
            stop: _Stop | None = None
            for item in items:
                if type(item) is list:
                    writes.extend(item)
                elif type(item) is _Read:
                    settled.append(_run_read(conn, item))
                elif type(item) is _Stop:
                    stop = item
            if writes:
                self._run_writes(conn, writes, settled)
            if stop is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    settled.append((stop.fut, None, _store_error("closing failed", exc)))
                else:
                    settled.append((stop.fut, None, None))
                _post(loop, settled)
                return
            _post(loop, settled)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout_ms / 1000, isolation_level=None
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            for pragma in _TUNING_PRAGMAS:
                conn.execute(pragma)
            _migrate(conn, str(self.path))
        except BaseException:
            conn.close()
            raise
        return conn

    def _run_writes(
        self, conn: sqlite3.Connection, writes: list[_Write], settled: _Settled
    ) -> None:
        applies = [(w.outcome, w.txn) for w in writes if type(w) is _ApplyWrite]
        answers: list[object] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                base = conn.execute(_MAX_STREAM_ID).fetchone()[0]
                rows = coalesce(applies, itertools.count(base + 1))
                if rows.users:
                    conn.executemany(_UPSERT_USER, rows.users)
                if rows.devices:
                    conn.executemany(_UPSERT_DEVICE, rows.devices)
                if rows.txns:
                    conn.executemany(_INSERT_TXN, rows.txns)
                for w in writes:
                    if type(w) is _CallWrite:
                        answers.append(w.fn(conn))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except Exception as exc:
            self.stats.failed_batches += 1
            for w in writes:
                settled.append((w.fut, None, _store_error("write transaction failed", exc)))
            return
        stats = self.stats
        stats.commits += 1
        stats.applies += len(applies)
        stats.user_rows += len(rows.users)
        stats.device_rows += len(rows.devices)
        stream_id = max(base, rows.last_stream_id)
        call_answers = iter(answers)
        for w in writes:
            if type(w) is _ApplyWrite:
                settled.append((w.fut, stream_id, None))
            else:
                settled.append((w.fut, next(call_answers), None))


def _post(loop: asyncio.AbstractEventLoop, settled: _Settled) -> None:
    if not settled:
        return
    try:
        loop.call_soon_threadsafe(_settle, settled)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more


def _run_read(
    conn: sqlite3.Connection, item: _Read
) -> tuple[asyncio.Future[Any], object, BaseException | None]:
    try:
        return (item.fut, item.fn(conn), None)
    except Exception as exc:
        return (item.fut, None, _store_error("read failed", exc))


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

_SELECT_USER = f"SELECT {_USER_COLUMNS} FROM user_presence"
_SELECT_DEVICE = (
    "SELECT user_id, device_id, state, last_active_ts, last_sync_ts, syncing FROM device_presence"
)


def _user(row: tuple[Any, ...]) -> UserPresence:
    return UserPresence(
        UserId(row[0]), PresenceState(row[1]), row[2], row[3], bool(row[4]), row[5], row[6]
    )


def _load_users(conn: sqlite3.Connection) -> list[UserPresence]:
    return [_user(row) for row in conn.execute(_SELECT_USER)]


def _load_devices(conn: sqlite3.Connection) -> list[DevicePresence]:
    return [
        DevicePresence(UserId(r[0]), DeviceId(r[1]), PresenceState(r[2]), r[3], r[4], r[5])
        for r in conn.execute(_SELECT_DEVICE)
    ]


def _get_user(conn: sqlite3.Connection, user_id: str) -> UserPresence | None:
    row = conn.execute(f"{_SELECT_USER} WHERE user_id = ?", (user_id,)).fetchone()
    return None if row is None else _user(row)


def _current_stream_id(conn: sqlite3.Connection) -> int:
    value: int = conn.execute(_MAX_STREAM_ID).fetchone()[0]
    return value


def _stream_since(conn: sqlite3.Connection, after: int, limit: int) -> list[StreamRow]:
    cursor = conn.execute(
        f"SELECT {_USER_COLUMNS}, stream_id FROM user_presence"
        " WHERE stream_id > ? ORDER BY stream_id LIMIT ?",
        (after, limit),
    )
    return [StreamRow(row[7], _user(row)) for row in cursor]


def _get_txn_response(conn: sqlite3.Connection, origin: str, txn_id: str) -> bytes | None:
    row = conn.execute(
        "SELECT response FROM inbound_txns WHERE origin = ? AND txn_id = ?", (origin, txn_id)
    ).fetchone()
    return None if row is None else bytes(row[0])


def _prune_txns(conn: sqlite3.Connection, older_than_ts: int) -> int:
    return conn.execute("DELETE FROM inbound_txns WHERE received_ts < ?", (older_than_ts,)).rowcount


def _get_server_keys(conn: sqlite3.Connection, server_name: str) -> list[ServerKeyRecord]:
    cursor = conn.execute(
        "SELECT server_name, key_id, key, valid_until_ts, expired_ts, fetched_ts"
        " FROM server_keys WHERE server_name = ? ORDER BY key_id",
        (server_name,),
    )
    return [ServerKeyRecord(*row) for row in cursor]


def _executemany(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(sql, rows)


def _get_position(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT position FROM stream_positions WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def _set_position(conn: sqlite3.Connection, name: str, position: int) -> None:
    conn.execute(
        "INSERT INTO stream_positions (name, position) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (name, position),
    )


def _next_txn_id(conn: sqlite3.Connection, destination: str) -> int:
    row = conn.execute(
        "INSERT INTO destination_txn_ids (destination, last_txn_id) VALUES (?, 1)"
        " ON CONFLICT (destination) DO UPDATE SET last_txn_id = last_txn_id + 1"
        " RETURNING last_txn_id",
        (destination,),
    ).fetchone()
    return int(row[0])
