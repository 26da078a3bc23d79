"""The load generator end to end against the real worker on loopback.

Synthetic origins are real TLS key servers; the worker fetches their keys,
verifies every transaction and stores every push. A load figure never
counts refused or lost work: every transaction must be answered 200 (or
429, then retried after ``retry_after_ms``) and every push stored.
"""

from __future__ import annotations

import dataclasses
import json
import re
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from federation_presence.clock import SystemClock
from federation_presence.config import Config
from federation_presence.ids import UserId
from federation_presence.loadtest.origins import serving_origins
from federation_presence.loadtest.plan import LoadShape, request_bytes, transaction_body
from federation_presence.loadtest.runner import send_requests
from federation_presence.loadtest.session import LoadSettings, Target, TlsFiles, run_load
from federation_presence.worker import RunningWorker, running_worker
from tests.integration.checkout import checkout_env
from tests.integration.conftest import WORKER_NAME
from tests.integration.tls_peer import TlsCertificates


def _tls(certificates: TlsCertificates) -> TlsFiles:
    # The worker trusts the test CA (federation.ca_bundle): the origins use its certificate.
    return TlsFiles(certificates.cert_path, certificates.key_path, certificates.ca_path)


def _target(worker: RunningWorker) -> Target:
    return Target(True, "localhost", worker.ports[0])


@pytest.mark.parametrize("shape", [LoadShape(1, 1, 10), LoadShape(2, 50, 100)])
async def test_every_generated_transaction_is_accepted_and_stored(
    worker: RunningWorker, certificates: TlsCertificates, shape: LoadShape
) -> None:
    clock = SystemClock()
    async with serving_origins(3, clock, certificates.cert_path, certificates.key_path) as origins:
        requests = [
            [
                request_bytes(
                    origin=origin.server_name,
                    signing_key=origin.signing_key,
                    destination=WORKER_NAME,
                    host_header=f"localhost:{worker.ports[0]}",
                    txn_id=f"t{i}",
                    body=transaction_body(origin.server_name, shape, i, clock.now_ms()),
                )
                for i in range(4)
            ]
            for origin in origins
        ]
        context = ssl.create_default_context(cafile=str(certificates.ca_path))
        result = await send_requests(
            "localhost", worker.ports[0], requests, clock, duration_s=60, ssl_context=context
        )
    assert dict(result.statuses) == {200: 12}
    assert not result.errors
    assert len(result.latencies_ms) == 12
    for origin in origins:
        last = transaction_body(origin.server_name, shape, 3, 0)
        pushes = last["edus"][-1]["content"]["push"]  # type: ignore[index]
        stored = await worker.keeper.get(UserId(pushes[-1]["user_id"]))
        assert stored is not None
        assert stored.state.value == pushes[-1]["presence"]


async def test_a_run_reports_its_figures_the_target_and_the_client_ceiling(
    worker: RunningWorker, certificates: TlsCertificates
) -> None:
    settings = LoadSettings(origins=3, users_per_origin=5, pushes_per_edu=2, count=30)
    report = await run_load(_target(worker), settings, _tls(certificates), SystemClock())
    data = report.as_json()
    assert data["server_name"] == WORKER_NAME
    assert data["version"]["server"]["name"] == "federation-presence"
    assert data["statuses"] == {"200": 30}
    assert data["transactions_ok"] == 30
    assert data["txn_per_s"] > 0
    assert data["pushes_per_s"] == pytest.approx(2 * data["txn_per_s"], rel=0.01)
    assert 0 < data["p50_ms"] <= data["p99_ms"] <= data["max_ms"]
    assert data["errors"] == {}
    assert data["throttled_429"] == 0
    assert sum(second["ok"] for second in data["timeline"]) == 30
    assert data["ceiling_txn_per_s"] > 0
    assert isinstance(data["client_limited"], bool)
    assert data["settings"]["users"] == "warm"
    assert "client ceiling (same requests, no-op server)" in report.as_text()


async def test_every_push_of_a_second_run_is_a_change_for_the_target(
    worker: RunningWorker, certificates: TlsCertificates
) -> None:
    """Issue 18: a run must not resend states the target already holds."""
    settings = LoadSettings(origins=1, users_per_origin=4, count=2, pushes_per_edu=4)
    tls = _tls(certificates)
    clock = SystemClock()
    async with serving_origins(1, clock, tls.cert, tls.key) as origins:
        users = [UserId(f"@u{n}:{origins[0].server_name}") for n in range(4)]
        first = await run_load(
            _target(worker), settings, tls, clock, ceiling=False, origins=origins
        )
        held = {user: await worker.keeper.get(user) for user in users}
        second = await run_load(
            _target(worker), settings, tls, clock, ceiling=False, origins=origins
        )
    assert first.settings["run_tag"] != second.settings["run_tag"]
    assert first.result.ok == second.result.ok == 2
    for user in users:
        before, after = held[user], await worker.keeper.get(user)
        assert before is not None
        assert after is not None
        assert after != before  # the second run changed every warm user again
        assert (after.status_msg or "").startswith(f"load {second.settings['run_tag']}.")


async def test_cold_users_are_users_the_target_has_never_seen(
    worker: RunningWorker, certificates: TlsCertificates
) -> None:
    settings = LoadSettings(origins=2, users="cold", pushes_per_edu=3, count=4)
    report = await run_load(
        _target(worker), settings, _tls(certificates), SystemClock(), ceiling=False
    )
    assert report.as_json()["statuses"] == {"200": 4}
    assert report.settings["users"] == "cold"


@pytest.fixture
async def throttling_worker(
    tmp_path: Path, config: Config, origin: object
) -> AsyncIterator[RunningWorker]:
    """A worker whose per-origin rate limit admits one /send, then 429s for ~1 s."""
    federation = dataclasses.replace(config.federation, rate_limit_per_second=1, rate_limit_burst=1)
    async with running_worker(dataclasses.replace(config, federation=federation)) as running:
        yield running


async def test_429s_are_honoured_with_retry_after_ms_and_counted(
    throttling_worker: RunningWorker, certificates: TlsCertificates
) -> None:
    # One origin, three transactions: the priming one takes the only token.
    settings = LoadSettings(origins=1, users_per_origin=1, count=2, duration_s=30)
    report = await run_load(
        _target(throttling_worker), settings, _tls(certificates), SystemClock(), ceiling=False
    )
    data = report.as_json()
    assert data["transactions_ok"] == 2  # every transaction got through in the end
    assert data["throttled_429"] >= 1
    assert data["statuses"]["429"] == data["throttled_429"]
    assert data["retry_after_ms_total"] >= 500  # waited what the worker asked
    assert data["errors"] == {}


async def test_the_cli_writes_a_self_contained_html_page_and_json(
    worker: RunningWorker, certificates: TlsCertificates, tmp_path: Path
) -> None:
    page_path = tmp_path / "report.html"
    command = [
        sys.executable, "-m", "federation_presence", "loadtest",
        f"https://localhost:{worker.ports[0]}",
        "--origins", "2", "--users-per-origin", "3", "--shape", "2x5", "--count", "10",
        "--origin-cert", str(certificates.cert_path), "--origin-key", str(certificates.key_path),
        "--target-ca", str(certificates.ca_path), "--json", "--html", str(page_path),
    ]  # fmt: skip
    with anyio.fail_after(60):
        done = await anyio.run_process(command, env=checkout_env(), check=False)
    assert done.returncode == 0, done.stderr.decode()
    data = json.loads(done.stdout)
    assert data["statuses"] == {"200": 10}
    assert data["pushes_per_s"] == pytest.approx(10 * data["txn_per_s"], rel=0.01)
    assert "priming: 2 untimed transactions" in done.stderr.decode()
    assert "ERROR" not in done.stderr.decode()
    page = await anyio.Path(page_path).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 2  # throughput and latency
    assert "<polyline" in page
    assert "federation-presence" in page  # the target's /version
    assert "run_tag" in page  # the settings
    # Nothing loaded from elsewhere: no scripts, links, images, imports or URL references.
    lowered = page.lower()
    for outside in ("<script", "<link", "<img", "<iframe", "@import", "url("):
        assert outside not in lowered, outside
    assert not re.search(r"(src|href)\s*=", lowered)


async def test_open_loop_paces_transactions_at_the_rate_and_counts_latency_from_when_due(
    worker: RunningWorker, certificates: TlsCertificates
) -> None:
    # 10 transactions at 20/s: the last is due 0.45 s after the start, so the
    # run cannot end sooner, however fast the worker answers.
    settings = LoadSettings(origins=2, users_per_origin=2, count=10, rate=20.0)
    report = await run_load(
        _target(worker), settings, _tls(certificates), SystemClock(), ceiling=False
    )
    assert report.result.ok == 10
    assert report.result.elapsed_s >= 0.45
    assert report.settings["rate"] == 20.0
