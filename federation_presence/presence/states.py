"""Presence states and their wire names (pure).

``busy`` is MSC3026. It is not in the spec's enums at the commit we follow, so
on the wire we accept both the stable ``busy`` and the unstable
``org.matrix.msc3026.busy`` and send the unstable name over federation (what
Synapse sends while the MSC is unmerged; see ``to_federation_wire``).
Unknown wire values are rejected at the edge (``parse_presence`` gives None);
they are never stored.
"""

from __future__ import annotations

import enum


class PresenceState(enum.Enum):
    OFFLINE = "offline"
    UNAVAILABLE = "unavailable"
    ONLINE = "online"
    BUSY = "busy"

    @property
    def priority(self) -> int:
        """Combination order across devices: busy > online > unavailable > offline."""
        return _PRIORITY[self]


_PRIORITY = {
    PresenceState.OFFLINE: 0,
    PresenceState.UNAVAILABLE: 1,
    PresenceState.ONLINE: 2,
    PresenceState.BUSY: 3,
}

BUSY_UNSTABLE = "org.matrix.msc3026.busy"

_FROM_WIRE: dict[str, PresenceState] = {s.value: s for s in PresenceState}
_FROM_WIRE[BUSY_UNSTABLE] = PresenceState.BUSY


def parse_presence(wire: object) -> PresenceState | None:
    """The state a wire value names, or None for anything else (rejected)."""
    if type(wire) is not str:
        return None
    return _FROM_WIRE.get(wire)


def to_federation_wire(state: PresenceState) -> str:
    """The name sent over federation: ``busy`` goes out as the unstable name."""
    return BUSY_UNSTABLE if state is PresenceState.BUSY else state.value


def to_client_wire(state: PresenceState, *, unstable_busy: bool = False) -> str:
    """The name given to clients; ``unstable_busy`` for clients of the MSC era."""
    if state is PresenceState.BUSY and unstable_busy:
        return BUSY_UNSTABLE
    return state.value
