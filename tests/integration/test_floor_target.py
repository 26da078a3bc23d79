"""bench/floor_target.py, the floor of ``bench_ingest``, end to end on loopback.

The floor is a benchmark target, not part of the package; what a floor
figure rests on is pinned here: it answers the load client's discovery,
fetches each origin's key from its TLS key server, verifies and stores every
push (a row per user, increasing stream ids) in a table with exactly the
worker's ``user_presence`` schema, refuses a bad signature, and stops cleanly
on SIGTERM. The floor runs as its own process, as the bench runs it; it says
when it listens (its first line of output), so nothing here polls or sleeps.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import orjson
from anyio.abc import Process

from federation_presence.clock import SystemClock
from federation_presence.federation.xmatrix import authorization_header
from federation_presence.loadtest.origins import serving_origins
from federation_presence.loadtest.session import LoadSettings, Target, TlsFiles, run_load
from federation_presence.store.sqlite import SqliteStore
from tests.integration.checkout import ROOT, checkout_env
from tests.integration.tls_peer import TlsCertificates

FLOOR = ROOT / "bench" / "floor_target.py"
FLOOR_NAME = "floor.test"
START_LIMIT_S = 20.0


@asynccontextmanager
async def running_floor(db: Path, ca_file: Path) -> AsyncIterator[tuple[Process, int]]:
    """The floor on a port the OS picks; SIGTERM and a clean exit when leaving."""
    command = [
        sys.executable,
        str(FLOOR),
        "--port",
        "0",
        "--db",
        str(db),
        "--ca-file",
        str(ca_file),
    ]
    process = await anyio.open_process(command, env=checkout_env())
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(START_LIMIT_S):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        assert line.startswith(f"floor: {FLOOR_NAME} on http://127.0.0.1:".encode()), line
        yield process, int(line.rsplit(b":", 1)[1])
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


def _schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'user_presence' ORDER BY name"
        ).fetchall()
    conn.close()
    return [(name, sql) for name, sql in rows]


async def test_the_floor_stores_every_push_of_a_load_run_in_the_worker_s_table(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    tls = TlsFiles(certificates.cert_path, certificates.key_path, certificates.ca_path)
    settings = LoadSettings(origins=2, users_per_origin=5, pushes_per_edu=3, count=6)
    db = tmp_path / "floor.db"
    async with running_floor(db, certificates.ca_path) as (_, port):
        report = await run_load(
            Target(False, "127.0.0.1", port), settings, tls, SystemClock(), ceiling=False
        )
    data = report.as_json()
    assert data["server_name"] == FLOOR_NAME
    assert data["statuses"] == {"200": 6}
    assert data["errors"] == {}
    # The worker's own migrations, on a file of their own: the same table and index.
    worker_db = tmp_path / "worker.db"
    store = SqliteStore(worker_db)
    await store.open()
    await store.close()
    assert _schema(db) == _schema(worker_db)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT user_id, state, status_msg, stream_id FROM user_presence ORDER BY stream_id"
        ).fetchall()
    conn.close()
    # Priming wrote every warm user (5 per origin), the run 2 x 3 transactions of 3 pushes:
    # every user's row holds the run's latest push, and every push took a stream id.
    run_tag = report.settings["run_tag"]
    assert len(rows) == 10
    assert all(status.startswith(f"load {run_tag}.") for _, _, status, _ in rows)
    stream_ids = [stream_id for *_, stream_id in rows]
    assert stream_ids == sorted(set(stream_ids))
    assert stream_ids[-1] == 10 + 18  # 10 priming pushes, then 18 run pushes


async def test_the_floor_refuses_a_request_its_signature_does_not_cover(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    tls = TlsFiles(certificates.cert_path, certificates.key_path, certificates.ca_path)
    clock = SystemClock()
    async with (
        running_floor(tmp_path / "floor.db", certificates.ca_path) as (_, port),
        serving_origins(1, clock, tls.cert, tls.key) as origins,
    ):
        target = Target(False, "127.0.0.1", port)
        # A one-transaction run: the floor has fetched the origin's key and accepts it.
        settings = LoadSettings(origins=1, users_per_origin=1, count=1)
        report = await run_load(target, settings, tls, clock, ceiling=False, origins=origins)
        origin = origins[0]
        path = "/_matrix/federation/v1/send/t1"

        def body(presence: str) -> dict[str, object]:
            push = {"user_id": f"@a:{origin.server_name}", "presence": presence}
            edu = {"edu_type": "m.presence", "content": {"push": [push]}}
            return {"origin": origin.server_name, "pdus": [], "edus": [edu]}

        # Signed by the origin's own key, for another body than the one sent.
        auth = authorization_header(
            origin.signing_key, "PUT", path, origin.server_name, FLOOR_NAME, body("online")
        )
        async with httpx.AsyncClient(base_url=target.base_url, trust_env=False) as client:
            good = await client.put(
                path, content=orjson.dumps(body("online")), headers={"Authorization": auth}
            )
            forged = await client.put(
                path, content=orjson.dumps(body("offline")), headers={"Authorization": auth}
            )
            unsigned = await client.put(path, content=orjson.dumps(body("online")))
    assert report.as_json()["statuses"] == {"200": 1}
    assert (good.status_code, good.json()) == (200, {"pdus": {}})
    assert forged.status_code == 401
    assert forged.json()["errcode"] == "M_UNAUTHORIZED"
    assert unsigned.status_code == 401
