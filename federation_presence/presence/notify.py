"""The notify rule: which changes are told to interested parties (pure).

One rule for outbound federation and local ``/sync`` streams (DESIGN.md): a
new state is notified when ``presence``, ``status_msg`` or
``currently_active`` changed, or when ``last_active_ts`` moved forward by more
than ``last_active_granularity_ms`` **and** the user is not
``currently_active``. Everything else is suppressed: persisted (so a GET gives
a fresh ``last_active``) but given no stream position and sent nowhere.

While ``currently_active`` stays true, receivers consider the user active
whatever the last active time (client-server spec, "Last active ago"), so its
bumps carry no information worth a message. A ``last_active_ts`` that moves
backwards (a remote server's clock) is not news either.

A user seen for the first time (``prev`` None) is notified as ``NEW_USER``
unless its state says nothing beyond the default offline-and-never-active.

Invariant: if the reason is None, ``presence``, ``status_msg`` and
``currently_active`` are unchanged.
"""

from __future__ import annotations

from federation_presence.presence.model import NotifyReason, UserPresence
from federation_presence.presence.states import PresenceState


def notify_reason(
    prev: UserPresence | None, new: UserPresence, last_active_granularity_ms: int
) -> NotifyReason | None:
    """Why ``new`` must be notified given the last state ``prev``, or None."""
    if prev is None:
        return new_user_reason(new, last_active_granularity_ms)
    if prev.state is not new.state:
        return NotifyReason.PRESENCE
    if prev.status_msg != new.status_msg:
        return NotifyReason.STATUS_MSG
    if prev.currently_active != new.currently_active:
        return NotifyReason.CURRENTLY_ACTIVE
    if (
        new.last_active_ts - prev.last_active_ts > last_active_granularity_ms
        and not new.currently_active
    ):
        return NotifyReason.LAST_ACTIVE
    return None


def new_user_reason(new: UserPresence, last_active_granularity_ms: int) -> NotifyReason | None:
    """``notify_reason`` of a user seen for the first time.

    ``NEW_USER``, unless ``new`` would raise no reason against the default
    state (offline, no status, never active): the rule above, spelt out, so
    that a push naming a new user costs no default state to compare with.
    """
    if (
        new.state is PresenceState.OFFLINE
        and new.status_msg is None
        and not new.currently_active
        and new.last_active_ts <= last_active_granularity_ms
    ):
        return None
    return NotifyReason.NEW_USER
