"""The parts that serve local users, built together (a piece of the composition root).

``build_local_users`` wires token auth (``auth.py``), the stored rooms and
the presence router module (``routing/``), the ``/sync`` wakeups and reads,
and hooks the wakeups to the keeper. ``worker.py`` calls it after the keeper
restored its state, starts ``wakeups.run`` in its task group and adds the
routes with ``add_local_user_routes``. ``routing`` is the seam the outbound
sender reads (``destinations_for``); a sender sets
``resend.send_current_presence`` to serve the router's
``send_local_online_presence_to`` for remote users.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from federation_presence.api.admin import add_admin_routes
from federation_presence.api.app import Router
from federation_presence.api.client import add_client_routes
from federation_presence.api.sync import PresenceSync, add_sync_routes
from federation_presence.auth import (
    ConfiguredTokens,
    Requester,
    TokenAuth,
    TokenSource,
    WhoamiTokens,
)
from federation_presence.clock import Clock
from federation_presence.config import Config
from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.keeper import PresenceKeeper
from federation_presence.presence.inputs import NO_DEVICE
from federation_presence.routing.interest import RoomGraph
from federation_presence.routing.modules import GuardedRouter, load_router
from federation_presence.routing.presence_routing import PresenceRouting
from federation_presence.routing.resend import OnlinePresenceResend
from federation_presence.routing.rooms import RoomDirectory
from federation_presence.routing.synapse_compat import ModuleApi
from federation_presence.routing.wakeups import SyncWakeups
from federation_presence.store.base import Store
from federation_presence.stream import PresenceStream


@dataclass
class LocalUsers:
    auth: TokenAuth
    rooms: RoomDirectory
    routing: PresenceRouting
    wakeups: SyncWakeups
    resend: OnlinePresenceResend
    sync: PresenceSync
    router: GuardedRouter | None
    whoami: WhoamiTokens | None


async def build_local_users(
    config: Config,
    store: Store,
    keeper: PresenceKeeper,
    stream: PresenceStream,
    clock: Clock,
    http: httpx.AsyncClient,
) -> LocalUsers:
    server_name = ServerName(config.server_name)
    sources: list[TokenSource] = [
        ConfiguredTokens(
            {
                t.token: Requester(UserId(t.user_id), DeviceId(t.device_id) or NO_DEVICE)
                for t in config.access_tokens
            }
        )
    ]
    whoami = None
    if config.delegated_auth is not None:
        delegated = config.delegated_auth
        whoami = WhoamiTokens(
            http,
            delegated.homeserver_url,
            server_name,
            clock,
            cache_ttl_ms=delegated.cache_ttl_ms,
            timeout_ms=delegated.timeout_ms,
            max_cached_tokens=delegated.max_cached_tokens,
        )
        sources.append(whoami)
    auth = TokenAuth(sources, config.admin_token)
    rooms = RoomDirectory(store, RoomGraph())
    await rooms.restore()
    resend = OnlinePresenceResend(server_name, store.load_users)
    router = None
    if config.presence_router is not None:
        module = load_router(
            config.presence_router, ModuleApi(server_name, resend.send), config.source
        )
        router = GuardedRouter(module, clock, timeout_ms=config.presence_router.timeout_ms)
    routing = PresenceRouting(server_name, rooms.graph, keeper.held, router)
    wakeups = SyncWakeups(routing)
    resend.wake = wakeups.wake
    keeper.add_change_listener(wakeups.changed)
    sync = PresenceSync(keeper, stream, routing, wakeups, resend, clock)
    return LocalUsers(auth, rooms, routing, wakeups, resend, sync, router, whoami)


def add_local_user_routes(
    router: Router,
    config: Config,
    local: LocalUsers,
    keeper: PresenceKeeper,
    clock: Clock,
    resources: frozenset[str],
) -> None:
    limit = config.federation.max_status_msg_length
    if "client" in resources:
        add_client_routes(
            router, keeper, local.auth, local.routing, clock, max_status_msg_length=limit
        )
        add_sync_routes(router, local.auth, keeper, local.sync, clock)
    if "admin" in resources:
        add_admin_routes(
            router,
            local.auth,
            local.rooms,
            keeper,
            ServerName(config.server_name),
            max_status_msg_length=limit,
        )
