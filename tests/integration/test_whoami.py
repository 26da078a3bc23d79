"""Delegated token checks against a homeserver's /account/whoami, over real TLS.

A small ASGI app plays the homeserver (``tls_peer.serve_tls``): it answers
each token as the test says and counts the calls. Successes are cached for
the TTL (on a FakeClock); unknown tokens and failures never are; a call that
hangs is cut off by the timeout (real time: 0.3 s, the only wall-clock wait
here, asserted only to end).
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from federation_presence.auth import Requester, WhoamiTokens
from federation_presence.config import DelegatedAuthConfig
from federation_presence.errors import PeerError
from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.worker import running_worker
from tests.fakes import FakeClock
from tests.integration.conftest import WORKER_NAME, worker_client, worker_config
from tests.integration.tls_peer import Message, Receive, Scope, Send, TlsCertificates, serve_tls

ALICE = f"@alice:{WORKER_NAME}"


@dataclass
class Homeserver:
    """Answers whoami: ``users`` by token; ``status`` overrides; ``hang`` never answers."""

    users: dict[str, dict[str, str]] = field(default_factory=dict)
    status: int | None = None
    hang: bool = False
    calls: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        assert scope["path"] == "/_matrix/client/v3/account/whoami"
        self.calls += 1
        if self.hang:
            await anyio.sleep_forever()
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
        if self.status is not None:
            status, body = self.status, {"errcode": "M_UNKNOWN", "error": "down"}
        elif token in self.users:
            status, body = 200, self.users[token]
        else:
            status, body = 401, {"errcode": "M_UNKNOWN_TOKEN", "error": "who?"}
        start: Message = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
        await send(start)
        await send({"type": "http.response.body", "body": orjson.dumps(body)})


@pytest.fixture
def homeserver() -> Homeserver:
    return Homeserver(
        users={
            "good": {"user_id": ALICE, "device_id": "PHONE"},
            "nodevice": {"user_id": ALICE},
            "foreign": {"user_id": "@eve:elsewhere.test", "device_id": "X"},
            "garbage": {"user_id": "not a user"},
        }
    )


@pytest.fixture
async def base_url(homeserver: Homeserver, certificates: TlsCertificates) -> AsyncIterator[str]:
    async with serve_tls(homeserver, certificates, graceful_shutdown_s=1) as peer:
        yield peer.base_url


@pytest.fixture
async def http(certificates: TlsCertificates) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context(cafile=str(certificates.ca_path))
    async with httpx.AsyncClient(verify=context) as client:
        yield client


def tokens(
    http: httpx.AsyncClient, base_url: str, clock: FakeClock, timeout_ms: int = 5_000
) -> WhoamiTokens:
    return WhoamiTokens(
        http,
        base_url,
        ServerName(WORKER_NAME),
        clock,
        cache_ttl_ms=60_000,
        timeout_ms=timeout_ms,
        max_cached_tokens=2,
    )


async def test_a_known_token_is_cached_for_the_ttl(
    homeserver: Homeserver, base_url: str, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    whoami = tokens(http, base_url, clock)
    expected = Requester(UserId(ALICE), DeviceId("PHONE"))
    assert await whoami.lookup("good") == expected
    assert await whoami.lookup("good") == expected
    assert homeserver.calls == 1
    clock.set(clock.now_ms() + 60_000)
    assert await whoami.lookup("good") == expected
    assert homeserver.calls == 2


async def test_unknown_foreign_and_deviceless_tokens(
    homeserver: Homeserver, base_url: str, http: httpx.AsyncClient
) -> None:
    whoami = tokens(http, base_url, FakeClock())
    assert await whoami.lookup("nope") is None
    assert await whoami.lookup("nope") is None
    assert homeserver.calls == 2  # an unknown token is never cached
    assert await whoami.lookup("foreign") is None  # not a user of our server
    assert await whoami.lookup("nodevice") == Requester(UserId(ALICE), DeviceId(""))


async def test_a_failure_is_503_and_never_cached_as_success(
    homeserver: Homeserver, base_url: str, http: httpx.AsyncClient
) -> None:
    whoami = tokens(http, base_url, FakeClock())
    homeserver.status = 500
    with pytest.raises(PeerError) as caught:
        await whoami.lookup("good")
    assert (caught.value.status, caught.value.errcode) == (503, "M_UNKNOWN")
    with pytest.raises(PeerError):
        await whoami.lookup("garbage-from-a-broken-server")
    homeserver.status = None
    with pytest.raises(PeerError):
        await whoami.lookup("garbage")  # a malformed user_id is a failure, not an answer
    assert await whoami.lookup("good") == Requester(UserId(ALICE), DeviceId("PHONE"))


async def test_the_cache_is_bounded(
    homeserver: Homeserver, base_url: str, http: httpx.AsyncClient
) -> None:
    homeserver.users.update({f"t{i}": {"user_id": ALICE, "device_id": f"D{i}"} for i in range(3)})
    whoami = tokens(http, base_url, FakeClock())
    for i in range(3):
        await whoami.lookup(f"t{i}")
    calls = homeserver.calls
    await whoami.lookup("t0")  # evicted (max 2): asked again
    await whoami.lookup("t2")  # still cached
    assert homeserver.calls == calls + 1


async def test_a_hanging_homeserver_is_cut_off_by_the_timeout(
    homeserver: Homeserver, base_url: str, http: httpx.AsyncClient
) -> None:
    homeserver.hang = True
    whoami = tokens(http, base_url, FakeClock(), timeout_ms=300)
    with anyio.fail_after(10), pytest.raises(PeerError) as caught:
        await whoami.lookup("good")
    assert caught.value.status == 503


async def test_the_worker_serves_sync_to_a_delegated_token(
    homeserver: Homeserver, base_url: str, tmp_path: Path, certificates: TlsCertificates
) -> None:
    config = dataclasses.replace(
        worker_config(tmp_path, certificates), delegated_auth=DelegatedAuthConfig(base_url)
    )
    async with running_worker(config) as worker, worker_client(worker, certificates) as client:
        headers = {"Authorization": "Bearer good"}
        response = await client.get("/_matrix/client/v3/sync", headers=headers)
        assert response.status_code == 200, response.text
        assert [e["sender"] for e in response.json()["presence"]["events"]] == [ALICE]
        unknown = await client.get(
            "/_matrix/client/v3/sync", headers={"Authorization": "Bearer nope"}
        )
        assert (unknown.status_code, unknown.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        homeserver.status = 502
        again = await client.get("/_matrix/client/v3/sync", headers=headers)
        assert again.status_code == 200  # cached success
        fresh = await client.get(
            "/_matrix/client/v3/sync", headers={"Authorization": "Bearer nodevice"}
        )
        assert (fresh.status_code, fresh.json()["errcode"]) == (503, "M_UNKNOWN")
