"""The load generator end to end: synthetic origins, pre-signed transactions, the runner.

Against the real worker: every transaction must be answered 200 and every
push stored, so a load figure never counts refused or lost work.
"""

from __future__ import annotations

import ssl

import pytest

from federation_presence.clock import SystemClock
from federation_presence.ids import UserId
from federation_presence.loadtest.origins import serving_origins
from federation_presence.loadtest.plan import LoadShape, request_bytes, transaction_body
from federation_presence.loadtest.runner import send_requests
from federation_presence.worker import RunningWorker
from tests.integration.conftest import WORKER_NAME
from tests.integration.tls_peer import TlsCertificates


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
