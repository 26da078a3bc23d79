"""The outbound sender end to end: real HTTPS, real signatures, a fake clock.

Each test runs the real worker (SQLite, its key server over TLS) and one or
two ``RecordingPeer`` destinations that verify every request's X-Matrix
signature with the key they fetch from the worker. Time moves only through
``FakeClock.advance`` (``SettlingClock``); waits for network answers are event- or
condition-driven and bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path

import anyio
import pytest

from federation_presence.ids import ServerName, UserId
from federation_presence.outbound.sender import LINGER_JOIN_MS
from federation_presence.presence.inputs import Activity, SetPresence, SyncStarted
from federation_presence.presence.states import PresenceState
from federation_presence.worker import RunningWorker
from tests.integration.recording_peer import RecordingPeer, running_peer
from tests.integration.sending import (
    DEVICE,
    Routes,
    SettlingClock,
    assert_schema_complete,
    eventually,
    local,
    present,
    sender_of,
    sending_worker,
    set_status,
    settle,
)
from tests.integration.tls_peer import TlsCertificates

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS


@pytest.fixture
def clock() -> SettlingClock:
    return SettlingClock()


@pytest.fixture
def routes() -> Routes:
    return Routes()


@pytest.fixture
async def peer(certificates: TlsCertificates, clock: SettlingClock) -> AsyncIterator[RecordingPeer]:
    async with running_peer(certificates, {}, clock) as running:
        yield running


@pytest.fixture
async def worker(
    tmp_path: Path,
    certificates: TlsCertificates,
    clock: SettlingClock,
    routes: Routes,
    peer: RecordingPeer,
) -> AsyncIterator[RunningWorker]:
    routes.everyone = {ServerName(peer.server_name)}
    async with sending_worker(tmp_path, certificates, clock, routes, [peer]) as running:
        yield running


def last_status(peer: RecordingPeer) -> str | None:
    pushes = [p for a in peer.transactions for p in a.pushes]
    return pushes[-1].get("status_msg") if pushes else None


def statuses(peer: RecordingPeer, index: int) -> dict[str, str | None]:
    return {p["user_id"]: p.get("status_msg") for p in peer.attempts[index].pushes}


async def test_a_change_reaches_the_destination_signed_and_schema_complete(
    worker: RunningWorker, peer: RecordingPeer
) -> None:
    await present(worker, "alice", "hello")
    await eventually(lambda: any(p.get("status_msg") for a in peer.attempts for p in a.pushes))
    pushes = [p for a in peer.attempts for p in a.pushes]
    assert pushes[-1]["user_id"] == local("alice")
    assert pushes[-1]["presence"] == "unavailable"
    assert pushes[-1]["status_msg"] == "hello"
    assert peer.attempts[0].txn_id.startswith("fp")
    assert_schema_complete(peer)


async def test_updates_coalesce_while_a_transaction_is_in_flight(
    worker: RunningWorker, peer: RecordingPeer
) -> None:
    peer.hold = True
    await present(worker, "alice", "v0")
    await peer.wait_for_attempts(1)
    async with anyio.create_task_group() as tg:
        for i in range(1, 1_001):
            tg.start_soon(set_status, worker, "alice", f"v{i}")
    peer.release.set()
    await peer.wait_for_attempts(2)
    assert statuses(peer, 1) == {local("alice"): "v1000"}
    await eventually(lambda: sender_of(worker).queue_depth(peer.server_name) == 0)
    await settle()
    assert len(peer.attempts) == 2
    assert_schema_complete(peer)


async def test_a_burst_inside_the_linger_leaves_as_one_transaction(
    tmp_path: Path, certificates: TlsCertificates, clock: SettlingClock, routes: Routes
) -> None:
    async with running_peer(certificates, {}, clock) as peer:
        routes.everyone = {ServerName(peer.server_name)}
        async with sending_worker(
            tmp_path, certificates, clock, routes, [peer], linger_ms=20
        ) as worker:
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(present, worker, f"u{i}", None)
            sender = sender_of(worker)
            await eventually(lambda: sender.queue_depth(peer.server_name) == 50)
            await settle()  # the destination is lingering
            assert peer.attempts == []
            await clock.advance(20)
            await peer.wait_for_attempts(1)
            assert len(peer.attempts[0].pushes) == 50
            assert len(peer.attempts[0].body["edus"]) == 1
            assert_schema_complete(peer)


async def test_destinations_woken_together_share_one_linger_window(
    tmp_path: Path, certificates: TlsCertificates, clock: SettlingClock, routes: Routes
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a, b, c = [
            await stack.enter_async_context(running_peer(certificates, {}, clock)) for _ in range(3)
        ]
        for localpart, peer in (("alice", a), ("bob", b), ("carol", c)):
            routes.servers[local(localpart)] = {ServerName(peer.server_name)}
        worker = await stack.enter_async_context(
            sending_worker(tmp_path, certificates, clock, routes, [a, b, c], linger_ms=20)
        )
        sender = sender_of(worker)
        opened = clock.now_ms()
        await present(worker, "alice", None)  # opens a window
        await eventually(lambda: sender.busy(a.server_name))
        await clock.advance(LINGER_JOIN_MS)
        await present(worker, "bob", None)  # within LINGER_JOIN_MS: joins it
        await eventually(lambda: sender.busy(b.server_name))
        await clock.advance(3)
        await present(worker, "carol", None)  # later: a window of its own
        await eventually(lambda: sender.busy(c.server_name))
        await settle()
        await clock.advance(opened + 20 - clock.now_ms())
        await a.wait_for_attempts(1)
        await b.wait_for_attempts(1)
        await settle()
        assert c.attempts == []
        assert a.attempts[0].at_ms == b.attempts[0].at_ms == opened + 20
        await clock.advance(LINGER_JOIN_MS + 3)
        await c.wait_for_attempts(1)
        assert c.attempts[0].at_ms == opened + LINGER_JOIN_MS + 3 + 20


async def test_a_transaction_splits_only_past_100_edus(
    tmp_path: Path, certificates: TlsCertificates, clock: SettlingClock, routes: Routes
) -> None:
    async with running_peer(certificates, {}, clock) as peer:
        routes.everyone = {ServerName(peer.server_name)}
        async with sending_worker(
            tmp_path, certificates, clock, routes, [peer], linger_ms=20, pushes_per_edu=2
        ) as worker:
            async with anyio.create_task_group() as tg:
                for i in range(250):
                    tg.start_soon(present, worker, f"u{i}", None)
            sender = sender_of(worker)
            await eventually(lambda: sender.queue_depth(peer.server_name) == 250)
            await settle()
            await clock.advance(20)
            await peer.wait_for_attempts(2)
            assert [len(a.body["edus"]) for a in peer.attempts] == [100, 25]
            assert [len(a.pushes) for a in peer.attempts] == [200, 50]
            received = {p["user_id"] for a in peer.attempts for p in a.pushes}
            assert received == {local(f"u{i}") for i in range(250)}
            assert_schema_complete(peer)


async def test_a_currently_active_user_bumping_every_5s_for_2_minutes_is_sent_once(
    worker: RunningWorker, peer: RecordingPeer, clock: SettlingClock
) -> None:
    alice = local("alice")
    await worker.keeper.apply_local(SyncStarted(alice, DEVICE, None))
    await worker.keeper.apply_local(SetPresence(alice, DEVICE, PresenceState.ONLINE))
    await peer.wait_for_attempts(1)
    for _ in range(24):
        await clock.advance(5 * SECOND_MS)
        await worker.keeper.apply_local(Activity(alice, DEVICE))
    await eventually(lambda: sender_of(worker).queue_depth(peer.server_name) == 0)
    await settle()
    pushes = [p for a in peer.attempts for p in a.pushes]
    assert len(pushes) == 1
    assert pushes[0]["presence"] == "online"
    assert pushes[0]["currently_active"] is True
    assert_schema_complete(peer)


async def test_backoff_retries_on_its_own_timer_doubling_with_jitter(
    worker: RunningWorker, peer: RecordingPeer, clock: SettlingClock
) -> None:
    peer.mode = "status"
    peer.status = 503
    sender = sender_of(worker)
    destination = peer.server_name
    await present(worker, "alice", "hi")
    await peer.wait_for_attempts(1)
    previous = peer.attempts[0].at_ms
    for failures in range(1, 5):
        await eventually(lambda: sender.in_backoff(destination) is not None)
        retry_at = sender.in_backoff(destination)
        assert retry_at is not None
        base = 10 * SECOND_MS * 2 ** (failures - 1)
        assert 0.8 * base <= retry_at - previous <= 1.2 * base
        await clock.advance(retry_at - 1 - clock.now_ms())
        await settle()
        assert len(peer.attempts) == failures  # nothing before the timer
        await clock.advance(1)
        await peer.wait_for_attempts(failures + 1)
        previous = peer.attempts[-1].at_ms
        assert previous == retry_at
    assert_schema_complete(peer)


async def test_a_recovered_destination_gets_the_latest_state_at_the_first_retry(
    worker: RunningWorker, peer: RecordingPeer, clock: SettlingClock
) -> None:
    peer.mode = "status"
    sender = sender_of(worker)
    destination = peer.server_name
    await present(worker, "alice", "a1")
    await peer.wait_for_attempts(1)
    await eventually(lambda: sender.in_backoff(destination) is not None)
    for i in range(2, 6):
        await set_status(worker, "alice", f"a{i}")
    await present(worker, "bob", "b1")
    await settle()
    assert len(peer.attempts) == 1  # in backoff: nothing sent meanwhile
    peer.mode = "ok"
    retry_at = sender.in_backoff(destination)
    assert retry_at is not None
    await clock.advance(retry_at - clock.now_ms())
    await peer.wait_for_attempts(2)
    assert statuses(peer, 1) == {local("alice"): "a5", local("bob"): "b1"}
    await eventually(lambda: sender.in_backoff(destination) is None)
    assert_schema_complete(peer)


@pytest.mark.parametrize("answer", ["garbage", "not_txn"])
async def test_a_200_that_is_not_a_transaction_answer_is_retried(
    worker: RunningWorker, peer: RecordingPeer, clock: SettlingClock, answer: str
) -> None:
    peer.mode = answer
    sender = sender_of(worker)
    await present(worker, "alice", "hi")
    await peer.wait_for_attempts(1)
    await eventually(lambda: sender.in_backoff(peer.server_name) is not None)
    peer.mode = "ok"
    retry_at = sender.in_backoff(peer.server_name)
    assert retry_at is not None
    await clock.advance(retry_at - clock.now_ms())
    await peer.wait_for_attempts(2)
    assert statuses(peer, 1) == {local("alice"): "hi"}
    assert len(peer.transactions) == 1
    assert_schema_complete(peer)


async def test_a_rejected_request_backs_off_and_is_logged_with_the_answer(
    worker: RunningWorker,
    peer: RecordingPeer,
    clock: SettlingClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer.mode = "status"
    peer.status = 400
    sender = sender_of(worker)
    await present(worker, "alice", "hi")
    await peer.wait_for_attempts(1)
    await eventually(lambda: sender.in_backoff(peer.server_name) is not None)
    await clock.advance(5 * SECOND_MS)
    await settle()
    assert len(peer.attempts) == 1  # no hot loop
    [record] = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert peer.server_name in record.getMessage()
    assert peer.attempts[0].txn_id in record.getMessage()
    assert "M_UNKNOWN" in record.getMessage()


async def test_a_hanging_destination_does_not_hold_up_a_live_one(
    tmp_path: Path, certificates: TlsCertificates, clock: SettlingClock, routes: Routes
) -> None:
    async with (
        running_peer(certificates, {}, clock) as hanging,
        running_peer(certificates, {}, clock) as live,
    ):
        hanging.hold = True
        routes.everyone = {ServerName(hanging.server_name), ServerName(live.server_name)}
        async with sending_worker(tmp_path, certificates, clock, routes, [hanging, live]) as worker:
            await present(worker, "alice", "one")
            await eventually(lambda: last_status(live) == "one")
            await hanging.wait_for_attempts(1)
            await set_status(worker, "alice", "two")
            await eventually(lambda: last_status(live) == "two")
            assert hanging.held == 1
            assert len(hanging.attempts) == 1
            assert sender_of(worker).queue_depth(hanging.server_name) == 1
            assert_schema_complete(live, hanging)


async def test_send_current_presence_sends_unchanged_state_to_the_given_servers(
    worker: RunningWorker, peer: RecordingPeer
) -> None:
    await present(worker, "alice", "hi")
    await peer.wait_for_attempts(1)
    await eventually(lambda: sender_of(worker).queue_depth(peer.server_name) == 0)
    await sender_of(worker).send_current_presence([peer.server_name, "fp.test"], [local("alice")])
    await peer.wait_for_attempts(2)
    assert statuses(peer, 1) == {local("alice"): "hi"}
    assert_schema_complete(peer)


async def test_keepalives_are_staggered_over_the_interval(
    worker: RunningWorker, peer: RecordingPeer, clock: SettlingClock
) -> None:
    users = 250
    async with anyio.create_task_group() as tg:
        for i in range(users):
            tg.start_soon(present, worker, f"u{i}", None)
    sender = sender_of(worker)
    await eventually(lambda: len(peer.attempts) >= 1 and sender.queue_depth(peer.server_name) == 0)
    await eventually(lambda: sum(len(a.pushes) for a in peer.transactions) == users)
    # Re-sends due within the quiet window after these first sends wait for
    # their next phase (keepalive.quiet_after_send_ms, 2.5 min here): none
    # comes in it; counting from 3 min on, each user comes once in 25.
    await clock.advance(2 * MINUTE_MS)
    await eventually(lambda: not sender.busy(peer.server_name))
    assert sum(len(a.pushes) for a in peer.transactions) == users
    await clock.advance(MINUTE_MS)
    await eventually(lambda: not sender.busy(peer.server_name))
    baseline = len(peer.attempts)
    per_minute: list[int] = []
    for _ in range(25):
        before = sum(len(a.pushes) for a in peer.attempts[baseline:])
        await clock.advance(MINUTE_MS)
        await eventually(lambda: not sender.busy(peer.server_name))
        per_minute.append(sum(len(a.pushes) for a in peer.attempts[baseline:]) - before)
    assert sum(per_minute) == users  # each present user re-sent once per interval
    assert max(per_minute) <= 2 * users / 25
    assert_schema_complete(peer)


class FailingOnce(Routes):
    """Routes whose first answer is an error (a broken router module)."""

    failed = False

    async def destinations_for(
        self, user_ids: Collection[UserId]
    ) -> Mapping[ServerName, Collection[UserId]]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("router module broke")
        return await super().destinations_for(user_ids)


async def test_a_failing_routing_source_is_asked_again_and_nothing_is_lost(
    tmp_path: Path, certificates: TlsCertificates, clock: SettlingClock
) -> None:
    routes = FailingOnce()
    async with running_peer(certificates, {}, clock) as peer:
        routes.everyone = {ServerName(peer.server_name)}
        async with sending_worker(tmp_path, certificates, clock, routes, [peer]) as worker:
            await worker.keeper.apply_local(SetPresence(local("alice"), DEVICE, PresenceState.BUSY))
            await eventually(lambda: routes.failed)
            await settle()
            assert peer.attempts == []
            await clock.advance(5 * SECOND_MS)
            await peer.wait_for_attempts(1)
            assert [p["presence"] for p in peer.attempts[0].pushes] == ["org.matrix.msc3026.busy"]


async def test_a_destination_that_never_answers_times_out_into_backoff(
    tmp_path: Path, certificates: TlsCertificates, clock: SettlingClock, routes: Routes
) -> None:
    async with running_peer(certificates, {}, clock) as peer:
        peer.hold = True
        routes.everyone = {ServerName(peer.server_name)}
        # A real-time limit (the whole request): 200 ms of wall time.
        async with sending_worker(
            tmp_path, certificates, clock, routes, [peer], transaction_timeout_ms=200
        ) as worker:
            await present(worker, "alice", None)
            await peer.wait_for_attempts(1)
            sender = sender_of(worker)
            await eventually(lambda: sender.in_backoff(peer.server_name) is not None)
            assert sender.queue_depth(peer.server_name) == 1  # owed again, not lost


def sender_sample(worker: RunningWorker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


async def test_metrics_count_outcomes_and_show_the_destination_in_backoff(
    worker: RunningWorker, peer: RecordingPeer, clock: SettlingClock
) -> None:
    peer.mode = "status"
    sender = sender_of(worker)
    destination = peer.server_name
    await present(worker, "alice", "a1")
    await peer.wait_for_attempts(1)
    await eventually(lambda: sender.in_backoff(destination) is not None)
    transactions = "federation_presence_outbound_transactions_total"
    pushes = "federation_presence_outbound_pushes_total"
    assert sender_sample(worker, transactions, outcome="failed") == 1
    assert sender_sample(worker, transactions, outcome="sent") == 0
    assert sender_sample(worker, pushes, outcome="failed") == 1
    assert sender_sample(worker, "federation_presence_outbound_destinations_in_backoff") == 1
    await present(worker, "bob", "b1")
    await settle()
    assert sender_sample(worker, "federation_presence_outbound_queued_pushes") == 2

    peer.mode = "ok"
    retry_at = sender.in_backoff(destination)
    assert retry_at is not None
    await clock.advance(retry_at - clock.now_ms())
    await peer.wait_for_attempts(2)
    # The peer has the request; the sender counts once the answer is back.
    await eventually(lambda: sender_sample(worker, transactions, outcome="sent") == 1)
    assert sender.in_backoff(destination) is None
    assert sender_sample(worker, pushes, outcome="sent") == 2
    assert sender_sample(worker, "federation_presence_outbound_destinations_in_backoff") == 0
    assert sender_sample(worker, "federation_presence_outbound_queued_pushes") == 0
    assert sender_sample(worker, "federation_presence_outbound_send_seconds_count") == 1
