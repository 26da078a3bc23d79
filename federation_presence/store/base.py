"""The one ``Store`` protocol and the values it stores besides presence.

Everything the worker keeps on disk goes through ``Store``: combined user
presence and local device rows (the presence *stream*), inbound ``/send``
transaction answers (dedup), cached remote verify keys, readers' stream
positions and per-destination outbound transaction counters. Two
implementations honour it, ``sqlite.SqliteStore`` (embedded default) and
``postgres.PostgresStore`` (scale-out); ``tests/contract`` runs one suite over
both.

Invariants every implementation keeps:

* ``apply`` is the only write path from the core and is group-committed:
  concurrent calls are written in one database transaction and each caller is
  answered only once that transaction is durable. A batch that fails fails
  every caller in it with ``StoreError`` and writes nothing; the store stays
  usable.
* Stream ids are positive and strictly increasing in commit order, so a reader
  that saw id ``n`` never later finds a committed row with an id ``<= n`` it
  has not seen. A change with ``notify`` set gets a new id; a change without
  keeps the user's current id (0 for a user first stored without notify: such
  a row is not on the stream until a notified change).
* The stream coalesces per user: ``stream_since`` gives each user once, with
  their latest state, ordered by stream id.
* Values must fit both databases: strings of Unicode scalar values (no lone
  surrogates) without U+0000 (PostgreSQL text cannot hold it), and integers
  within signed 64 bits. The edges that parse
  wire input guarantee it; a value outside fails its whole write group.
* Every driver error leaves as ``StoreError`` (``raise ... from exc``); a
  database written by a newer program is refused with ``SchemaTooNewError``.
* Every wait of a caller is bounded (``apply_timeout_s``): past it the caller
  gets ``StoreError``; the write stays queued and may still commit later (a
  PostgreSQL prune, on a connection of its own, is rolled back instead).
* ``prune_txns`` runs in a transaction of its own, never in a ``/send``
  group commit: a prune neither delays those writes' commit nor fails with
  them.
* The store's life is ``run``, a child task of its owner's task group: no
  task or thread of the store outlives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from federation_presence.presence.model import DevicePresence, Outcome, UserPresence

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

PRUNE_BATCH_ROWS = 10_000

DEFAULT_APPLY_TIMEOUT_S = 10.0
"""How long a caller waits for its write (or read) before ``StoreError``.

10 s: a group commit normally takes milliseconds and a fold chunk or a
checkpoint tens of ms, so only a stalled database gets near it; it is twice
SQLite's lock wait (``busy_timeout_ms``, 5 s), so a write that waits out
another connection's lock still reports that error; and it is well under
the 60 s a Synapse federation sender gives a ``/send`` request, so the
sender sees our 503 (and retries) instead of its own timeout. A write that
timed out stays queued and may still commit: harmless, because the keeper
owes a failed write's users to its next write (current state, so nothing
stale) and a retried ``/send`` then finds its stored answer.
"""


@dataclass(frozen=True, slots=True)
class InboundTxn:
    """A ``/send`` transaction's answer, stored in the same db transaction as its outcome."""

    origin: str
    txn_id: str
    response: bytes
    received_ts: int


@dataclass(frozen=True, slots=True)
class ServerKeyRecord:
    """A remote server's verify key, cached by the keyring.

    ``key`` is the unpadded base64 ed25519 public key. ``valid_until_ts`` is the
    key response's ``valid_until_ts`` (for ``verify_keys``); ``expired_ts`` is
    set for ``old_verify_keys``.
    """

    server_name: str
    key_id: str
    key: str
    valid_until_ts: int
    expired_ts: int | None
    fetched_ts: int


@dataclass(frozen=True, slots=True)
class StreamRow:
    """A user's latest state and the stream id it sits at."""

    stream_id: int
    state: UserPresence


@dataclass(slots=True)
class StoreStats:
    """Counters of one store object (mutable on purpose: it only counts).

    ``commits`` counts write transactions committed (one per group commit),
    ``applies`` the ``apply`` calls they made durable, ``failed_batches`` the
    write transactions that failed and were rolled back; ``user_rows`` and
    ``device_rows`` the rows those groups carried (coalesced per group).

    A journalling store (SQLite) also counts ``journal_appends`` (entries
    written, one per group that carried rows), ``folds`` (fold transactions),
    ``fold_rows_read`` (journal rows they consumed), ``fold_rows_written``
    (rows they wrote to the presence tables: read minus superseded) and
    ``failed_folds``. ``txn_lookups_filtered`` counts ``get_txn_response``
    calls the in-memory txn filter answered without the database,
    ``user_reads_filtered`` the user ids ``get_users`` did not read because
    the in-memory user filter knew them absent.
    ``prunes`` counts prune transactions committed (never part of
    ``commits``), ``timeouts`` the waits that gave up after
    ``apply_timeout_s``.
    """

    commits: int = 0
    applies: int = 0
    failed_batches: int = 0
    user_rows: int = 0
    device_rows: int = 0
    journal_appends: int = 0
    folds: int = 0
    fold_rows_read: int = 0
    fold_rows_written: int = 0
    failed_folds: int = 0
    txn_lookups_filtered: int = 0
    user_reads_filtered: int = 0
    prunes: int = 0
    timeouts: int = 0


class Store(Protocol):
    """Durable state of the worker; one database transaction per method."""

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None:
        """The store's life, as a child task of its owner's task group.

        Opens (connects, migrates; ``SchemaTooNewError`` if the db is newer),
        reports ready through ``task_status``, serves until ``close`` or
        cancellation, then writes what is queued (shielded, bounded) and
        closes.
        """
        ...

    async def close(self) -> None:
        """Write what is queued, then close; later calls raise ``StoreError``."""
        ...

    async def apply(self, outcome: Outcome, txn: InboundTxn | None = None) -> int:
        """Make ``outcome`` (and ``txn``) durable in one transaction.

        Returns the max stream id after the commit (at least the id of every
        notified change it carried); returns only once committed.
        """
        ...

    async def load_users(self) -> list[UserPresence]: ...

    async def load_devices(self) -> list[DevicePresence]: ...

    async def get_user(self, user_id: str) -> UserPresence | None: ...

    async def get_users(self, user_ids: Sequence[str]) -> list[UserPresence]:
        """The stored state of those of ``user_ids`` the store has (any order), in one read.

        The keeper's read-through of users the machine evicted: it sees every
        committed ``apply`` (a journalling store folds only as far as the
        newest entry holding one of them).
        """
        ...

    async def load_live_users(self, local_suffix: str) -> list[UserPresence]:
        """What a restarted machine must hold: users not offline, and every user
        whose id ends with ``local_suffix`` (ours). Offline remote users stay
        in the store and are read through when they come back."""
        ...

    async def current_stream_id(self) -> int: ...

    async def stream_since(self, after: int, limit: int) -> list[StreamRow]:
        """Latest state of users whose stream id is ``> after``, by stream id, one row each."""
        ...

    async def get_txn_response(self, origin: str, txn_id: str) -> bytes | None: ...

    async def prune_txns(self, older_than_ts: int, limit: int = PRUNE_BATCH_ROWS) -> int:
        """Forget at most ``limit`` transactions received before ``older_than_ts``
        (oldest first); how many went. Fewer than ``limit`` means none is left.

        Its own transaction, never part of a ``/send`` group commit; bounded
        so that it never holds the database for long; callers repeat until
        done.
        """
        ...

    async def get_server_keys(self, server_name: str) -> list[ServerKeyRecord]: ...

    async def put_server_keys(self, records: Sequence[ServerKeyRecord]) -> None: ...

    async def get_position(self, name: str) -> int:
        """A reader's persisted stream position; 0 if it has none."""
        ...

    async def set_position(self, name: str, position: int) -> None: ...

    async def next_txn_id(self, destination: str) -> int:
        """The next outbound transaction number for ``destination`` (durable, increasing)."""
        ...

    async def set_room_members(self, room_id: str, members: Sequence[str]) -> None:
        """Replace the members of ``room_id`` (an empty list removes the room)."""
        ...

    async def delete_room(self, room_id: str) -> bool:
        """Forget ``room_id``; whether it had members."""
        ...

    async def load_room_members(self) -> list[tuple[str, str]]:
        """Every stored ``(room_id, user_id)`` membership."""
        ...
