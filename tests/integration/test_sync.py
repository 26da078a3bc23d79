"""Presence-only /sync over real HTTPS on a FakeClock.

Two devices of one user (``alice-a``, ``alice-b``) reproduce the four
scenarios of seed 000 through /sync and PUT status; the long-poll wakes on a
relevant change and not on an irrelevant one; bad parameters are 400.
Defaults: IDLE 5 min, SYNC_TIMEOUT 30 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from federation_presence.ids import ServerName, UserId
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.states import PresenceState
from tests.fakes import wait_all_tasks_blocked
from tests.integration.conftest import worker_client
from tests.integration.local_users import (
    ALICE,
    BOB,
    CAROL,
    LocalWorker,
    bearer,
    in_background,
    local_worker,
)
from tests.integration.tls_peer import TlsCertificates

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS


@pytest.fixture
async def local(tmp_path: Path, certificates: TlsCertificates) -> AsyncIterator[LocalWorker]:
    async with local_worker(tmp_path, certificates) as running:
        yield running


def presence_of(body: dict[str, Any]) -> dict[str, str]:
    return {e["sender"]: e["content"]["presence"] for e in body["presence"]["events"]}


async def keep_syncing(local: LocalWorker, plan: dict[str, str | None], total_ms: int) -> None:
    """Each token in ``plan`` syncs (timeout=0) every 20 s for ``total_ms``."""
    for _ in range(total_ms // (20 * SECOND_MS)):
        for token, set_presence in plan.items():
            params = {} if set_presence is None else {"set_presence": set_presence}
            assert (await local.sync(token, timeout="0", **params)).status_code == 200
        await local.clock.advance(20 * SECOND_MS)


async def test_scenario_1_one_device_online_one_unavailable_is_online(local: LocalWorker) -> None:
    await keep_syncing(local, {"alice-a": None, "alice-b": "unavailable"}, 6 * MINUTE_MS)
    assert await local.state_of(ALICE) == "online"
    body = (await local.sync("alice-b", set_presence="unavailable")).json()
    assert presence_of(body)[ALICE] == "online"


async def test_scenario_2_unavailable_syncing_after_activity_idles_to_unavailable(
    local: LocalWorker,
) -> None:
    assert (await local.put_status("alice-a", ALICE, {"presence": "online"})).status_code == 200
    await keep_syncing(local, {"alice-a": "unavailable"}, 4 * MINUTE_MS)
    assert await local.state_of(ALICE) == "online"  # the PUT was a pro-active event
    await keep_syncing(local, {"alice-a": "unavailable"}, 2 * MINUTE_MS)
    assert await local.state_of(ALICE) == "unavailable"


async def test_scenario_3_a_device_that_stops_syncing_goes_offline(local: LocalWorker) -> None:
    assert (await local.sync("alice-a", timeout="0")).status_code == 200
    assert await local.state_of(ALICE) == "online"
    await local.clock.advance(29 * SECOND_MS)
    assert await local.state_of(ALICE) == "online"
    await local.clock.advance(2 * SECOND_MS)
    assert await local.state_of(ALICE) == "offline"


async def test_scenario_4_the_online_device_stops_and_the_user_becomes_unavailable(
    local: LocalWorker,
) -> None:
    await keep_syncing(local, {"alice-a": None, "alice-b": "unavailable"}, 1 * MINUTE_MS)
    assert await local.state_of(ALICE) == "online"
    await keep_syncing(local, {"alice-b": "unavailable"}, 1 * MINUTE_MS)
    assert await local.state_of(ALICE) == "unavailable"


async def test_busy_set_by_put_never_idles_while_syncing(local: LocalWorker) -> None:
    await local.put_status("alice-a", ALICE, {"presence": "busy"})
    await keep_syncing(local, {"alice-a": "unavailable"}, 6 * MINUTE_MS)
    assert await local.state_of(ALICE) == "org.matrix.msc3026.busy"


async def test_set_presence_offline_is_not_syncing(local: LocalWorker) -> None:
    await local.sync("alice-a", timeout="0")
    await keep_syncing(local, {"alice-a": "offline"}, 40 * SECOND_MS)
    assert await local.state_of(ALICE) == "offline"


async def test_an_initial_sync_gives_oneself_and_room_mates_only(local: LocalWorker) -> None:
    await local.set_room("!r:fp.test", [ALICE, BOB])
    await local.put_status("bob", BOB, {"presence": "unavailable", "status_msg": "away"})
    await local.put_status("carol", CAROL, {"presence": "online"})
    body = (await local.sync("alice-a")).json()
    assert presence_of(body) == {ALICE: "online", BOB: "unavailable"}
    bob_event = next(e for e in body["presence"]["events"] if e["sender"] == BOB)
    assert bob_event["type"] == "m.presence"
    assert bob_event["content"]["status_msg"] == "away"
    assert body["next_batch"].startswith("p")


async def test_a_long_poll_wakes_on_a_relevant_change_and_not_an_irrelevant_one(
    local: LocalWorker,
) -> None:
    await local.set_room("!r:fp.test", [ALICE, BOB])
    await local.put_status("alice-a", ALICE, {"presence": "online"})
    await local.put_status("carol", CAROL, {"presence": "online"})
    since = (await local.sync("bob")).json()["next_batch"]
    wakeups = local.worker.local_users.wakeups  # type: ignore[union-attr]

    async with anyio.create_task_group() as tg:
        poll = in_background(tg, lambda: local.sync("bob", since=since, timeout="60000"))
        await local.waiting(1)
        woken = wakeups.woken
        # Irrelevant: carol shares no room with bob.
        irrelevant = await local.put_status("carol", CAROL, {"presence": "unavailable"})
        assert irrelevant.status_code == 200
        await wait_all_tasks_blocked()
        assert wakeups.woken == woken
        assert not poll.answered.is_set()
        assert wakeups.waiting_count == 1
        # Relevant: alice is bob's room mate.
        relevant = await local.put_status(
            "alice-a", ALICE, {"presence": "busy", "status_msg": "focus"}
        )
        assert relevant.status_code == 200
        answer = await poll.answer()
    assert wakeups.woken == woken + 1
    body = answer.json()
    assert presence_of(body) == {ALICE: "org.matrix.msc3026.busy"}
    assert body["next_batch"] != since


async def test_a_long_poll_wakes_on_a_remote_room_mate(local: LocalWorker) -> None:
    remote = "@rita:remote.test"
    await local.set_room("!r:remote.test", [BOB, remote])
    since = (await local.sync("bob")).json()["next_batch"]

    async with anyio.create_task_group() as tg:
        poll = in_background(tg, lambda: local.sync("bob", since=since, timeout="60000"))
        await local.waiting(1)
        await local.worker.keeper.apply_remote(
            [RemotePush(ServerName("remote.test"), UserId(remote), PresenceState.ONLINE, 0, True)]
        )
        answer = await poll.answer()
    assert presence_of(answer.json()) == {remote: "online"}


async def test_a_long_poll_with_nothing_new_answers_empty_at_its_timeout(
    local: LocalWorker,
) -> None:
    since = (await local.sync("bob")).json()["next_batch"]

    async with anyio.create_task_group() as tg:
        poll = in_background(tg, lambda: local.sync("bob", since=since, timeout="30000"))
        await local.waiting(1)
        await local.clock.advance(29 * SECOND_MS)
        assert not poll.answered.is_set()
        await local.clock.advance(1 * SECOND_MS)
        answer = await poll.answer()
    body = answer.json()
    assert body["presence"]["events"] == []
    assert body["next_batch"] == since
    # The device was syncing throughout: still online, not timed out.
    assert await local.state_of(BOB) == "online"


@pytest.mark.parametrize(
    ("params", "errcode"),
    [
        ({"since": "s1"}, "M_INVALID_PARAM"),
        ({"since": "p-1"}, "M_INVALID_PARAM"),
        ({"timeout": "soon"}, "M_INVALID_PARAM"),
        ({"timeout": "-5"}, "M_INVALID_PARAM"),
        ({"set_presence": "sleepy"}, "M_INVALID_PARAM"),
        ({"full_state": "yes"}, "M_INVALID_PARAM"),
    ],
)
async def test_bad_sync_parameters_are_400(
    local: LocalWorker, params: dict[str, str], errcode: str
) -> None:
    response = await local.sync("bob", **params)
    assert (response.status_code, response.json()["errcode"]) == (400, errcode)
    assert local.worker.keeper.held(BOB) is None  # type: ignore[arg-type]


async def test_sync_without_a_valid_token_is_401(local: LocalWorker) -> None:
    response = await local.http.get("/_matrix/client/v3/sync")
    assert (response.status_code, response.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    response = await local.sync("nope")
    assert (response.status_code, response.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_a_caller_too_far_behind_gets_current_state(
    local: LocalWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from federation_presence.api import sync as sync_module

    monkeypatch.setattr(sync_module, "MAX_BEHIND", 2)
    await local.set_room("!r:fp.test", [ALICE, BOB])
    since = (await local.sync("bob")).json()["next_batch"]
    for state in ("online", "unavailable", "busy"):
        await local.put_status("carol", CAROL, {"presence": state})
    await local.put_status("alice-a", ALICE, {"presence": "online"})
    body = (await local.sync("bob", since=since)).json()
    # Not carol's three changes: the current state of bob's interests.
    assert presence_of(body) == {ALICE: "online", BOB: "online"}
    assert int(body["next_batch"][1:]) == local.worker.stream.current_id  # type: ignore[union-attr]


async def test_a_long_poll_whose_client_leaves_ends_at_once(
    local: LocalWorker, certificates: TlsCertificates
) -> None:
    """Not at its timeout (60 s here): the wait is released and the device's
    sync ends, so a client that hangs up holds nothing."""
    since = (await local.sync("bob")).json()["next_batch"]
    wakeups = local.worker.local_users.wakeups  # type: ignore[union-attr]

    async with anyio.create_task_group() as tg:
        async with worker_client(local.worker, certificates) as leaving:

            async def long_poll() -> None:
                await leaving.get(
                    "/_matrix/client/v3/sync",
                    params={"since": since, "timeout": "60000"},
                    headers=bearer("bob"),
                )

            tg.start_soon(long_poll)
            await local.waiting(1)
            tg.cancel_scope.cancel()  # the request is abandoned, its connection closed
    with anyio.fail_after(10):
        while wakeups.waiting_count:
            await wait_all_tasks_blocked()
    # The worker still answers the next long-poll of the same device.
    assert (await local.sync("bob", since=since, timeout="0")).status_code == 200
