"""The presence journal's bookkeeping: what an entry holds and what a fold writes (pure).

A journalling store appends each group commit's coalesced user and device
rows (``batch.coalesce``) as ONE journal entry, ``(seq, payload)``, and later
*folds* the oldest entries into ``user_presence`` / ``device_presence``. This
module owns everything about that which needs no database: the payload
format, the in-memory ``JournalIndex`` of which entry holds the latest row of
each user and device, the choice of a bounded chunk of oldest entries, and the
rows a fold of that chunk must write. The store runs the SQL around it.

Invariants the index keeps (given entries are ``record``-ed in ``seq`` order
and a fold always takes a prefix of the entries, oldest first):

* ``user_seq[u]`` is the newest entry holding a row of user ``u``; a row of
  ``u`` in an older entry is *superseded*: folding it would be overwritten by
  the newer row anyway, so the fold skips it (the saving that makes the
  journal cheaper than upserting every group).
* ``user_stream[u]`` is the stream id of ``u``'s newest *notified* row in the
  journal (ids grow with ``seq``, so it is also the greatest). When ``u``'s
  newest row is folded it carries that id, not its own: a row without notify
  has id 0 ("keep the stored id"), but the id to keep may sit in a skipped,
  older entry that never reached the table.
* Each entry's ``live`` count is how many of its rows are not superseded, so
  a chunk can be bounded by the rows its fold will write, not only read.
* The index changes only after the database transaction it mirrors has
  committed (``record`` after an append, ``forget`` after a fold), so a
  rolled-back transaction leaves it exact.

Payload: ``orjson`` of ``[1, users, devices]`` (1 is the format), rows as in
``batch.UserRow`` / ``batch.DeviceRow``. ``encode_entry`` refuses an integer
outside signed 64 bits (orjson would write up to 2**64 - 1, and the row would
then fail at every fold): a group carrying one fails when appended, as it
failed before the journal existed.
"""

from __future__ import annotations

import enum
import itertools
import operator
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from federation_presence.store.batch import DeviceRow, UserRow

PAYLOAD_FORMAT = 1
DEFAULT_MAX_CHANGES = 500_000
DEFAULT_FOLD_CHANGES = 20_000
DEFAULT_FOLD_WRITES = 2_000
DEFAULT_SIZE_FOLD_MIN = 1_000
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_USER_INT_COLUMNS = (2, 5, 6, 7)
_DEVICE_INT_COLUMNS = (3, 4, 5)


class FoldTrigger(enum.Enum):
    """Why a fold ran."""

    SIZE = "size"  # the journal held more than its limit
    IDLE = "idle"  # the writer had nothing else to do
    READ = "read"  # a read of the presence tables must see everything
    OPEN = "open"  # what a previous run left (crash recovery)
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class JournalLimits:
    """Bounds of the journal and of one fold.

    ``max_changes``: rows the journal may hold before size-triggered folds
    start. ``fold_changes`` / ``fold_writes``: one fold reads at most this
    many journal rows and writes at most this many table rows (a single entry
    above either is still folded alone), which bounds how long a fold holds
    the writer. ``size_fold_min``: the least a size-triggered fold takes
    (``size_fold``).
    """

    max_changes: int = DEFAULT_MAX_CHANGES
    fold_changes: int = DEFAULT_FOLD_CHANGES
    fold_writes: int = DEFAULT_FOLD_WRITES
    size_fold_min: int = DEFAULT_SIZE_FOLD_MIN

    def __post_init__(self) -> None:
        if (
            self.max_changes < 0
            or self.fold_changes < 1
            or self.fold_writes < 1
            or self.size_fold_min < 1
        ):
            raise ValueError(f"journal limits must be positive: {self!r}")

    def size_fold(self, excess: int) -> JournalLimits:
        """The bounds of a fold run because the journal holds ``excess`` rows too many.

        About twice the excess (at least ``size_fold_min``, at most a full
        chunk): the store folds one such chunk after each group commit while
        over the limit, so the journal comes back under it within a round or
        two, and no fold holds the writer much longer than a group commit
        does: every group commit queued behind a fold waits for it, and a
        full chunk (20,000 rows) held the writer for up to ~45 ms in the
        ingest benchmarks (BENCHMARKS.md, issue 18). Idle, read, open and
        close folds still take full chunks.
        """
        rows = max(self.size_fold_min, 2 * excess)
        return JournalLimits(
            self.max_changes,
            min(self.fold_changes, rows),
            min(self.fold_writes, rows),
            self.size_fold_min,
        )


@dataclass(frozen=True, slots=True)
class FoldReport:
    """What one fold did (one database transaction)."""

    trigger: FoldTrigger
    entries: int
    rows_read: int
    rows_written: int
    journal_rows_left: int


@dataclass(frozen=True, slots=True)
class FoldPlan:
    """The table rows a fold of the entries up to ``last_seq`` writes, in key order."""

    last_seq: int
    entries: int
    rows_read: int
    users: list[list[Any]]
    devices: list[list[Any]]


def _out_of_range(rows: Sequence[Sequence[Any]], columns: tuple[int, ...]) -> bool:
    return any(not INT64_MIN <= row[c] <= INT64_MAX for row in rows for c in columns)


def encode_entry(users: Sequence[UserRow], devices: Sequence[DeviceRow]) -> bytes:
    """The payload of one journal entry; ``ValueError`` if a value cannot be stored."""
    entry = (PAYLOAD_FORMAT, users, devices)
    try:
        # fast path: every realistic value fits 53 bits
        return orjson.dumps(entry, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        if _out_of_range(users, _USER_INT_COLUMNS) or _out_of_range(devices, _DEVICE_INT_COLUMNS):
            raise ValueError("an integer does not fit in signed 64 bits") from None
        return orjson.dumps(entry)


def decode_entry(payload: bytes) -> tuple[list[list[Any]], list[list[Any]]]:
    """``(users, devices)`` rows of a payload, as mutable lists."""
    decoded = orjson.loads(payload)
    if not isinstance(decoded, list) or len(decoded) != 3 or decoded[0] != PAYLOAD_FORMAT:
        raise ValueError("a journal entry in an unknown format")
    return decoded[1], decoded[2]


_SHRINK_BELOW = 4
_SHRINK_MIN = 1024


class JournalIndex:
    """Which journal entry holds the latest row of each user and device (see module doc).

    Its dicts are rebuilt once they hold under a quarter of their high-water
    mark (a ``dict`` never shrinks on deletion): after a burst of a million
    distinct users is folded, the index's memory goes with them.
    """

    __slots__ = (
        "_device_seq",
        "_entries",
        "_high",
        "_user_seq",
        "_user_stream",
        "changes",
        "next_seq",
    )

    def __init__(self) -> None:
        self._user_seq: dict[str, int] = {}
        self._user_stream: dict[str, int] = {}
        self._device_seq: dict[tuple[str, str], int] = {}
        # seq -> [rows, live rows], in seq order (dicts keep insertion order)
        self._entries: dict[int, list[int]] = {}
        self.changes = 0
        """Rows (user and device) the journal holds."""
        self.next_seq = 1
        self._high = 0  # the most keys the dicts held since they were last rebuilt

    def __len__(self) -> int:
        """Entries the journal holds."""
        return len(self._entries)

    @property
    def live_rows(self) -> int:
        """Rows a fold of everything would write."""
        return len(self._user_seq) + len(self._device_seq)

    def record(
        self, seq: int, users: Sequence[Sequence[Any]], devices: Sequence[Sequence[Any]]
    ) -> list[str]:
        """Entry ``seq`` (greater than every recorded one) holds these rows (unique keys).

        Returns the users that had no row in the journal before.
        """
        # once per row: C-level map/Counter/update instead of a Python loop
        entries = self._entries
        superseded: Counter[int | None] = Counter()
        new_users: list[str] = []
        if users:
            user_ids = [row[0] for row in users]
            previous_seqs = list(map(self._user_seq.get, user_ids))
            superseded.update(previous_seqs)
            if None in superseded:
                is_none = map(operator.is_, previous_seqs, itertools.repeat(None))
                new_users = list(itertools.compress(user_ids, is_none))
            self._user_seq.update(zip(user_ids, itertools.repeat(seq)))
            self._user_stream.update([(row[0], row[7]) for row in users if row[7]])
        if devices:
            keys = [(row[0], row[1]) for row in devices]
            superseded.update(map(self._device_seq.get, keys))
            self._device_seq.update(zip(keys, itertools.repeat(seq)))
        for previous, count in superseded.items():
            if previous is not None:
                entries[previous][1] -= count
        rows = len(users) + len(devices)
        entries[seq] = [rows, rows]
        self.changes += rows
        self.next_seq = seq + 1
        live = len(self._user_seq) + len(self._device_seq)
        if live > self._high:
            self._high = live
        return new_users

    def oldest_seq(self) -> int | None:
        """The oldest entry's seq; None if the journal is empty."""
        return next(iter(self._entries), None)

    def newest_entry_of(self, user_ids: Iterable[str]) -> int | None:
        """The newest entry holding one of these users' latest rows; None if none does."""
        user_seq = self._user_seq
        return max(filter(None, map(user_seq.get, user_ids)), default=None)

    def rebuild(self, entries: Iterable[tuple[int, bytes]]) -> int:
        """Forget everything, then record ``entries`` (in seq order); their max stream id."""
        self._user_seq.clear()
        self._user_stream.clear()
        self._device_seq.clear()
        self._entries.clear()
        self.changes = 0
        for seq, payload in entries:
            users, devices = decode_entry(payload)
            self.record(seq, users, devices)
        return max(self._user_stream.values(), default=0)

    def chunk(self, limits: JournalLimits) -> int | None:
        """The last seq of the oldest entries one fold takes; None if the journal is empty."""
        last: int | None = None
        rows = writes = 0
        for seq, (entry_rows, live) in self._entries.items():
            if last is not None and (
                rows + entry_rows > limits.fold_changes or writes + live > limits.fold_writes
            ):
                break
            rows += entry_rows
            writes += live
            last = seq
        return last

    def live_entries(self, last_seq: int) -> list[int]:
        """Entries up to ``last_seq`` holding a row no newer entry supersedes.

        Only these need reading for a fold; the others are only deleted.
        """
        entries = self._entries
        return [seq for seq in self._oldest(last_seq) if entries[seq][1]]

    def plan(self, last_seq: int, live: Iterable[tuple[int, bytes]]) -> FoldPlan:
        """The rows folding the entries up to ``last_seq`` writes.

        ``live``: the payloads of ``live_entries(last_seq)``, in seq order.
        """
        user_seq = self._user_seq
        user_stream = self._user_stream
        device_seq = self._device_seq
        users: list[list[Any]] = []
        devices: list[list[Any]] = []
        read: list[int] = []
        for seq, payload in live:
            read.append(seq)
            entry_users, entry_devices = decode_entry(payload)
            for row in entry_users:
                user_id = row[0]
                if user_seq.get(user_id) == seq:
                    row[7] = user_stream.get(user_id, 0)
                    users.append(row)
            for row in entry_devices:
                if device_seq.get((row[0], row[1])) == seq:
                    devices.append(row)
        if read != self.live_entries(last_seq):
            raise ValueError(f"a fold up to {last_seq} was given other entries than it needs")
        folded = [self._entries[seq][0] for seq in self._oldest(last_seq)]
        users.sort()
        devices.sort()
        return FoldPlan(last_seq, len(folded), sum(folded), users, devices)

    def forget(self, plan: FoldPlan) -> None:
        """The fold ``plan`` committed: its entries left the journal."""
        for row in plan.users:
            del self._user_seq[row[0]]
            self._user_stream.pop(row[0], None)
        for row in plan.devices:
            del self._device_seq[(row[0], row[1])]
        entries = self._entries
        for seq in list(self._oldest(plan.last_seq)):
            self.changes -= entries.pop(seq)[0]
        live = len(self._user_seq) + len(self._device_seq)
        if self._high > _SHRINK_MIN and live * _SHRINK_BELOW < self._high:
            self._user_seq = dict(self._user_seq)
            self._user_stream = dict(self._user_stream)
            self._device_seq = dict(self._device_seq)
            self._entries = dict(self._entries)
            self._high = live

    def _oldest(self, last_seq: int) -> Iterator[int]:
        return itertools.takewhile(lambda seq: seq <= last_seq, self._entries)
