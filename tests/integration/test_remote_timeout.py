"""Remote users time out to offline after FEDERATION_TIMEOUT, through the real worker.

The worker runs with a ``FakeClock``: its timer loop sleeps on that clock, so
advancing it fires the federation timeout deterministically, and the change
is persisted and put on the presence stream like any other.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import orjson

from federation_presence.clock import SystemClock
from federation_presence.ids import UserId
from federation_presence.presence.states import PresenceState
from federation_presence.worker import running_worker
from tests.fakes import FakeClock
from tests.integration.conftest import ADMIN_TOKEN, WORKER_NAME, worker_client, worker_config
from tests.integration.origin import presence_edu, running_origin
from tests.integration.tls_peer import TlsCertificates

MINUTE_MS = 60_000


async def test_a_remote_user_not_refreshed_goes_offline_and_onto_the_stream(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    config = worker_config(tmp_path, certificates)
    clock = FakeClock(start_ms=SystemClock().now_ms())  # near real time: the origin's key is valid
    async with (
        running_origin(certificates) as origin,
        running_worker(config, clock=clock) as worker,
        worker_client(worker, certificates) as http,
    ):
        alice = origin.user("alice")
        body = origin.transaction(
            presence_edu({"user_id": alice, "presence": "online", "last_active_ago": 0})
        )
        response = await http.put(
            "/_matrix/federation/v1/send/t1",
            content=orjson.dumps(body),
            headers={"Authorization": origin.authorization("t1", body, destination=WORKER_NAME)},
        )
        assert response.status_code == 200
        rows = await worker.store.stream_since(0, 100)
        assert [(r.state.user_id, r.state.state) for r in rows] == [(alice, PresenceState.ONLINE)]
        online_position = rows[0].stream_id

        await clock.advance(29 * MINUTE_MS)
        assert (await worker.keeper.get(UserId(alice))).state is PresenceState.ONLINE  # type: ignore[union-attr]

        await clock.advance(2 * MINUTE_MS)
        with anyio.fail_after(10):
            assert worker.stream is not None
            await worker.stream.wait(online_position)
        rows = await worker.store.stream_since(online_position, 100)
        assert [(r.state.user_id, r.state.state) for r in rows] == [(alice, PresenceState.OFFLINE)]
        status = await http.get(
            f"/_matrix/client/v3/presence/{alice}/status",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert status.json()["presence"] == "offline"
