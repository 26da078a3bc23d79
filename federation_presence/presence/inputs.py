"""What can happen to presence: the inputs of the core (pure values).

Each input is a noun for an event that already happened. Time is not part of
an input: the shell passes ``now`` alongside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from federation_presence.ids import ServerName, UserId
from federation_presence.presence.states import PresenceState


@dataclass(frozen=True, slots=True)
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
