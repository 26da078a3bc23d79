"""What a local input or the passing of time does to one device (pure).

Owns the per-device rules (seed 000, DESIGN.md "Local transitions"):

* A **pro-active** event bumps the device's ``last_active_ts`` and brings an
  ``unavailable``/``offline`` device to ``online``. Pro-active are: an
  ``Activity`` (message or receipt), a sync without ``set_presence`` or with
  ``set_presence=online``, and an explicit PUT of ``online``.
* ``busy`` (MSC3026) is left only by an explicit PUT or by going offline: a
  sync never overrides it (as in Synapse) and it never idles. Entering
  ``busy`` ("online and active, but busy") counts as pro-active, the spec's
  "changing presence state to a higher level of availability"; merely staying
  busy on every sync does not (else every long-poll of a busy client would
  bump ``last_active`` and, with ``currently_active`` false for busy, notify
  the whole federation once a minute). An explicit PUT of ``busy`` is a user's
  deliberate act and is always pro-active.
* A sync with ``set_presence=unavailable`` moves ``offline`` to
  ``unavailable`` and nothing else (an ``online`` device idles by its timer).
* A sync with ``set_presence=offline`` is "not syncing": nothing changes, and
  its end is ignored too.
* **Idle**: an ``online`` device with no pro-active event for
  ``idle_timeout_ms`` becomes ``unavailable``.
* **Sync timeout**: an ``online``/``unavailable``/``busy`` device with no sync
  in flight and no contact for ``sync_timeout_ms`` becomes ``offline``.
  Contact is the later of ``last_sync_ts`` (a sync ended, a heartbeat, an
  explicit PUT) and ``last_active_ts`` (a device that sends messages is
  evidently there, as in Synapse). A device with a sync in flight never
  times out: the shell guarantees a ``SyncEnded`` for every ``SyncStarted``.
  ``busy`` gets the same sync timeout (DESIGN.md: it goes offline "when the
  device stops syncing"); Synapse instead waits an hour (BUSY_ONLINE_TIMEOUT).

Boundaries: a timeout has happened once ``now - ts >= timeout`` (so a timer
set for ``ts + timeout`` and fired at that instant sees its effect).
Timestamps never move backwards: if ``now`` goes back, the later value stays.

Results are built with ``_device`` (positional) rather than
``dataclasses.replace``, which costs three times as much; every local input
and every timer goes through here.
"""

from __future__ import annotations

from federation_presence.ids import DeviceId, UserId
from federation_presence.presence.model import DevicePresence, PresenceSettings
from federation_presence.presence.states import PresenceState

_OFFLINE = PresenceState.OFFLINE
_UNAVAILABLE = PresenceState.UNAVAILABLE
_ONLINE = PresenceState.ONLINE
_BUSY = PresenceState.BUSY


def new_device(user_id: UserId, device_id: DeviceId) -> DevicePresence:
    """A device never seen before: offline, never active, never synced."""
    return DevicePresence(user_id=user_id, device_id=device_id)


def _device(
    device: DevicePresence,
    state: PresenceState,
    last_active_ts: int,
    last_sync_ts: int,
    syncing: int,
) -> DevicePresence:
    return DevicePresence(
        device.user_id, device.device_id, state, last_active_ts, last_sync_ts, syncing
    )


def after_activity(device: DevicePresence, now: int) -> DevicePresence:
    """A pro-active event: bump ``last_active_ts``; unavailable/offline → online."""
    state = _ONLINE if device.state is _OFFLINE or device.state is _UNAVAILABLE else device.state
    last_active_ts = max(device.last_active_ts, now)
    return _device(device, state, last_active_ts, device.last_sync_ts, device.syncing)


def _after_sync_presence(
    device: DevicePresence, set_presence: PresenceState | None, now: int
) -> DevicePresence:
    if set_presence is None or set_presence is _ONLINE:
        return after_activity(device, now)
    if set_presence is _UNAVAILABLE:
        if device.state is _OFFLINE:
            return _device(
                device, _UNAVAILABLE, device.last_active_ts, device.last_sync_ts, device.syncing
            )
        return device
    if set_presence is _BUSY and device.state is not _BUSY:
        last_active_ts = max(device.last_active_ts, now)
        return _device(device, _BUSY, last_active_ts, device.last_sync_ts, device.syncing)
    return device


def after_sync_started(
    device: DevicePresence, set_presence: PresenceState | None, now: int
) -> DevicePresence:
    """A sync began: it is in flight (no timeout) and may change the state."""
    if set_presence is _OFFLINE:
        return device
    syncing = _device(
        device,
        device.state,
        device.last_active_ts,
        max(device.last_sync_ts, now),
        device.syncing + 1,
    )
    return _after_sync_presence(syncing, set_presence, now)


def after_sync_ended(
    device: DevicePresence, set_presence: PresenceState | None, now: int
) -> DevicePresence:
    """A sync finished: the sync timeout counts from now.

    An unmatched end (e.g. a sync that began before a restart) is tolerated:
    the in-flight count never goes below zero.
    """
    if set_presence is _OFFLINE:
        return device
    return _device(
        device,
        device.state,
        device.last_active_ts,
        max(device.last_sync_ts, now),
        max(device.syncing - 1, 0),
    )


def after_heartbeat(
    device: DevicePresence, state: PresenceState | None, now: int
) -> DevicePresence:
    """A bridge heartbeat: a sync with ``set_presence=state`` that starts and ends now."""
    return after_sync_ended(after_sync_started(device, state, now), state, now)


def after_set_presence(device: DevicePresence, state: PresenceState, now: int) -> DevicePresence:
    """An explicit PUT: the device takes ``state``; online/busy are pro-active.

    The PUT is contact from the device (like a heartbeat), so it refreshes
    ``last_sync_ts`` and the device gets the full sync timeout.
    """
    last_active_ts = device.last_active_ts
    if state is _ONLINE or state is _BUSY:
        last_active_ts = max(last_active_ts, now)
    return _device(device, state, last_active_ts, max(device.last_sync_ts, now), device.syncing)


def idle_deadline(device: DevicePresence, settings: PresenceSettings) -> int | None:
    """When an ``online`` device idles to ``unavailable``; None for other states."""
    if device.state is not _ONLINE:
        return None
    return device.last_active_ts + settings.idle_timeout_ms


def offline_deadline(device: DevicePresence, settings: PresenceSettings) -> int | None:
    """When a device with no sync in flight goes ``offline``; None if it cannot."""
    if device.state is _OFFLINE or device.syncing > 0:
        return None
    return max(device.last_sync_ts, device.last_active_ts) + settings.sync_timeout_ms


def after_timeouts(device: DevicePresence, now: int, settings: PresenceSettings) -> DevicePresence:
    """The device as the passing of time leaves it at ``now`` (idle, then sync timeout)."""
    state = device.state
    idle_at = idle_deadline(device, settings)
    if idle_at is not None and now >= idle_at:
        state = _UNAVAILABLE
    offline_at = offline_deadline(device, settings)
    if offline_at is not None and now >= offline_at:
        state = _OFFLINE
    if state is device.state:
        return device
    return _device(device, state, device.last_active_ts, device.last_sync_ts, device.syncing)
