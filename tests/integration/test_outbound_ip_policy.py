"""Outbound federation cannot be aimed at internal addresses (SSRF), end to end.

A real worker, a real signed ``PUT /send`` and a real TLS key server on
loopback. With the default ``ip_range_blacklist`` (Synapse's) and no whitelist,
an origin named ``127.0.0.1:<port>`` or ``localhost:<port>`` makes the worker's
keyring try to fetch that origin's key from loopback: the connect step refuses
it, so the key server never sees a request and the ``/send`` is 401. With
loopback whitelisted the same request is accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from federation_presence.config import Config
from federation_presence.worker import RunningWorker, running_worker
from tests.integration.conftest import WORKER_NAME, worker_client, worker_config
from tests.integration.origin import TestOrigin, presence_edu, running_origin
from tests.integration.tls_peer import TlsCertificates


@pytest.fixture(params=["127.0.0.1", "localhost"])
async def loopback_origin(
    request: pytest.FixtureRequest, certificates: TlsCertificates
) -> AsyncIterator[TestOrigin]:
    async with running_origin(certificates) as origin:
        port = origin.server_name.rsplit(":", 1)[1]
        origin.server_name = f"{request.param}:{port}"
        yield origin


async def _send_presence(
    worker: RunningWorker, certificates: TlsCertificates, origin: TestOrigin
) -> httpx.Response:
    body = origin.transaction(
        presence_edu({"user_id": origin.user("a"), "presence": "online", "last_active_ago": 0})
    )
    async with worker_client(worker, certificates) as http:
        return await http.put(
            "/_matrix/federation/v1/send/t1",
            content=orjson.dumps(body),
            headers={
                "Authorization": origin.authorization("t1", body, destination=WORKER_NAME),
                "Content-Type": "application/json",
            },
        )


def _config(tmp_path: Path, certificates: TlsCertificates, whitelist: tuple[str, ...]) -> Config:
    return worker_config(tmp_path, certificates, ip_range_whitelist=whitelist)


async def test_a_loopback_origin_is_401_without_its_key_server_being_contacted(
    tmp_path: Path, certificates: TlsCertificates, loopback_origin: TestOrigin
) -> None:
    config = _config(tmp_path, certificates, ())
    assert "127.0.0.0/8" in config.federation.ip_range_blacklist
    async with running_worker(config) as worker:
        response = await _send_presence(worker, certificates, loopback_origin)
    assert response.status_code == 401, response.text
    assert response.json()["errcode"] == "M_UNAUTHORIZED"
    assert loopback_origin.key_requests == 0


async def test_a_whitelisted_loopback_origin_is_accepted(
    tmp_path: Path, certificates: TlsCertificates, loopback_origin: TestOrigin
) -> None:
    config = _config(tmp_path, certificates, ("127.0.0.0/8", "::1/128"))
    async with running_worker(config) as worker:
        response = await _send_presence(worker, certificates, loopback_origin)
    assert response.status_code == 200, response.text
    assert loopback_origin.key_requests == 1
