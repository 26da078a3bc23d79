"""Both directions with a real Synapse: our local user ↔ a Synapse user.

Alice is the worker's local user (token from ``access_tokens``), Bob is a
Synapse user. The worker learns that they share a room through its admin
API, so its sender owes Alice's presence to Synapse; Synapse's interop
presence router routes Bob's presence to Alice and makes Bob interested in
everyone. What each side shows is read from its own ``/sync`` (long-polls).

Synapse's ``GET /presence/{userId}/status`` of a *remote* user answers 403
unless the two share a room (``PresenceHandler.is_visible`` consults only
room membership, not the presence router), and a room shared with a user of
the worker cannot exist: the worker joins no rooms (it handles no PDUs).
``test_synapse_refuses_status_of_a_user_it_shares_no_room_with`` pins that.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from federation_presence.clock import SystemClock
from federation_presence.config import AccessTokenConfig, Config
from federation_presence.federation.signing_keys import (
    read_signing_key_file,
    signing_key_id,
)
from federation_presence.outbound.settings import SenderSettings
from federation_presence.worker import RunningWorker, running_worker
from tests.integration.tls_peer import TlsCertificates
from tests.interop.peer_worker import (
    interop_worker_config,
    put_room,
    set_local_presence,
    worker_http,
)
from tests.interop.synapse_fixture import (
    SynapseInstall,
    SynapseServer,
    SynapseSpec,
    free_port,
    poll_until,
    running_synapse,
)
from tests.interop.sync_follower import SyncFollower, presence_is
from tests.interop.test_synapse_to_worker import SYNAPSE_RETRY_WAIT_S, sample

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

ALICE_TOKEN = "alice-token"
BUSY_NAMES = ("busy", "org.matrix.msc3026.busy")
RECEIVED_EDUS = "synapse_federation_server_received_edus_total"
SENT_PRESENCE_EDUS = "synapse_federation_client_sent_edus_by_type_total"


@dataclass
class Federation:
    """The two servers of a test and what the test needs of them."""

    config: Config
    certificates: TlsCertificates
    synapse: SynapseServer
    worker: RunningWorker
    http: httpx.AsyncClient  # to the worker
    alice: str
    bob: str
    bob_token: str

    def bob_sync(self) -> SyncFollower:
        return SyncFollower(self.synapse.http, self.bob_token)

    def alice_sync(self) -> SyncFollower:
        return SyncFollower(self.http, ALICE_TOKEN)

    async def alice_sets(self, presence: str, status_msg: str | None) -> None:
        await set_local_presence(self.http, ALICE_TOKEN, self.alice, presence, status_msg)


def outbound_config(workdir: Path, certificates: TlsCertificates, port: int) -> Config:
    base = interop_worker_config(workdir, certificates, port)
    return replace(
        base,
        access_tokens=(AccessTokenConfig(ALICE_TOKEN, f"@alice:{base.server_name}", "PHONE"),),
        # Backoff scaled down (10 s, up to 4 h by default) so that "Synapse
        # down for a while" takes seconds; and a transaction Synapse leaves
        # unanswered is given up after 10 s (30 s by default, as long as
        # these tests wait for a change to show), so one stalled attempt is
        # retried within a test's wait instead of using all of it.
        federation_sender=replace(
            SenderSettings(),
            backoff_initial_ms=500,
            backoff_max_ms=2_000,
            transaction_timeout_ms=10_000,
        ),
    )


@contextlib.asynccontextmanager
async def serving_worker(
    config: Config, certificates: TlsCertificates
) -> AsyncIterator[tuple[RunningWorker, httpx.AsyncClient]]:
    async with (
        running_worker(config) as worker,
        worker_http(worker.ports[0], certificates) as http,
    ):
        yield worker, http


@contextlib.asynccontextmanager
async def federation(
    install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> AsyncIterator[Federation]:
    port = free_port()
    config = outbound_config(tmp_path / "worker", certificates, port)
    alice = f"@alice:{config.server_name}"
    spec = SynapseSpec(tmp_path / "synapse", certificates, routed_users=(alice,))
    async with (
        running_synapse(install, spec) as synapse,
        serving_worker(config, certificates) as (worker, http),
        explained_failures(synapse, worker),
    ):
        bob_token = await synapse.register("bob")
        bob = synapse.user("bob")
        await put_room(http, "!shared:interop", [alice, bob])
        yield Federation(config, certificates, synapse, worker, http, alice, bob, bob_token)


def outbound_outcomes(worker: RunningWorker) -> str:
    """The worker sender's transaction counts by outcome, one line."""
    counts = {
        outcome: sample(worker, "federation_presence_outbound_transactions_total", outcome=outcome)
        for outcome in ("sent", "failed", "rejected")
    }
    return ", ".join(f"{outcome} {count:.0f}" for outcome, count in counts.items())


def synapse_traffic(synapse: SynapseServer, lines: int = 30) -> str:
    """The last lines of Synapse's log, without its start-up banner and handler registrations."""
    noise = ("Registering federation", "synapse.config.logger")
    kept = [
        line
        for line in synapse.log_tail(lines=400).splitlines()
        if not any(n in line for n in noise)
    ]
    return "\n".join(kept[-lines:])


@contextlib.asynccontextmanager
async def explained_failures(synapse: SynapseServer, worker: RunningWorker) -> AsyncIterator[None]:
    """A failed wait in the block carries what each side did: the worker's
    outbound transaction counts and the tail of Synapse's log (its
    federation traffic), so an intermittent failure can be read from one
    CI run's output."""
    try:
        yield
    except AssertionError as e:
        raise AssertionError(
            f"{e}\n--- worker outbound transactions: {outbound_outcomes(worker)}"
            f"\n--- Synapse log, its traffic and complaints:\n{synapse_traffic(synapse)}"
        ) from e


async def test_our_users_presence_shows_in_synapses_sync(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    async with federation(synapse_install, certificates, tmp_path) as f:
        bob_sync = f.bob_sync()
        await bob_sync.poll(timeout_ms=0)
        for presence, status_msg in [
            ("online", "at my desk"),
            ("busy", "in a meeting"),
            ("unavailable", "out for lunch"),
            ("offline", "gone home"),
        ]:
            await f.alice_sets(presence, status_msg)
            wanted = BUSY_NAMES if presence == "busy" else (presence,)
            event = await bob_sync.wait_for(
                f"alice {presence}",
                lambda e, wanted=wanted, s=status_msg: any(
                    presence_is(f.alice, p, s)(e) for p in wanted
                ),
            )
            assert event["type"] == "m.presence"
        # Synapse fetched the worker's key to verify those transactions.
        assert sample(f.worker, "federation_presence_outbound_transactions_total", outcome="sent")
        assert not sample(
            f.worker, "federation_presence_outbound_transactions_total", outcome="rejected"
        )


async def test_synapse_refuses_status_of_a_user_it_shares_no_room_with(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    async with federation(synapse_install, certificates, tmp_path) as f:
        bob_sync = f.bob_sync()
        await f.alice_sets("online", "visible in /sync only")
        await bob_sync.wait_for("alice", presence_is(f.alice, "online", "visible in /sync only"))
        response = await f.synapse.get_presence(f.bob_token, f.alice)
        assert response.status_code == 403, response.text
        assert response.json()["errcode"] == "M_FORBIDDEN"


async def test_a_synapse_users_presence_shows_in_our_sync_verified_with_synapses_key(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    async with federation(synapse_install, certificates, tmp_path) as f:
        alice_sync = f.alice_sync()
        await alice_sync.poll(timeout_ms=0)
        for presence, status_msg in [("online", "hello"), ("unavailable", "brb")]:
            await f.synapse.set_presence(f.bob_token, f.bob, presence, status_msg)
            await alice_sync.wait_for(f"bob {presence}", presence_is(f.bob, presence, status_msg))
        (synapse_key,) = read_signing_key_file(f.synapse.spec.signing_key_path)
        cached = await f.worker.store.get_server_keys(f.synapse.server_name)
        assert [r.key_id for r in cached] == [signing_key_id(synapse_key)]


async def test_repeated_activity_sends_no_repeated_edus_either_way(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    """Activity that changes nothing worth telling is suppressed; a marker change ends each count.

    Counted on both sides: our sender's pushes and Synapse's received EDUs
    (worker → Synapse); Synapse's sent presence EDUs and our accepted pushes
    (Synapse → worker). The marker is the last change: once it has arrived,
    anything sent before it has arrived too (one transaction in flight per
    destination, in order, on both servers).
    """
    async with federation(synapse_install, certificates, tmp_path) as f:
        bob_sync, alice_sync = f.bob_sync(), f.alice_sync()
        await f.alice_sets("online", "steady")
        await bob_sync.wait_for("alice steady", presence_is(f.alice, "online", "steady"))
        ours_before = sample(f.worker, "federation_presence_outbound_pushes_total", outcome="sent")
        theirs_before = await f.synapse.metric(RECEIVED_EDUS)
        # Ten syncs with set_presence=online and ten explicit "online" again:
        # Alice stays currently_active, nothing a peer must hear.
        active_sync = SyncFollower(f.http, ALICE_TOKEN, set_presence="online")
        for _ in range(10):
            await active_sync.poll(timeout_ms=0)
            await f.alice_sets("online", "steady")
        await f.alice_sets("online", "marker")
        await bob_sync.wait_for("alice marker", presence_is(f.alice, "online", "marker"))
        ours = sample(f.worker, "federation_presence_outbound_pushes_total", outcome="sent")
        assert ours - ours_before == 1
        assert await f.synapse.metric(RECEIVED_EDUS) - theirs_before == 1

        # The other way: Bob sets the same state ten times.
        await f.synapse.set_presence(f.bob_token, f.bob, "online", "steady")
        await alice_sync.wait_for("bob steady", presence_is(f.bob, "online", "steady"))
        accepted_before = sample(f.worker, "federation_presence_inbound_pushes_accepted_total")
        sent_before = await f.synapse.metric(SENT_PRESENCE_EDUS, type="m.presence")
        for _ in range(10):
            await f.synapse.set_presence(f.bob_token, f.bob, "online", "steady")
        await f.synapse.set_presence(f.bob_token, f.bob, "online", "marker")
        await alice_sync.wait_for("bob marker", presence_is(f.bob, "online", "marker"))
        accepted = sample(f.worker, "federation_presence_inbound_pushes_accepted_total")
        assert accepted - accepted_before == 1
        sent = await f.synapse.metric(SENT_PRESENCE_EDUS, type="m.presence")
        assert sent - sent_before == 1


async def test_synapse_down_for_a_while_our_sender_backs_off_and_catches_up_once(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    """Five changes while Synapse is down reach it as one push of the latest state.

    The sender's backoff is 0.5 s doubling to 2 s here; the failed attempts
    while Synapse was down are bounded by that schedule (no retry storm), and
    after Synapse is back (its metrics start from zero) it receives exactly
    one EDU: the latest state, not the five changes.
    """
    clock = SystemClock()
    async with federation(synapse_install, certificates, tmp_path) as f:
        bob_sync = f.bob_sync()
        await f.alice_sets("online", "before")
        await bob_sync.wait_for("alice before", presence_is(f.alice, "online", "before"))

        await f.synapse.stop()
        down_at = clock.monotonic()
        for index in range(5):
            await f.alice_sets("unavailable", f"while down {index}")

        def failed() -> float:
            return sample(f.worker, "federation_presence_outbound_transactions_total",
                          outcome="failed")  # fmt: skip

        async def failed_twice() -> float | None:
            return failed() if failed() >= 2 else None

        await poll_until("two failed sends while Synapse is down", failed_twice)
        await f.synapse.start()
        down_s = clock.monotonic() - down_at
        await bob_sync.wait_for(
            "alice's latest state", presence_is(f.alice, "unavailable", "while down 4")
        )
        # Attempts at 0.5, 1, 2, 2, ... s apart: never more than one per 0.5 s.
        assert failed() <= 2 + down_s / 0.5
        assert await f.synapse.metric(RECEIVED_EDUS) == 1
        assert not [
            e
            for e in bob_sync.seen
            if e["content"].get("status_msg", "").startswith("while down")
            and e["content"]["status_msg"] != "while down 4"
        ]


async def test_a_restart_of_the_worker_converges_both_ways(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    """While the worker is down Bob changes; after it is back both sides agree.

    Synapse's transaction to the stopped worker keeps retrying its connection
    (its long-retry schedule) and lands once the worker listens again; the
    worker resumes its sender from the stored stream position.
    """
    async with federation(synapse_install, certificates, tmp_path) as f:
        # Bob's /sync is positioned first, so the change below must reach it
        # as an incremental update (as in the test above), not only through
        # whatever the initial sync snapshots.
        bob_sync = f.bob_sync()
        await bob_sync.poll(timeout_ms=0)
        await f.alice_sets("busy", "before the restart")
        # Bob has been active once (see test_synapse_to_worker's xfail for why).
        await f.synapse.set_presence(f.bob_token, f.bob, "online", "before the restart")
        await bob_sync.wait_for(
            "alice busy",
            lambda e: any(presence_is(f.alice, p, "before the restart")(e) for p in BUSY_NAMES),
        )
    # (the federation context stopped both; start them again on the same files)
    spec = f.synapse.spec
    async with running_synapse(synapse_install, spec) as synapse:
        # (a new status message: Synapse combines Bob's devices' states, so a
        # state change of one device need not change his presence)
        await synapse.set_presence(f.bob_token, f.bob, "online", "changed while you were out")
        async with (
            serving_worker(f.config, certificates) as (worker, http),
            explained_failures(synapse, worker),
        ):
            alice_sync = SyncFollower(http, ALICE_TOKEN)
            await alice_sync.wait_for(
                "bob's change made while the worker was down",
                presence_is(f.bob, "online", "changed while you were out"),
                timeout_s=SYNAPSE_RETRY_WAIT_S,
            )
            bob_sync = SyncFollower(synapse.http, f.bob_token)
            await bob_sync.poll(timeout_ms=0)
            await set_local_presence(http, ALICE_TOKEN, f.alice, "online", "after the restart")
            await bob_sync.wait_for(
                "alice after the restart", presence_is(f.alice, "online", "after the restart")
            )
            assert sample(worker, "federation_presence_inbound_rejections_total") == 0
