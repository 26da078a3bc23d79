"""Turning a group of ``apply`` calls into the rows of one transaction (pure).

Both stores group-commit: every ``apply`` queued while the previous
transaction was being written goes into the next one. ``coalesce`` flattens
such a group, in call order, into one row per user, one per device and one per
inbound transaction, so each table gets a single ``executemany``/``unnest``
statement without duplicate keys (PostgreSQL refuses an upsert that touches a
row twice).

Rules (the contract suite pins them):

* Changes are taken in call order; the last change to a user gives the row.
* Every notified change consumes the next stream id, in order; a change
  without notify keeps the id the user already has in this group, or 0 so the
  upsert keeps the stored one (the SQL takes the greater of stored and new).
  Hence a row's id is the id of its latest notified change, and the group's
  highest id belongs to some row: ids stay monotonic and contiguous per group.
* Devices: the last row per (user_id, device_id) wins.
* Inbound transactions: the first answer per (origin, txn_id) wins, and one
  already stored is kept (``ON CONFLICT DO NOTHING``): a repeat is answered
  with what was answered first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from federation_presence.presence.model import Outcome
from federation_presence.store.base import InboundTxn

# (user_id, state, last_active_ts, status_msg, currently_active,
#  last_federation_update_ts, last_user_sync_ts, stream_id)
UserRow = tuple[str, str, int, str | None, bool, int, int, int]
# (user_id, device_id, state, last_active_ts, last_sync_ts, syncing)
DeviceRow = tuple[str, str, str, int, int, int]
# (origin, txn_id, response, received_ts)
TxnRow = tuple[str, str, bytes, int]

# The columns of a ``user_presence`` row, in the order the row tuples built
# here carry them (before the stream id); both dialects' SQL is built on it.
USER_COLUMNS = (
    "user_id, state, last_active_ts, status_msg, currently_active,"
    " last_federation_update_ts, last_user_sync_ts"
)


@dataclass(frozen=True, slots=True)
class CoalescedWrite:
    """The rows of one group commit; ``last_stream_id`` is 0 if none was assigned."""

    users: list[UserRow]
    devices: list[DeviceRow]
    txns: list[TxnRow]
    last_stream_id: int


def count_notified(writes: Sequence[tuple[Outcome, InboundTxn | None]]) -> int:
    """How many stream ids ``coalesce`` will take for ``writes``."""
    return sum(1 for outcome, _ in writes for c in outcome.changes if c.notify is not None)


def coalesce(
    writes: Sequence[tuple[Outcome, InboundTxn | None]], stream_ids: Iterator[int]
) -> CoalescedWrite:
    """Rows for ``writes`` (in call order), drawing stream ids from ``stream_ids``."""
    users: dict[str, UserRow] = {}
    devices: dict[tuple[str, str], DeviceRow] = {}
    txns: dict[tuple[str, str], TxnRow] = {}
    last_stream_id = 0
    next_stream_id = stream_ids.__next__
    # the hot loop (once per push): ``_value_`` is the enum's plain attribute,
    # ``.value`` a property costing a Python call
    for outcome, txn in writes:
        for change in outcome.changes:
            s = change.state
            user_id = s.user_id
            if change.notify is not None:
                stream_id = last_stream_id = next_stream_id()
            else:
                previous = users.get(user_id)
                stream_id = 0 if previous is None else previous[7]
            users[user_id] = (
                user_id,
                s.state._value_,
                s.last_active_ts,
                s.status_msg,
                s.currently_active,
                s.last_federation_update_ts,
                s.last_user_sync_ts,
                stream_id,
            )
        for d in outcome.devices:
            devices[(d.user_id, d.device_id)] = (
                d.user_id,
                d.device_id,
                d.state._value_,
                d.last_active_ts,
                d.last_sync_ts,
                d.syncing,
            )
        if txn is not None:
            key = (txn.origin, txn.txn_id)
            if key not in txns:
                txns[key] = (txn.origin, txn.txn_id, txn.response, txn.received_ts)
    return CoalescedWrite(
        list(users.values()), list(devices.values()), list(txns.values()), last_stream_id
    )
