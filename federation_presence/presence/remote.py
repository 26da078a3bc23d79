"""Remote users: their combined state as their server tells it (pure).

For a remote user we keep only what its server pushes (never per-device
data) and apply none of our local rules: state, ``status_msg`` and
``currently_active`` are taken as sent (a push carries the full state, so an
absent ``status_msg`` clears it). We derive two timestamps at receipt time:

* ``last_active_ts = now - last_active_ago`` (clamped at 0: a remote server
  claiming activity before the epoch gets the epoch);
* ``last_federation_update_ts = now``: their server is alive.

A remote user whose server has not refreshed it for ``federation_timeout_ms``
(DESIGN.md FEDERATION_TIMEOUT, 30 min; the sender re-sends every 25) is set
``offline``, protecting us from servers that forget or vanish. Offline users
have no timeout. ``currently_active`` goes false with the timeout: an offline
user is not active.

A push for one of our own users is refused by the caller
(``is_local_user``): nobody else speaks for them.
"""

from __future__ import annotations

from dataclasses import replace

from federation_presence.ids import ServerName, UserId
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.model import PresenceSettings, UserPresence
from federation_presence.presence.states import PresenceState

_OFFLINE = PresenceState.OFFLINE


def local_suffix(server_name: ServerName) -> str:
    """What every user id on ``server_name`` ends with."""
    return ":" + server_name


def is_local_user(user_id: UserId, server_name: ServerName) -> bool:
    """True if ``user_id`` is on ``server_name`` (the localpart has no ':')."""
    return user_id.endswith(local_suffix(server_name))


def remote_state(push: RemotePush, now: int) -> UserPresence:
    """The remote user's combined state after ``push`` received at ``now``."""
    last_active_ts = now - push.last_active_ago
    # Positional on purpose: this runs per push, and keyword arguments make a
    # frozen dataclass's __init__ markedly slower.
    return UserPresence(
        push.user_id,
        push.state,
        last_active_ts if last_active_ts > 0 else 0,
        push.status_msg,
        push.currently_active,
        now,
    )


def federation_timeout_deadline(user: UserPresence, settings: PresenceSettings) -> int | None:
    """When a remote user goes offline unless refreshed; None if already offline."""
    if user.state is _OFFLINE:
        return None
    return user.last_federation_update_ts + settings.federation_timeout_ms


def after_federation_timeout(
    user: UserPresence, now: int, settings: PresenceSettings
) -> UserPresence:
    """The remote user at ``now``: offline once its server has been silent too long."""
    deadline = federation_timeout_deadline(user, settings)
    if deadline is None or now < deadline:
        return user
    return replace(user, state=_OFFLINE, currently_active=False)
