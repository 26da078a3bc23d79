"""Beside a homeserver: the worker in front of a real Synapse's ``/send``.

The homeserver ("home") runs with ``presence.enabled: untracked``: it no
longer tracks, sends or ingests presence, but still processes everything
else a transaction carries. Its server name points at the worker (as a
reverse proxy would route ``/send`` and the key server to it); the worker
signs with the homeserver's own key, and its ``/send`` tee forwards each
transaction to the homeserver's internal listener.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from federation_presence.config import BesideConfig
from federation_presence.worker import running_worker
from tests.integration.tls_peer import TlsCertificates
from tests.interop.peer_worker import ADMIN_TOKEN, interop_worker_config, put_room, worker_http
from tests.interop.synapse_fixture import (
    SynapseInstall,
    SynapseSpec,
    free_port,
    poll_until,
    running_synapse,
)
from tests.interop.sync_follower import SyncFollower, presence_is
from tests.interop.test_synapse_to_worker import sample, wait_for_worker_state

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

RECEIVED_EDUS = "synapse_federation_server_received_edus_total"


async def test_a_remote_synapses_transaction_goes_through_the_tee_to_the_homeserver(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    front = free_port()
    home_spec = SynapseSpec(
        tmp_path / "home",
        certificates,
        name_port=front,
        plain_port=free_port(),
        presence_enabled="untracked",
    )
    # The remote Synapse sends its users' presence to a user of the home server.
    remote_spec = SynapseSpec(
        tmp_path / "remote", certificates, routed_users=(f"@carol:localhost:{front}",)
    )
    async with running_synapse(synapse_install, home_spec) as home:
        config = dataclasses.replace(
            interop_worker_config(tmp_path / "worker", certificates, front),
            # One server, one key: the worker signs (and serves keys) as the homeserver.
            signing_key_path=home_spec.signing_key_path,
            beside=BesideConfig(homeserver_url=f"http://127.0.0.1:{home_spec.plain_port}"),
        )
        assert config.server_name == home.server_name
        async with (
            running_worker(config) as worker,
            running_synapse(synapse_install, remote_spec) as remote,
        ):
            token = await remote.register("dave")
            dave = remote.user("dave")
            await remote.set_presence(token, dave, "online", "through the tee")
            # The worker verified the remote's transaction and applied the push ...
            await wait_for_worker_state(
                front, certificates, remote, dave, "online", "through the tee"
            )

            # ... and the homeserver got the same signed transaction and accepted
            # it (it verifies the X-Matrix signature itself; its answer is what
            # the remote got, and the remote logged a 200).
            async def home_received() -> float | None:
                count = await home.metric(RECEIVED_EDUS)
                return count if count >= 1 else None

            await poll_until("the homeserver to receive the EDU", home_received)
            assert "got 200 response" in remote.spec.log_path.read_text()
            assert sample(worker, "federation_presence_inbound_rejections_total") == 0


async def test_a_homeserver_users_presence_reaches_a_second_server_through_the_worker(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    """Dave syncs with his untracked homeserver; Erin on another server sees him online.

    The Synapse module turns Dave's requests into heartbeats to the worker's
    bridge API; the worker's sender sends his presence to the remote server
    (it shares a room with Erin, says the worker's admin API), signed with
    the homeserver's key, which the remote fetches from the homeserver's
    name (answered by the worker in front, with the same key).
    """
    front, admin_port = free_port(), free_port()
    module = {
        "module": "federation_presence.synapse_module.PresenceForwarder",
        "config": {
            "worker_url": f"http://127.0.0.1:{admin_port}",
            "admin_token": ADMIN_TOKEN,
            "flush_interval_ms": 200,
        },
    }
    home_spec = SynapseSpec(
        tmp_path / "home",
        certificates,
        name_port=front,
        plain_port=free_port(),
        presence_enabled="untracked",
        extra=(("modules", [module], "Hands local activity to the worker beside us."),),
    )
    # The remote's router makes its users interested in Dave (for its /sync).
    remote_spec = SynapseSpec(
        tmp_path / "remote", certificates, routed_users=(f"@dave:localhost:{front}",)
    )
    async with running_synapse(synapse_install, home_spec) as home:
        config = dataclasses.replace(
            interop_worker_config(
                tmp_path / "worker", certificates, front, plain_admin_port=admin_port
            ),
            signing_key_path=home_spec.signing_key_path,
            beside=BesideConfig(homeserver_url=f"http://127.0.0.1:{home_spec.plain_port}"),
        )
        async with (
            running_worker(config) as worker,
            worker_http(front, certificates) as http,
            running_synapse(synapse_install, remote_spec) as remote,
        ):
            dave_token = await home.register("dave")
            dave = home.user("dave")
            erin_token = await remote.register("erin")
            await put_room(http, "!beside:interop", [dave, remote.user("erin")])
            erin_sync = SyncFollower(remote.http, erin_token)
            await erin_sync.poll(timeout_ms=0)
            # Dave's client syncs with his homeserver (as a client does).
            await SyncFollower(home.http, dave_token, set_presence="online").poll(timeout_ms=0)
            event = await erin_sync.wait_for("dave online", presence_is(dave, "online", None))
            assert event["content"]["currently_active"] is True
            # Sent by the worker (its txn ids start with "fp"; the untracked
            # homeserver sends no presence), accepted under the homeserver's name.
            log = remote.spec.log_path.read_text()
            assert re.search(rf"Received txn fp\S* from {re.escape(home.server_name)}\.", log)
            assert (
                sample(worker, "federation_presence_outbound_transactions_total", outcome="sent")
                >= 1
            )
