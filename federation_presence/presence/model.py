"""The values the core computes with and the shell stores (pure).

``UserPresence`` is the combined per-user state. For remote users it is all we
keep (never per-device data); for local users it is derived from their
``DevicePresence`` rows plus the per-user ``status_msg``.

``StateChange`` pairs a new ``UserPresence`` with the reason it must be
notified (or None: persist it, e.g. a suppressed ``last_active`` bump, but
wake nobody and give it no new stream position). ``Outcome`` is everything one
core step decided; ``store.apply(outcome)`` makes it durable in one
transaction.

Frozen, except on the hot path. ``UserPresence`` and ``StateChange`` are
built once per remote push (tens of thousands a second), and a frozen
dataclass's ``__init__`` (``object.__setattr__`` per field) costs about five
times a plain slotted one: measured 1.5 µs against 0.3 µs for seven fields,
which alone was a third of the per-push budget. They are therefore
``slots=True, unsafe_hash=True`` without ``frozen``: immutable by convention,
hashable by value (presence router modules put them in sets), and never
assigned after construction anywhere in the package — new values are built,
as ``tests/unit/presence/test_values_are_not_mutated.py`` checks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from federation_presence.ids import DeviceId, UserId
from federation_presence.presence.states import PresenceState

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    """Timers of the core, all in ms. Defaults are DESIGN.md's (Synapse's).

    ``offline_cache_size`` is not a timer: how many offline remote users the
    machine keeps beyond those that are not offline (the rest are read
    through from the store; ``PresenceMachine.forget_offline``).
    """

    idle_timeout_ms: int = 5 * MINUTE_MS
    sync_timeout_ms: int = 30 * SECOND_MS
    federation_timeout_ms: int = 30 * MINUTE_MS
    federation_ping_interval_ms: int = 25 * MINUTE_MS
    last_active_granularity_ms: int = 60 * SECOND_MS
    currently_active_window_ms: int = 60 * SECOND_MS
    offline_cache_size: int = 10_000


@dataclass(slots=True, unsafe_hash=True)
class UserPresence:
    """Combined presence of one user, local or remote.

    ``last_active_ts`` is wall-clock ms (for remote users: receipt time minus
    ``last_active_ago``). ``last_federation_update_ts`` is, for remote users,
    when their server last told us anything; for local users, when we last
    sent them over federation (drives FEDERATION_PING). ``last_user_sync_ts``
    is, for local users, the latest sync of any device.
    """

    user_id: UserId
    state: PresenceState = PresenceState.OFFLINE
    last_active_ts: int = 0
    status_msg: str | None = None
    currently_active: bool = False
    last_federation_update_ts: int = 0
    last_user_sync_ts: int = 0


@dataclass(frozen=True, slots=True)
class DevicePresence:
    """One local device's own state; never kept for remote users.

    ``last_sync_ts`` is when the device's latest sync (or heartbeat) ended, or
    is ongoing (``syncing``): a syncing device never times out to offline.
    """

    user_id: UserId
    device_id: DeviceId
    state: PresenceState = PresenceState.OFFLINE
    last_active_ts: int = 0
    last_sync_ts: int = 0
    syncing: int = 0


class NotifyReason(enum.Enum):
    """Why a change must be told to interested parties."""

    NEW_USER = "new_user"
    PRESENCE = "presence"
    STATUS_MSG = "status_msg"
    CURRENTLY_ACTIVE = "currently_active"
    LAST_ACTIVE = "last_active"


@dataclass(slots=True, unsafe_hash=True)
class StateChange:
    state: UserPresence
    notify: NotifyReason | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one core step decided.

    ``changes``: combined states to persist (notify ones also get a new stream
    id and go to senders and local syncers). ``devices``: local device rows to
    upsert. ``next_deadline_ms``: when the core next needs ``tick``, or None.
    ``dropped``: one reason per input the core refused (for logs and metrics).
    ``federation_pings``: local users whose unchanged state must be re-sent to
    every interested destination (FEDERATION_PING); their
    ``last_federation_update_ts`` change is also in ``changes`` (notify None).
    ``seq``: the number of the machine call that made it (increasing); the
    shell tells the machine which calls are durable, so that it evicts only
    users whose state the store holds (``PresenceMachine.forget_offline``).
    It is bookkeeping, not a decision: outcomes compare equal without it.
    """

    changes: tuple[StateChange, ...] = ()
    devices: tuple[DevicePresence, ...] = ()
    next_deadline_ms: int | None = None
    dropped: tuple[str, ...] = field(default=())
    federation_pings: tuple[UserPresence, ...] = ()
    seq: int = field(default=0, compare=False)

    @property
    def to_notify(self) -> tuple[UserPresence, ...]:
        return tuple(c.state for c in self.changes if c.notify is not None)
