"""Presence values the contract tests store (builders with readable defaults)."""

from __future__ import annotations

from federation_presence.ids import DeviceId, UserId
from federation_presence.presence.model import (
    DevicePresence,
    NotifyReason,
    Outcome,
    StateChange,
    UserPresence,
)
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import InboundTxn

NOW_TS = 1_700_000_000_000
INT64_OVERFLOW = 2**63
"""A timestamp no database column can hold: a row carrying it fails its batch."""


def user(
    user_id: str,
    state: PresenceState = PresenceState.ONLINE,
    *,
    last_active_ts: int = NOW_TS,
    status_msg: str | None = None,
    currently_active: bool = False,
) -> UserPresence:
    return UserPresence(
        UserId(user_id),
        state,
        last_active_ts,
        status_msg,
        currently_active,
        last_federation_update_ts=NOW_TS,
        last_user_sync_ts=NOW_TS - 5,
    )


def notified(*states: UserPresence, reason: NotifyReason = NotifyReason.PRESENCE) -> Outcome:
    return Outcome(changes=tuple(StateChange(s, reason) for s in states))


def silent(*states: UserPresence) -> Outcome:
    return Outcome(changes=tuple(StateChange(s, None) for s in states))


def device(user_id: str, device_id: str, state: PresenceState) -> DevicePresence:
    return DevicePresence(
        UserId(user_id), DeviceId(device_id), state, NOW_TS - 10, NOW_TS - 3, syncing=1
    )


def inbound_txn(origin: str, txn_id: str, received_ts: int = NOW_TS) -> InboundTxn:
    return InboundTxn(origin, txn_id, b'{"pdus":{}}', received_ts)
