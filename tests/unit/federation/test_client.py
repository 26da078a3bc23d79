"""The federation client against ``httpx.MockTransport`` peers (no sockets).

Checked here: where a request goes (address, port, ``Host``, SNI) for each kind
of resolution, that its X-Matrix signature verifies with the real ed25519 key
over the exact request target, and that every failure becomes a
``DestinationError``. Real TLS, certificate checks and timeouts are in
``tests/integration/test_client_tls.py``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import httpx
import orjson
import pytest
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.types import SigningKey
from unpaddedbase64 import decode_base64

from federation_presence.errors import UpstreamError
from federation_presence.federation.client import (
    DestinationError,
    FederationClient,
    RequestTimeouts,
)
from federation_presence.federation.edu import encode_push, transaction_bytes
from federation_presence.federation.resolver import ServerResolver
from federation_presence.federation.xmatrix import parse_authorization, signed_request_bytes
from federation_presence.ids import UserId
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import PresenceState
from tests.fakes import FakeClock

ORIGIN = "origin.example"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class FakePeer:
    """A destination behind a MockTransport: records requests, answers by a handler."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.handler: Handler = self.ok

    async def ok(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"pdus": {}})

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        return await self.handler(request)


class FakeSrvLookup:
    def __init__(self) -> None:
        self.records: dict[str, list[tuple[int, int, str, int]]] = {}

    async def srv(self, name: str) -> list[tuple[int, int, str, int]]:
        if name.startswith("_matrix-fed._tcp.broken"):
            raise UpstreamError(f"SRV lookup of {name} failed: timed out")
        return self.records.get(name, [])


@pytest.fixture
def signing_key() -> SigningKey:
    return generate_signing_key("a1")


@pytest.fixture
def peer() -> FakePeer:
    return FakePeer()


@pytest.fixture
def dns() -> FakeSrvLookup:
    return FakeSrvLookup()


@pytest.fixture
async def client(
    signing_key: SigningKey, peer: FakePeer, dns: FakeSrvLookup
) -> AsyncIterator[FederationClient]:
    clock = FakeClock()

    def well_known(request: httpx.Request) -> httpx.Response:
        if request.url.host == "delegating.example":
            return httpx.Response(200, json={"m.server": "matrix.host.example"})
        return httpx.Response(404)

    async with (
        ServerResolver(
            clock,
            srv_lookup=dns,
            rng=random.Random(0),
            transport=httpx.MockTransport(well_known),
        ) as resolver,
        FederationClient(
            ORIGIN,
            signing_key,
            resolver,
            clock,
            transport=httpx.MockTransport(peer.handle),
            max_response_bytes=1000,
        ) as client,
    ):
        yield client


def verify_x_matrix(request: httpx.Request, signing_key: SigningKey, destination: str) -> None:
    """Check the request's X-Matrix header as a receiving homeserver would."""
    auth = parse_authorization(request.headers.get_list("authorization"))
    assert auth.origin == ORIGIN
    assert auth.destination == destination
    assert auth.key_id == "ed25519:a1"
    content = orjson.loads(request.content) if request.content else None
    message = signed_request_bytes(
        request.method, request.url.raw_path.decode("ascii"), ORIGIN, destination, content
    )
    get_verify_key(signing_key).verify(message, decode_base64(auth.signature))


# --- where requests go ----------------------------------------------------------------


async def test_a_put_goes_to_the_named_host_and_port_with_its_host_header_and_sni(
    client: FederationClient, peer: FakePeer, signing_key: SigningKey
) -> None:
    body = {"origin": ORIGIN, "pdus": [], "edus": [{"edu_type": "m.presence", "content": {}}]}
    answer = await client.put_json("remote.example:8448", "/_matrix/federation/v1/send/7", body)
    assert answer == {"pdus": {}}
    (request,) = peer.requests
    assert request.method == "PUT"
    assert str(request.url) == "https://remote.example:8448/_matrix/federation/v1/send/7"
    assert request.headers["host"] == "remote.example:8448"
    assert request.extensions["sni_hostname"] == "remote.example"
    assert request.headers["content-type"] == "application/json"
    assert orjson.loads(request.content) == body
    verify_x_matrix(request, signing_key, "remote.example:8448")


async def test_a_delegated_destination_is_reached_at_the_srv_target_but_signed_for_its_name(
    client: FederationClient, peer: FakePeer, dns: FakeSrvLookup, signing_key: SigningKey
) -> None:
    dns.records["_matrix-fed._tcp.matrix.host.example"] = [(0, 0, "node7.host.example", 8009)]
    await client.post_json("delegating.example", "/_matrix/federation/v1/user/keys/query", {})
    (request,) = peer.requests
    assert request.url.host == "node7.host.example"
    assert request.url.port == 8009
    assert request.headers["host"] == "matrix.host.example"
    assert request.extensions["sni_hostname"] == "matrix.host.example"
    verify_x_matrix(request, signing_key, "delegating.example")


async def test_an_ip_literal_destination_sends_no_sni_and_keeps_brackets_in_the_url(
    client: FederationClient, peer: FakePeer, signing_key: SigningKey
) -> None:
    await client.get_json("[::1]:8448", "/_matrix/key/v2/server")
    (request,) = peer.requests
    assert str(request.url) == "https://[::1]:8448/_matrix/key/v2/server"
    assert request.headers["host"] == "[::1]:8448"
    assert "sni_hostname" not in request.extensions
    verify_x_matrix(request, signing_key, "[::1]:8448")


async def test_a_get_signs_the_query_string_and_sends_no_body(
    client: FederationClient, peer: FakePeer, signing_key: SigningKey
) -> None:
    path = "/_matrix/federation/v1/query/profile?user_id=%40a%3Aremote.example&field=displayname"
    await client.get_json("remote.example:8448", path)
    (request,) = peer.requests
    assert request.url.raw_path.decode() == path
    assert request.content == b""
    verify_x_matrix(request, signing_key, "remote.example:8448")


async def test_a_path_needing_escapes_is_signed_as_it_goes_on_the_wire(
    client: FederationClient, peer: FakePeer, signing_key: SigningKey
) -> None:
    await client.put_json("remote.example:8448", "/_matrix/federation/v1/send/t x", {})
    (request,) = peer.requests
    assert request.url.raw_path == b"/_matrix/federation/v1/send/t%20x"
    verify_x_matrix(request, signing_key, "remote.example:8448")


async def test_a_canonical_body_goes_out_byte_for_byte_and_its_signature_verifies(
    client: FederationClient, peer: FakePeer, signing_key: SigningKey
) -> None:
    users = [UserPresence(UserId("@é:origin.example"), PresenceState.ONLINE, 5, "hi", True)]
    body = transaction_bytes(ORIGIN, 1_000, [encode_push(u) for u in users])
    await client.put_json("remote.example:8448", "/_matrix/federation/v1/send/8", body)
    (request,) = peer.requests
    assert request.content == body.data  # sent as given: no second encoding
    assert request.headers["content-type"] == "application/json"
    verify_x_matrix(request, signing_key, "remote.example:8448")


async def test_per_request_timeouts_reach_the_transport_and_default_to_the_clients(
    client: FederationClient, peer: FakePeer
) -> None:
    limits = RequestTimeouts(connect_ms=1_500, read_ms=2_000, total_ms=9_000)
    await client.put_json("remote.example:8448", "/_matrix/x", {}, timeouts=limits)
    await client.put_json("remote.example:8448", "/_matrix/x", {}, timeouts=RequestTimeouts())
    await client.get_json("remote.example:8448", "/_matrix/y")
    given, defaulted, plain = (r.extensions["timeout"] for r in peer.requests)
    assert given == {"connect": 1.5, "read": 2.0, "write": 2.0, "pool": 1.5}
    assert defaulted == plain == {"connect": 30.0, "read": 30.0, "write": 30.0, "pool": 30.0}


async def test_requests_carry_the_stacks_headers_and_no_cookies(
    client: FederationClient, peer: FakePeer
) -> None:
    async def setting_a_cookie(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"pdus": {}}, headers={"Set-Cookie": "a=b"})

    peer.handler = setting_a_cookie
    await client.get_json("remote.example:8448", "/_matrix/x")
    await client.get_json("other.example:8448", "/_matrix/x")
    first, second = peer.requests
    assert first.headers["user-agent"].startswith("federation-presence/")
    assert first.headers["accept-encoding"] == "identity"
    assert "cookie" not in second.headers


async def test_a_body_that_is_not_canonical_json_is_refused_before_sending(
    client: FederationClient, peer: FakePeer
) -> None:
    with pytest.raises(ValueError, match="float"):
        await client.put_json("remote.example:8448", "/_matrix/x", {"weight": 1.5})
    with pytest.raises(ValueError, match="must start with '/'"):
        await client.get_json("remote.example:8448", "_matrix/x")
    assert peer.requests == []


# --- every failure is a DestinationError ------------------------------------------


def answer(status: int, content: bytes, **headers: str) -> Handler:
    async def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("handler", "status", "errcode", "message"),
    [
        (answer(500, b'{"errcode": "M_UNKNOWN", "error": "boom"}'), 500, "M_UNKNOWN", "boom"),
        (answer(403, b'{"errcode": "M_FORBIDDEN", "error": "no"}'), 403, "M_FORBIDDEN", "HTTP 403"),
        (answer(502, b"<html>Bad gateway</html>"), 502, None, "Bad gateway"),
        (answer(200, b"<html>hello</html>"), 200, None, "not JSON"),
        (answer(200, b""), 200, None, "not JSON"),
        (answer(200, b'["pdus"]'), 200, None, "JSON list, not an object"),
        (answer(200, b"null"), 200, None, "JSON NoneType, not an object"),
        (answer(200, b"x" * 1001), 200, None, "larger than 1000 bytes"),
        (answer(200, b"{}", **{"content-length": "5000"}), 200, None, "larger than 1000"),
    ],
)
async def test_a_bad_answer_becomes_a_destination_error_with_its_status(
    client: FederationClient,
    peer: FakePeer,
    handler: Handler,
    status: int,
    errcode: str | None,
    message: str,
) -> None:
    peer.handler = handler
    with pytest.raises(DestinationError, match=message) as caught:
        await client.get_json("remote.example:8448", "/_matrix/federation/v1/version")
    assert caught.value.status == status
    assert caught.value.errcode == errcode
    assert caught.value.destination == "remote.example:8448"
    assert str(caught.value).startswith("remote.example:8448: ")
    assert isinstance(caught.value, UpstreamError)


async def test_a_rate_limited_answer_carries_retry_after_ms(
    client: FederationClient, peer: FakePeer
) -> None:
    peer.handler = answer(429, b'{"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 2500}')
    with pytest.raises(DestinationError) as caught:
        await client.put_json("remote.example:8448", "/_matrix/federation/v1/send/1", {})
    assert (caught.value.status, caught.value.retry_after_ms) == (429, 2500)


async def test_a_streamed_body_over_the_limit_is_cut_without_reading_the_rest(
    client: FederationClient, peer: FakePeer
) -> None:
    served: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for i in range(10_000):
            served.append(i)
            yield b"x" * 100

    async def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    peer.handler = handler
    with pytest.raises(DestinationError, match="larger than 1000 bytes"):
        await client.get_json("remote.example:8448", "/_matrix/key/v2/server")
    assert len(served) <= 11


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
    ],
)
async def test_a_transport_failure_becomes_a_destination_error_without_status(
    client: FederationClient, peer: FakePeer, error: httpx.HTTPError
) -> None:
    async def handler(_request: httpx.Request) -> httpx.Response:
        raise error

    peer.handler = handler
    with pytest.raises(DestinationError) as caught:
        await client.put_json("remote.example:8448", "/_matrix/federation/v1/send/1", {})
    assert caught.value.status is None
    assert "remote.example:8448" in str(caught.value)
    assert str(error) in str(caught.value)
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    ("destination", "problem"),
    [("not a server name", "not a valid server name"), ("broken.example", "timed out")],
)
async def test_a_destination_that_cannot_be_resolved_is_a_destination_error(
    client: FederationClient, peer: FakePeer, destination: str, problem: str
) -> None:
    with pytest.raises(DestinationError, match=f"cannot resolve: .*{problem}"):
        await client.get_json(destination, "/_matrix/federation/v1/version")
    assert peer.requests == []


# --- the whole-request limit and cancellation -----------------------------------------


async def test_a_peer_that_never_answers_is_cut_at_the_total_limit(
    client: FederationClient, peer: FakePeer
) -> None:
    async def never(_request: httpx.Request) -> httpx.Response:
        await anyio.Event().wait()
        raise AssertionError("unreachable")

    peer.handler = never
    limits = RequestTimeouts(connect_ms=30_000, read_ms=30_000, total_ms=50)
    with pytest.raises(DestinationError, match=r"timed out after .* 50 ms in all") as caught:
        await client.put_json("remote.example:8448", "/_matrix/x", {}, timeouts=limits)
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_a_cancelled_caller_is_cancelled_not_timed_out(
    client: FederationClient, peer: FakePeer
) -> None:
    """An anyio cancel scope around a request cancels it cleanly (no error of ours)."""
    with anyio.CancelScope() as scope:

        async def cancel_then_wait(_request: httpx.Request) -> httpx.Response:
            scope.cancel()
            await anyio.Event().wait()
            raise AssertionError("unreachable")

        peer.handler = cancel_then_wait
        await client.put_json("remote.example:8448", "/_matrix/x", {})
        raise AssertionError("the request returned inside a cancelled scope")
    assert scope.cancelled_caught
    assert len(peer.requests) == 1
