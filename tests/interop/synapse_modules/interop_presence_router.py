"""A presence router loaded by the interop fixture's Synapse (seed 003's interface).

Synapse shares a local user's presence only with servers its users share a
room with, or that a presence router names. Our worker joins no rooms, so
this router makes the two servers interested in each other:

* every local presence change goes to the configured ``users`` (user ids on
  the worker's server), so Synapse sends it there over federation;
* every local user is interested in those same users, so presence the
  worker pushes for them shows in Synapse's ``/sync``.

Not ``ALL_USERS``: for a user interested in everyone, Synapse 1.163's
``/sync`` passes every state through ``get_users_for_states`` and then reads
the entry of the syncing user (``_filter_all_presence_updates_for_user``), a
``KeyError`` and a 500 when the router did not name that local user. The seed
says why: the two methods must route alike.

Only Synapse imports this file (it is put on Synapse's ``PYTHONPATH``). It
imports nothing: it uses only the ``ModuleApi`` object Synapse hands it, so
it also loads where Synapse is not importable (our own tooling).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class InteropPresenceRouter:
    def __init__(self, config: dict[str, list[str]], module_api: Any) -> None:
        self._users = config["users"]
        self._api = module_api

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, list[str]]:
        users = config.get("users", [])
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            raise ValueError("users must be a list of user ids")
        return {"users": users}

    async def get_users_for_states(self, state_updates: Iterable[Any]) -> dict[str, set[Any]]:
        # Route only this server's users: remote presence is not ours to forward.
        local = {state for state in state_updates if self._api.is_mine(state.user_id)}
        if not local:
            return {}
        return {user: set(local) for user in self._users}

    async def get_interested_users(self, user_id: str) -> set[str]:
        return set(self._users)
