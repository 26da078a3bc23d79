"""Room memberships: the stored interest graph, kept in memory.

``RoomDirectory`` is the admin API's door to rooms: each change is written to
the store first and only then applied to the in-memory ``RoomGraph`` that
routing reads, so what routing uses is always durable. Changes are serialised
(one lock) so the store and the graph see them in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from federation_presence.ids import UserId
from federation_presence.routing.interest import RoomGraph
from federation_presence.store.base import Store


class RoomDirectory:
    def __init__(self, store: Store, graph: RoomGraph) -> None:
        self._store = store
        self.graph = graph
        self._lock = anyio.Lock()

    async def restore(self) -> None:
        """Load every stored membership into the graph (at startup)."""
        rooms: dict[str, list[UserId]] = {}
        for room_id, user_id in await self._store.load_room_members():
            rooms.setdefault(room_id, []).append(UserId(user_id))
        for room_id, members in rooms.items():
            self.graph.set_room(room_id, members)

    def members(self, room_id: str) -> frozenset[UserId] | None:
        return self.graph.members(room_id)

    async def set_room(self, room_id: str, members: Sequence[UserId]) -> None:
        async with self._lock:
            await self._store.set_room_members(room_id, members)
            self.graph.set_room(room_id, members)

    async def delete_room(self, room_id: str) -> bool:
        async with self._lock:
            existed = await self._store.delete_room(room_id)
            return self.graph.delete_room(room_id) or existed
