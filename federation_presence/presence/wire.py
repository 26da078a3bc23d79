"""The presence wire format: what a ``UserPresence`` looks like as JSON (pure).

Two audiences, one place:

* clients (``GET .../presence/{userId}/status``, ``/sync`` presence events):
  ``presence_content``; ``busy`` under its unstable MSC3026 name;
  ``last_active_ago`` only for a user who was ever active.
* federation (an ``m.presence`` EDU's ``push`` entries): ``federation_push``.
  The spec's schema requires ``user_id``, ``presence`` and
  ``last_active_ago``, and receivers (Synapse) read ``currently_active``
  too, so every push carries all four, also for a user who was never active:
  ``last_active_ago`` is then ``now`` (the time since the epoch, what a
  ``last_active_ts`` of 0 means; Synapse sends the same). ``status_msg`` is
  sent only when set.

``last_active_ago`` is computed at ``now`` (passed in) and never negative.
"""

from __future__ import annotations

from typing import Any

from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import (
    PresenceState,
    to_client_wire,
    to_federation_wire,
)


def presence_content(
    state: PresenceState,
    last_active_ts: int,
    currently_active: bool,
    status_msg: str | None,
    now: int,
) -> dict[str, Any]:
    """The client-facing presence object; ``last_active_ago`` computed at ``now``."""
    content: dict[str, Any] = {
        "presence": to_client_wire(state, unstable_busy=True),
        "currently_active": currently_active,
        "status_msg": status_msg,
    }
    if last_active_ts > 0:
        content["last_active_ago"] = max(now - last_active_ts, 0)
    return content


def federation_push(user: UserPresence, now: int) -> dict[str, Any]:
    """One schema-complete ``push`` entry of an ``m.presence`` EDU, as of ``now``."""
    push: dict[str, Any] = {
        "user_id": user.user_id,
        "presence": to_federation_wire(user.state),
        "last_active_ago": max(now - user.last_active_ts, 0),
        "currently_active": user.currently_active,
    }
    if user.status_msg is not None:
        push["status_msg"] = user.status_msg
    return push
