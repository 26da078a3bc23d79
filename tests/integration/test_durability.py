"""An acknowledged push survives ``kill -9`` of the worker process.

The worker runs as a real ``federation-presence run`` subprocess on the
embedded SQLite store (synchronous=full). Several senders push signed
transactions concurrently; once enough 200s have come back the worker is
killed with SIGKILL while requests are still in flight. A new worker on the
same database must then hold the state of every user whose push was
acknowledged; pushes that got no answer may or may not be there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from tests.integration.conftest import ADMIN_TOKEN
from tests.integration.origin import TestOrigin, presence_edu, running_origin
from tests.integration.tls_peer import TlsCertificates

WORKER_NAME = "durable.test"
SENDERS = 16
KILL_AFTER_ACKS = 150


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, port: int, certificates: TlsCertificates) -> Path:
    config = tmp_path / "worker.yaml"
    config.write_text(
        f"""
server_name: "{WORKER_NAME}"
signing_key_path: "{tmp_path / "keys" / "signing.key"}"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    resources: [federation, client, ops]
database:
  name: sqlite3
  args: {{database: "{tmp_path / "worker.db"}"}}
  synchronous: full
federation:
  ca_bundle: "{certificates.ca_path}"
  rate_limit_per_second: 100000
  rate_limit_burst: 100000
  ip_range_whitelist: ["127.0.0.0/8", "::1/128"]
admin_token: "{ADMIN_TOKEN}"
log_level: info
"""
    )
    return config


@pytest.fixture
def worker_process(tmp_path: Path, certificates: TlsCertificates) -> tuple[Path, int]:
    port = free_port()
    return write_config(tmp_path, port, certificates), port


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "federation_presence", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_every_acknowledged_push_survives_kill_9(
    worker_process: tuple[Path, int], certificates: TlsCertificates
) -> None:
    config, port = worker_process
    acknowledged: dict[str, str] = {}
    process = start(config)
    try:
        async with (
            running_origin(certificates) as origin,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
        ):
            await _wait_healthy(http, process)
            killed = anyio.Event()

            async def sender(index: int) -> None:
                sequence = 0
                while not killed.is_set():
                    user = origin.user(f"s{index}n{sequence}")
                    presence = ("online", "unavailable", "offline")[sequence % 3]
                    ok = await _send(http, origin, f"s{index}-{sequence}", user, presence)
                    if not ok:
                        return
                    acknowledged[user] = presence
                    sequence += 1
                    if len(acknowledged) >= KILL_AFTER_ACKS and not killed.is_set():
                        os.kill(process.pid, signal.SIGKILL)
                        killed.set()

            async with anyio.create_task_group() as tg:
                for index in range(SENDERS):
                    tg.start_soon(sender, index)
            assert process.wait(timeout=10) == -signal.SIGKILL
            _close(process)

            process = start(config)
            await _wait_healthy(http, process)
            missing = []
            for user, presence in acknowledged.items():
                response = await http.get(
                    f"/_matrix/client/v3/presence/{user}/status",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                if response.status_code != 200 or response.json()["presence"] != presence:
                    missing.append((user, response.status_code))
            assert len(acknowledged) >= KILL_AFTER_ACKS
            assert missing == []
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
        _close(process)


def _close(process: subprocess.Popen[bytes]) -> None:
    if process.stderr is not None:
        process.stderr.close()


async def _send(
    http: httpx.AsyncClient, origin: TestOrigin, txn_id: str, user: str, presence: str
) -> bool:
    """True if the worker answered 200; False if the connection died (the kill)."""
    body = origin.transaction(
        presence_edu({"user_id": user, "presence": presence, "last_active_ago": 0})
    )
    try:
        response = await http.put(
            f"/_matrix/federation/v1/send/{txn_id}",
            content=orjson.dumps(body),
            headers={"Authorization": origin.authorization(txn_id, body, destination=WORKER_NAME)},
        )
    except httpx.TransportError:
        return False
    assert response.status_code == 200, response.text
    return True


async def _wait_healthy(http: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    """Wait for the worker's "serving" log line (it is logged once the port is bound)."""
    assert process.stderr is not None
    with anyio.fail_after(30):
        while True:
            line = await anyio.to_thread.run_sync(process.stderr.readline)
            if not line:
                raise AssertionError(f"worker exited {process.wait()} before serving")
            if b"serving" in line:
                break
    assert (await http.get("/health")).status_code == 200
