"""The admin API over real HTTPS: rooms (stored) and bridge heartbeats (one write a batch)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from federation_presence.store.sqlite import SqliteStore
from tests.integration.local_users import ADMIN, ALICE, BOB, LocalWorker, bearer, local_worker
from tests.integration.tls_peer import TlsCertificates

ROOMS = "/_presence/admin/v1/rooms/"
HEARTBEATS = "/_presence/admin/v1/heartbeats"


@pytest.fixture
async def local(tmp_path: Path, certificates: TlsCertificates) -> AsyncIterator[LocalWorker]:
    async with local_worker(tmp_path, certificates) as running:
        yield running


async def test_a_room_is_set_read_back_and_deleted(local: LocalWorker) -> None:
    remote = "@rita:remote.test"
    await local.set_room("!r:fp.test", [ALICE, remote, ALICE])
    got = await local.http.get(ROOMS + "!r:fp.test", headers=ADMIN)
    assert got.status_code == 200
    assert got.json() == {"members": sorted([ALICE, remote])}
    assert (await local.http.delete(ROOMS + "!r:fp.test", headers=ADMIN)).status_code == 200
    missing = await local.http.get(ROOMS + "!r:fp.test", headers=ADMIN)
    assert (missing.status_code, missing.json()["errcode"]) == (404, "M_NOT_FOUND")
    again = await local.http.delete(ROOMS + "!r:fp.test", headers=ADMIN)
    assert again.status_code == 404


async def test_rooms_survive_a_restart(tmp_path: Path, certificates: TlsCertificates) -> None:
    async with local_worker(tmp_path, certificates) as local:
        await local.set_room("!r:fp.test", [ALICE, BOB])
    async with local_worker(tmp_path, certificates) as local:
        got = await local.http.get(ROOMS + "!r:fp.test", headers=ADMIN)
        assert got.json() == {"members": sorted([ALICE, BOB])}
        await local.put_status("alice-a", ALICE, {"presence": "online"})
        assert (await local.get_status("bob", ALICE)).status_code == 200


@pytest.mark.parametrize(
    ("path", "content", "status", "errcode"),
    [
        (ROOMS + "!r:fp.test", b"nope", 400, "M_NOT_JSON"),
        (ROOMS + "!r:fp.test", b'{"members": "x"}', 400, "M_BAD_JSON"),
        (ROOMS + "!r:fp.test", b'{"members": ["bob"]}', 400, "M_INVALID_PARAM"),
        (ROOMS + "!r:fp.test", b'{"members": [1]}', 400, "M_INVALID_PARAM"),
        (ROOMS + "nobang", b'{"members": []}', 400, "M_INVALID_PARAM"),
        (ROOMS + "!a%20b", b'{"members": []}', 400, "M_INVALID_PARAM"),
    ],
)
async def test_bad_room_requests_are_400(
    local: LocalWorker, path: str, content: bytes, status: int, errcode: str
) -> None:
    response = await local.http.put(path, content=content, headers=ADMIN)
    assert (response.status_code, response.json()["errcode"]) == (status, errcode)


@pytest.mark.parametrize(
    ("headers", "errcode"),
    [({}, "M_MISSING_TOKEN"), (bearer("alice-a"), "M_UNKNOWN_TOKEN")],
)
async def test_the_admin_api_needs_the_admin_token(
    local: LocalWorker, headers: dict[str, str], errcode: str
) -> None:
    for method, path in (("PUT", ROOMS + "!r:x"), ("GET", ROOMS + "!r:x"), ("POST", HEARTBEATS)):
        response = await local.http.request(method, path, json={"members": []}, headers=headers)
        assert (response.status_code, response.json()["errcode"]) == (401, errcode)


async def test_a_heartbeat_batch_is_one_store_write(local: LocalWorker) -> None:
    store = local.worker.store
    assert isinstance(store, SqliteStore)
    users = [f"@bridged{i}:fp.test" for i in range(500)]
    heartbeats = [
        {"user_id": u, "device_id": "bridge", "presence": "online", "active": True} for u in users
    ]
    heartbeats.append(
        {"user_id": users[0], "device_id": "bridge2", "presence": "busy", "status_msg": "call"}
    )
    commits, applies = store.stats.commits, store.stats.applies
    response = await local.http.post(HEARTBEATS, json={"heartbeats": heartbeats}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {"applied": 501}
    assert (store.stats.commits - commits, store.stats.applies - applies) == (1, 1)
    assert await local.state_of(users[1]) == "online"
    first = await local.http.get(f"/_matrix/client/v3/presence/{users[0]}/status", headers=ADMIN)
    assert (first.json()["presence"], first.json()["status_msg"]) == (
        "org.matrix.msc3026.busy",
        "call",
    )


async def test_heartbeats_keep_a_bridged_user_online_and_offline_ends_it(
    local: LocalWorker,
) -> None:
    beat = {"user_id": ALICE, "device_id": "bridge", "presence": "online"}
    for _ in range(5):
        assert (
            await local.http.post(HEARTBEATS, json={"heartbeats": [beat]}, headers=ADMIN)
        ).status_code == 200
        await local.clock.advance(20_000)
    assert await local.state_of(ALICE) == "online"
    offline = {**beat, "presence": "offline"}
    await local.http.post(HEARTBEATS, json={"heartbeats": [offline]}, headers=ADMIN)
    assert await local.state_of(ALICE) == "offline"


@pytest.mark.parametrize(
    ("entry", "errcode"),
    [
        ({"device_id": "d", "presence": "online"}, "M_MISSING_PARAM"),
        (
            {"user_id": "@x:elsewhere.test", "device_id": "d", "presence": "online"},
            "M_INVALID_PARAM",
        ),
        ({"user_id": ALICE, "device_id": "", "presence": "online"}, "M_INVALID_PARAM"),
        ({"user_id": ALICE, "device_id": "d", "presence": "zzz"}, "M_INVALID_PARAM"),
        ({"user_id": ALICE, "device_id": "d", "presence": "online", "active": 1}, "M_BAD_JSON"),
        (
            {"user_id": ALICE, "device_id": "d", "presence": "online", "status_msg": 3},
            "M_BAD_JSON",
        ),
        ("just a string", "M_BAD_JSON"),
    ],
)
async def test_one_bad_heartbeat_refuses_the_whole_batch(
    local: LocalWorker, entry: object, errcode: str
) -> None:
    good = {"user_id": BOB, "device_id": "d", "presence": "online"}
    response = await local.http.post(HEARTBEATS, json={"heartbeats": [good, entry]}, headers=ADMIN)
    assert (response.status_code, response.json()["errcode"]) == (400, errcode)
    assert "heartbeats[1]" in response.json()["error"]
    assert local.worker.keeper.held(BOB) is None  # type: ignore[arg-type]


async def test_concurrent_heartbeat_batches_are_each_applied(local: LocalWorker) -> None:
    # Two multi-entry batches in flight at once (their writes may share a group
    # commit): each answered 200, every entry applied.
    answers: list[int] = []

    async def batch(name: str) -> None:
        beats = [
            {"user_id": f"@{name}{i}:fp.test", "device_id": "bridge", "presence": "online"}
            for i in range(20)
        ]
        response = await local.http.post(HEARTBEATS, json={"heartbeats": beats}, headers=ADMIN)
        answers.append(response.status_code)

    async with anyio.create_task_group() as tg:
        for name in ("left", "right", "third"):
            tg.start_soon(batch, name)
    assert answers == [200, 200, 200]
    for name in ("left", "right", "third"):
        assert await local.state_of(f"@{name}19:fp.test") == "online"
