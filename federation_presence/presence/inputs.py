"""What can happen to presence: the inputs of the core (pure values).

Each input is a noun for an event that already happened. Time is not part of
an input: the shell passes ``now`` alongside it.

Local inputs (``LocalInput``) come from our own users' devices through the
client API and the bridge heartbeat API; ``RemotePush`` comes from federation.
What each local input does to a device is decided in ``transitions.py``:

* ``Activity``: the device sent a message or a receipt (a pro-active event).
* ``SyncStarted`` / ``SyncEnded``: a ``/sync`` request began / finished.
  ``set_presence`` is the request's parameter; None means it was omitted
  (which is the same as ``online``). ``set_presence=offline`` is "not
  syncing": such a sync neither changes the device nor keeps it alive, and
  its ``SyncEnded`` (given the same ``set_presence``) is ignored too.
* ``SetPresence``: an explicit ``PUT /presence/{userId}/status``. It sets the
  device's state; ``status_msg`` is per user and only changes when
  ``status_msg_set`` (the body carried the key; None then clears it).
* ``DeviceHeartbeat``: a bridge saying "this device is here, in ``state``":
  a sync that starts and ends at once with ``set_presence=state``.

``RemotePush`` is built once per pushed entry on the ingest hot path, so it is
not frozen (see ``model.py`` for the measurement); it is never mutated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.presence.states import PresenceState


@dataclass(slots=True, unsafe_hash=True)
class RemotePush:
    """One validated entry of an ``m.presence`` EDU's ``push`` array.

    Validation (``federation/edu.py``) guarantees ``user_id`` is on
    ``origin``, ``last_active_ago >= 0`` and ``status_msg`` within limits.
    """

    origin: ServerName
    user_id: UserId
    state: PresenceState
    last_active_ago: int
    currently_active: bool = False
    status_msg: str | None = None


NO_DEVICE = DeviceId("")
"""Device id to use for an access token that has no device (appservice, admin)."""


@dataclass(frozen=True, slots=True)
class Activity:
    """A local device sent a message or a read receipt: a pro-active event."""

    user_id: UserId
    device_id: DeviceId


@dataclass(frozen=True, slots=True)
class SyncStarted:
    """A local device began a ``/sync``; ``set_presence`` None = omitted = online."""

    user_id: UserId
    device_id: DeviceId
    set_presence: PresenceState | None = None


@dataclass(frozen=True, slots=True)
class SyncEnded:
    """A local device's ``/sync`` finished; give the ``set_presence`` it started with."""

    user_id: UserId
    device_id: DeviceId
    set_presence: PresenceState | None = None


@dataclass(frozen=True, slots=True)
class SetPresence:
    """An explicit ``PUT .../presence/{userId}/status`` from a local device."""

    user_id: UserId
    device_id: DeviceId
    state: PresenceState
    status_msg: str | None = None
    status_msg_set: bool = False


@dataclass(frozen=True, slots=True)
class DeviceHeartbeat:
    """A bridge's heartbeat for one device: a sync that starts and ends at once."""

    user_id: UserId
    device_id: DeviceId
    state: PresenceState | None = None


LocalInput: TypeAlias = Activity | SyncStarted | SyncEnded | SetPresence | DeviceHeartbeat
"""Everything ``PresenceMachine.handle`` accepts."""
