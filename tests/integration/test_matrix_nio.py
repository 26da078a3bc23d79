"""A real Matrix client library (matrix-nio) against the worker, over HTTPS.

Alice's nio client logs in with a configured access token, sets ``busy``
with a status message, syncs, and sees Bob's presence change arrive on a
long-poll; Bob uses his own nio client. The worker runs on a FakeClock.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
from nio import AsyncClient, PresenceSetResponse, SyncResponse

from tests.integration.local_users import ALICE, BOB, local_worker
from tests.integration.tls_peer import TlsCertificates


def nio_client(port: int, ca_path: Path, user_id: str, device_id: str, token: str) -> AsyncClient:
    context = ssl.create_default_context(cafile=str(ca_path))
    client = AsyncClient(f"https://localhost:{port}", user_id, ssl=context)  # type: ignore[arg-type]
    client.restore_login(user_id=user_id, device_id=device_id, access_token=token)
    return client


async def test_nio_sets_busy_syncs_and_sees_another_users_change(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    async with local_worker(tmp_path, certificates) as local:
        await local.set_room("!r:fp.test", [ALICE, BOB])
        port = local.worker.ports[0]
        alice = nio_client(port, certificates.ca_path, ALICE, "A", "alice-a")
        bob = nio_client(port, certificates.ca_path, BOB, "BOB1", "bob")
        try:
            assert isinstance(await alice.set_presence("busy", "in a meeting"), PresenceSetResponse)
            assert isinstance(await bob.set_presence("online"), PresenceSetResponse)
            first = await alice.sync(timeout=0, set_presence="online")
            assert isinstance(first, SyncResponse), first
            seen = {e.user_id: e for e in first.presence_events}
            assert seen[ALICE].presence == "org.matrix.msc3026.busy"
            assert seen[ALICE].status_msg == "in a meeting"
            assert seen[BOB].presence == "online"

            answers: list[object] = []
            answered = anyio.Event()

            async def long_poll() -> None:
                answers.append(await alice.sync(timeout=60_000, since=first.next_batch))
                answered.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_poll)
                await local.waiting(1)
                await bob.set_presence("unavailable", "lunch")
                with anyio.fail_after(10):
                    await answered.wait()
            second = answers[0]
            assert isinstance(second, SyncResponse), second
            assert [(e.user_id, e.presence, e.status_msg) for e in second.presence_events] == [
                (BOB, "unavailable", "lunch")
            ]
            got = await alice.get_presence(BOB)
            assert (got.presence, got.status_msg) == ("unavailable", "lunch")  # type: ignore[union-attr]
        finally:
            await alice.close()
            await bob.close()
