"""``federation-presence run`` with no arguments, in an empty directory.

The embedded default: server name ``localhost:8448``, SQLite file in the
working directory, a signing key generated into ``keys/`` on first run and
reused on the next. The key response must verify with signedjson, and the
process must exit 0 on SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import trustme
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from tests.integration.checkout import checkout_env

DEFAULT_PORT = 8448
DEFAULT_NAME = "localhost:8448"


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As uvicorn binds: connections of an earlier run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _spawn(workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "federation_presence", "run", *args],
        env=checkout_env(),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _start(workdir: Path) -> subprocess.Popen[bytes]:
    """Start the worker and wait for its "serving" line (logged once the port is bound)."""
    process = _spawn(workdir)
    assert process.stderr is not None
    with anyio.fail_after(30):
        while True:
            line = await anyio.to_thread.run_sync(process.stderr.readline)
            if not line:
                raise AssertionError(f"worker exited {process.wait()} before serving")
            if b"serving" in line:
                return process


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=20)
    if process.stderr is not None:
        process.stderr.close()
    return code


async def _server_key(http: httpx.AsyncClient) -> tuple[str, str]:
    response = (await http.get("/_matrix/key/v2/server")).json()
    assert response["server_name"] == DEFAULT_NAME
    ((key_id, key),) = ((k, v["key"]) for k, v in response["verify_keys"].items())
    verify_key = decode_verify_key_bytes(key_id, decode_base64(key))
    verify_signed_json(response, DEFAULT_NAME, verify_key)  # raises if it does not verify
    assert response["old_verify_keys"] == {}
    assert response["valid_until_ts"] > 0
    return key_id, key


async def test_run_with_no_arguments_serves_a_verifiable_key_and_reuses_it(
    tmp_path: Path,
) -> None:
    assert _port_is_free(DEFAULT_PORT), "port 8448 is taken; this test needs the default port"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{DEFAULT_PORT}") as http:
        process = await _start(tmp_path)
        try:
            first = await _server_key(http)
            version = (await http.get("/_matrix/federation/v1/version")).json()
            assert version["server"]["name"] == "federation-presence"
        finally:
            assert _stop(process) == 0
        assert (tmp_path / "keys" / "signing.key").exists()
        assert (tmp_path / "federation-presence.db").exists()

        process = await _start(tmp_path)
        try:
            assert await _server_key(http) == first
        finally:
            assert _stop(process) == 0


async def test_each_listener_is_announced_with_its_own_scheme(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    issued.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    (tmp_path / "fp.yaml").write_text(
        f"listeners:\n  - port: {ports[0]}\n    resources: [ops]\n"
        f"  - port: {ports[1]}\n    tls_certificate_path: cert.pem\n"
        "    tls_private_key_path: key.pem\n    resources: [federation]\n"
    )
    process = _spawn(tmp_path, "-c", "fp.yaml")
    assert process.stderr is not None
    serving: list[bytes] = []
    try:
        with anyio.fail_after(30):
            while len(serving) < 2:
                line = await anyio.to_thread.run_sync(process.stderr.readline)
                if not line:
                    raise AssertionError(f"worker exited {process.wait()} before serving")
                if b"serving" in line:
                    serving.append(line)
    finally:
        assert _stop(process) == 0
    assert f"serving http on port {ports[0]}".encode() in serving[0]
    assert f"serving https on port {ports[1]}".encode() in serving[1]
