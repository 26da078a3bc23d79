"""Presence router modules in a running worker: seed 003's example, and bad ones.

The example router of seed 003 (``examples/presence_router/``) runs with its
Synapse imports pointed at ``routing.synapse_compat``. A router that raises
or hangs is logged and timed out (on the worker's clock): visibility and
delivery fall back to rooms, nothing answers 5xx, and ``/send`` is never
held up by it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType

import anyio
import orjson
import pytest

from federation_presence.config import PresenceRouterConfig
from federation_presence.ids import ServerName, UserId
from federation_presence.routing.modules import ROUTER_TIMEOUT_MS
from tests.integration.conftest import WORKER_NAME
from tests.integration.local_users import (
    ALICE,
    BOB,
    CAROL,
    GOBBLER,
    LocalWorker,
    in_background,
    local_worker,
)
from tests.integration.origin import presence_edu, running_origin
from tests.integration.routers import HangingRouter, RaisingRouter
from tests.integration.tls_peer import TlsCertificates

WATCHER = "@watcher:remote.test"
TIMEOUT_MS = 1_500
assert TIMEOUT_MS * 3 < ROUTER_TIMEOUT_MS  # the steps asserted below tell the two apart
EXAMPLE = PresenceRouterConfig(
    module="examples.presence_router.example_router.ExamplePresenceRouter",
    config=MappingProxyType(
        {"always_send_to_users": [GOBBLER, WATCHER], "blacklisted_users": [CAROL]}
    ),
)


def router(name: str) -> PresenceRouterConfig:
    return PresenceRouterConfig(f"tests.integration.routers.{name}", MappingProxyType({}))


@pytest.fixture
async def example(tmp_path: Path, certificates: TlsCertificates) -> AsyncIterator[LocalWorker]:
    async with local_worker(tmp_path, certificates, presence_router=EXAMPLE) as running:
        yield running


async def test_the_example_router_gives_always_send_users_everyone(example: LocalWorker) -> None:
    await example.put_status("alice-a", ALICE, {"presence": "online"})
    assert (await example.get_status("gobbler", ALICE)).status_code == 200
    assert (await example.get_status("bob", ALICE)).status_code == 403
    body = (await example.sync("gobbler")).json()
    senders = {e["sender"] for e in body["presence"]["events"]}
    assert ALICE in senders


async def test_the_example_router_routes_to_remote_servers_except_blacklisted(
    example: LocalWorker,
) -> None:
    await example.put_status("alice-a", ALICE, {"presence": "online"})
    await example.put_status("carol", CAROL, {"presence": "online"})
    await example.set_room("!r:other.test", [ALICE, "@olga:other.test"])
    routing = example.worker.local_users.routing  # type: ignore[union-attr]
    got = await routing.destinations_for([UserId(ALICE), UserId(CAROL)])
    assert {server: set(users) for server, users in got.items()} == {
        ServerName("remote.test"): {ALICE},
        ServerName("other.test"): {ALICE},
    }
    assert await routing.destinations_for([UserId(CAROL)]) == {}


async def test_an_all_users_long_poll_wakes_on_anyones_change(example: LocalWorker) -> None:
    since = (await example.sync("gobbler")).json()["next_batch"]

    async with anyio.create_task_group() as tg:
        poll = in_background(tg, lambda: example.sync("gobbler", since=since, timeout="60000"))
        await example.waiting(1)
        await example.put_status("carol", CAROL, {"presence": "unavailable"})
        answer = await poll.answer()
    events = answer.json()["presence"]["events"]
    assert [(e["sender"], e["content"]["presence"]) for e in events] == [(CAROL, "unavailable")]


async def test_send_local_online_presence_to_gives_a_local_user_full_presence(
    example: LocalWorker,
) -> None:
    await example.set_room("!r:fp.test", [ALICE, BOB])
    await example.put_status("alice-a", ALICE, {"presence": "online"})
    since = (await example.sync("bob")).json()["next_batch"]
    local = example.worker.local_users
    assert local is not None
    assert local.router is not None
    module_api = local.router._module._module_api
    async with anyio.create_task_group() as tg:
        poll = in_background(tg, lambda: example.sync("bob", since=since, timeout="60000"))
        await example.waiting(1)
        await module_api.send_local_online_presence_to([BOB])
        answer = await poll.answer()
    senders = {e["sender"] for e in answer.json()["presence"]["events"]}
    assert senders == {ALICE, BOB}


async def test_a_raising_router_falls_back_to_rooms_and_never_5xx(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    async with local_worker(
        tmp_path, certificates, presence_router=router("RaisingRouter")
    ) as local:
        calls = RaisingRouter.calls
        await local.put_status("alice-a", ALICE, {"presence": "online"})
        assert (await local.get_status("bob", ALICE)).status_code == 403
        await local.set_room("!r:remote.test", [ALICE, BOB, "@rita:remote.test"])
        assert (await local.get_status("bob", ALICE)).status_code == 200
        body = (await local.sync("bob")).json()
        assert {e["sender"] for e in body["presence"]["events"]} == {ALICE, BOB}
        routing = local.worker.local_users.routing  # type: ignore[union-attr]
        got = await routing.destinations_for([UserId(ALICE)])
        assert {s: set(u) for s, u in got.items()} == {ServerName("remote.test"): {ALICE}}
        assert RaisingRouter.calls > calls
        assert local.worker.local_users.router.failures > 0  # type: ignore[union-attr]


async def test_a_hanging_router_is_timed_out_and_never_blocks_send(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    HangingRouter.entered = anyio.Event()
    # A timeout of its own, shorter than the default: the clock steps below
    # show it is the one applied.
    hanging = dataclasses.replace(router("HangingRouter"), timeout_ms=TIMEOUT_MS)
    async with (
        running_origin(certificates) as origin,
        local_worker(tmp_path, certificates, presence_router=hanging) as local,
    ):
        await local.put_status("alice-a", ALICE, {"presence": "online"})
        async with anyio.create_task_group() as tg:
            status = in_background(tg, lambda: local.get_status("bob", ALICE))
            with anyio.fail_after(10):
                await HangingRouter.entered.wait()
            # While the router hangs, /send is served.
            rita = origin.user("rita")
            body = origin.transaction(
                presence_edu({"user_id": rita, "presence": "online", "last_active_ago": 0})
            )
            sent = await local.http.put(
                "/_matrix/federation/v1/send/t1",
                content=orjson.dumps(body),
                headers={
                    "Authorization": origin.authorization("t1", body, destination=WORKER_NAME)
                },
            )
            assert sent.status_code == 200
            assert local.worker.keeper.held(UserId(rita)) is not None
            assert not status.answered.is_set()
            # can_see asks get_interested_users, then get_users_for_states: each
            # is cut off after the configured timeout of the worker's clock,
            # so two steps of it answer (the default 5 s would take eight).
            steps = 0
            with anyio.fail_after(10):
                while not status.answered.is_set():
                    await local.clock.advance(TIMEOUT_MS)
                    steps += 1
            assert steps <= 3
        assert (await status.answer()).status_code == 403
        assert local.worker.local_users.router.failures >= 2  # type: ignore[union-attr]
