"""Who gets whose presence: the one seam for ``/sync`` delivery and the sender.

Interest is the union of two sources (DESIGN.md, "Routing"):

* shared rooms (``RoomGraph``, fed by the admin API);
* the presence router module, if one is configured (``GuardedRouter``):
  ``get_users_for_states`` routes a state to extra recipients, and
  ``get_interested_users`` gives a local user extra users to follow (or
  ``ALL_USERS``).

Every user also sees their own presence. The outbound sender asks
``destinations_for`` (remote servers, never our own, that should get these
local users' presence); the client API asks ``can_see`` (``GET .../status``),
``interest`` and ``visible`` (``/sync``); the sync wakeups ask
``local_recipients`` (which local users' long-polls a change concerns).
Answers are computed from memory; the router's part is time-limited and
cached in ``GuardedRouter``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from federation_presence.ids import ServerName, UserId
from federation_presence.presence.model import UserPresence
from federation_presence.routing.interest import RoomGraph
from federation_presence.routing.modules import NO_INTEREST, GuardedRouter, Interest

StateLookup = Callable[[UserId], UserPresence | None]


def server_of(user_id: UserId) -> ServerName:
    return ServerName(user_id.partition(":")[2])


class PresenceRouting:
    """Implements the sender's ``DestinationSource`` (duck-typed) and the client API's reads."""

    def __init__(
        self,
        server_name: ServerName,
        rooms: RoomGraph,
        states: StateLookup,
        router: GuardedRouter | None = None,
    ) -> None:
        self._server_name = server_name
        self._suffix = f":{server_name}"
        self._rooms = rooms
        self._states = states
        self._router = router

    def is_local(self, user_id: UserId) -> bool:
        return user_id.endswith(self._suffix)

    async def destinations_for(
        self, user_ids: Collection[UserId]
    ) -> Mapping[ServerName, Collection[UserId]]:
        """Remote servers (never our own) that should receive these local users' presence."""
        destinations: dict[ServerName, set[UserId]] = {}
        local = [user_id for user_id in user_ids if self.is_local(user_id)]
        for user_id in local:
            for mate in self._rooms.room_mates(user_id):
                if not self.is_local(mate):
                    destinations.setdefault(server_of(mate), set()).add(user_id)
        if self._router is not None:
            states = [s for user_id in local if (s := self._states(user_id)) is not None]
            for recipient, users in (await self._router.users_for_states(states)).items():
                if not self.is_local(recipient):
                    destinations.setdefault(server_of(recipient), set()).update(users)
        destinations.pop(self._server_name, None)
        return destinations

    async def interest(self, user_id: UserId) -> Interest:
        """Whom the router says ``user_id`` follows beyond shared rooms (rooms not included)."""
        if self._router is None:
            return NO_INTEREST
        return await self._router.interested_users(user_id)

    def room_mates(self, user_id: UserId) -> set[UserId]:
        return self._rooms.room_mates(user_id)

    async def can_see(self, viewer: UserId, target: UserId) -> bool:
        """May ``viewer`` (a local user) read ``target``'s presence?"""
        if viewer == target or self._rooms.share_a_room(viewer, target):
            return True
        if self._router is None:
            return False
        interest = await self._router.interested_users(viewer)
        if interest.all_users or target in interest.users:
            return True
        state = self._states(target)
        if state is None:
            return False
        routed = await self._router.users_for_states([state])
        return target in routed.get(viewer, ())

    async def visible(
        self, viewer: UserId, interest: Interest, states: Sequence[UserPresence]
    ) -> list[UserPresence]:
        """Those of ``states`` that ``viewer`` is interested in, in order."""
        if interest.all_users:
            return list(states)
        shown: list[UserPresence] = []
        rest: list[UserPresence] = []
        for state in states:
            user_id = state.user_id
            if (
                user_id == viewer
                or user_id in interest.users
                or self._rooms.share_a_room(viewer, user_id)
            ):
                shown.append(state)
            else:
                rest.append(state)
        if rest and self._router is not None:
            routed = (await self._router.users_for_states(rest)).get(viewer, set())
            if routed:
                shown_ids = {s.user_id for s in shown} | routed
                return [s for s in states if s.user_id in shown_ids]
        return shown

    async def local_recipients(self, states: Sequence[UserPresence]) -> set[UserId]:
        """Local users a change of ``states`` concerns through rooms, themselves or
        the router's ``get_users_for_states`` (followers by ``get_interested_users``
        are found by the caller, which knows who is waiting)."""
        changed = [s.user_id for s in states]
        recipients = self._rooms.room_mates_of_any(changed)
        recipients.update(changed)
        if self._router is not None:
            recipients.update((await self._router.users_for_states(states)).keys())
        return {user_id for user_id in recipients if self.is_local(user_id)}
