"""``PostgresStore``: the scale-out ``Store`` on PostgreSQL (asyncpg, extra ``postgres``).

Design. Writes go through one writer connection driven by one writer: the
task ``run`` is, a child of its owner's task group (the worker's; tests'
fixtures), started with ``tg.start(store.run)`` and ready once the database
is open. No task is created here: nothing of the store outlives its owner.
``close`` (or cancelling the owner's group) ends it: what is queued is
written (shielded, bounded by ``close_timeout_s``), what could not be fails
with ``StoreError``, and the connections close. ``apply`` and the small
writes append to ``_pending`` and set ``_wakeup``; the writer takes
everything pending and writes it in ONE transaction (``unnest`` upserts, one
statement per table), then completes every caller's future. While that
transaction's round trips are in flight, new calls pile up for the next one:
group commit. Everything started in one event-loop iteration shares a
transaction (the writer wakes after the tasks already scheduled). Reads use
a small pool; so does ``prune_txns``, in a transaction of its own, so a
prune runs beside the ``/send`` group commits, never inside one. Every
caller's wait is bounded by ``apply_timeout_s`` (``deadline``).

Stream ids come from ``presence_stream_seq``. A write group that notifies
first takes a transaction-level advisory lock (keyed by the schema) and only
then draws its ids, so groups of every worker on the database commit their
ids in increasing order: a reader never sees id ``n+1`` committed while ``n``
is still to come. Groups without notified changes skip the lock. Rows are
upserted in key order so concurrent groups cannot deadlock each other.

Failure: a failing group is rolled back and every caller in it gets its own
``StoreError``; a lost writer connection is replaced on the next group.

Txn dedup: as in ``SqliteStore``, ``get_txn_response`` asks an in-memory
``txn_filter.TxnFilter`` first and skips the database when the key was
certainly never stored (keys are loaded at ``open``, added when ``apply`` is
called, dropped after a prune). The filter only knows the transactions THIS
process stored: when several workers share the database and one origin's
``/send`` may reach any of them, a transaction first applied by another
worker would be applied again on a retry (harmless for presence, whose
pushes carry absolute state, but not the "first answer wins" contract):
such deployments set ``database.txn_filter_capacity: 0``.

No journal: ``SqliteStore`` journals its rows because its upserts run on the
worker's own core; here they run in the PostgreSQL server process, and
several workers share the tables, so the upserts stay as they were.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint

from federation_presence.errors import StoreError
from federation_presence.ids import DeviceId, UserId
from federation_presence.presence.model import DevicePresence, Outcome, UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import (
    DEFAULT_APPLY_TIMEOUT_S,
    PRUNE_BATCH_ROWS,
    InboundTxn,
    ServerKeyRecord,
    StoreStats,
    StreamRow,
)
from federation_presence.store.batch import USER_COLUMNS, coalesce, count_notified
from federation_presence.store.deadline import CallerDeadlines
from federation_presence.store.schema import (
    CURRENT_VERSION_SQL,
    SCHEMA_VERSION_DDL,
    load_migrations,
    plan,
)
from federation_presence.store.txn_filter import DEFAULT_CAPACITY, DEFAULT_RETENTION_MS, TxnFilter

T = TypeVar("T")

MAX_GROUP_WRITES = 4096
"""Calls written per transaction at most; the rest go in the next one."""

DEFAULT_POOL_SIZE = 4
"""Connections of the read pool unless ``database.args.cp_max`` says (writes have their own)."""

_UPSERT_USERS = (
    f"INSERT INTO user_presence ({USER_COLUMNS}, stream_id)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],"
    " $5::boolean[], $6::bigint[], $7::bigint[], $8::bigint[])"
    " ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state,"
    " last_active_ts = EXCLUDED.last_active_ts, status_msg = EXCLUDED.status_msg,"
    " currently_active = EXCLUDED.currently_active,"
    " last_federation_update_ts = EXCLUDED.last_federation_update_ts,"
    " last_user_sync_ts = EXCLUDED.last_user_sync_ts,"
    " stream_id = GREATEST(user_presence.stream_id, EXCLUDED.stream_id)"
)
_UPSERT_DEVICES = (
    "INSERT INTO device_presence"
    " (user_id, device_id, state, last_active_ts, last_sync_ts, syncing)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],"
    " $5::bigint[], $6::integer[])"
    " ON CONFLICT (user_id, device_id) DO UPDATE SET state = EXCLUDED.state,"
    " last_active_ts = EXCLUDED.last_active_ts, last_sync_ts = EXCLUDED.last_sync_ts,"
    " syncing = EXCLUDED.syncing"
)
_INSERT_TXNS = (
    "INSERT INTO inbound_txns (origin, txn_id, response, received_ts)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[])"
    " ON CONFLICT (origin, txn_id) DO NOTHING"
)
_NEXT_STREAM_IDS = "SELECT nextval('presence_stream_seq') FROM generate_series(1, $1)"
_MAX_STREAM_ID = "SELECT COALESCE(MAX(stream_id), 0) FROM user_presence"
_UPSERT_KEYS = (
    "INSERT INTO server_keys (server_name, key_id, key, valid_until_ts, expired_ts, fetched_ts)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],"
    " $6::bigint[])"
    " ON CONFLICT (server_name, key_id) DO UPDATE SET key = EXCLUDED.key,"
    " valid_until_ts = EXCLUDED.valid_until_ts, expired_ts = EXCLUDED.expired_ts,"
    " fetched_ts = EXCLUDED.fetched_ts"
)
_SELECT_USER = f"SELECT {USER_COLUMNS} FROM user_presence"


class _ApplyWrite:
    __slots__ = ("fut", "outcome", "txn")

    def __init__(self, outcome: Outcome, txn: InboundTxn | None, fut: asyncio.Future[Any]):
        self.outcome = outcome
        self.txn = txn
        self.fut = fut


class _CallWrite:
    """A small write run inside the group's transaction; its result is the answer."""

    __slots__ = ("fn", "fut")

    def __init__(self, fn: Callable[[Any], Awaitable[object]], fut: asyncio.Future[Any]):
        self.fn = fn
        self.fut = fut


_Write = _ApplyWrite | _CallWrite


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, for error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _lock_key(purpose: str, schema: str) -> int:
    return zlib.crc32(f"federation_presence:{purpose}:{schema}".encode())


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _user(row: Sequence[Any]) -> UserPresence:
    return UserPresence(
        UserId(row[0]), PresenceState(row[1]), row[2], row[3], row[4], row[5], row[6]
    )


class PostgresStore:
    """The ``Store`` on PostgreSQL (see the module docstring).

    ``schema``: tables live in this schema (created if missing) instead of
    the DSN's default search path; lets several deployments or test runs
    share one database. ``txn_filter_capacity``: keys per
    ``txn_retention_ms`` the txn filter is sized for (0: no filter; see the
    module docstring for when that is needed). ``apply_timeout_s``: the
    longest a caller waits for its write; ``close_timeout_s``: the longest
    ``close`` spends writing what is queued.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_min: int = 1,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 30.0,
        txn_filter_capacity: int = DEFAULT_CAPACITY,
        txn_retention_ms: int = DEFAULT_RETENTION_MS,
        apply_timeout_s: float = DEFAULT_APPLY_TIMEOUT_S,
        close_timeout_s: float = 30.0,
    ) -> None:
        if apply_timeout_s <= 0:
            raise ValueError("apply_timeout_s must be > 0")
        if not 1 <= pool_min <= pool_size:
            raise ValueError(f"need 1 <= pool_min <= pool_size, got {pool_min}, {pool_size}")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.pool_min = pool_min
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.txn_filter_capacity = txn_filter_capacity
        self.txn_retention_ms = txn_retention_ms
        self.apply_timeout_s = apply_timeout_s
        self.close_timeout_s = close_timeout_s
        self.stats = StoreStats()
        self._deadlines = CallerDeadlines(apply_timeout_s, self.stats)
        self._txn_filter: TxnFilter | None = None
        self._where = redact_dsn(dsn) + (f" (schema {schema})" if schema else "")
        self._settings = {"search_path": _quote_ident(schema)} if schema else {}
        self._pending: list[_Write] = []
        self._wakeup = asyncio.Event()
        self._conn: Any = None
        self._pool: Any = None
        self._writing = False  # ``run`` is serving writes
        self._writer_done = asyncio.Event()
        self._stream_lock = 0
        self._opened = False
        self._closed = False

    @property
    def txn_filter(self) -> TxnFilter | None:
        """The in-memory txn filter (None before opening or when turned off)."""
        return self._txn_filter

    # -- lifecycle --------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open, then be the writer until ``close`` or cancellation (``Store.run``)."""
        try:
            await self._open()
        except BaseException:
            with anyio.CancelScope(shield=True):  # also when cancelled while opening
                self._closed = True
                await self._close_connections()
            self._writer_done.set()
            raise
        self._writing = True
        try:
            task_status.started()
            await self._write_loop()
        finally:
            with anyio.CancelScope(shield=True):
                self._closed = True
                with anyio.move_on_after(self.close_timeout_s):
                    await self._write_pending()
                self._writing = False
                self._fail_pending("the store closed before this write was made")
                await self._close_connections()
                self._writer_done.set()

    async def _open(self) -> None:
        if self._opened or self._closed:
            raise StoreError("this store was already opened")
        self._opened = True
        try:
            if self.schema is not None:
                conn = await self._connect({})
                try:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(self.schema)}")
                finally:
                    await conn.close()
            self._conn = await self._connect(self._settings)
            schema = str(await self._conn.fetchval("SELECT current_schema()"))
            self._stream_lock = _lock_key("stream", schema)
            await self._migrate(self._conn, schema)
            if txn_filter_capacity := self.txn_filter_capacity:
                self._txn_filter = await self._load_txn_filter(self._conn, txn_filter_capacity)
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_size,
                timeout=self.connect_timeout_s,
                command_timeout=self.command_timeout_s,
                server_settings=self._settings,
            )
        except Exception as exc:
            self._closed = True
            await self._close_connections()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open {self._where}: {exc}") from exc

    async def close(self) -> None:
        """End ``run`` after it wrote what is queued; wait (bounded) until it has."""
        was_closed, self._closed = self._closed, True
        if not self._opened:
            return
        self._wakeup.set()
        with anyio.move_on_after(self.close_timeout_s + 5):
            await self._writer_done.wait()
        if not was_closed and not self._writer_done.is_set():
            raise StoreError(f"the writer of {self._where} did not stop")

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, []
        for w in pending:
            if not w.fut.done():
                w.fut.set_exception(StoreError(f"{reason} ({self._where})"))

    async def _close_connections(self) -> None:
        conn, self._conn = self._conn, None
        pool, self._pool = self._pool, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=self.connect_timeout_s)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.connect_timeout_s)
            except TimeoutError:
                pool.terminate()

    async def _connect(self, settings: dict[str, str]) -> Any:
        return await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout_s,
            command_timeout=self.command_timeout_s,
            server_settings=settings,
        )

    async def _migrate(self, conn: Any, schema: str) -> None:
        # the migration files are read off the loop
        migrations = await anyio.to_thread.run_sync(load_migrations, "postgres")
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key("migrate", schema))
            await conn.execute(SCHEMA_VERSION_DDL)
            current = int(await conn.fetchval(CURRENT_VERSION_SQL))
            for migration in plan(current, migrations, self._where):
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_version (version) VALUES ($1)", migration.version
                )

    async def _load_txn_filter(self, conn: Any, capacity: int) -> TxnFilter:
        txn_filter = TxnFilter(capacity, retention_ms=self.txn_retention_ms)
        async with conn.transaction():
            async for origin, txn_id, received_ts in conn.cursor(
                "SELECT origin, txn_id, received_ts FROM inbound_txns ORDER BY received_ts",
                prefetch=10_000,
            ):
                txn_filter.add(origin, txn_id, received_ts)
        return txn_filter

    # -- the Store protocol -------------------------------------------------------

    async def apply(self, outcome: Outcome, txn: InboundTxn | None = None) -> int:
        fut: asyncio.Future[int] = self._loop_if_open().create_future()
        if txn is not None and self._txn_filter is not None:
            # before it can commit: a stored key is never filtered out
            self._txn_filter.add(txn.origin, txn.txn_id, txn.received_ts)
        self._pending.append(_ApplyWrite(outcome, txn, fut))
        self._wakeup.set()
        return await self._deadlines.answer(fut, "a store write")

    async def load_users(self) -> list[UserPresence]:
        return [_user(r) for r in await self._fetch(_SELECT_USER)]

    async def load_devices(self) -> list[DevicePresence]:
        rows = await self._fetch(
            "SELECT user_id, device_id, state, last_active_ts, last_sync_ts, syncing"
            " FROM device_presence"
        )
        return [
            DevicePresence(UserId(r[0]), DeviceId(r[1]), PresenceState(r[2]), r[3], r[4], r[5])
            for r in rows
        ]

    async def get_user(self, user_id: str) -> UserPresence | None:
        rows = await self._fetch(f"{_SELECT_USER} WHERE user_id = $1", user_id)
        return _user(rows[0]) if rows else None

    async def get_users(self, user_ids: Sequence[str]) -> list[UserPresence]:
        if not user_ids:
            return []
        rows = await self._fetch(f"{_SELECT_USER} WHERE user_id = ANY($1::text[])", list(user_ids))
        return [_user(r) for r in rows]

    async def load_live_users(self, local_suffix: str) -> list[UserPresence]:
        rows = await self._fetch(
            f"{_SELECT_USER} WHERE state <> 'offline' OR right(user_id, $1) = $2",
            len(local_suffix),
            local_suffix,
        )
        return [_user(r) for r in rows]

    async def current_stream_id(self) -> int:
        rows = await self._fetch(_MAX_STREAM_ID)
        return int(rows[0][0])

    async def stream_since(self, after: int, limit: int) -> list[StreamRow]:
        rows = await self._fetch(
            f"SELECT {USER_COLUMNS}, stream_id FROM user_presence"
            " WHERE stream_id > $1 ORDER BY stream_id LIMIT $2",
            after,
            limit,
        )
        return [StreamRow(int(r[7]), _user(r)) for r in rows]

    async def get_txn_response(self, origin: str, txn_id: str) -> bytes | None:
        self._loop_if_open()
        if self._txn_filter is not None and not self._txn_filter.might_contain(origin, txn_id):
            self.stats.txn_lookups_filtered += 1
            return None
        rows = await self._fetch(
            "SELECT response FROM inbound_txns WHERE origin = $1 AND txn_id = $2", origin, txn_id
        )
        return bytes(rows[0][0]) if rows else None

    async def prune_txns(self, older_than_ts: int, limit: int = PRUNE_BATCH_ROWS) -> int:
        async def prune(conn: Any) -> int:
            status = await conn.execute(
                "DELETE FROM inbound_txns WHERE (origin, txn_id) IN ("
                " SELECT origin, txn_id FROM inbound_txns WHERE received_ts < $1"
                " ORDER BY received_ts LIMIT $2)",
                older_than_ts,
                limit,
            )
            return int(str(status).rpartition(" ")[2])

        txn_filter = self._txn_filter
        emptied = () if txn_filter is None else txn_filter.prunable(older_than_ts)
        pruned = await self._separate_write(prune, "a prune")
        self.stats.prunes += 1
        if txn_filter is not None and pruned < limit:
            # Only a prune that reached the cutoff may forget whole generations.
            txn_filter.drop(emptied)
        return pruned

    async def get_server_keys(self, server_name: str) -> list[ServerKeyRecord]:
        rows = await self._fetch(
            "SELECT server_name, key_id, key, valid_until_ts, expired_ts, fetched_ts"
            " FROM server_keys WHERE server_name = $1 ORDER BY key_id",
            server_name,
        )
        return [ServerKeyRecord(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def put_server_keys(self, records: Sequence[ServerKeyRecord]) -> None:
        if not records:
            return
        latest = {(r.server_name, r.key_id): r for r in records}
        ordered = [latest[k] for k in sorted(latest)]
        columns = (
            [r.server_name for r in ordered],
            [r.key_id for r in ordered],
            [r.key for r in ordered],
            [r.valid_until_ts for r in ordered],
            [r.expired_ts for r in ordered],
            [r.fetched_ts for r in ordered],
        )

        async def put(conn: Any) -> None:
            await conn.execute(_UPSERT_KEYS, *columns)

        await self._call_write(put)

    async def get_position(self, name: str) -> int:
        rows = await self._fetch("SELECT position FROM stream_positions WHERE name = $1", name)
        return int(rows[0][0]) if rows else 0

    async def set_position(self, name: str, position: int) -> None:
        async def put(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO stream_positions (name, position) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                name,
                position,
            )

        await self._call_write(put)

    async def next_txn_id(self, destination: str) -> int:
        async def bump(conn: Any) -> int:
            value = await conn.fetchval(
                "INSERT INTO destination_txn_ids (destination, last_txn_id) VALUES ($1, 1)"
                " ON CONFLICT (destination) DO UPDATE"
                " SET last_txn_id = destination_txn_ids.last_txn_id + 1"
                " RETURNING last_txn_id",
                destination,
            )
            return int(value)

        return await self._call_write(bump)

    async def set_room_members(self, room_id: str, members: Sequence[str]) -> None:
        users = list(dict.fromkeys(members))

        async def put(conn: Any) -> None:
            await conn.execute("DELETE FROM room_members WHERE room_id = $1", room_id)
            await conn.execute(
                "INSERT INTO room_members (room_id, user_id) SELECT $1, unnest($2::text[])",
                room_id,
                users,
            )

        await self._call_write(put)

    async def delete_room(self, room_id: str) -> bool:
        async def delete(conn: Any) -> bool:
            status = await conn.execute("DELETE FROM room_members WHERE room_id = $1", room_id)
            return int(str(status).rpartition(" ")[2]) > 0

        return await self._call_write(delete)

    async def load_room_members(self) -> list[tuple[str, str]]:
        rows = await self._fetch("SELECT room_id, user_id FROM room_members")
        return [(str(r[0]), str(r[1])) for r in rows]

    # -- plumbing -----------------------------------------------------------------

    def _loop_if_open(self) -> asyncio.AbstractEventLoop:
        if self._closed or not self._writing:
            raise StoreError(
                "the store is closed"
                if self._closed
                else "the store is not running (start store.run in a task group)"
            )
        return asyncio.get_running_loop()

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        self._loop_if_open()
        try:
            async with self._pool.acquire(timeout=self.connect_timeout_s) as conn:
                return list(await conn.fetch(sql, *args))
        except Exception as exc:
            raise StoreError(f"read failed on {self._where}: {exc}") from exc

    async def _call_write(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        fut: asyncio.Future[T] = self._loop_if_open().create_future()
        self._pending.append(_CallWrite(fn, fut))
        self._wakeup.set()
        return await self._deadlines.answer(fut, "a store write")

    async def _separate_write(self, fn: Callable[[Any], Awaitable[T]], what: str) -> T:
        """``fn`` in a transaction of its own on a pool connection, beside the writer."""
        self._loop_if_open()
        try:
            with anyio.fail_after(self.apply_timeout_s):
                async with self._pool.acquire() as conn, conn.transaction():
                    return await fn(conn)
        except TimeoutError as exc:
            self.stats.timeouts += 1
            raise StoreError(
                f"{what} got no answer within {self.apply_timeout_s:g} s on {self._where}"
            ) from exc
        except Exception as exc:
            raise StoreError(f"{what} failed on {self._where}: {exc}") from exc

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # A group in flight is finished, not cut off, when the owner
            # cancels (``run`` then writes the rest); bounded all the same.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.close_timeout_s):
                await self._write_pending(MAX_GROUP_WRITES)
            await checkpoint()  # where the owner's cancellation gets in

    async def _write_pending(self, limit: int | None = None) -> None:
        """Write what is queued, ``limit`` calls a group (None: all, group after group)."""
        while self._pending:
            size = MAX_GROUP_WRITES if limit is None else limit
            group = self._pending[:size]
            del self._pending[:size]
            await self._write_group(group)
            if limit is not None:
                return

    async def _write_group(self, group: list[_Write]) -> None:
        applies = [(w.outcome, w.txn) for w in group if type(w) is _ApplyWrite]
        answers: list[object] = []
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect(self._settings)
            conn = self._conn
            async with conn.transaction():
                notified = count_notified(applies)
                stream_ids: list[int] = []
                if notified:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", self._stream_lock)
                    rows = await conn.fetch(_NEXT_STREAM_IDS, notified)
                    stream_ids = sorted(int(r[0]) for r in rows)
                write = coalesce(applies, iter(stream_ids))
                if write.users:
                    await conn.execute(_UPSERT_USERS, *zip(*sorted(write.users), strict=True))
                if write.devices:
                    await conn.execute(_UPSERT_DEVICES, *zip(*sorted(write.devices), strict=True))
                if write.txns:
                    await conn.execute(_INSERT_TXNS, *zip(*write.txns, strict=True))
                for w in group:
                    if type(w) is _CallWrite:
                        answers.append(await w.fn(conn))
                if applies and not notified:
                    stream_id = int(await conn.fetchval(_MAX_STREAM_ID))
                else:
                    stream_id = write.last_stream_id
        except BaseException as exc:
            # a cancellation (the owner's group, at shutdown) fails the group too
            self.stats.failed_batches += 1
            if not isinstance(exc, asyncpg.PostgresError) and self._conn is not None:
                # not the data's fault: the connection may be half-way through
                # something; the next group starts on a new one
                self._conn.terminate()
                self._conn = None
            for w in group:
                if not w.fut.done():
                    error = StoreError(f"write transaction failed on {self._where}: {exc!r}")
                    error.__cause__ = exc
                    w.fut.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        stats = self.stats
        stats.commits += 1
        stats.applies += len(applies)
        stats.user_rows += len(write.users)
        stats.device_rows += len(write.devices)
        call_answers = iter(answers)
        for w in group:
            value = stream_id if type(w) is _ApplyWrite else next(call_answers)
            if not w.fut.done():
                w.fut.set_result(value)
