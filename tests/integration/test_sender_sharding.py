"""Two sender instances over one stream and one set of peers: each destination
is served by exactly one of them, the one Synapse's hash names.

Instance ``a`` is the worker's own sender (``federation_sender.instance_name:
a``, ``instances: [a, b]``); instance ``b`` is a second ``OutboundSender``
built here over the same stream, store and keeper with its own federation
client, as a second sender process on a shared database would be. Each
signs with the worker's key (the peers verify every request) and uses its
own txn id prefix, so a peer's attempts say which instance sent them.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from pathlib import Path

import anyio

from federation_presence.federation.client import FederationClient
from federation_presence.federation.ip_policy import IpPolicy
from federation_presence.federation.outbound_http import OutboundHttp
from federation_presence.federation.resolver import ServerResolver
from federation_presence.federation.signing_keys import read_signing_key_file
from federation_presence.ids import ServerName
from federation_presence.outbound.sender import OutboundSender
from federation_presence.outbound.settings import SenderSettings
from tests.integration.recording_peer import RecordingPeer, running_peer
from tests.integration.sending import (
    Routes,
    SettlingClock,
    assert_schema_complete,
    eventually,
    local,
    present,
    sender_of,
    sending_worker,
)
from tests.integration.tls_peer import TlsCertificates

INSTANCES = ("a", "b")
PREFIX = {"a": "fpa", "b": "fpb"}
MAX_PEERS = 12


def synapse_owner(destination: str) -> str:
    """Synapse's ``ShardedWorkerHandlingConfig.get_instance`` over ``INSTANCES``."""
    digest = hashlib.sha256(destination.encode("utf8")).digest()
    return INSTANCES[int.from_bytes(digest, byteorder="little") % len(INSTANCES)]


def sent_by(peer: RecordingPeer) -> set[str]:
    """The instances whose txn ids the peer received."""
    return {
        name
        for attempt in peer.attempts
        for name, prefix in PREFIX.items()
        if attempt.txn_id.startswith(prefix)
    }


async def test_each_destination_is_served_by_exactly_the_instance_its_hash_names(
    tmp_path: Path, certificates: TlsCertificates
) -> None:
    clock = SettlingClock()
    routes = Routes()
    async with contextlib.AsyncExitStack() as stack:
        peers: list[RecordingPeer] = []
        # Ports are random: add peers until each instance owns at least one.
        while len(peers) < 4 or {synapse_owner(p.server_name) for p in peers} != set(INSTANCES):
            assert len(peers) < MAX_PEERS, "the hash put every peer on one instance"
            peers.append(await stack.enter_async_context(running_peer(certificates, {}, clock)))
        routes.everyone = {ServerName(p.server_name) for p in peers}
        worker = await stack.enter_async_context(
            sending_worker(
                tmp_path,
                certificates,
                clock,
                routes,
                peers,
                instance_name="a",
                instances=INSTANCES,
                txn_id_prefix=PREFIX["a"],
            )
        )
        assert worker.stream is not None
        federation = worker.config.federation
        http = await stack.enter_async_context(
            OutboundHttp(
                ca_bundle=federation.ca_bundle,
                ip_policy=IpPolicy(federation.ip_range_blacklist, federation.ip_range_whitelist),
            )
        )
        resolver = await stack.enter_async_context(ServerResolver(clock, http=http))
        [signing_key] = await anyio.to_thread.run_sync(
            read_signing_key_file, worker.config.signing_key_path
        )
        client = await stack.enter_async_context(
            FederationClient(worker.server_name, signing_key, resolver, clock, http=http)
        )
        sender_b = OutboundSender(
            server_name=worker.server_name,
            stream=worker.stream,
            store=worker.store,
            client=client,
            destinations=routes,
            current=worker.keeper.get,
            clock=clock,
            settings=SenderSettings(
                linger_ms=0, instance_name="b", instances=INSTANCES, txn_id_prefix=PREFIX["b"]
            ),
            presence=worker.config.presence,
            rng=random.Random(2),
        )
        senders = {"a": sender_of(worker), "b": sender_b}
        task_group = await stack.enter_async_context(anyio.create_task_group())
        await task_group.start(sender_b.run)

        await present(worker, "alice", "hello")
        await present(worker, "bob", None)
        expected = {local("alice"), local("bob")}
        await eventually(
            lambda: all(
                {push["user_id"] for a in peer.transactions for push in a.pushes} >= expected
                for peer in peers
            )
        )

        owners = {peer.server_name: synapse_owner(peer.server_name) for peer in peers}
        for peer in peers:
            owner = owners[peer.server_name]
            assert sent_by(peer) == {owner}, (peer.server_name, owner, peer.attempts)
            assert [name for name, s in senders.items() if s.owns(peer.server_name)] == [owner]
        assert set(owners.values()) == set(INSTANCES)  # together they cover every destination
        assert_schema_complete(*peers)
        task_group.cancel_scope.cancel()
