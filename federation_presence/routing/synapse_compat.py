"""The names a Synapse presence router module imports, for running it here.

A Synapse router module imports ``PresenceRouter`` (for ``ALL_USERS``) from
``synapse.events.presence_router``, ``UserPresenceState`` from
``synapse.handlers.presence`` (or ``synapse.api.presence``) and ``ModuleApi``
from ``synapse.module_api``. Pointing those imports at this module is the
only change such a module needs (``examples/presence_router/`` shows one).

* ``PresenceRouter.ALL_USERS`` is the string ``"ALL"``, as in Synapse; some
  modules put it in a ``Union[...]`` annotation, where only a string or a
  type is allowed.
* ``UserPresenceState`` carries Synapse's field names (``state`` is the wire
  string), plus ``state_key`` as another name of ``user_id``: Synapse's own
  documented example router reads ``update.state_key``. It is frozen and
  hashable (routers put states in sets).
* ``ModuleApi`` offers what a presence router uses:
  ``send_local_online_presence_to(users)`` and ``server_name``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass

from federation_presence.ids import UserId, parse_user_id
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import to_client_wire

__all__ = ["ModuleApi", "PresenceRouter", "UserPresenceState"]


class PresenceRouter:
    """Only the constant: ``get_interested_users`` may return ``ALL_USERS``."""

    ALL_USERS = "ALL"


@dataclass(frozen=True, slots=True)
class UserPresenceState:
    """A user's presence as Synapse's modules see it."""

    user_id: str
    state: str
    last_active_ts: int
    last_federation_update_ts: int
    last_user_sync_ts: int
    status_msg: str | None
    currently_active: bool

    @property
    def state_key(self) -> str:
        return self.user_id

    @classmethod
    def of(cls, user: UserPresence) -> UserPresenceState:
        return cls(
            user.user_id,
            to_client_wire(user.state),
            user.last_active_ts,
            user.last_federation_update_ts,
            user.last_user_sync_ts,
            user.status_msg,
            user.currently_active,
        )


SendOnlinePresence = Callable[[Collection[UserId]], Awaitable[None]]


class ModuleApi:
    """What the worker offers a presence router module."""

    def __init__(self, server_name: str, send_online_presence_to: SendOnlinePresence) -> None:
        self._server_name = server_name
        self._send = send_online_presence_to

    @property
    def server_name(self) -> str:
        return self._server_name

    async def send_local_online_presence_to(self, users: Iterable[str]) -> None:
        """Send the current presence of our online local users to ``users``
        (local: their next ``/sync``; remote: their servers), for those users
        ``users`` are interested in. Invalid user IDs are ignored."""
        valid = [parsed[0] for user in users if (parsed := parse_user_id(str(user))) is not None]
        await self._send(valid)
