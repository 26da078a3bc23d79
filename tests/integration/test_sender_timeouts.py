"""The sender's own timeouts: connect and each read (the whole transaction's
is ``test_outbound_sender``'s never-answering destination).

Real HTTPS on loopback, the real worker and client; the peers misbehave on
purpose. The limits are real time (a second of wall time: sockets
do not follow the fake clock); everything else (backoff, retry) moves only
with ``FakeClock.advance``. Each test sets the limit under test short and
leaves the others at 30 s, so a failure that names the limit under test was
cut by it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from federation_presence.ids import ServerName
from federation_presence.presence.states import PresenceState
from tests.integration.hanging_peers import serve_hanging_key_servers
from tests.integration.recording_peer import running_peer
from tests.integration.sending import (
    Routes,
    SettlingClock,
    eventually,
    present,
    sender_of,
    sending_worker,
    settle,
)
from tests.integration.tls_peer import TlsCertificates

SHORT_MS = 1_000  # real time: far above a loopback exchange, far below the 30 s others
SENDER_LOG = "federation_presence.outbound.sender"


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SENDER_LOG and "failed" in r.msg]


async def test_a_peer_that_accepts_and_never_answers_is_cut_at_the_read_timeout_and_backs_off(
    tmp_path: Path,
    certificates: TlsCertificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=SENDER_LOG)
    clock = SettlingClock()
    routes = Routes()
    async with running_peer(certificates, {}, clock) as peer:
        peer.hold = True  # reads the whole request, then says nothing
        routes.everyone = {ServerName(peer.server_name)}
        async with sending_worker(
            tmp_path, certificates, clock, routes, [peer], read_timeout_ms=SHORT_MS
        ) as worker:
            sender = sender_of(worker)
            await present(worker, "alice", "first")
            await peer.wait_for_attempts(1)
            await eventually(lambda: sender.in_backoff(peer.server_name) is not None)
            [line] = failure_lines(caplog)
            assert "ReadTimeout" in line, line
            assert peer.server_name in line
            assert sender.queue_depth(peer.server_name) == 1  # owed again, not lost

            # Backing off: nothing is sent before the retry timer, whatever changes.
            await present(worker, "alice", "second")
            await settle()
            assert len(peer.attempts) == 1
            peer.hold = False
            peer.release.set()  # the held request ends (the sender gave up on it)
            retry_at = sender.in_backoff(peer.server_name)
            assert retry_at is not None
            await clock.advance(retry_at - clock.now_ms())
            await peer.wait_for_attempts(2)
            [push] = peer.attempts[1].pushes
            assert (push["presence"], push["status_msg"]) == (
                PresenceState.UNAVAILABLE.value,
                "second",
            )
            await eventually(lambda: sender.in_backoff(peer.server_name) is None)


@pytest.mark.parametrize(
    ("kind", "limit", "error"),
    [
        pytest.param(0, "connect_timeout_ms", "ConnectTimeout", id="silent-in-tls-handshake"),
        pytest.param(1, "read_timeout_ms", "ReadTimeout", id="stalling-mid-body"),
    ],
)
async def test_a_hanging_server_is_cut_at_its_own_limit_and_backs_off(
    tmp_path: Path,
    certificates: TlsCertificates,
    caplog: pytest.LogCaptureFixture,
    kind: int,
    limit: str,
    error: str,
) -> None:
    caplog.set_level(logging.INFO, logger=SENDER_LOG)
    clock = SettlingClock()
    routes = Routes()
    async with serve_hanging_key_servers(2, certificates) as hanging:
        destination = hanging.server_names[kind]
        routes.everyone = {ServerName(destination)}
        async with sending_worker(
            tmp_path, certificates, clock, routes, [], **{limit: SHORT_MS}
        ) as worker:
            sender = sender_of(worker)
            await present(worker, "alice", "a")
            await eventually(lambda: sender.in_backoff(destination) is not None)
            [line] = failure_lines(caplog)
            assert error in line, line
            assert sender.queue_depth(destination) == 1
            assert hanging.accepted == 1  # one attempt, then the backoff holds
