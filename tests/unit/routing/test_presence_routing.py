"""PresenceRouting and GuardedRouter with in-memory router modules (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from federation_presence.ids import ServerName, UserId
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.routing.interest import RoomGraph
from federation_presence.routing.modules import GuardedRouter
from federation_presence.routing.presence_routing import PresenceRouting
from federation_presence.routing.synapse_compat import PresenceRouter, UserPresenceState
from tests.fakes import FakeClock

HERE = ServerName("here.test")
ALICE, BOB = UserId("@alice:here.test"), UserId("@bob:here.test")
RITA, OLGA = UserId("@rita:remote.test"), UserId("@olga:other.test")
STATES = {u: UserPresence(u, PresenceState.ONLINE) for u in (ALICE, BOB, RITA, OLGA)}


class TableRouter:
    """Routes every state to ``recipients``; ``interest`` per user."""

    def __init__(self, recipients: list[str], interest: dict[str, Any]) -> None:
        self.recipients = recipients
        self.interest = interest
        self.interest_calls = 0

    async def get_users_for_states(
        self, states: Iterable[UserPresenceState]
    ) -> dict[str, set[UserPresenceState]]:
        return {r: set(states) for r in self.recipients}

    async def get_interested_users(self, user_id: str) -> Any:
        self.interest_calls += 1
        return self.interest.get(user_id, set())


def routing(module: object | None = None, clock: FakeClock | None = None) -> PresenceRouting:
    graph = RoomGraph()
    graph.set_room("!1", [ALICE, BOB, RITA])
    graph.set_room("!2", [BOB, OLGA, UserId("@x:here.test")])
    router = None if module is None else GuardedRouter(module, clock or FakeClock())
    return PresenceRouting(HERE, graph, STATES.get, router)


async def test_destinations_are_remote_room_mates_servers_never_our_own() -> None:
    got = await routing().destinations_for([ALICE, BOB, RITA])
    assert {s: set(u) for s, u in got.items()} == {
        ServerName("remote.test"): {ALICE, BOB},
        ServerName("other.test"): {BOB},
    }


async def test_the_router_adds_remote_recipients() -> None:
    module = TableRouter(["@w:watch.test", "@here:here.test"], {})
    got = await routing(module).destinations_for([ALICE])
    assert {s: set(u) for s, u in got.items()} == {
        ServerName("remote.test"): {ALICE},
        ServerName("watch.test"): {ALICE},
    }


async def test_visibility_is_self_rooms_or_router() -> None:
    plain = routing()
    assert await plain.can_see(ALICE, ALICE)
    assert await plain.can_see(ALICE, RITA)
    assert not await plain.can_see(ALICE, OLGA)
    module = TableRouter([], {ALICE: {OLGA}, BOB: PresenceRouter.ALL_USERS})
    routed = routing(module)
    assert await routed.can_see(ALICE, OLGA)
    assert await routed.can_see(BOB, UserId("@anyone:nowhere.test"))


async def test_local_recipients_are_local_room_mates_and_router_recipients() -> None:
    module = TableRouter([str(BOB), "@w:watch.test"], {})
    got = await routing(module).local_recipients([STATES[RITA]])
    assert got == {ALICE, BOB}


async def test_interest_answers_are_cached_and_malformed_ones_ignored() -> None:
    clock = FakeClock()
    module = TableRouter([], {ALICE: {OLGA, "not a user"}, BOB: 42})
    guarded = GuardedRouter(module, clock)
    first = await guarded.interested_users(ALICE)
    assert first.users == frozenset({OLGA})
    await guarded.interested_users(ALICE)
    assert module.interest_calls == 1
    assert (await guarded.interested_users(BOB)).users == frozenset()
    assert guarded.failures == 1
    clock.set(clock.now_ms() + 60_001)
    await guarded.interested_users(ALICE)
    assert module.interest_calls == 3


async def test_a_malformed_users_for_states_answer_routes_nothing() -> None:
    class Bad(TableRouter):
        async def get_users_for_states(self, states: Iterable[UserPresenceState]) -> Any:
            return {"not a user": set(states)}

    guarded = GuardedRouter(Bad([], {}), FakeClock())
    assert await guarded.users_for_states([STATES[ALICE]]) == {}
    assert guarded.failures == 1


async def test_a_synchronous_router_method_that_raises_is_contained() -> None:
    class Sync:
        def get_users_for_states(self, states: object) -> dict[str, set[object]]:
            raise ValueError("sync bug")

        def get_interested_users(self, user_id: str) -> set[str]:
            return {str(OLGA)}

    guarded = GuardedRouter(Sync(), FakeClock())
    assert await guarded.users_for_states([STATES[ALICE]]) == {}
    assert (await guarded.interested_users(ALICE)).users == frozenset({OLGA})
