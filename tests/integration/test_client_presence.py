"""PUT/GET presence status over real HTTPS: tokens, visibility, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.local_users import (
    ADMIN,
    ALICE,
    BOB,
    CAROL,
    LocalWorker,
    bearer,
    local_worker,
)
from tests.integration.tls_peer import TlsCertificates

STATUS = "/_matrix/client/v3/presence/{}/status"


@pytest.fixture
async def local(tmp_path: Path, certificates: TlsCertificates) -> AsyncIterator[LocalWorker]:
    async with local_worker(tmp_path, certificates) as running:
        yield running


async def test_busy_with_a_status_message_reads_back_for_oneself(local: LocalWorker) -> None:
    response = await local.put_status(
        "alice-a", ALICE, {"presence": "busy", "status_msg": "in a meeting"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {}
    got = await local.get_status("alice-a", ALICE)
    assert got.status_code == 200
    body = got.json()
    assert body["presence"] == "org.matrix.msc3026.busy"
    assert body["status_msg"] == "in a meeting"


async def test_the_unstable_busy_name_is_accepted_and_status_msg_kept_when_absent(
    local: LocalWorker,
) -> None:
    await local.put_status("alice-a", ALICE, {"presence": "online", "status_msg": "hi"})
    await local.put_status("alice-a", ALICE, {"presence": "org.matrix.msc3026.busy"})
    body = (await local.get_status("alice-a", ALICE)).json()
    assert (body["presence"], body["status_msg"]) == ("org.matrix.msc3026.busy", "hi")
    await local.put_status("alice-a", ALICE, {"presence": "online", "status_msg": None})
    assert (await local.get_status("alice-a", ALICE)).json()["status_msg"] is None


async def test_a_user_sharing_no_room_is_refused_and_a_room_mate_sees(local: LocalWorker) -> None:
    await local.put_status("alice-a", ALICE, {"presence": "online"})
    refused = await local.get_status("bob", ALICE)
    assert refused.status_code == 403
    assert refused.json()["errcode"] == "M_FORBIDDEN"
    await local.set_room("!r:fp.test", [ALICE, BOB])
    seen = await local.get_status("bob", ALICE)
    assert seen.status_code == 200
    assert seen.json()["presence"] == "online"
    assert (await local.get_status("carol", ALICE)).status_code == 403
    deleted = await local.http.delete("/_presence/admin/v1/rooms/!r:fp.test", headers=ADMIN)
    assert deleted.status_code == 200
    assert (await local.get_status("bob", ALICE)).status_code == 403


async def test_remote_users_are_read_with_the_same_visibility(local: LocalWorker) -> None:
    from federation_presence.ids import ServerName, UserId
    from federation_presence.presence.inputs import RemotePush
    from federation_presence.presence.states import PresenceState

    remote = "@rita:remote.test"
    await local.worker.keeper.apply_remote(
        [RemotePush(ServerName("remote.test"), UserId(remote), PresenceState.UNAVAILABLE, 5_000)]
    )
    assert (await local.get_status("bob", remote)).status_code == 403
    await local.set_room("!r:remote.test", [BOB, remote])
    body = (await local.get_status("bob", remote)).json()
    assert body["presence"] == "unavailable"
    assert body["last_active_ago"] == 5_000


@pytest.mark.parametrize(
    ("headers", "status", "errcode"),
    [
        ({}, 401, "M_MISSING_TOKEN"),
        (bearer("nope"), 401, "M_UNKNOWN_TOKEN"),
        ({"Authorization": "Basic abc"}, 401, "M_MISSING_TOKEN"),
        (ADMIN, 401, "M_UNKNOWN_TOKEN"),  # the admin token is no user's
        (bearer("bob"), 403, "M_FORBIDDEN"),  # acting for another user
    ],
)
async def test_put_needs_the_users_own_token(
    local: LocalWorker, headers: dict[str, str], status: int, errcode: str
) -> None:
    response = await local.http.put(
        STATUS.format(ALICE), json={"presence": "online"}, headers=headers
    )
    assert (response.status_code, response.json()["errcode"]) == (status, errcode)


async def test_get_without_or_with_an_unknown_token_is_401(local: LocalWorker) -> None:
    missing = await local.http.get(STATUS.format(ALICE))
    assert (missing.status_code, missing.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    unknown = await local.get_status("nope", ALICE)
    assert (unknown.status_code, unknown.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_a_token_in_the_query_string_is_accepted(local: LocalWorker) -> None:
    response = await local.http.put(
        STATUS.format(ALICE), params={"access_token": "alice-a"}, json={"presence": "online"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "errcode"),
    [
        (b"not json", 400, "M_NOT_JSON"),
        (b"[1]", 400, "M_BAD_JSON"),
        (b"{}", 400, "M_MISSING_PARAM"),
        (b'{"presence": "sleepy"}', 400, "M_INVALID_PARAM"),
        (b'{"presence": 1}', 400, "M_INVALID_PARAM"),
        (b'{"presence": "online", "status_msg": 5}', 400, "M_BAD_JSON"),
        (b'{"presence": "online", "status_msg": "a\\u0000b"}', 400, "M_INVALID_PARAM"),
        (b'{"presence": "online", "status_msg": "' + b"x" * 2000 + b'"}', 400, "M_INVALID_PARAM"),
        (b'{"presence": "online", "status_msg": "\\ud800"}', 400, None),
    ],
)
async def test_bad_bodies_get_matrix_errors_and_change_nothing(
    local: LocalWorker, content: bytes, status: int, errcode: str | None
) -> None:
    response = await local.http.put(
        STATUS.format(ALICE), content=content, headers=bearer("alice-a")
    )
    assert response.status_code == status, response.text
    if errcode is not None:
        assert response.json()["errcode"] == errcode
    assert local.worker.keeper.held(ALICE) is None  # type: ignore[arg-type]


async def test_a_path_that_is_not_a_user_id_is_400(local: LocalWorker) -> None:
    response = await local.http.put(
        STATUS.format("alice"), json={"presence": "online"}, headers=bearer("alice-a")
    )
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_an_unknown_user_visible_to_the_requester_is_404(local: LocalWorker) -> None:
    await local.set_room("!r:fp.test", [BOB, CAROL])
    response = await local.get_status("bob", CAROL)
    assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")
