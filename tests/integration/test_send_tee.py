"""The ``/send`` tee (``beside.homeserver_url``): presence applied here, the request forwarded.

The homeserver is a recording TLS peer on loopback that answers with a body
of its own, so each test can tell whose answer the origin got and what
exactly the homeserver was sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from federation_presence.config import BesideConfig
from federation_presence.federation.signing_keys import generate_signing_key
from federation_presence.worker import RunningWorker, running_worker
from tests.integration.conftest import WORKER_NAME, worker_client, worker_config
from tests.integration.origin import TestOrigin, presence_edu
from tests.integration.test_inbound_send import new_txn_id, presence_of, push, send
from tests.integration.tls_peer import TlsCertificates, serve_tls

HOMESERVER_ANSWER = {"pdus": {"$event:origin": {"error": "homeserver's own verdict"}}}


@dataclass
class RecordingHomeserver:
    """Records every request (method, raw target, headers, body) and answers ``answer``."""

    status: int = 200
    answer: bytes = orjson.dumps(HOMESERVER_ANSWER)
    requests: list[tuple[str, bytes, dict[str, str], bytes]] = field(default_factory=list)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["method"], scope["raw_path"], headers, body))
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": self.answer})


@contextlib.asynccontextmanager
async def tee_worker(
    tmp_path: Path, certificates: TlsCertificates, homeserver_url: str
) -> AsyncIterator[tuple[RunningWorker, httpx.AsyncClient]]:
    config = dataclasses.replace(
        worker_config(tmp_path, certificates),
        beside=BesideConfig(
            homeserver_url=homeserver_url, forward_timeout_ms=5_000, ca_bundle=certificates.ca_path
        ),
    )
    async with running_worker(config) as worker, worker_client(worker, certificates) as http:
        yield worker, http


async def test_presence_is_applied_and_the_signed_request_reaches_the_homeserver_unchanged(
    tmp_path: Path, certificates: TlsCertificates, origin: TestOrigin
) -> None:
    homeserver = RecordingHomeserver()
    async with (
        serve_tls(homeserver, certificates) as peer,
        tee_worker(tmp_path, certificates, peer.base_url) as (_, http),
    ):
        alice = origin.user("alice")
        typing = {"edu_type": "m.typing", "content": {"room_id": "!r:x", "user_id": alice}}
        body = origin.transaction(presence_edu(push(alice, status_msg="teed")), typing)
        raw = orjson.dumps(body)
        txn_id = new_txn_id()
        authorization = origin.authorization(txn_id, body, destination=WORKER_NAME)
        response = await send(http, origin, body, txn_id=txn_id, raw=raw)

        # The origin got the homeserver's answer, not the worker's {"pdus": {}}.
        assert response.status_code == 200
        assert response.json() == HOMESERVER_ANSWER
        # The worker applied the presence push.
        assert (await presence_of(http, alice)).json()["status_msg"] == "teed"
        # The homeserver got the very request the origin signed.
        ((method, target, headers, forwarded),) = homeserver.requests
        assert (method, target) == ("PUT", f"/_matrix/federation/v1/send/{txn_id}".encode())
        assert forwarded == raw
        assert headers["authorization"] == authorization
        assert headers["content-type"] == "application/json"


async def test_a_transaction_the_worker_refuses_is_still_the_homeservers_to_judge(
    tmp_path: Path, certificates: TlsCertificates, origin: TestOrigin
) -> None:
    homeserver = RecordingHomeserver(
        status=401, answer=b'{"errcode":"M_UNAUTHORIZED","error":"hs"}'
    )
    async with (
        serve_tls(homeserver, certificates) as peer,
        tee_worker(tmp_path, certificates, peer.base_url) as (_, http),
    ):
        alice = origin.user("alice")
        body = origin.transaction(presence_edu(push(alice)))
        txn_id = new_txn_id()
        forged = origin.authorization(
            txn_id, body, destination=WORKER_NAME, signing_key=generate_signing_key("a_bad")
        )
        response = await send(http, origin, body, txn_id=txn_id, authorization=forged)
        assert response.status_code == 401
        assert response.json()["error"] == "hs"
        assert len(homeserver.requests) == 1
        assert (await presence_of(http, alice)).status_code == 404


async def test_an_unreachable_homeserver_is_a_502_and_the_presence_still_applies_once(
    tmp_path: Path, certificates: TlsCertificates, origin: TestOrigin
) -> None:
    homeserver = RecordingHomeserver()
    async with serve_tls(homeserver, certificates) as peer:
        url = peer.base_url
    # The peer is gone: its port refuses connections.
    async with tee_worker(tmp_path, certificates, url) as (worker, http):
        alice = origin.user("alice")
        txn_id = new_txn_id()
        body = origin.transaction(presence_edu(push(alice)))
        # (not ``send``, which asserts that no answer is a 5xx)
        response = await http.put(
            f"/_matrix/federation/v1/send/{txn_id}",
            content=orjson.dumps(body),
            headers={
                "Authorization": origin.authorization(txn_id, body, destination=WORKER_NAME),
                "Content-Type": "application/json",
            },
        )
        assert response.status_code == 502
        assert response.json()["errcode"] == "M_UNKNOWN"
        assert (await presence_of(http, alice)).json()["presence"] == "online"
        # The origin retries the same transaction: deduplicated here.
        homeserver_back = await http.put(
            f"/_matrix/federation/v1/send/{txn_id}",
            content=orjson.dumps(body),
            headers={
                "Authorization": origin.authorization(txn_id, body, destination=WORKER_NAME),
                "Content-Type": "application/json",
            },
        )
        assert homeserver_back.status_code == 502
        repeats = worker.metrics.registry.get_sample_value(
            "federation_presence_inbound_transactions_total", {"outcome": "repeat"}
        )
        assert repeats == 1
