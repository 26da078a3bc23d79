"""``probe`` against a real Synapse: every step, the CLI's human output, and a sent EDU.

The probe discovers Synapse from its server name alone (``localhost:PORT``:
an explicit port, so resolution is the spec's step 2 and stays on
loopback), checks its certificate against the test CA, verifies its key
response and reads ``/version``. With our worker's identity it sends one
signed ``m.presence`` EDU, which Synapse accepts only after fetching our key
from our running worker.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from federation_presence.clock import SystemClock
from federation_presence.federation.signing_keys import read_signing_key_file
from federation_presence.loadtest.probe import Ours, ProbeOptions, probe
from federation_presence.worker import running_worker
from tests.integration.checkout import checkout_env
from tests.integration.tls_peer import TlsCertificates
from tests.interop.peer_worker import interop_worker_config
from tests.interop.synapse_fixture import (
    SynapseInstall,
    SynapseSpec,
    free_port,
    running_synapse,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]


async def test_probe_of_synapse_passes_every_step_and_sends_presence(
    synapse_install: SynapseInstall, certificates: TlsCertificates, tmp_path: Path
) -> None:
    worker_port = free_port()
    ours = f"@alice:localhost:{worker_port}"
    spec = SynapseSpec(tmp_path / "synapse", certificates, routed_users=(ours,))
    config = interop_worker_config(tmp_path / "worker", certificates, worker_port)
    async with (
        running_worker(config) as worker,
        running_synapse(synapse_install, spec) as synapse,
    ):
        (signing_key,) = read_signing_key_file(config.signing_key_path)
        options = ProbeOptions(
            server_name=synapse.server_name,
            ca_bundle=certificates.ca_path,
            timeout_s=10,
            send_presence=ours,
            ours=Ours(worker.server_name, signing_key),
        )
        steps = await probe(options, SystemClock())
        assert [(s.name, s.ok) for s in steps] == [
            ("resolve", True),
            ("certificate", True),
            ("keys", True),
            ("version", True),
            ("send-presence", True),
        ], [s.detail for s in steps]
        resolve, _, keys, version, sent = steps
        assert resolve.data["port"] == int(synapse.server_name.rpartition(":")[2])
        assert keys.detail.startswith("self-signature verified")
        assert version.data["name"] == "Synapse"
        assert sent.data["answer"] == {"pdus": {}}

        # The same probe as an operator runs it: human lines, exit 0.
        result = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "federation_presence",
                    "probe",
                    synapse.server_name,
                    "--ca-bundle",
                    str(certificates.ca_path),
                    "--timeout",
                    "10",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=checkout_env(),
                check=False,
            )
        )
    assert result.returncode == 0, result.stderr
    for step in ("resolve", "certificate", "keys", "version"):
        assert step in result.stdout
    print(result.stdout)  # shown with -s: what the operator sees
