"""The interest graph: which users share a room (pure, in memory).

``RoomGraph`` holds the room memberships the admin API stores (``rooms.py``
keeps it and the store in step). Users sharing a room are interested in each
other's presence, local and remote alike. Memory is what is stored: one set
per room and one per member, nothing else; a room emptied or deleted leaves
no trace.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from federation_presence.ids import UserId


class RoomGraph:
    """Room → members and member → rooms, kept in step."""

    def __init__(self) -> None:
        self._members: dict[str, frozenset[UserId]] = {}
        self._rooms_of: dict[UserId, set[str]] = {}

    @property
    def room_count(self) -> int:
        return len(self._members)

    def members(self, room_id: str) -> frozenset[UserId] | None:
        """The room's members, or None for a room we do not know."""
        return self._members.get(room_id)

    def set_room(self, room_id: str, members: Iterable[UserId]) -> None:
        """Replace the room's members (none: forget the room)."""
        self.delete_room(room_id)
        new = frozenset(members)
        if not new:
            return
        self._members[room_id] = new
        for user_id in new:
            self._rooms_of.setdefault(user_id, set()).add(room_id)

    def delete_room(self, room_id: str) -> bool:
        """Forget the room; whether it was known."""
        old = self._members.pop(room_id, None)
        if old is None:
            return False
        for user_id in old:
            rooms = self._rooms_of[user_id]
            rooms.discard(room_id)
            if not rooms:
                del self._rooms_of[user_id]
        return True

    def room_mates(self, user_id: UserId) -> set[UserId]:
        """Everyone sharing at least one room with ``user_id`` (the user included if in any)."""
        mates: set[UserId] = set()
        for room_id in self._rooms_of.get(user_id, ()):
            mates.update(self._members[room_id])
        return mates

    def room_mates_of_any(self, user_ids: Collection[UserId]) -> set[UserId]:
        mates: set[UserId] = set()
        for user_id in user_ids:
            for room_id in self._rooms_of.get(user_id, ()):
                mates.update(self._members[room_id])
        return mates

    def share_a_room(self, a: UserId, b: UserId) -> bool:
        rooms_a = self._rooms_of.get(a)
        rooms_b = self._rooms_of.get(b)
        if not rooms_a or not rooms_b:
            return False
        return not rooms_a.isdisjoint(rooms_b)
