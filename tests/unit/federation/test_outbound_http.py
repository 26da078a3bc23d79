"""The outbound HTTP stack: one pool per certificate name, bounded, and the body limit.

Pools are stand-in transports (no sockets) so that what is closed, kept and
refused can be seen; the client tests use the same stack through
``FederationClient``.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from signedjson.key import generate_signing_key

from federation_presence.errors import UpstreamError
from federation_presence.federation.client import (
    DestinationBusyError,
    DestinationError,
    FederationClient,
)
from federation_presence.federation.outbound_http import (
    BodyTooLarge,
    CertificateNamePools,
    OutboundBusyError,
    OutboundHttp,
    PoolsExhausted,
    read_bounded,
)
from federation_presence.federation.resolver import ServerResolver
from tests.fakes import FakeClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingPool(httpx.AsyncBaseTransport):
    """A stand-in connection pool: answers 200 and remembers being closed."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert not self.closed
        return httpx.Response(200, json={"pool": self.number})

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def pools() -> list[RecordingPool]:
    return []


@pytest.fixture
def certificate_name_pools(pools: list[RecordingPool]) -> CertificateNamePools:
    def new_pool() -> RecordingPool:
        pools.append(RecordingPool(len(pools)))
        return pools[-1]

    return CertificateNamePools(new_pool, max_pools=2)


async def send_for(
    http: httpx.AsyncClient, name: str | None, *, stream: bool = False
) -> httpx.Response:
    extensions = {} if name is None else {"sni_hostname": name}
    request = http.build_request("GET", "https://10.0.0.1:8448/x", extensions=extensions)
    response = await http.send(request, stream=stream)
    return response


async def test_each_certificate_name_gets_its_own_pool_even_on_one_address() -> None:
    pools = iter(range(100))
    certificate_name_pools = CertificateNamePools(lambda: RecordingPool(next(pools)))
    async with httpx.AsyncClient(transport=certificate_name_pools) as http:
        numbers = [
            (await send_for(http, name)).json()["pool"] for name in ("a.example", "b.example", None)
        ]
        again = (await send_for(http, "a.example")).json()["pool"]
        assert certificate_name_pools.names == ["b.example", "10.0.0.1", "a.example"]
    assert numbers == [0, 1, 2]
    assert again == 0


async def test_idle_pools_beyond_the_limit_close_least_recently_used_first(
    certificate_name_pools: CertificateNamePools, pools: list[RecordingPool]
) -> None:
    async with httpx.AsyncClient(transport=certificate_name_pools) as http:
        for name in ("a.example", "b.example", "a.example", "c.example"):
            await send_for(http, name)
        assert [p.closed for p in pools] == [False, True, False]
        assert certificate_name_pools.names == ["a.example", "c.example"]
    assert all(p.closed for p in pools)


async def test_a_pool_with_an_open_response_is_not_closed_under_it(
    certificate_name_pools: CertificateNamePools, pools: list[RecordingPool]
) -> None:
    async with httpx.AsyncClient(transport=certificate_name_pools) as http:
        busy = await send_for(http, "busy.example", stream=True)
        await send_for(http, "b.example")
        await send_for(http, "c.example")
        # A limit of two: "b" is closed for "c", "busy" is kept while in use.
        assert [p.closed for p in pools] == [False, True, False]
        assert certificate_name_pools.names == ["busy.example", "c.example"]
        await busy.aread()
        await busy.aclose()
        await send_for(http, "d.example")
        assert [p.closed for p in pools] == [True, True, False, False]
        assert certificate_name_pools.names == ["c.example", "d.example"]


async def test_a_new_name_when_every_pool_is_busy_fails_cleanly_and_evicts_nothing(
    certificate_name_pools: CertificateNamePools, pools: list[RecordingPool]
) -> None:
    # The outside tester's bug: the new pool was inserted, then evicted as the
    # only idle one, and ``move_to_end`` raised KeyError.
    async with httpx.AsyncClient(transport=certificate_name_pools) as http:
        first = await send_for(http, "a.example", stream=True)
        second = await send_for(http, "b.example", stream=True)
        with pytest.raises(PoolsExhausted, match="all 2 connection pools"):
            await send_for(http, "c.example")
        assert certificate_name_pools.names == ["a.example", "b.example"]
        assert [p.closed for p in pools] == [False, False]
        await first.aclose()
        third = await send_for(http, "c.example")  # room again: the idle "a" makes way
        assert third.json() == {"pool": 2}
        assert certificate_name_pools.names == ["b.example", "c.example"]
        await second.aclose()


async def test_a_failed_request_leaves_its_pool_idle_again() -> None:
    class FailingPool(RecordingPool):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

    made: list[RecordingPool] = []

    def new_pool() -> RecordingPool:
        made.append(FailingPool(len(made)) if not made else RecordingPool(len(made)))
        return made[-1]

    pools = CertificateNamePools(new_pool, max_pools=1)
    async with httpx.AsyncClient(transport=pools) as http:
        with pytest.raises(httpx.ConnectError):
            await send_for(http, "a.example")
        assert (await send_for(http, "b.example")).json() == {"pool": 1}  # "a" was idle


async def test_the_client_maps_an_exhausted_stack_to_a_busy_error_not_a_destination_fault(
    certificate_name_pools: CertificateNamePools,
) -> None:
    clock = FakeClock()
    key = generate_signing_key("a")
    async with (
        OutboundHttp(transport=certificate_name_pools) as http,
        ServerResolver(clock, rng=random.Random(0), http=http) as resolver,
        FederationClient("us.example", key, resolver, clock, http=http) as client,
    ):
        first = await send_for(http.client, "a.example", stream=True)
        second = await send_for(http.client, "b.example", stream=True)
        with pytest.raises(DestinationBusyError) as caught:
            await client.get_json("c.example:8448", "/_matrix/key/v2/server")
        assert isinstance(caught.value, OutboundBusyError)
        assert isinstance(caught.value, DestinationError)  # a sender's handler still catches it
        assert isinstance(caught.value, UpstreamError)
        await first.aclose()
        await second.aclose()


async def test_the_resolver_raises_busy_rather_than_caching_a_failure(
    certificate_name_pools: CertificateNamePools,
) -> None:
    clock = FakeClock()
    async with (
        OutboundHttp(transport=certificate_name_pools) as http,
        ServerResolver(clock, rng=random.Random(0), http=http) as resolver,
    ):
        first = await send_for(http.client, "a.example", stream=True)
        second = await send_for(http.client, "b.example", stream=True)
        with pytest.raises(OutboundBusyError):
            await resolver.well_known("c.example")
        await first.aclose()
        result = await resolver.well_known("c.example")  # asked again, not a cached failure
        assert result.problem == "no m.server string"  # RecordingPool answers {"pool": n}
        await second.aclose()


async def test_one_stack_shared_by_resolver_and_client_is_closed_by_its_owner_only() -> None:
    closed: list[bool] = []

    class Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={})

        async def aclose(self) -> None:
            closed.append(True)

    clock = FakeClock()
    async with OutboundHttp(transport=Transport()) as http:
        async with (
            ServerResolver(clock, http=http) as resolver,
            FederationClient("us.example", generate_signing_key("a"), resolver, clock, http=http),
        ):
            pass
        assert closed == []
        assert (await http.client.get("https://x.example/")).status_code == 200
    assert closed == [True]


async def stream_of(*chunks: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
            await anyio.lowlevel.checkpoint()

    return httpx.Response(200, headers=headers, content=body())


async def test_read_bounded_cuts_a_stream_at_the_limit() -> None:
    assert await read_bounded(await stream_of(b"ab", b"cd"), 4) == b"abcd"
    with pytest.raises(BodyTooLarge) as caught:
        await read_bounded(await stream_of(b"ab", b"cd", b"e"), 4)
    assert (caught.value.status, caught.value.limit) == (200, 4)


async def test_read_bounded_refuses_a_declared_length_over_the_limit_before_reading() -> None:
    with pytest.raises(BodyTooLarge):
        await read_bounded(await stream_of(b"", headers={"Content-Length": "5"}), 4)


async def test_read_bounded_decodes_a_body_sent_encoded_anyway_and_bounds_it_decoded() -> None:
    # We ask for identity; a server that compresses anyway is decoded by httpx.
    packed = gzip.compress(b'{"pdus":{}}')
    encoded = {"Content-Encoding": "gzip"}
    assert await read_bounded(await stream_of(packed, headers=encoded), 100) == b'{"pdus":{}}'
    bomb = gzip.compress(b"0" * 10_000)
    with pytest.raises(BodyTooLarge):
        await read_bounded(await stream_of(bomb, headers=encoded), 1_000)
