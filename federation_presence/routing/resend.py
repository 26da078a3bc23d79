"""``send_local_online_presence_to(users)``: the module API's one action.

As in Synapse: a *local* user in ``users`` gets, on their next ``/sync``, the
full current presence of everyone they are interested in (their waiting
long-poll is woken for it); a *remote* user's server is sent the current
state of every local user who is not offline, through the outbound sender's
``send_current_presence(destinations, user_ids)`` (which queues them; the
sender's own loop sends). Until a sender is attached
(a worker without outbound federation), the remote part is logged and skipped.

``pending_full`` is bounded by our local users; an entry is taken by the
user's next sync.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable

from federation_presence.ids import ServerName, UserId
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import PresenceState

logger = logging.getLogger(__name__)

SendCurrentPresence = Callable[[Collection[str], Collection[UserId]], Awaitable[None]]


class OnlinePresenceResend:
    def __init__(
        self,
        server_name: ServerName,
        load_users: Callable[[], Awaitable[list[UserPresence]]],
    ) -> None:
        self._suffix = f":{server_name}"
        self._server_name = server_name
        self._load_users = load_users
        self.pending_full: set[UserId] = set()
        self.send_current_presence: SendCurrentPresence | None = None
        self.wake: Callable[[Iterable[UserId]], None] | None = None

    def take_full(self, user_id: UserId) -> bool:
        """Whether ``user_id``'s next sync owes full presence (and forget it)."""
        if user_id in self.pending_full:
            self.pending_full.discard(user_id)
            return True
        return False

    async def send(self, users: Collection[UserId]) -> None:
        local = {u for u in users if u.endswith(self._suffix)}
        servers = {ServerName(u.partition(":")[2]) for u in users if u not in local}
        servers.discard(self._server_name)
        if local:
            self.pending_full.update(local)
            if self.wake is not None:
                self.wake(local)
        if not servers:
            return
        if self.send_current_presence is None:
            logger.warning(
                "send_local_online_presence_to: no outbound sender; %d servers skipped",
                len(servers),
            )
            return
        online = [
            user.user_id
            for user in await self._load_users()
            if user.user_id.endswith(self._suffix) and user.state is not PresenceState.OFFLINE
        ]
        if online:
            await self.send_current_presence(servers, online)
