"""What an operator sees of refusals and failures: log lines and counters.

Over real HTTPS to a real worker. What must hold: every refusal is counted
(``federation_presence_http_refusals{status, errcode}``, 405 and 413
included) and logged in one concise line, but a flood of them, or a store
outage under load, is a bounded number of lines: the first ones, then a count
per window. A store outage is answered 503 with ``Retry-After``.

The worker runs on a ``FakeClock``: log windows end when the test says so.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from federation_presence.api.app import REFUSAL_LINES_PER_WINDOW
from federation_presence.worker import RunningWorker, running_worker
from tests.fakes import FakeClock
from tests.integration.conftest import WORKER_NAME, worker_client, worker_config
from tests.integration.origin import TestOrigin, presence_edu
from tests.integration.tls_peer import TlsCertificates

APP_LOGGER = "federation_presence.api.app"
WINDOW_MS = 10_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def worker(
    tmp_path: Path, certificates: TlsCertificates, origin: TestOrigin, clock: FakeClock
) -> AsyncIterator[RunningWorker]:
    # The fake clock does not refill the per-origin bucket: make it deep enough.
    config = worker_config(tmp_path, certificates, rate_limit_burst=10_000)
    async with running_worker(config, clock=clock) as running:
        yield running


@pytest.fixture
async def http(
    worker: RunningWorker, certificates: TlsCertificates
) -> AsyncIterator[httpx.AsyncClient]:
    async with worker_client(worker, certificates) as client:
        yield client


def _refusals(worker: RunningWorker, status: int, errcode: str) -> float | None:
    return worker.metrics.registry.get_sample_value(
        "federation_presence_http_refusals_total", {"status": str(status), "errcode": errcode}
    )


def _app_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == APP_LOGGER]


async def _send(http: httpx.AsyncClient, origin: TestOrigin, txn_id: str) -> httpx.Response:
    body = origin.transaction(
        presence_edu({"user_id": origin.user("a"), "presence": "online", "last_active_ago": 0})
    )
    return await http.put(
        f"/_matrix/federation/v1/send/{txn_id}",
        content=orjson.dumps(body),
        headers={"Authorization": origin.authorization(txn_id, body, destination=WORKER_NAME)},
    )


async def test_a_refusal_is_one_line_with_origin_txn_status_and_reason(
    http: httpx.AsyncClient, origin: TestOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=APP_LOGGER):
        response = await http.put(
            "/_matrix/federation/v1/send/t%0A1",
            content=b"{}",
            headers={
                "Authorization": f'X-Matrix origin="{origin.server_name}",key="ed25519:x",'
                'sig="bm90IGEgc2ln"'
            },
        )
    assert response.status_code == 401
    (line,) = _app_lines(caplog)
    message = line.getMessage()
    assert message.startswith("refused PUT /_matrix/federation/v1/send/t%0A1 from 127.0.0.1")
    assert f"(origin {origin.server_name}, txn t\\n1)" in message
    assert ": 401 M_UNAUTHORIZED " in message
    assert "\n" not in message


async def test_405_and_413_are_counted(worker: RunningWorker, http: httpx.AsyncClient) -> None:
    assert (await http.get("/_matrix/federation/v1/send/x")).status_code == 405
    too_big = b" " * (worker.config.federation.max_request_body_bytes + 1)
    assert (await http.put("/_matrix/federation/v1/send/y", content=too_big)).status_code == 413
    assert (await http.get("/nowhere")).status_code == 404

    assert _refusals(worker, 405, "M_UNRECOGNIZED") == 1
    assert _refusals(worker, 413, "M_TOO_LARGE") == 1
    assert _refusals(worker, 404, "M_UNRECOGNIZED") == 1


async def test_a_flood_of_refusals_is_a_bounded_number_of_lines(
    worker: RunningWorker,
    http: httpx.AsyncClient,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger=APP_LOGGER):
        for _ in range(300):
            assert (await http.delete("/_matrix/key/v2/server")).status_code == 405
        await clock.advance(WINDOW_MS)  # the window ends: its count is written

    lines = [record.getMessage() for record in _app_lines(caplog)]
    assert len(lines) == REFUSAL_LINES_PER_WINDOW + 1
    assert lines[-1] == f"{300 - REFUSAL_LINES_PER_WINDOW} more refused requests in the last 10s"
    assert _refusals(worker, 405, "M_UNRECOGNIZED") == 300


async def test_a_store_outage_is_503_with_retry_after_and_a_handful_of_lines(
    worker: RunningWorker,
    http: httpx.AsyncClient,
    origin: TestOrigin,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert (await _send(http, origin, "before")).status_code == 200  # the key is cached
    await worker.store.close()  # the database is gone

    with caplog.at_level(logging.INFO, logger=APP_LOGGER):
        for index in range(200):
            response = await _send(http, origin, f"during{index}")
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            assert response.json()["errcode"] == "M_UNKNOWN"
        await clock.advance(WINDOW_MS)

    records = _app_lines(caplog)
    assert len(records) == 2
    first, summary = records
    assert first.exc_info is not None  # the traceback, once
    assert "store failure answering PUT /_matrix/federation/v1/send/during0" in first.getMessage()
    assert summary.exc_info is None
    assert summary.getMessage() == "199 more store failures (StoreError) in the last 10s"
    store_failures = worker.metrics.registry.get_sample_value(
        "federation_presence_store_failures_total", {"error": "StoreError"}
    )
    assert store_failures == 200
    assert _refusals(worker, 503, "M_UNKNOWN") == 200


async def test_a_flood_of_malformed_requests_is_a_bounded_number_of_uvicorn_lines(
    worker: RunningWorker,
    certificates: TlsCertificates,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = ssl.create_default_context(cafile=str(certificates.ca_path))
    with caplog.at_level(logging.INFO):
        for _ in range(60):
            stream = await anyio.connect_tcp(
                "localhost",
                worker.ports[0],
                tls=True,
                ssl_context=context,
                tls_standard_compatible=False,
            )
            async with stream:
                await stream.send(b"NOT HTTP AT ALL\r\n\r\n")
                with anyio.fail_after(10):
                    assert (await stream.receive()).startswith(b"HTTP/1.1 400 ")
        await clock.advance(WINDOW_MS)

    uvicorn_lines = [r for r in caplog.records if r.name == "uvicorn.error"]
    assert len(uvicorn_lines) == REFUSAL_LINES_PER_WINDOW
    summaries = [r.getMessage() for r in _app_lines(caplog)]
    assert summaries == [
        f"{60 - REFUSAL_LINES_PER_WINDOW} more uvicorn warnings"
        " (Invalid HTTP request received.) in the last 10s"
    ]
