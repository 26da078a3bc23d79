"""GET a user's presence after the worker evicted it from memory: the store answers.

The worker keeps no offline remote users (``offline_cache_size: 0``), so a
remote user timed out to offline is evicted as soon as that is durable; the
client API still answers for it, and a push bringing it back is a change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import orjson

from federation_presence.clock import SystemClock
from federation_presence.presence.model import PresenceSettings
from federation_presence.presence.states import PresenceState
from federation_presence.worker import running_worker
from tests.fakes import FakeClock
from tests.integration.conftest import ADMIN_TOKEN, WORKER_NAME, worker_client, worker_config
from tests.integration.origin import presence_edu, running_origin
from tests.integration.tls_peer import TlsCertificates

MINUTE_MS = 60_000


async def test_the_status_of_an_evicted_user_is_read_from_the_store(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    config = dataclasses.replace(
        worker_config(tmp_path, certificates), presence=PresenceSettings(offline_cache_size=0)
    )
    clock = FakeClock(start_ms=SystemClock().now_ms())  # near real time: the origin's key is valid
    async with (
        running_origin(certificates) as origin,
        running_worker(config, clock=clock) as worker,
        worker_client(worker, certificates) as http,
    ):
        alice = origin.user("alice")

        async def send(txn_id: str, presence: str) -> None:
            body = origin.transaction(
                presence_edu({"user_id": alice, "presence": presence, "last_active_ago": 0})
            )
            response = await http.put(
                f"/_matrix/federation/v1/send/{txn_id}",
                content=orjson.dumps(body),
                headers={
                    "Authorization": origin.authorization(txn_id, body, destination=WORKER_NAME)
                },
            )
            assert response.status_code == 200

        async def status() -> dict[str, object]:
            answer = await http.get(
                f"/_matrix/client/v3/presence/{alice}/status",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert answer.status_code == 200
            content: dict[str, object] = answer.json()
            return content

        stream = worker.stream
        assert stream is not None
        await send("t1", "online")
        position = stream.current_id
        await clock.advance(31 * MINUTE_MS)
        with anyio.fail_after(10):
            await stream.wait(position)
        assert worker.keeper._machine.get(alice) is None  # evicted: only the store has it

        assert (await status())["presence"] == "offline"

        position = stream.current_id
        await send("t2", "online")
        assert stream.current_id > position  # back online: a change, on the stream
        rows = await worker.store.stream_since(position, 10)
        assert [(r.state.user_id, r.state.state) for r in rows] == [(alice, PresenceState.ONLINE)]
        assert (await status())["presence"] == "online"
