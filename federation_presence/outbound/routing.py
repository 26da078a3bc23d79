"""The routing seam: which remote servers get which local users' presence.

The sender never reads rooms or router modules itself; it asks a
``DestinationSource``. The routing package (room memberships, presence
router modules) implements it (``routing.presence_routing``); tests use a
small in-memory one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from federation_presence.ids import ServerName, UserId


class DestinationSource(Protocol):
    async def destinations_for(
        self, user_ids: Collection[UserId]
    ) -> Mapping[ServerName, Collection[UserId]]:
        """Remote servers (never our own) that should receive these local users' presence."""
        ...
