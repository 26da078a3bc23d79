"""The sender resumes after ``kill -9`` from its stored positions.

The worker runs as a real process (``sender_child``) sending to two
``RecordingPeer``s over HTTPS: one delivers, one answers 503. Once the
healthy one has the latest states and the sender has stored its position,
the process is killed with SIGKILL. The down peer recovers; a new process
on the same database, with no new change, must bring it the latest state of
every user (never an intermediate one) and send the healthy peer nothing
again: it resumed from the stored positions, not from the start.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio

from federation_presence.clock import SystemClock
from tests.integration.conftest import WORKER_NAME
from tests.integration.recording_peer import RecordingPeer, running_peer
from tests.integration.test_durability import free_port
from tests.integration.tls_peer import TlsCertificates

CHANGES = ["alice=a1", "bob=b1", "alice=a2", "alice=a3", "bob=b2", "alice=a4"]
LATEST = {f"@alice:{WORKER_NAME}": "a4", f"@bob:{WORKER_NAME}": "b2"}


def write_config(tmp_path: Path, port: int, certificates: TlsCertificates) -> Path:
    config = tmp_path / "worker.yaml"
    config.write_text(
        f"""
server_name: "{WORKER_NAME}"
signing_key_path: "{tmp_path / "keys" / "signing.key"}"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    tls_certificate_path: "{certificates.cert_path}"
    tls_private_key_path: "{certificates.key_path}"
database:
  name: sqlite3
  args: {{database: "{tmp_path / "worker.db"}"}}
federation:
  ca_bundle: "{certificates.ca_path}"
  ip_range_whitelist: ["127.0.0.0/8"]
federation_sender:
  linger: 10ms
  backoff_initial: 1h
  backoff_max: 2h
log_level: info
"""
    )
    return config


def start(config: Path, peers: list[RecordingPeer], changes: list[str]) -> subprocess.Popen[bytes]:
    destinations = ",".join(peer.server_name for peer in peers)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.sender_child",
            str(config),
            destinations,
            *changes,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


async def wait_ready(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    with anyio.fail_after(30):
        line = await anyio.to_thread.run_sync(process.stdout.readline)
    assert line.strip() == b"ready", f"child said {line!r}, exit {process.poll()}"


def latest_statuses(peer: RecordingPeer, start: int = 0) -> dict[str, str]:
    out: dict[str, str] = {}
    for attempt in peer.transactions[start:]:
        for push in attempt.pushes:
            out[push["user_id"]] = push.get("status_msg")
    return out


def stored_position(database: Path, name: str) -> int:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT position FROM stream_positions WHERE name = ?", (name,)
        ).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()
    return 0 if row is None else int(row[0])


async def until(condition: object, limit_s: float = 20.0) -> None:
    """Poll ``condition`` (a callable) on a worker thread until true; bounded."""
    assert callable(condition)
    with anyio.fail_after(limit_s):
        while not await anyio.to_thread.run_sync(condition):
            pass


async def test_the_sender_resumes_after_kill_9_from_its_stored_positions(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, certificates)
    clock = SystemClock()
    keys = {WORKER_NAME: f"https://localhost:{port}"}
    async with (
        running_peer(certificates, dict(keys), clock) as healthy,
        running_peer(certificates, dict(keys), clock) as down,
    ):
        down.mode, down.status = "status", 503
        process = start(config, [healthy, down], CHANGES)
        try:
            await wait_ready(process)
            await until(lambda: latest_statuses(healthy) == LATEST)
            await down.wait_for_attempts(1)
            database = tmp_path / "worker.db"
            # The healthy peer's position is flushed about once a second.
            await until(
                lambda: (
                    stored_position(database, f"outbound:{healthy.server_name}") > 0
                    and len(healthy.transactions) == len(healthy.attempts)
                )
            )
            healthy_before = len(healthy.transactions)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=10) == -signal.SIGKILL
            assert process.stdout is not None
            process.stdout.close()

            down.mode = "ok"
            process = start(config, [healthy, down], [])
            await wait_ready(process)
            await until(lambda: latest_statuses(down) == LATEST)
            # Latest states only, in one transaction.
            assert len(down.transactions) == 1
            assert {p.get("status_msg") for p in down.transactions[0].pushes} == {"a4", "b2"}
            # Both destinations were owed in the same routing step: had the
            # healthy one been owed anything, it would have been sent by now.
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
            assert len(healthy.transactions) == healthy_before
            assert healthy.auth_failures == down.auth_failures == []
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
