"""``probe`` against a real worker on loopback, and against a port with nothing on it.

The worker is the in-process one of ``conftest`` (real TLS from a test CA,
real key server); the "our side" of ``--send-presence`` is a ``TestOrigin``
(its own key served over TLS), so the worker really fetches a key to verify
what the probe sends. ``tests/interop/test_probe_synapse.py`` runs the
probe against a real Synapse.
"""

from __future__ import annotations

import json
import socket
import sys

import anyio
import orjson

from federation_presence.clock import SystemClock
from federation_presence.ids import UserId
from federation_presence.loadtest.probe import Ours, ProbeOptions, Step, probe
from federation_presence.presence.states import PresenceState
from federation_presence.worker import RunningWorker
from tests.integration.checkout import checkout_env
from tests.integration.conftest import ADMIN_TOKEN, WORKER_NAME, worker_client
from tests.integration.origin import TestOrigin, presence_edu
from tests.integration.tls_peer import TlsCertificates


def _options(worker: RunningWorker, certificates: TlsCertificates, **more: object) -> ProbeOptions:
    return ProbeOptions(
        server_name=WORKER_NAME,
        address=f"localhost:{worker.ports[0]}",
        ca_bundle=certificates.ca_path,
        timeout_s=10,
        **more,  # type: ignore[arg-type]
    )


async def test_probe_of_a_worker_passes_every_step(
    worker: RunningWorker, certificates: TlsCertificates
) -> None:
    shown: list[Step] = []
    steps = await probe(_options(worker, certificates), SystemClock(), shown.append)
    assert shown == steps
    assert [(s.name, s.ok) for s in steps] == [
        ("resolve", True),
        ("certificate", True),
        ("keys", True),
        ("version", True),
    ]
    resolve, certificate, keys, version = steps
    assert resolve.data["host"] == "localhost"
    assert resolve.data["port"] == worker.ports[0]
    assert "verified for localhost" in certificate.detail
    assert "localhost" in certificate.data["names"]
    assert keys.data["key_ids"]
    assert keys.detail.startswith("self-signature verified")
    assert version.data["name"] == "federation-presence"


async def test_probe_sends_one_signed_presence_edu_the_worker_stores(
    worker: RunningWorker, certificates: TlsCertificates, origin: TestOrigin
) -> None:
    alice = origin.user("alice")
    ours = Ours(origin.server_name, origin.signing_key)
    options = _options(worker, certificates, send_presence=alice, ours=ours)
    steps = await probe(options, SystemClock())
    assert [(s.name, s.ok) for s in steps][-1] == ("send-presence", True)
    assert steps[-1].data["answer"] == {"pdus": {}}
    stored = await worker.keeper.get(UserId(alice))
    assert stored is not None
    assert stored.state is PresenceState.ONLINE
    assert origin.key_requests == 1  # the worker verified it with the key it fetched


async def test_probe_refuses_to_send_presence_for_someone_elses_user(
    worker: RunningWorker, certificates: TlsCertificates, origin: TestOrigin
) -> None:
    ours = Ours(origin.server_name, origin.signing_key)
    options = _options(worker, certificates, send_presence="@bob:elsewhere.test", ours=ours)
    steps = await probe(options, SystemClock())
    assert (steps[-1].name, steps[-1].ok) == ("send-presence", False)
    assert "is not a user of ours" in steps[-1].detail


async def test_probe_waits_for_presence_to_arrive_at_our_worker(
    worker: RunningWorker, certificates: TlsCertificates, origin: TestOrigin
) -> None:
    bob = origin.user("bob")
    ours = Ours(
        "ours.test",
        origin.signing_key,
        worker_url=f"https://localhost:{worker.ports[0]}",
        admin_token=ADMIN_TOKEN,
        worker_ca=certificates.ca_path,
    )
    options = _options(worker, certificates, expect_presence=bob, ours=ours, wait_s=30)
    waiting = anyio.Event()

    def shown(step: Step) -> None:
        if step.name == "waiting":
            waiting.set()

    async def push_when_waiting() -> None:
        await waiting.wait()
        body = origin.transaction(
            presence_edu({"user_id": bob, "presence": "unavailable", "last_active_ago": 0})
        )
        async with worker_client(worker, certificates) as http:
            response = await http.put(
                "/_matrix/federation/v1/send/t1",
                content=orjson.dumps(body),
                headers={
                    "Authorization": origin.authorization("t1", body, destination=WORKER_NAME),
                    "Content-Type": "application/json",
                },
            )
        assert response.status_code == 200

    steps: list[Step] = []

    async def run_probe() -> None:
        steps.extend(await probe(options, SystemClock(), shown))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(push_when_waiting)
            tg.start_soon(run_probe)
    assert [(s.name, s.ok) for s in steps][-2:] == [("waiting", True), ("expect-presence", True)], (
        steps[-2:]
    )
    assert "now not known" in steps[-2].detail
    assert steps[-1].data["presence"]["presence"] == "unavailable"


async def test_expect_presence_gives_up_after_its_wait(
    worker: RunningWorker, certificates: TlsCertificates, origin: TestOrigin
) -> None:
    ours = Ours(
        "ours.test",
        origin.signing_key,
        worker_url=f"https://localhost:{worker.ports[0]}",
        admin_token=ADMIN_TOKEN,
        worker_ca=certificates.ca_path,
    )
    options = _options(
        worker, certificates, expect_presence=origin.user("nobody"), ours=ours, wait_s=1
    )
    steps = await probe(options, SystemClock())
    assert (steps[-1].name, steps[-1].ok) == ("expect-presence", False)
    assert steps[-1].detail.startswith("no new presence of")


async def test_probe_of_a_dead_port_fails_at_connect() -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    steps = await probe(ProbeOptions(server_name=f"127.0.0.1:{port}"), SystemClock())
    assert [(s.name, s.ok) for s in steps] == [("resolve", True), ("connect", False)]
    assert steps[-1].detail == f"127.0.0.1:{port}: Connection refused"


async def test_the_probe_command_prints_each_step_and_exits_0(
    worker: RunningWorker, certificates: TlsCertificates
) -> None:
    base = [sys.executable, "-m", "federation_presence", "probe", WORKER_NAME]
    where = ["--address", f"localhost:{worker.ports[0]}", "--ca-bundle", str(certificates.ca_path)]
    with anyio.fail_after(60):
        human = await anyio.run_process([*base, *where], env=checkout_env(), check=False)
        machine = await anyio.run_process(
            [*base, *where, "--json"], env=checkout_env(), check=False
        )
    assert human.returncode == 0, human.stderr.decode()
    lines = human.stdout.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok   resolve",
        "ok   certificate",
        "ok   keys",
        "ok   version",
    ]
    assert human.stderr == b""
    assert machine.returncode == 0
    document = json.loads(machine.stdout)
    assert document["passed"] is True
    assert [step["name"] for step in document["steps"]] == [
        "resolve",
        "certificate",
        "keys",
        "version",
    ]
