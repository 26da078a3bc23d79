"""The federation client and resolver over real TLS and real DNS on loopback.

A uvicorn peer with a trustme certificate (``tls_peer.py``) plays the remote
homeserver; a tiny UDP DNS server built with ``dns.message``/``dns.rrset``
answers SRV queries so that dnspython's real ``asyncresolver`` path runs. The
peer records each request's ``Host`` header, X-Matrix header and TLS SNI.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import orjson
import pytest
from anyio.abc import SocketAttribute, TaskStatus
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.types import SigningKey
from unpaddedbase64 import decode_base64

from federation_presence.clock import SystemClock
from federation_presence.errors import UpstreamError
from federation_presence.federation.client import DestinationError, FederationClient
from federation_presence.federation.ip_policy import LOOPBACK_RANGES, IpPolicy
from federation_presence.federation.resolver import (
    DestinationResolver,
    DnsSrvLookup,
    ResolvedDestination,
    ServerResolver,
)
from federation_presence.federation.xmatrix import parse_authorization, signed_request_bytes
from tests.integration.tls_peer import (
    Message,
    Receive,
    Scope,
    Send,
    TlsCertificates,
    TlsPeer,
    serve_tls,
)

ORIGIN = "origin.test"
DELEGATED = "delegated.test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the peer -----------------------------------------------------------------------


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HomeserverApp:
    """A raw ASGI stand-in for a remote homeserver's federation listener."""

    seen: list[SeenRequest] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = scope["raw_path"].decode() + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append(SeenRequest(scope["method"], target, headers, body))
        path = scope["path"]
        if path == "/slow":
            await self._never_answer(receive)
        elif path == "/.well-known/matrix/server":
            await self._answer(send, 200, orjson.dumps({"m.server": DELEGATED}), "text/plain")
        elif path == "/broken":
            await self._answer(send, 500, b"Internal Server Error", "text/plain")
        elif path == "/not-json":
            await self._answer(send, 200, b"<html>hello</html>", "text/html")
        else:
            await self._answer(send, 200, orjson.dumps({"server": {"name": "tls-peer"}}))

    async def _answer(
        self, send: Send, status: int, body: bytes, content_type: str = "application/json"
    ) -> None:
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _never_answer(self, receive: Receive) -> None:
        """Hold the request until the client gives up and disconnects."""
        message: Message = {}
        while message.get("type") != "http.disconnect":
            message = await receive()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TlsCertificates:
    return TlsCertificates.issue(tmp_path_factory.mktemp("tls"), extra_names=(DELEGATED,))


@pytest.fixture
def app() -> HomeserverApp:
    return HomeserverApp()


@pytest.fixture
async def peer(app: HomeserverApp, certificates: TlsCertificates) -> AsyncIterator[TlsPeer]:
    async with serve_tls(app, certificates) as peer:
        yield peer


@pytest.fixture
def signing_key() -> SigningKey:
    return generate_signing_key("k1")


def verify_x_matrix(seen: SeenRequest, signing_key: SigningKey, destination: str) -> None:
    auth = parse_authorization([seen.headers["authorization"]])
    assert (auth.origin, auth.destination) == (ORIGIN, destination)
    content = orjson.loads(seen.body) if seen.body else None
    message = signed_request_bytes(seen.method, seen.target, ORIGIN, destination, content)
    get_verify_key(signing_key).verify(message, decode_base64(auth.signature))


# --- a tiny DNS server -----------------------------------------------------------------


@dataclass
class SrvZone:
    """SRV records by query name; names listed in ``servfail`` answer SERVFAIL."""

    records: dict[str, list[str]] = field(default_factory=dict)
    servfail: set[str] = field(default_factory=set)
    queries: list[str] = field(default_factory=list)

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = question.name.to_text(omit_final_dot=True)
            self.queries.append(name)
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif question.rdtype == dns.rdatatype.SRV and name in self.records:
                response.answer.append(
                    dns.rrset.from_text_list(
                        question.name, 60, dns.rdataclass.IN, dns.rdatatype.SRV, self.records[name]
                    )
                )
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


async def serve_dns(zone: SrvZone, *, task_status: TaskStatus[int]) -> None:
    async with await anyio.create_udp_socket(
        family=socket.AF_INET, local_host="127.0.0.1", local_port=0
    ) as udp:
        task_status.started(udp.extra(SocketAttribute.local_port))
        async for packet, (host, port) in udp:
            await udp.sendto(zone.answer(packet), host, port)


@pytest.fixture
def zone() -> SrvZone:
    return SrvZone()


@pytest.fixture
async def dns_port(zone: SrvZone) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        yield await tg.start(serve_dns, zone)
        tg.cancel_scope.cancel()


# --- clients ------------------------------------------------------------------------

# The peer is on loopback, which the default policy (Synapse's blocklist) refuses.
LOOPBACK_ALLOWED = IpPolicy(whitelist=LOOPBACK_RANGES)


@pytest.fixture
async def resolver(
    peer: TlsPeer, dns_port: int, certificates: TlsCertificates
) -> AsyncIterator[ServerResolver]:
    async with ServerResolver(
        SystemClock(),
        srv_lookup=DnsSrvLookup(["127.0.0.1"], port=dns_port, timeout_ms=2_000),
        ca_bundle=certificates.ca_path,
        well_known_port=peer.port,
        ip_policy=LOOPBACK_ALLOWED,
    ) as resolver:
        yield resolver


def federation_client(
    resolver: DestinationResolver, signing_key: SigningKey, **options: Any
) -> FederationClient:
    options.setdefault("ip_policy", LOOPBACK_ALLOWED)
    return FederationClient(ORIGIN, signing_key, resolver, SystemClock(), **options)


class FixedResolver:
    """Resolves every name to one prepared destination (to test cert names)."""

    def __init__(self, destination: ResolvedDestination) -> None:
        self.destination = destination

    async def resolve(self, server_name: str) -> ResolvedDestination:
        return self.destination


# --- the tests -------------------------------------------------------------------------


async def test_a_named_destination_with_a_port_is_reached_over_verified_tls(
    peer: TlsPeer, app: HomeserverApp, resolver: ServerResolver, signing_key: SigningKey
) -> None:
    destination = f"localhost:{peer.port}"
    async with federation_client(resolver, signing_key, ca_bundle=peer.ca_path) as client:
        answer = await client.put_json(destination, "/_matrix/federation/v1/send/1", {"edus": []})
    assert answer == {"server": {"name": "tls-peer"}}
    (seen,) = app.seen
    assert seen.headers["host"] == destination
    assert peer.sni_names == ["localhost"]
    verify_x_matrix(seen, signing_key, destination)


async def test_an_ip_literal_destination_is_verified_against_the_ip_without_sni(
    peer: TlsPeer, app: HomeserverApp, resolver: ServerResolver, signing_key: SigningKey
) -> None:
    destination = f"127.0.0.1:{peer.port}"
    async with federation_client(resolver, signing_key, ca_bundle=peer.ca_path) as client:
        await client.get_json(destination, "/_matrix/federation/v1/version")
    (seen,) = app.seen
    assert seen.headers["host"] == destination
    assert peer.sni_names == [None]
    verify_x_matrix(seen, signing_key, destination)


async def test_a_delegated_name_is_found_by_real_well_known_and_real_srv(
    peer: TlsPeer,
    app: HomeserverApp,
    zone: SrvZone,
    resolver: ServerResolver,
    signing_key: SigningKey,
) -> None:
    # localhost's .well-known (on the peer) says "delegated.test"; its _matrix-fed SRV
    # record (on the DNS server) points at the peer; the cert is checked for delegated.test.
    zone.records[f"_matrix-fed._tcp.{DELEGATED}"] = [f"10 5 {peer.port} localhost."]
    assert await resolver.resolve("localhost") == ResolvedDestination(
        "localhost", "localhost", peer.port, DELEGATED, DELEGATED
    )
    async with federation_client(resolver, signing_key, ca_bundle=peer.ca_path) as client:
        await client.get_json("localhost", "/_matrix/key/v2/server")
    well_known, request = app.seen
    assert well_known.target == "/.well-known/matrix/server"
    assert request.headers["host"] == DELEGATED
    assert peer.sni_names == ["localhost", DELEGATED]
    assert zone.queries == [f"_matrix-fed._tcp.{DELEGATED}"]
    verify_x_matrix(request, signing_key, "localhost")


async def test_dnspython_lookup_reads_records_and_maps_missing_and_failing_names(
    zone: SrvZone, dns_port: int
) -> None:
    zone.records["_matrix-fed._tcp.a.test"] = ["10 60 8448 one.a.test.", "20 0 8449 two.a.test."]
    zone.servfail.add("_matrix-fed._tcp.broken.test")
    lookup = DnsSrvLookup(["127.0.0.1"], port=dns_port, timeout_ms=2_000)
    assert sorted(await lookup.srv("_matrix-fed._tcp.a.test")) == [
        (10, 60, "one.a.test", 8448),
        (20, 0, "two.a.test", 8449),
    ]
    assert await lookup.srv("_matrix-fed._tcp.nothing.test") == []
    failed = r"SRV lookup of _matrix-fed\._tcp\.broken\.test failed"
    with pytest.raises(UpstreamError, match=failed):
        await lookup.srv("_matrix-fed._tcp.broken.test")


async def test_an_untrusted_certificate_is_refused(
    peer: TlsPeer, app: HomeserverApp, resolver: ServerResolver, signing_key: SigningKey
) -> None:
    async with federation_client(resolver, signing_key) as client:
        with pytest.raises(DestinationError, match="CERTIFICATE_VERIFY_FAILED") as caught:
            await client.get_json(f"localhost:{peer.port}", "/_matrix/federation/v1/version")
    assert caught.value.status is None
    assert app.seen == []


async def test_verification_can_be_switched_off_for_test_networks(
    peer: TlsPeer, app: HomeserverApp, resolver: ServerResolver, signing_key: SigningKey
) -> None:
    async with federation_client(resolver, signing_key, verify_certificates=False) as client:
        await client.get_json(f"localhost:{peer.port}", "/_matrix/federation/v1/version")
    assert len(app.seen) == 1


async def test_a_connection_verified_for_one_name_is_not_reused_for_another(
    peer: TlsPeer, app: HomeserverApp, signing_key: SigningKey
) -> None:
    # Both names lead to the same address; only "localhost" is on the certificate.
    good = FixedResolver(ResolvedDestination("a.test", "127.0.0.1", peer.port, "a", "localhost"))
    async with federation_client(good, signing_key, ca_bundle=peer.ca_path) as client:
        await client.get_json("a.test", "/_matrix/federation/v1/version")
        good.destination = ResolvedDestination(
            "b.test", "127.0.0.1", peer.port, "b", "not-on-the-cert.test"
        )
        with pytest.raises(DestinationError, match="Hostname mismatch"):
            await client.get_json("b.test", "/_matrix/federation/v1/version")
    assert len(app.seen) == 1
    assert peer.sni_names == ["localhost", "not-on-the-cert.test"]


@pytest.mark.parametrize(
    ("path", "status", "problem"),
    [("/broken", 500, "HTTP 500: Internal Server Error"), ("/not-json", 200, "not JSON")],
)
async def test_an_error_or_non_json_answer_is_a_destination_error(
    peer: TlsPeer,
    resolver: ServerResolver,
    signing_key: SigningKey,
    path: str,
    status: int,
    problem: str,
) -> None:
    async with federation_client(resolver, signing_key, ca_bundle=peer.ca_path) as client:
        with pytest.raises(DestinationError, match=problem) as caught:
            await client.get_json(f"localhost:{peer.port}", path)
    assert caught.value.status == status


@pytest.mark.slow
async def test_a_peer_that_never_answers_times_out(
    peer: TlsPeer, app: HomeserverApp, resolver: ServerResolver, signing_key: SigningKey
) -> None:
    """Wall-clock by nature. Tolerance: no earlier than the 500 ms limit less
    50 ms of timer slack, no later than 3 s after it (a loaded 2-core box)."""
    clock = SystemClock()
    options: dict[str, Any] = {"ca_bundle": peer.ca_path, "timeout_ms": 500}
    async with federation_client(resolver, signing_key, **options) as client:
        started = clock.monotonic()
        with pytest.raises(DestinationError, match="timed out") as caught:
            await client.get_json(f"localhost:{peer.port}", "/slow")
        elapsed = clock.monotonic() - started
    assert 0.45 <= elapsed <= 3.5, elapsed
    assert caught.value.status is None
    assert [seen.target for seen in app.seen] == ["/slow"]


# --- outbound IP policy (SSRF) ------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_default_ip_policy_refuses_loopback_before_any_connection(
    peer: TlsPeer, app: HomeserverApp, resolver: ServerResolver, signing_key: SigningKey, host: str
) -> None:
    async with FederationClient(
        ORIGIN, signing_key, resolver, SystemClock(), ca_bundle=peer.ca_path
    ) as client:
        with pytest.raises(DestinationError, match="IP address blocked") as caught:
            await client.get_json(f"{host}:{peer.port}", "/_matrix/key/v2/server")
    assert caught.value.status is None
    assert app.seen == []
    assert peer.sni_names == []


async def test_the_default_ip_policy_refuses_a_well_known_fetch_from_loopback(
    peer: TlsPeer, app: HomeserverApp, certificates: TlsCertificates
) -> None:
    async with ServerResolver(
        SystemClock(),
        srv_lookup=FailingSrvLookup(),
        ca_bundle=certificates.ca_path,
        well_known_port=peer.port,
    ) as resolver:
        result = await resolver.well_known("localhost")
    assert result.m_server is None
    assert "IP address blocked" in (result.problem or "")
    assert app.seen == []
    assert peer.sni_names == []


class FailingSrvLookup:
    async def srv(self, name: str) -> list[tuple[int, int, str, int]]:
        raise AssertionError(f"no SRV lookup expected, got {name}")
