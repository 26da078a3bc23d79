"""Stored /send answers are kept for ``txn_retention`` and then pruned."""

from __future__ import annotations

from pathlib import Path

import anyio
import orjson

from federation_presence.clock import SystemClock
from federation_presence.worker import running_worker
from tests.fakes import FakeClock
from tests.integration.conftest import WORKER_NAME, worker_client, worker_config
from tests.integration.origin import running_origin
from tests.integration.tls_peer import TlsCertificates

HOUR_MS = 3_600_000
RETENTION_MS = 2 * HOUR_MS
# The pruning loop runs every retention/24. Other sleepers (timers, the sender)
# make ``advance`` step through intermediate times, and the loop may read one
# of them just before the target and then sleep past it: advancing one
# interval further guarantees a pass that read a time at or after the target.
PRUNE_INTERVAL_MS = RETENTION_MS // 24


async def test_answers_older_than_the_retention_are_pruned(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    # Not the default retention (24 h), so the test shows the key is wired.
    config = worker_config(tmp_path, certificates, txn_retention_ms=RETENTION_MS)
    clock = FakeClock(start_ms=SystemClock().now_ms())  # near real time: the origin's key is valid
    async with (
        running_origin(certificates) as origin,
        running_worker(config, clock=clock) as worker,
        worker_client(worker, certificates) as http,
    ):
        received_ts = clock.now_ms()
        body = origin.transaction()
        response = await http.put(
            "/_matrix/federation/v1/send/old",
            content=orjson.dumps(body),
            headers={"Authorization": origin.authorization("old", body, destination=WORKER_NAME)},
        )
        assert response.status_code == 200
        assert await worker.store.get_txn_response(origin.server_name, "old") is not None

        await clock.advance(HOUR_MS + PRUNE_INTERVAL_MS)
        with anyio.fail_after(10):
            await worker.inbound.wait_pruned(received_ts - HOUR_MS)
        assert await worker.store.get_txn_response(origin.server_name, "old") is not None

        await clock.advance(2 * HOUR_MS + PRUNE_INTERVAL_MS)
        with anyio.fail_after(10):
            await worker.inbound.wait_pruned(received_ts + 1)
        assert await worker.store.get_txn_response(origin.server_name, "old") is None
