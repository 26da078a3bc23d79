"""``SqliteStore``: the embedded default ``Store``, one file in WAL mode.

Threading. One dedicated thread owns the only connection and runs every
statement (STYLE.md seam 3; its side is ``sqlite_writer.SqliteWriter``); the
event loop never touches SQLite. The loop talks to it through one FIFO
``queue.SimpleQueue``:

* Writes (``apply`` and the small writes: positions, keys, counters) are
  collected on the loop in ``_pending`` and handed over as ONE queue item
  per event-loop iteration (``_flush`` is scheduled with ``call_soon``), so
  everything started in the same iteration is certain to share a transaction.
* The thread drains whatever is queued, runs the reads, then every queued
  write in one ``BEGIN IMMEDIATE ... COMMIT``: one fsync for the whole group
  with ``synchronous=FULL``. While it commits the loop keeps queueing: that
  is the group commit. Results go back in one ``call_soon_threadsafe`` per
  drain; a future whose caller was cancelled or timed out is skipped (its
  write may still have happened, as with any request cut off mid-flight).
* A prune (``prune_txns``) is a ``SeparateWrite``: its own bounded
  transaction, queued after the group of its event-loop iteration and run
  after the round's group committed and its callers were answered, like the
  folds. It never shares a commit with ``/send`` writes,
  so it neither delays their answer nor fails with them (SQLite has one
  writer at a time, so a second connection would only wait for the lock).
* Every caller's wait is bounded by ``apply_timeout_s`` (``deadline``).

Why a journal. The worker must make ~80,000 remote pushes a second durable on
one core. Upserting each into ``user_presence`` touches about three B-tree
pages and the stream-id index at random: 7-18 us a row, the whole per-push
budget. Appending the same rows as one blob is ~2 us a row. So a group
commit writes its coalesced user and device rows (with their stream ids) as
ONE ``presence_journal`` row, next to its ``inbound_txns`` rows, in the same
transaction: the group is as durable as before (``apply`` still returns only
after COMMIT, with the configured ``synchronous``), and much cheaper.

The fold. ``user_presence`` / ``device_presence`` lag the journal; a *fold*
moves its oldest entries into them. ``journal.JournalIndex`` remembers, per
user and per device, the newest entry holding its row; folding an entry
writes only the rows no newer entry supersedes (the newer entry writes them
when its turn comes), sorted by key, and deletes the folded entries, all in
one transaction. Remote users are pushed again and again, so a journal that
holds many groups supersedes most of its rows before they are folded: the
coalescing is what pays for the fold (``stats.fold_rows_written`` against
``fold_rows_read``). Folds run:

* when the journal holds more than ``journal_max_rows`` rows (size), one
  bounded chunk after each write round, after the group's callers were
  answered;
* when the writer has been idle for ``idle_fold_delay_s`` (queue empty,
  journal not): chunk after chunk, checking the queue between them. Not at
  the first idle instant: under load the queue empties between nearly every
  group, and folding then would fold each entry before anything supersedes
  it (and take the core from the loop);
* before a read of the presence tables (``load_users``, ``load_devices``,
  ``get_user``, ``stream_since``, ``current_stream_id``): everything, so
  reads are exact; ``get_users`` (the keeper's read-through of evicted
  users) folds only as far as the newest entry holding one of its users,
  which for users evicted a while ago is little or nothing;
* at ``open`` (whatever a ``kill -9`` left) and at ``close``.

Bounds. A fold reads at most ``fold_chunk_rows`` (20,000) journal rows and
writes at most ``fold_chunk_writes`` (2,000) table rows (a bigger single
entry goes alone): 20-50 ms on the reference machine. It reads (decodes)
only entries still holding a row no newer entry supersedes; the others are
just deleted. The journal holds about ``journal_max_rows`` (500,000) rows,
more only while the folds catch up; the index holds about 140 bytes per
distinct user or device in it (~10 MB for 64k users, ~70 MB if all 500,000
rows were distinct users). Measured with 64k users: a smaller journal
supersedes less and folds cost more (fold writes per row applied: 18% at
100k rows, 2% at 250k, under 0.1% at 500k).

Memory. Once a burst of at least ``sqlite_writer.RELEASE_AFTER_ROWS`` rows
has been folded and the writer idles with an empty journal, it gives its
page cache (``PRAGMA shrink_memory``) and the process's free heap
(``memory.release_free_memory``) back to the system.

Checkpoints. The store checkpoints the WAL itself (``PASSIVE``) once about
``sqlite_writer.CHECKPOINT_BYTES`` were written, after the round's callers
were answered, instead of inside whichever COMMIT SQLite's automatic
checkpoint picks (that one remains as a backstop).

Invariants. (1) The tables plus the journal, folded in seq order, are
exactly what the applied groups wrote: a fold commits its upserts and its
DELETE together, so a crash leaves either the entry or its rows. (2) A row
folded late carries the greatest stream id its user got in the journal (a
row without notify has id 0, "keep the stored one", and the id to keep may be
in a superseded entry). (3) The max stream id lives in memory on the writer
thread (no ``SELECT MAX`` per group) and moves only after a commit; a group
draws ids above it, so ids stay strictly increasing in commit order. (4)
In-memory state mirrors only committed transactions; a failing group or
fold is rolled back and leaves it exact, so the store stays usable.

Crash recovery. Nothing is in memory that the file does not have: ``open``
rebuilds the index from ``presence_journal`` and the max stream id from the
tables and the journal, then folds everything. Another connection writing
the same file (a second store, another process) is noticed through ``PRAGMA
data_version`` at the start of each transaction, which triggers the same
rebuild, so the ids and folds stay right.

Txn dedup. ``get_txn_response`` first asks ``txn_filter.TxnFilter``: a key
certainly never stored is answered None on the loop, with no wait behind the
writer's commit; a possible hit reads the table as before. Keys are added
when ``apply`` is called, loaded at ``open``, and dropped after a prune (see
that module). ``txn_filter_capacity=0`` turns it off.

Read-through filter. ``get_users`` first asks ``user_filter.StoredUsers``
which of its ids may be stored: the keeper reads through every remote user
the machine does not hold, and for users never seen each such read used to
wait behind the writer's fold or commit and cost a B-tree lookup per id. The
writer adds each user new to the journal before its group's callers are
answered; a second thread scans the table once after ``open`` (read-only
connection, off the writer thread) and until that is merged every id is
read. A second connection writing the file is noticed at this store's next
transaction, which turns the filter off for good; until then a user only
that connection wrote may read as absent (as with the txn filter).
``user_filter_bits_log2=None`` turns it off.

Durability: ``synchronous=FULL`` fsyncs the WAL at every commit (survives
power loss); ``normal`` fsyncs only at checkpoints (survives ``kill -9`` of
this process, may lose the latest commits on power loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from federation_presence.errors import StoreError
from federation_presence.presence.model import DevicePresence, Outcome, UserPresence
from federation_presence.store import sqlite_writer as sql
from federation_presence.store.base import (
    DEFAULT_APPLY_TIMEOUT_S,
    PRUNE_BATCH_ROWS,
    InboundTxn,
    ServerKeyRecord,
    StoreStats,
    StreamRow,
)
from federation_presence.store.deadline import CallerDeadlines
from federation_presence.store.journal import (
    DEFAULT_FOLD_CHANGES,
    DEFAULT_FOLD_WRITES,
    DEFAULT_MAX_CHANGES,
    FoldReport,
    FoldTrigger,
    JournalLimits,
)
from federation_presence.store.sqlite_writer import (
    ApplyWrite,
    CallWrite,
    Read,
    SeparateWrite,
    Settled,
    SqliteWriter,
    Synchronous,
    Write,
    store_error,
)
from federation_presence.store.txn_filter import DEFAULT_CAPACITY, DEFAULT_RETENTION_MS, TxnFilter
from federation_presence.store.user_filter import DEFAULT_BITS_LOG2, StoredUsers

T = TypeVar("T")
logger = logging.getLogger(__name__)

MAX_DRAIN_ITEMS = 256
"""Queue items taken per round; bounds one transaction's size and a read's wait."""
SCAN_BATCH_ROWS = 10_000
"""User ids the scan after ``open`` reads at a time (``_scan_users``)."""

DEFAULT_IDLE_FOLD_DELAY_S = 0.1


class _Stop:
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Any]):
        self.fut = fut


class _UsersRead:
    """``get_users``: a read that folds only as much of the journal as it needs."""

    __slots__ = ("fut", "user_ids")

    def __init__(self, user_ids: list[str], fut: asyncio.Future[Any]):
        self.user_ids = user_ids
        self.fut = fut


class _UsersScanned:
    """The users the table held at open, scanned off the writer thread (``_scan_users``)."""

    __slots__ = ("scanned",)

    def __init__(self, scanned: StoredUsers):
        self.scanned = scanned


_Item = list[Write] | Read | SeparateWrite | _Stop | _UsersRead | _UsersScanned


class SqliteStore:
    """The ``Store`` on one SQLite file (see the module docstring).

    ``journal_max_rows``, ``fold_chunk_rows``, ``fold_chunk_writes``: the
    journal's bounds; ``idle_fold_delay_s``: how long the writer waits idle
    before folding (None: never on idleness); ``txn_filter_capacity``: keys
    per ``txn_retention_ms`` the txn filter is sized for (0: no filter);
    ``apply_timeout_s``: the longest any caller waits for its answer;
    ``on_fold``: called on the event loop with every fold's ``FoldReport``
    (metrics, tests).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Synchronous = "full",
        busy_timeout_ms: int = 5_000,
        journal_max_rows: int = DEFAULT_MAX_CHANGES,
        fold_chunk_rows: int = DEFAULT_FOLD_CHANGES,
        fold_chunk_writes: int = DEFAULT_FOLD_WRITES,
        idle_fold_delay_s: float | None = DEFAULT_IDLE_FOLD_DELAY_S,
        txn_filter_capacity: int = DEFAULT_CAPACITY,
        txn_retention_ms: int = DEFAULT_RETENTION_MS,
        user_filter_bits_log2: int | None = DEFAULT_BITS_LOG2,
        apply_timeout_s: float = DEFAULT_APPLY_TIMEOUT_S,
        on_fold: Callable[[FoldReport], None] | None = None,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        if idle_fold_delay_s is not None and idle_fold_delay_s < 0:
            raise ValueError("idle_fold_delay_s must be >= 0 or None")
        if apply_timeout_s <= 0:
            raise ValueError("apply_timeout_s must be > 0")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.limits = JournalLimits(journal_max_rows, fold_chunk_rows, fold_chunk_writes)
        self.idle_fold_delay_s = idle_fold_delay_s
        self.txn_filter_capacity = txn_filter_capacity
        self.txn_retention_ms = txn_retention_ms
        self.user_filter_bits_log2 = user_filter_bits_log2
        self.apply_timeout_s = apply_timeout_s
        self.stats = StoreStats()
        self._deadlines = CallerDeadlines(apply_timeout_s, self.stats)
        self._on_fold = on_fold
        self._txn_filter: TxnFilter | None = None
        self._stored_users: StoredUsers | None = None
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._pending: list[Write] = []
        self._separate: list[SeparateWrite] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failure: StoreError | None = None  # the store thread died of a bug
        self._in_hand: list[_Item] = []  # what the store thread is serving (its own)
        self._stopped = asyncio.Event()
        self.users_scanned = asyncio.Event()
        """Set once the user filter holds every user stored at open (``get_users``)."""

    @property
    def txn_filter(self) -> TxnFilter | None:
        """The in-memory txn filter (None before ``open`` or when turned off)."""
        return self._txn_filter

    # -- lifecycle (event loop side) ------------------------------------------

    async def open(self) -> None:
        if self._loop is not None or self._closed:
            raise StoreError("this store was already opened")
        loop = asyncio.get_running_loop()
        self._loop = loop
        opened: asyncio.Future[TxnFilter | None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._serve, args=(loop, opened), name=f"sqlite {self.path}", daemon=True
        )
        self._thread.start()
        try:
            self._txn_filter = await opened
        except BaseException:
            self._closed = True
            # cancelled while the thread was opening: it stops once it has
            self._queue.put(_Stop(loop.create_future()))
            raise

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open, serve until ``close`` or cancellation, then close (``Store.run``).

        Raises ``StoreError`` if the store thread died of a bug: every caller
        waiting on it was answered with that error, and later calls get it too.
        """
        await self.open()
        try:
            task_status.started()
            await self._stopped.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()
        if self._failure is not None:
            raise self._failure  # the owner stops: a worker without its store is no worker

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        if self._loop is None or self._thread is None:
            return
        self._flush()
        stopped: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(_Stop(stopped))
        # waits for the thread to fold and close: no timeout, the file must
        # be left consistent (a fold chunk is bounded, see the module doc)
        await stopped
        # the thread is past its last statement; join it off the loop
        await anyio.to_thread.run_sync(self._thread.join)

    # -- the Store protocol ---------------------------------------------------

    async def apply(self, outcome: Outcome, txn: InboundTxn | None = None) -> int:
        loop = self._running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        if txn is not None and self._txn_filter is not None:
            # before it can commit: a stored key is never filtered out
            self._txn_filter.add(txn.origin, txn.txn_id, txn.received_ts)
        self._pending.append(ApplyWrite(outcome, txn, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await self._deadlines.answer(fut, "a store write")

    async def load_users(self) -> list[UserPresence]:
        return await self._read(sql.load_users, presence=True)

    async def load_devices(self) -> list[DevicePresence]:
        return await self._read(sql.load_devices, presence=True)

    async def get_user(self, user_id: str) -> UserPresence | None:
        return await self._read(lambda conn: sql.get_user(conn, user_id), presence=True)

    async def get_users(self, user_ids: Sequence[str]) -> list[UserPresence]:
        loop = self._running_loop()
        stored = self._stored_users
        asked = list(user_ids) if stored is None else stored.maybe_stored(user_ids)
        self.stats.user_reads_filtered += len(user_ids) - len(asked)
        if not asked:
            return []
        fut: asyncio.Future[list[UserPresence]] = loop.create_future()
        self._queue.put(_UsersRead(asked, fut))
        return await self._deadlines.answer(fut, "a store read")

    async def load_live_users(self, local_suffix: str) -> list[UserPresence]:
        return await self._read(lambda conn: sql.load_live_users(conn, local_suffix), presence=True)

    async def current_stream_id(self) -> int:
        return await self._read(sql.current_stream_id, presence=True)

    async def stream_since(self, after: int, limit: int) -> list[StreamRow]:
        return await self._read(lambda conn: sql.stream_since(conn, after, limit), presence=True)

    async def get_txn_response(self, origin: str, txn_id: str) -> bytes | None:
        self._running_loop()
        if self._txn_filter is not None and not self._txn_filter.might_contain(origin, txn_id):
            self.stats.txn_lookups_filtered += 1
            return None
        return await self._read(lambda conn: sql.get_txn_response(conn, origin, txn_id))

    async def prune_txns(self, older_than_ts: int, limit: int = PRUNE_BATCH_ROWS) -> int:
        txn_filter = self._txn_filter
        emptied = () if txn_filter is None else txn_filter.prunable(older_than_ts)
        loop = self._running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._separate.append(
            SeparateWrite(lambda conn: sql.prune_txns(conn, older_than_ts, limit), fut)
        )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        pruned = await self._deadlines.answer(fut, "a prune")
        if txn_filter is not None and pruned < limit:
            # Only a prune that reached the cutoff may forget whole generations.
            txn_filter.drop(emptied)
        return pruned

    async def get_server_keys(self, server_name: str) -> list[ServerKeyRecord]:
        return await self._read(lambda conn: sql.get_server_keys(conn, server_name))

    async def put_server_keys(self, records: Sequence[ServerKeyRecord]) -> None:
        rows = [
            (r.server_name, r.key_id, r.key, r.valid_until_ts, r.expired_ts, r.fetched_ts)
            for r in records
        ]
        if rows:
            await self._call_write(lambda conn: sql.put_server_keys(conn, rows))

    async def get_position(self, name: str) -> int:
        return await self._read(lambda conn: sql.get_position(conn, name))

    async def set_position(self, name: str, position: int) -> None:
        await self._call_write(lambda conn: sql.set_position(conn, name, position))

    async def next_txn_id(self, destination: str) -> int:
        return await self._call_write(lambda conn: sql.next_txn_id(conn, destination))

    async def set_room_members(self, room_id: str, members: Sequence[str]) -> None:
        rows = [(room_id, user_id) for user_id in dict.fromkeys(members)]

        def put(conn: Any) -> None:
            conn.execute("DELETE FROM room_members WHERE room_id = ?", (room_id,))
            conn.executemany("INSERT INTO room_members (room_id, user_id) VALUES (?, ?)", rows)

        await self._call_write(put)

    async def delete_room(self, room_id: str) -> bool:
        def delete(conn: Any) -> bool:
            cursor = conn.execute("DELETE FROM room_members WHERE room_id = ?", (room_id,))
            return bool(cursor.rowcount > 0)

        return await self._call_write(delete)

    async def load_room_members(self) -> list[tuple[str, str]]:
        def load(conn: Any) -> list[tuple[str, str]]:
            cursor = conn.execute("SELECT room_id, user_id FROM room_members")
            return [(str(r[0]), str(r[1])) for r in cursor]

        return await self._read(load)

    # -- event loop side plumbing ---------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._failure is not None:
            raise self._failure
        if self._closed or self._loop is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")
        return self._loop

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            group, self._pending = self._pending, []
            self._queue.put(group)
        if self._separate:
            # after the group: the thread answers the group's callers first
            separate, self._separate = self._separate, []
            for item in separate:
                self._queue.put(item)

    async def _read(self, fn: Callable[[Any], T], *, presence: bool = False) -> T:
        fut: asyncio.Future[T] = self._running_loop().create_future()
        self._queue.put(Read(fn, fut, presence))
        return await self._deadlines.answer(fut, "a store read")

    async def _call_write(self, fn: Callable[[Any], T]) -> T:
        loop = self._running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append(CallWrite(fn, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await self._deadlines.answer(fut, "a store write")

    def _deliver(self, settled: Settled, reports: list[FoldReport]) -> None:
        for fut, value, exc in settled:
            if fut.done():
                continue
            if exc is None:
                fut.set_result(value)
            else:
                fut.set_exception(exc)
        if self._on_fold is not None:
            for report in reports:
                self._on_fold(report)

    # -- the store thread -----------------------------------------------------

    def _post(
        self,
        loop: asyncio.AbstractEventLoop,
        settled: Settled,
        reports: list[FoldReport] | None = None,
    ) -> None:
        reports = [] if reports is None or self._on_fold is None else reports
        if not settled and not reports:
            return
        try:
            loop.call_soon_threadsafe(self._deliver, settled, reports)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _serve(self, loop: asyncio.AbstractEventLoop, opened: asyncio.Future[Any]) -> None:
        try:
            writer = SqliteWriter(
                self.path,
                synchronous=self.synchronous,
                busy_timeout_ms=self.busy_timeout_ms,
                limits=self.limits,
                stats=self.stats,
            )
        except Exception as exc:
            error = exc if isinstance(exc, StoreError) else store_error("cannot open", exc)
            self._post(loop, [(opened, None, error)])
            return
        try:
            reports = writer.recover()
            capacity = self.txn_filter_capacity
            txn_filter = (
                writer.load_txn_filter(capacity, self.txn_retention_ms) if capacity > 0 else None
            )
        except Exception as exc:
            writer.close()
            error = exc if isinstance(exc, StoreError) else store_error("cannot open", exc)
            self._post(loop, [(opened, None, error)])
            return
        bits_log2 = self.user_filter_bits_log2
        if bits_log2 is not None:
            # set before ``opened`` is answered; the table is scanned off this thread
            writer.stored_users = self._stored_users = StoredUsers(bits_log2)
            threading.Thread(
                target=self._scan_users, args=(bits_log2,), name="sqlite user scan", daemon=True
            ).start()
        self._post(loop, [(opened, txn_filter, None)], reports)
        try:
            self._serve_items(loop, writer)
        except BaseException as exc:
            # A bug, not a database error (those are answered to their callers).
            logger.critical("the store thread of %s failed: it stops", self.path, exc_info=True)
            self._fail_everything(loop, exc)
            with contextlib.suppress(Exception):
                writer.close()

    def _serve_items(self, loop: asyncio.AbstractEventLoop, writer: SqliteWriter) -> None:
        """Serve the queue until a ``_Stop``."""
        while True:
            self._in_hand = items = self._take(loop, writer)
            settled: Settled = []
            reports: list[FoldReport] = []
            writes: list[Write] = []
            reads: list[Read] = []
            separate: list[SeparateWrite] = []
            user_reads: list[_UsersRead] = []
            stop: _Stop | None = None
            for item in items:
                if type(item) is list:
                    writes.extend(item)
                elif type(item) is Read:
                    reads.append(item)
                elif type(item) is SeparateWrite:
                    separate.append(item)
                elif type(item) is _UsersRead:
                    user_reads.append(item)
                elif type(item) is _Stop:
                    stop = item
                elif type(item) is _UsersScanned and writer.stored_users is not None:
                    writer.stored_users.merge(item.scanned)
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(self.users_scanned.set)
            if reads:
                self._run_reads(writer, reads, settled, reports)
            for user_read in user_reads:
                self._run_users_read(writer, user_read, settled, reports)
            if writes:
                writer.run_writes(writes, settled)
            if stop is not None:
                for item in separate:
                    writer.run_separate(item, settled)
                self._stop(loop, writer, stop, settled, reports)
                return
            self._post(loop, settled, reports)
            # the group's callers have their answers: now each prune, alone
            for item in separate:
                answered: Settled = []
                writer.run_separate(item, answered)
                self._post(loop, answered)
            # Drop this round's outcomes now, not when the next item comes: an
            # idle writer would otherwise keep the last group's users alive.
            del items, writes, reads, user_reads, separate, settled
            self._in_hand = []
            # the callers have their answers: now the upkeep, one bounded step each
            if writer.over_limit():
                self._fold_one_chunk(loop, writer, FoldTrigger.SIZE)
            if writer.checkpoint_due():
                self._checkpoint(writer)

    def _fail_everything(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
        """The thread is ending on ``exc``: answer every caller in hand or queued, stop."""
        error = store_error("the store thread failed", exc)
        items = list(self._in_hand)
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._queue.get_nowait())
        futures: list[asyncio.Future[Any]] = []
        for item in items:
            if isinstance(item, list):
                futures.extend(w.fut for w in item)
            elif not isinstance(item, _UsersScanned):
                futures.append(item.fut)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(self._thread_failed, error, futures)

    def _thread_failed(self, error: StoreError, futures: list[asyncio.Future[Any]]) -> None:
        """On the loop: the store thread is gone (``_fail_everything``)."""
        self._failure = error
        self._closed = True
        futures.extend(w.fut for w in self._pending)
        futures.extend(w.fut for w in self._separate)
        self._pending, self._separate = [], []
        for fut in futures:
            if not fut.done():
                fut.set_exception(error)
        self._stopped.set()  # last: the callers hear of it before ``run`` raises

    def _scan_users(self, bits_log2: int) -> None:
        """Every user the table holds, into a filter handed to the writer thread.

        Its own read-only connection: a snapshot of the table as the journal
        recovery left it, read while the writer serves. Rows written since
        were added by the writer as they were appended (``StoredUsers``).
        Until the writer merges this, ``get_users`` reads every id it is asked.
        """
        scanned = StoredUsers(bits_log2)
        try:
            conn = sql.connect_read_only(self.path)
            try:
                cursor = conn.execute(sql.SELECT_USER_IDS)
                while not self._closed and (rows := cursor.fetchmany(SCAN_BATCH_ROWS)):
                    scanned.add([row[0] for row in rows])
            finally:
                conn.close()
        except Exception:
            logger.exception("scanning %s for its users failed: every id is read", self.path)
            return
        if not self._closed:
            self._queue.put(_UsersScanned(scanned))

    def _take(self, loop: asyncio.AbstractEventLoop, writer: SqliteWriter) -> list[_Item]:
        """The next items; while idle, folds the journal chunk by chunk."""
        try:
            items = [self._queue.get_nowait()]
        except queue.Empty:
            items = [self._wait_idle(loop, writer)]
        while len(items) < MAX_DRAIN_ITEMS:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _wait_idle(self, loop: asyncio.AbstractEventLoop, writer: SqliteWriter) -> _Item:
        delay = self.idle_fold_delay_s
        while delay is not None and len(writer.index):
            try:
                return self._queue.get(timeout=delay) if delay > 0 else self._queue.get_nowait()
            except queue.Empty:
                pass
            if not self._fold_one_chunk(loop, writer, FoldTrigger.IDLE):
                break
            if writer.checkpoint_due():
                self._checkpoint(writer)
            delay = 0
        if not len(writer.index):
            writer.release_memory_if_due()
        return self._queue.get()

    def _fold_one_chunk(
        self, loop: asyncio.AbstractEventLoop, writer: SqliteWriter, trigger: FoldTrigger
    ) -> bool:
        """One chunk; False if it failed (logged: the journal keeps the rows)."""
        try:
            report = writer.fold_chunk(trigger)
        except StoreError:
            logger.exception("a %s fold failed; the journal keeps its rows", trigger.value)
            return False
        if report is not None:
            self._post(loop, [], [report])
        return True

    @staticmethod
    def _checkpoint(writer: SqliteWriter) -> None:
        try:
            writer.checkpoint()
        except StoreError:
            logger.exception("a checkpoint failed; SQLite's automatic one remains")

    def _run_reads(
        self,
        writer: SqliteWriter,
        reads: list[Read],
        settled: Settled,
        reports: list[FoldReport],
    ) -> None:
        fold_error: StoreError | None = None
        if any(r.presence for r in reads):
            try:
                reports.extend(writer.fold_all(FoldTrigger.READ))
            except StoreError as exc:
                fold_error = exc
        for read in reads:
            if read.presence and fold_error is not None:
                settled.append((read.fut, None, fold_error))
            else:
                settled.append(writer.run_read(read))

    @staticmethod
    def _run_users_read(
        writer: SqliteWriter,
        item: _UsersRead,
        settled: Settled,
        reports: list[FoldReport],
    ) -> None:
        try:
            users, folded = writer.get_users(item.user_ids)
        except StoreError as exc:
            settled.append((item.fut, None, exc))
        except Exception as exc:
            settled.append((item.fut, None, store_error("read failed", exc)))
        else:
            reports.extend(folded)
            settled.append((item.fut, users, None))

    def _stop(
        self,
        loop: asyncio.AbstractEventLoop,
        writer: SqliteWriter,
        stop: _Stop,
        settled: Settled,
        reports: list[FoldReport],
    ) -> None:
        try:
            reports.extend(writer.fold_all(FoldTrigger.CLOSE))
        except StoreError:
            logger.exception("folding at close failed; the next open folds the journal")
        try:
            writer.close()
        except Exception as exc:
            settled.append((stop.fut, None, store_error("closing failed", exc)))
        else:
            settled.append((stop.fut, None, None))
        self._post(loop, settled, reports)
