"""Combining a local user's devices into the user's presence (pure).

Owns the multi-device rules of seed 000 and DESIGN.md:

* the user's state is the highest of its devices' states in the order
  busy > online > unavailable > offline (no device: offline);
* ``last_active_ts`` is the latest over the devices, and never goes back
  (a device row dropped or restored late cannot make a user look older);
* ``last_user_sync_ts`` likewise is the latest sync of any device;
* ``status_msg`` is per user: it is carried over from the previous state and
  only an explicit ``SetPresence`` changes it (never a device, never a timer);
* ``currently_active`` is true while the user is ``online`` and the last
  activity is less than ``currently_active_window_ms`` old.

Invariant: the result depends on the set of devices, not their order.

The order is written out with ``is`` (``higher_state``) rather than through
``PresenceState.priority``: enum members hash in Python, and this runs for
every device on every local input.
"""

from __future__ import annotations

from collections.abc import Iterable

from federation_presence.presence.model import DevicePresence, PresenceSettings, UserPresence
from federation_presence.presence.states import PresenceState

_OFFLINE = PresenceState.OFFLINE
_UNAVAILABLE = PresenceState.UNAVAILABLE
_ONLINE = PresenceState.ONLINE
_BUSY = PresenceState.BUSY


def higher_state(a: PresenceState, b: PresenceState) -> PresenceState:
    """The higher of two states: busy > online > unavailable > offline."""
    if a is _BUSY or b is _BUSY:
        return _BUSY
    if a is _ONLINE or b is _ONLINE:
        return _ONLINE
    if a is _UNAVAILABLE or b is _UNAVAILABLE:
        return _UNAVAILABLE
    return _OFFLINE


def combined_state(devices: Iterable[DevicePresence]) -> PresenceState:
    """The highest device state: busy > online > unavailable > offline."""
    best = _OFFLINE
    for device in devices:
        best = higher_state(best, device.state)
    return best


def is_currently_active(
    state: PresenceState, last_active_ts: int, now: int, window_ms: int
) -> bool:
    """True while ``online`` and the last activity is within the window."""
    return state is _ONLINE and now - last_active_ts < window_ms


def currently_active_until(user: UserPresence, window_ms: int) -> int | None:
    """When ``currently_active`` of this user turns false, or None if it is false."""
    if not user.currently_active:
        return None
    return user.last_active_ts + window_ms


def combined_user(
    prev: UserPresence,
    devices: Iterable[DevicePresence],
    now: int,
    settings: PresenceSettings,
) -> UserPresence:
    """``prev`` updated from ``devices`` at ``now``.

    Carries over ``status_msg`` and ``last_federation_update_ts`` from
    ``prev``; everything else is derived from the devices.
    """
    state = _OFFLINE
    last_active_ts = prev.last_active_ts
    last_user_sync_ts = prev.last_user_sync_ts
    for device in devices:
        state = higher_state(state, device.state)
        if device.last_active_ts > last_active_ts:
            last_active_ts = device.last_active_ts
        if device.last_sync_ts > last_user_sync_ts:
            last_user_sync_ts = device.last_sync_ts
    return UserPresence(
        prev.user_id,
        state,
        last_active_ts,
        prev.status_msg,
        is_currently_active(state, last_active_ts, now, settings.currently_active_window_ms),
        prev.last_federation_update_ts,
        last_user_sync_ts,
    )
