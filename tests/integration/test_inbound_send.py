"""``PUT /send/{txnId}`` end to end: a signed test origin, the real worker.

Every test talks HTTPS to a worker on loopback whose keyring fetches the
origin's key from the origin's own TLS key server. Each rejection is checked
for its status and ``errcode``; no input here may produce a 5xx.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from federation_presence.federation.signing_keys import generate_signing_key
from federation_presence.worker import RunningWorker, running_worker
from tests.integration.conftest import ADMIN_TOKEN, WORKER_NAME, worker_client, worker_config
from tests.integration.origin import TestOrigin, presence_edu, running_origin
from tests.integration.tls_peer import TlsCertificates

_txn_ids = itertools.count()


def new_txn_id() -> str:
    return f"txn{next(_txn_ids)}"


async def send(
    http: httpx.AsyncClient,
    origin: TestOrigin,
    body: object,
    *,
    txn_id: str | None = None,
    authorization: str | None = None,
    destination: str = WORKER_NAME,
    raw: bytes | None = None,
) -> httpx.Response:
    txn_id = txn_id or new_txn_id()
    if authorization is None:
        authorization = origin.authorization(txn_id, body, destination=destination)
    response = await http.put(
        f"/_matrix/federation/v1/send/{txn_id}",
        content=raw if raw is not None else orjson.dumps(body),
        headers={"Authorization": authorization, "Content-Type": "application/json"},
    )
    assert response.status_code < 500, response.text
    return response


async def presence_of(http: httpx.AsyncClient, user_id: str) -> httpx.Response:
    return await http.get(
        f"/_matrix/client/v3/presence/{user_id}/status",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )


def push(user_id: str, presence: str = "online", **extra: object) -> dict[str, Any]:
    return {"user_id": user_id, "presence": presence, "last_active_ago": 5000, **extra}


def assert_error(response: httpx.Response, status: int, errcode: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["errcode"] == errcode
    assert isinstance(response.json()["error"], str)


async def test_a_signed_push_is_stored_and_reads_back(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    alice = origin.user("alice")
    body = origin.transaction(
        presence_edu(push(alice, currently_active=True, status_msg="Making cupcakes"))
    )
    response = await send(http, origin, body)
    assert response.status_code == 200
    assert response.json() == {"pdus": {}}

    state = (await presence_of(http, alice)).json()
    assert state["presence"] == "online"
    assert state["currently_active"] is True
    assert state["status_msg"] == "Making cupcakes"
    # last_active_ago is computed at read time from the stored timestamp.
    assert 5000 <= state["last_active_ago"] < 5000 + 30_000
    assert origin.key_requests == 1


async def test_the_key_is_fetched_once_for_many_transactions(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    for _ in range(5):
        body = origin.transaction(presence_edu(push(origin.user("a"))))
        assert (await send(http, origin, body)).status_code == 200
    assert origin.key_requests == 1


async def test_a_push_for_another_servers_user_is_dropped_and_the_rest_applies(
    http: httpx.AsyncClient, origin: TestOrigin, worker: RunningWorker
) -> None:
    good, foreign = origin.user("good"), "@mallory:elsewhere.example"
    body = origin.transaction(
        presence_edu(push(foreign), push(origin.user("bad"), "dancing"), push(good))
    )
    assert (await send(http, origin, body)).status_code == 200
    assert (await presence_of(http, good)).json()["presence"] == "online"
    assert (await presence_of(http, foreign)).status_code == 404
    assert (await presence_of(http, origin.user("bad"))).status_code == 404
    metrics = (await http.get("/metrics")).text
    assert 'reason="user_not_on_origin"} 1.0' in metrics
    assert 'reason="bad_presence"} 1.0' in metrics


async def test_a_replayed_txn_id_gets_the_same_answer_and_applies_nothing(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    alice = origin.user("alice")
    txn_id = new_txn_id()
    first = await send(http, origin, origin.transaction(presence_edu(push(alice))), txn_id=txn_id)
    replay_body = origin.transaction(presence_edu(push(alice, "offline")))
    replay = await send(http, origin, replay_body, txn_id=txn_id)
    assert (first.status_code, first.content) == (replay.status_code, replay.content)
    assert (await presence_of(http, alice)).json()["presence"] == "online"
    assert 'outcome="repeat"} 1.0' in (await http.get("/metrics")).text


async def test_other_edus_and_pdus_are_acknowledged_not_processed(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    body = origin.transaction(
        {"edu_type": "m.typing", "content": {"room_id": "!r:x", "user_id": "@a:x", "typing": True}},
        pdus=[{"type": "m.room.message", "content": {}}],
    )
    response = await send(http, origin, body)
    assert response.json() == {"pdus": {}}
    metrics = (await http.get("/metrics")).text
    assert 'edu_type="m.typing"} 1.0' in metrics
    assert "federation_presence_inbound_pdus_ignored_total 1.0" in metrics


@pytest.mark.parametrize(
    ("authorization", "errcode"),
    [
        (None, "M_UNAUTHORIZED"),
        ("Bearer abc", "M_UNAUTHORIZED"),
        ("X-Matrix garbage", "M_UNAUTHORIZED"),
        ('X-Matrix origin="a b",key="ed25519:x",sig="y"', "M_UNAUTHORIZED"),
    ],
)
async def test_a_missing_or_garbled_header_is_401(
    http: httpx.AsyncClient, origin: TestOrigin, authorization: str | None, errcode: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await http.put(
        f"/_matrix/federation/v1/send/{new_txn_id()}",
        content=orjson.dumps(origin.transaction()),
        headers=headers,
    )
    assert_error(response, 401, errcode)


async def test_a_wrong_destination_is_401(http: httpx.AsyncClient, origin: TestOrigin) -> None:
    body = origin.transaction(presence_edu(push(origin.user("a"))))
    response = await send(http, origin, body, destination="someone-else.test")
    assert_error(response, 401, "M_UNAUTHORIZED")


async def test_an_unknown_key_is_401(http: httpx.AsyncClient, origin: TestOrigin) -> None:
    stranger = generate_signing_key("unpublished")
    body = origin.transaction(presence_edu(push(origin.user("a"))))
    txn_id = new_txn_id()
    auth = origin.authorization(txn_id, body, destination=WORKER_NAME, signing_key=stranger)
    response = await send(http, origin, body, txn_id=txn_id, authorization=auth)
    assert_error(response, 401, "M_UNAUTHORIZED")


async def test_a_bad_signature_is_401(http: httpx.AsyncClient, origin: TestOrigin) -> None:
    impostor = generate_signing_key(origin.signing_key.version)
    body = origin.transaction(presence_edu(push(origin.user("a"))))
    txn_id = new_txn_id()
    auth = origin.authorization(txn_id, body, destination=WORKER_NAME, signing_key=impostor)
    response = await send(http, origin, body, txn_id=txn_id, authorization=auth)
    assert_error(response, 401, "M_UNAUTHORIZED")
    assert (await presence_of(http, origin.user("a"))).status_code == 404


async def test_a_signature_over_other_content_is_401(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    signed = origin.transaction(presence_edu(push(origin.user("a"))))
    sent = origin.transaction(presence_edu(push(origin.user("a"), "offline")))
    txn_id = new_txn_id()
    auth = origin.authorization(txn_id, signed, destination=WORKER_NAME)
    response = await send(http, origin, sent, txn_id=txn_id, authorization=auth)
    assert_error(response, 401, "M_UNAUTHORIZED")


async def test_an_expired_key_is_401(http: httpx.AsyncClient, origin: TestOrigin) -> None:
    origin.key_valid_for_ms = -60_000  # the key server publishes a key already expired
    body = origin.transaction(presence_edu(push(origin.user("a"))))
    response = await send(http, origin, body)
    assert_error(response, 401, "M_UNAUTHORIZED")


async def test_an_unreachable_key_server_is_401_not_5xx(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    origin.answering = False
    body = origin.transaction(presence_edu(push(origin.user("a"))))
    response = await send(http, origin, body)
    assert_error(response, 401, "M_UNAUTHORIZED")


async def test_a_body_origin_other_than_the_signer_is_403(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    body = {**origin.transaction(), "origin": "elsewhere.example"}
    response = await send(http, origin, body)
    assert_error(response, 403, "M_FORBIDDEN")


async def test_51_pdus_are_refused(http: httpx.AsyncClient, origin: TestOrigin) -> None:
    response = await send(http, origin, origin.transaction(pdus=[{"type": "x"}] * 51))
    assert_error(response, 400, "M_BAD_JSON")


async def test_101_edus_are_refused(http: httpx.AsyncClient, origin: TestOrigin) -> None:
    edus = [presence_edu(push(origin.user("a")))] * 101
    response = await send(http, origin, origin.transaction(*edus))
    assert_error(response, 400, "M_BAD_JSON")
    assert (await presence_of(http, origin.user("a"))).status_code == 404


async def test_the_limits_themselves_are_accepted(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    edus = [presence_edu(push(origin.user(f"u{i}"))) for i in range(100)]
    body = origin.transaction(*edus, pdus=[{"type": "x"}] * 50)
    assert (await send(http, origin, body)).status_code == 200
    assert (await presence_of(http, origin.user("u99"))).json()["presence"] == "online"


async def test_an_oversized_body_is_413(http: httpx.AsyncClient, origin: TestOrigin) -> None:
    big = origin.transaction(presence_edu(push(origin.user("a"), status_msg="x" * 1000)))
    big["padding"] = "y" * 11_000_000  # over the default limit (10 MiB)
    response = await send(http, origin, big)
    assert_error(response, 413, "M_TOO_LARGE")


@pytest.mark.parametrize(
    ("raw", "errcode"),
    [
        (b"{not json", "M_NOT_JSON"),
        (b"", "M_NOT_JSON"),
        (b'{"a": NaN}', "M_NOT_JSON"),
        (b"[1, 2]", "M_BAD_JSON"),
        (b'"a string"', "M_BAD_JSON"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_400(
    http: httpx.AsyncClient, origin: TestOrigin, raw: bytes, errcode: str
) -> None:
    txn_id = new_txn_id()
    auth = origin.authorization(txn_id, {}, destination=WORKER_NAME)
    response = await send(http, origin, {}, txn_id=txn_id, authorization=auth, raw=raw)
    assert_error(response, 400, errcode)


async def test_a_float_in_the_body_is_400_not_5xx(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    txn_id = new_txn_id()
    auth = origin.authorization(txn_id, {}, destination=WORKER_NAME)
    raw = orjson.dumps({**origin.transaction(), "x": 1.5})
    response = await send(http, origin, {}, txn_id=txn_id, authorization=auth, raw=raw)
    assert_error(response, 400, "M_BAD_JSON")


async def test_unknown_endpoints_and_methods_are_matrix_errors(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/_matrix/federation/v1/nope"), 404, "M_UNRECOGNIZED")
    assert_error(await http.get("/_matrix/federation/v1/send/abc"), 405, "M_UNRECOGNIZED")


async def test_version_names_the_software(http: httpx.AsyncClient) -> None:
    body = (await http.get("/_matrix/federation/v1/version")).json()
    assert body["server"]["name"] == "federation-presence"


async def test_a_denied_origin_is_403_before_any_key_fetch(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    config = worker_config(tmp_path, certificates, deny_origins=("localhost:*",))
    async with (
        running_origin(certificates) as origin,
        running_worker(config) as worker,
        worker_client(worker, certificates) as http,
    ):
        response = await send(http, origin, origin.transaction())
        assert_error(response, 403, "M_FORBIDDEN")
        assert origin.key_requests == 0


async def test_an_origin_over_its_rate_limit_gets_429_with_retry_after(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    config = worker_config(tmp_path, certificates, rate_limit_per_second=0.001, rate_limit_burst=2)
    async with (
        running_origin(certificates) as origin,
        running_worker(config) as worker,
        worker_client(worker, certificates) as http,
    ):
        statuses = [(await send(http, origin, origin.transaction())).status_code for _ in range(3)]
        assert statuses[:2] == [200, 200]
        third = await send(http, origin, origin.transaction())
        assert_error(third, 429, "M_LIMIT_EXCEEDED")
        assert third.json()["retry_after_ms"] > 0


async def test_accepted_state_survives_a_restart(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    config = worker_config(tmp_path, certificates)
    async with running_origin(certificates) as origin:
        async with running_worker(config) as worker, worker_client(worker, certificates) as http:
            body = origin.transaction(presence_edu(push(origin.user("a"), "unavailable")))
            txn_id = new_txn_id()
            assert (await send(http, origin, body, txn_id=txn_id)).status_code == 200
        async with running_worker(config) as worker, worker_client(worker, certificates) as http:
            assert (await presence_of(http, origin.user("a"))).json()["presence"] == "unavailable"
            # The dedup record is durable too: the same txn after restart is a repeat.
            again = origin.transaction(presence_edu(push(origin.user("a"), "online")))
            assert (await send(http, origin, again, txn_id=txn_id)).status_code == 200
            assert (await presence_of(http, origin.user("a"))).json()["presence"] == "unavailable"


@pytest.mark.parametrize("txn_id", ["nul%00id", "tab%09id"])
async def test_a_txn_id_with_control_characters_is_400(
    http: httpx.AsyncClient, origin: TestOrigin, txn_id: str
) -> None:
    body = origin.transaction(presence_edu(push(origin.user("a"))))
    response = await send(http, origin, body, txn_id=txn_id)
    assert_error(response, 400, "M_INVALID_PARAM")
