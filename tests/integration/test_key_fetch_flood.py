"""Issue 14: a flood of origins whose key servers hang must not lock out a real one.

The outside tester's attack, scaled down: ``FLOOD`` origins, each with a key
server on loopback that accepts and never answers (half of them answer the
headers of a 200 and stall), each sends one signed ``/send`` to a real worker.
While every key-fetch slot is held by a hung fetch, a legitimate test origin
(a real TLS key server) sends its first transaction: it must be admitted and
answered 200 without waiting for the hung fetches to time out, and once the
flood is over it must still be accepted (no failure of ours was cached
against it). Short fetch timeouts keep the test quick; the 2,000-origin run
with the default settings is ``bench/bench_key_fetch_flood.py``.

Readiness is by events (the hanging servers count accepted connections); the
only timing statement is an ordering one: the legitimate origin's 200 came
before any hung fetch reached its own deadline.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from signedjson.types import SigningKey

from federation_presence.clock import SystemClock
from federation_presence.federation.signing_keys import generate_signing_key
from federation_presence.federation.xmatrix import authorization_header
from federation_presence.worker import running_worker
from tests.integration.conftest import WORKER_NAME, worker_config
from tests.integration.hanging_peers import serve_hanging_key_servers
from tests.integration.origin import TestOrigin, presence_edu, running_origin
from tests.integration.tls_peer import TlsCertificates

FLOOD = 150
CONCURRENCY = 16
TIMEOUT_MS = 4_000
CONTENDED_TIMEOUT_MS = 1_500


def transaction(origin: str) -> dict[str, Any]:
    push = {"user_id": f"@a:{origin}", "presence": "online", "last_active_ago": 0}
    return {"origin": origin, "origin_server_ts": 0, "pdus": [], "edus": [presence_edu(push)]}


async def signed_send(
    http: httpx.AsyncClient, origin: str, key: SigningKey, txn_id: str
) -> httpx.Response:
    body = transaction(origin)
    path = f"/_matrix/federation/v1/send/{txn_id}"
    return await http.put(
        path,
        content=orjson.dumps(body),
        headers={
            "Authorization": authorization_header(key, "PUT", path, origin, WORKER_NAME, body),
            "Content-Type": "application/json",
        },
    )


async def legit_send(http: httpx.AsyncClient, origin: TestOrigin, txn_id: str) -> httpx.Response:
    push = {"user_id": origin.user("alice"), "presence": "online", "last_active_ago": 0}
    body = origin.transaction(presence_edu(push))
    return await http.put(
        f"/_matrix/federation/v1/send/{txn_id}",
        content=orjson.dumps(body),
        headers={
            "Authorization": origin.authorization(txn_id, body, destination=WORKER_NAME),
            "Content-Type": "application/json",
        },
    )


def flood_client(port: int, certificates: TlsCertificates) -> httpx.AsyncClient:
    """An HTTPS client to the worker with room for every flood request at once."""
    return httpx.AsyncClient(
        base_url=f"https://localhost:{port}",
        verify=ssl.create_default_context(cafile=str(certificates.ca_path)),
        timeout=60,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
    )


async def test_a_legitimate_origin_is_admitted_in_the_middle_of_a_key_server_flood(
    tmp_path: Path, certificates: TlsCertificates, origin: TestOrigin
) -> None:
    config = worker_config(
        tmp_path,
        certificates,
        key_fetch_concurrency=CONCURRENCY,
        key_fetch_timeout_ms=TIMEOUT_MS,
        key_fetch_contended_timeout_ms=CONTENDED_TIMEOUT_MS,
    )
    flood_key = generate_signing_key("flood")
    clock = SystemClock()
    flood_answers: list[int] = []
    async with (
        serve_hanging_key_servers(FLOOD, certificates) as hanging,
        running_worker(config) as worker,
        flood_client(worker.ports[0], certificates) as http,
    ):

        async def flood_send(server_name: str) -> None:
            response = await signed_send(http, server_name, flood_key, "flood")
            flood_answers.append(response.status_code)

        async with anyio.create_task_group() as tg:
            for server_name in hanging.server_names:
                tg.start_soon(flood_send, server_name)
            with anyio.fail_after(30):
                await hanging.accepted_at_least(CONCURRENCY).wait()
            # Mid-attack: every key-fetch slot is held by a hung fetch.
            started = clock.monotonic()
            first = await legit_send(http, origin, "legit1")
            legit_elapsed_s = clock.monotonic() - started
            deadlines_hit_before = flood_answers.count(401)
        # The flood is over: every hanging /send has its answer.
        second = await legit_send(http, origin, "legit2")
    assert first.status_code == 200, first.text
    assert deadlines_hit_before == 0, "the legitimate origin waited for hung fetches to time out"
    assert second.status_code == 200, second.text
    assert origin.key_requests == 1
    assert len(flood_answers) == FLOOD
    # Hung fetches that ran into their own deadline: 401. Those preempted for a
    # waiter or turned away from the queue: 429 (ours, not held against them).
    assert set(flood_answers) == {401, 429}
    # The cap held, and preempted connections were closed at once (not left to
    # the garbage collector): never more hung connections open than slots, give
    # or take a close the server had not read yet when the next connect came in.
    assert hanging.most_open <= CONCURRENCY + 2
    print(
        f"\nlegitimate origin answered in {legit_elapsed_s * 1000:.0f} ms mid-flood; "
        f"flood answers: {flood_answers.count(401)} x 401, {flood_answers.count(429)} x 429; "
        f"most hung connections open at once: {hanging.most_open}"
    )


async def test_a_new_origin_after_the_flood_is_fetched_at_once(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    config = worker_config(
        tmp_path,
        certificates,
        key_fetch_concurrency=4,
        key_fetch_timeout_ms=2_000,
        key_fetch_contended_timeout_ms=500,
    )
    flood_key = generate_signing_key("flood")
    async with (
        serve_hanging_key_servers(40, certificates) as hanging,
        running_origin(certificates) as late,  # outlives the worker, as a real peer does
        running_worker(config) as worker,
        flood_client(worker.ports[0], certificates) as http,
    ):
        async with anyio.create_task_group() as tg:
            for server_name in hanging.server_names:
                tg.start_soon(signed_send, http, server_name, flood_key, "flood")
        assert hanging.accepted > 0
        response = await legit_send(http, late, "late1")
    assert response.status_code == 200, response.text
    assert late.key_requests == 1
