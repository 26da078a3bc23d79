"""Server-name resolution: every step of the spec's algorithm, in order.

The ``.well-known`` fetch runs through ``httpx.MockTransport`` (a fake site
that counts its requests), SRV through a fake ``SrvLookup`` that records its
queries, time through ``FakeClock``. The real dnspython path and the real TLS
fetch are exercised in ``tests/integration/test_client_tls.py``.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.errors import UpstreamError
from federation_presence.federation.resolver import (
    HOUR_MS,
    MINUTE_MS,
    ResolvedDestination,
    ServerResolver,
    SrvRecord,
    failure_cache_period_ms,
    parse_well_known,
    pick_srv_record,
    well_known_cache_period_ms,
)
from tests.fakes import FakeClock

WELL_KNOWN = "https://example.org/.well-known/matrix/server"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeSrvLookup:
    """SRV answers from a table; records every name asked for."""

    def __init__(self, records: dict[str, list[tuple[int, int, str, int]]] | None = None) -> None:
        self.records = records or {}
        self.failing: set[str] = set()
        self.queries: list[str] = []

    async def srv(self, name: str) -> Sequence[tuple[int, int, str, int]]:
        self.queries.append(name)
        if name in self.failing:
            raise UpstreamError(f"SRV lookup of {name} failed: SERVFAIL")
        return self.records.get(name, [])


Responder = Callable[[httpx.Request], httpx.Response]


class FakeSite:
    """The web as a table of URL → answer; counts requests per URL."""

    def __init__(self) -> None:
        self.routes: dict[str, Responder] = {}
        self.hits: Counter[str] = Counter()

    def json(self, url: str, body: object, **headers: str) -> None:
        self.routes[url] = lambda _r: httpx.Response(200, json=body, headers=headers)

    def answer(self, url: str, status: int, content: bytes = b"", **headers: str) -> None:
        self.routes[url] = lambda _r: httpx.Response(status, content=content, headers=headers)

    def redirect(self, url: str, location: str, status: int = 302) -> None:
        self.answer(url, status, location=location)

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.hits[url] += 1
        responder = self.routes.get(url)
        if responder is None:
            return httpx.Response(404, json={"errcode": "M_NOT_FOUND"})
        return responder(request)


class FixedDraw(random.Random):
    """A ``random.Random`` whose weighted draw is chosen by the test."""

    def __init__(self, draw: int) -> None:
        super().__init__(0)
        self.draw = draw

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        assert stop is None
        assert 0 <= self.draw < start
        return self.draw


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def site() -> FakeSite:
    return FakeSite()


@pytest.fixture
def dns() -> FakeSrvLookup:
    return FakeSrvLookup()


@pytest.fixture
async def resolver(
    clock: FakeClock, site: FakeSite, dns: FakeSrvLookup
) -> AsyncIterator[ServerResolver]:
    async with ServerResolver(
        clock, srv_lookup=dns, rng=random.Random(7), transport=httpx.MockTransport(site.handle)
    ) as resolver:
        yield resolver


# --- steps 1 and 2: no lookups at all -------------------------------------------


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("1.2.3.4", ResolvedDestination("1.2.3.4", "1.2.3.4", 8448, "1.2.3.4", None)),
        ("1.2.3.4:443", ResolvedDestination("1.2.3.4:443", "1.2.3.4", 443, "1.2.3.4:443", None)),
        ("[::1]", ResolvedDestination("[::1]", "::1", 8448, "[::1]", None)),
        (
            "[2001:db8::5]:8000",
            ResolvedDestination(
                "[2001:db8::5]:8000", "2001:db8::5", 8000, "[2001:db8::5]:8000", None
            ),
        ),
        (
            "example.org:1234",
            ResolvedDestination(
                "example.org:1234", "example.org", 1234, "example.org:1234", "example.org"
            ),
        ),
    ],
)
async def test_ip_literals_and_explicit_ports_resolve_without_any_lookup(
    resolver: ServerResolver,
    site: FakeSite,
    dns: FakeSrvLookup,
    server_name: str,
    expected: ResolvedDestination,
) -> None:
    assert await resolver.resolve(server_name) == expected
    assert not site.hits
    assert dns.queries == []


@pytest.mark.parametrize(
    "server_name", ["", "exa mple.org", "example.org:0", "example.org:70000", "[zz::1]", "a/b"]
)
async def test_a_name_that_is_not_a_server_name_raises_upstream_error(
    resolver: ServerResolver, site: FakeSite, server_name: str
) -> None:
    with pytest.raises(UpstreamError, match="not a valid server name"):
        await resolver.resolve(server_name)
    assert not site.hits


# --- step 3: .well-known delegation ------------------------------------------------


async def test_delegation_to_an_ip_literal_connects_to_it_with_that_host_header(
    resolver: ServerResolver, site: FakeSite, dns: FakeSrvLookup
) -> None:
    site.json(WELL_KNOWN, {"m.server": "10.0.0.7"})
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "10.0.0.7", 8448, "10.0.0.7", None
    )
    site.json("https://ip6.example/.well-known/matrix/server", {"m.server": "[fd00::7]:9000"})
    assert await resolver.resolve("ip6.example") == ResolvedDestination(
        "ip6.example", "fd00::7", 9000, "[fd00::7]:9000", None
    )
    assert dns.queries == []


async def test_delegation_to_a_name_with_a_port_skips_srv(
    resolver: ServerResolver, site: FakeSite, dns: FakeSrvLookup
) -> None:
    site.json(WELL_KNOWN, {"m.server": "matrix.example.net:8443"})
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "matrix.example.net", 8443, "matrix.example.net:8443", "matrix.example.net"
    )
    assert dns.queries == []


async def test_delegation_without_a_port_asks_matrix_fed_srv_of_the_delegated_host(
    resolver: ServerResolver, site: FakeSite, dns: FakeSrvLookup
) -> None:
    site.json(WELL_KNOWN, {"m.server": "matrix.example.net"})
    dns.records["_matrix-fed._tcp.matrix.example.net"] = [(10, 5, "fed1.example.net.", 8449)]
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "fed1.example.net", 8449, "matrix.example.net", "matrix.example.net"
    )
    assert dns.queries == ["_matrix-fed._tcp.matrix.example.net"]


async def test_delegation_falls_back_to_the_deprecated_matrix_srv(
    resolver: ServerResolver, site: FakeSite, dns: FakeSrvLookup
) -> None:
    site.json(WELL_KNOWN, {"m.server": "matrix.example.net"})
    dns.records["_matrix._tcp.matrix.example.net"] = [(10, 5, "old.example.net", 8450)]
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "old.example.net", 8450, "matrix.example.net", "matrix.example.net"
    )
    assert dns.queries == [
        "_matrix-fed._tcp.matrix.example.net",
        "_matrix._tcp.matrix.example.net",
    ]


async def test_delegation_without_srv_uses_the_delegated_host_on_8448(
    resolver: ServerResolver, site: FakeSite
) -> None:
    site.json(WELL_KNOWN, {"m.server": "matrix.example.net"})
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "matrix.example.net", 8448, "matrix.example.net", "matrix.example.net"
    )


async def test_well_known_is_json_whatever_its_content_type(
    resolver: ServerResolver, site: FakeSite
) -> None:
    site.answer(WELL_KNOWN, 200, b'{"m.server": "d.example:1"}', **{"content-type": "text/html"})
    assert (await resolver.resolve("example.org")).host_header == "d.example:1"


async def test_well_known_is_fetched_on_the_configured_port(
    clock: FakeClock, site: FakeSite, dns: FakeSrvLookup
) -> None:
    site.json("https://example.org:8443/.well-known/matrix/server", {"m.server": "d.example:2"})
    async with ServerResolver(
        clock, srv_lookup=dns, transport=httpx.MockTransport(site.handle), well_known_port=8443
    ) as resolver:
        assert (await resolver.resolve("example.org")).port == 2


# --- step 3 fails: on to SRV on the hostname (steps 4-6) -----------------------------

INVALID_ANSWERS = [
    pytest.param(404, b'{"m.server": "d.example:1"}', id="not-200"),
    pytest.param(500, b"", id="server-error"),
    pytest.param(200, b"<html>hi</html>", id="not-json"),
    pytest.param(200, b"", id="empty"),
    pytest.param(200, b'["m.server"]', id="array"),
    pytest.param(200, b'{"m.servers": "d.example"}', id="no-m.server"),
    pytest.param(200, b'{"m.server": 8448}', id="m.server-not-string"),
    pytest.param(200, b'{"m.server": "not a name"}', id="m.server-bad-grammar"),
    pytest.param(200, b'{"m.server": "[zz::1]:80"}', id="m.server-bad-ipv6"),
    pytest.param(200, b'\xff\xfe{"m.server": 1}', id="not-utf8"),
]


@pytest.mark.parametrize(("status", "body"), INVALID_ANSWERS)
async def test_an_invalid_well_known_falls_through_to_srv_on_the_hostname(
    resolver: ServerResolver, site: FakeSite, dns: FakeSrvLookup, status: int, body: bytes
) -> None:
    site.answer(WELL_KNOWN, status, body)
    dns.records["_matrix-fed._tcp.example.org"] = [(0, 0, "fed.example.org", 8000)]
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "fed.example.org", 8000, "example.org", "example.org"
    )
    assert site.hits[WELL_KNOWN] == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("?")],
)
async def test_an_unreachable_well_known_falls_through(
    resolver: ServerResolver, site: FakeSite, error: httpx.HTTPError
) -> None:
    def fail(_request: httpx.Request) -> httpx.Response:
        raise error

    site.routes[WELL_KNOWN] = fail
    result = await resolver.well_known("example.org")
    assert result.m_server is None
    assert type(error).__name__ in (result.problem or "")
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "example.org", 8448, "example.org", "example.org"
    )


async def test_a_well_known_body_over_the_size_limit_is_refused(
    clock: FakeClock, site: FakeSite, dns: FakeSrvLookup
) -> None:
    padded = b'{"m.server": "d.example:1", "pad": "' + b"x" * 200 + b'"}'
    site.answer(WELL_KNOWN, 200, padded)
    async with ServerResolver(
        clock, srv_lookup=dns, transport=httpx.MockTransport(site.handle), well_known_max_bytes=100
    ) as resolver:
        result = await resolver.well_known("example.org")
    assert result.m_server is None
    assert "larger than 100 bytes" in (result.problem or "")


async def test_matrix_fed_srv_wins_over_the_deprecated_record(
    resolver: ServerResolver, dns: FakeSrvLookup
) -> None:
    dns.records["_matrix-fed._tcp.example.org"] = [(0, 0, "new.example.org", 1)]
    dns.records["_matrix._tcp.example.org"] = [(0, 0, "old.example.org", 2)]
    assert (await resolver.resolve("example.org")).host == "new.example.org"
    assert dns.queries == ["_matrix-fed._tcp.example.org"]


async def test_the_deprecated_srv_is_used_when_matrix_fed_is_absent(
    resolver: ServerResolver, dns: FakeSrvLookup
) -> None:
    dns.records["_matrix._tcp.example.org"] = [(0, 0, "old.example.org", 2)]
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "old.example.org", 2, "example.org", "example.org"
    )


async def test_without_well_known_or_srv_the_hostname_is_used_on_8448(
    resolver: ServerResolver, dns: FakeSrvLookup
) -> None:
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "example.org", 8448, "example.org", "example.org"
    )
    assert dns.queries == ["_matrix-fed._tcp.example.org", "_matrix._tcp.example.org"]


async def test_an_srv_target_that_is_an_ip_is_connected_to_but_not_used_as_cert_name(
    resolver: ServerResolver, dns: FakeSrvLookup
) -> None:
    dns.records["_matrix-fed._tcp.example.org"] = [(0, 0, "192.0.2.1", 8448)]
    assert await resolver.resolve("example.org") == ResolvedDestination(
        "example.org", "192.0.2.1", 8448, "example.org", "example.org"
    )


async def test_a_failed_dns_lookup_raises_instead_of_guessing_port_8448(
    resolver: ServerResolver, dns: FakeSrvLookup
) -> None:
    dns.failing.add("_matrix-fed._tcp.example.org")
    with pytest.raises(UpstreamError, match="SERVFAIL"):
        await resolver.resolve("example.org")


async def test_a_dot_srv_target_means_the_service_is_not_available(
    resolver: ServerResolver, dns: FakeSrvLookup
) -> None:
    dns.records["_matrix-fed._tcp.example.org"] = [(0, 0, ".", 0)]
    with pytest.raises(UpstreamError, match="not available"):
        await resolver.resolve("example.org")


# --- redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_followed_relative_and_absolute(
    resolver: ServerResolver, site: FakeSite, status: int
) -> None:
    site.redirect(WELL_KNOWN, "https://www.example.org/mx", status)
    site.redirect("https://www.example.org/mx", "/final", status)
    site.json("https://www.example.org/final", {"m.server": "d.example:7"})
    assert (await resolver.resolve("example.org")).port == 7


async def test_five_redirects_are_followed_and_a_sixth_is_not(
    resolver: ServerResolver, site: FakeSite
) -> None:
    for host, hops in (("five.example", 5), ("six.example", 6)):
        urls = [f"https://{host}/.well-known/matrix/server"] + [
            f"https://{host}/hop{i}" for i in range(1, hops + 1)
        ]
        for here, there in itertools.pairwise(urls):
            site.redirect(here, there)
        site.json(urls[-1], {"m.server": "d.example:9"})
    assert (await resolver.well_known("five.example")).m_server == "d.example:9"
    six = await resolver.well_known("six.example")
    assert six.m_server is None
    assert six.problem == "too many redirects"
    assert site.hits["https://six.example/hop6"] == 0


async def test_a_redirect_loop_is_detected_and_falls_through(
    resolver: ServerResolver, site: FakeSite
) -> None:
    site.redirect(WELL_KNOWN, "https://example.org/a")
    site.redirect("https://example.org/a", WELL_KNOWN)
    result = await resolver.well_known("example.org")
    assert result.m_server is None
    assert "redirect loop" in (result.problem or "")
    assert site.hits == Counter({WELL_KNOWN: 1, "https://example.org/a": 1})


async def test_a_redirect_to_plain_http_is_not_followed(
    resolver: ServerResolver, site: FakeSite
) -> None:
    site.redirect(WELL_KNOWN, "http://example.org/insecure")
    site.json("http://example.org/insecure", {"m.server": "evil.example:1"})
    result = await resolver.well_known("example.org")
    assert result.m_server is None
    assert site.hits["http://example.org/insecure"] == 0


# --- caching ------------------------------------------------------------------------


async def test_a_valid_well_known_is_cached_for_24_hours_by_default(
    resolver: ServerResolver, site: FakeSite, clock: FakeClock
) -> None:
    site.json(WELL_KNOWN, {"m.server": "d.example:1"})
    await resolver.resolve("example.org")
    await clock.advance(24 * HOUR_MS - 1)
    await resolver.resolve("example.org")
    assert site.hits[WELL_KNOWN] == 1
    site.json(WELL_KNOWN, {"m.server": "d.example:2"})
    await clock.advance(1)
    assert (await resolver.resolve("example.org")).port == 2
    assert site.hits[WELL_KNOWN] == 2


@pytest.mark.parametrize(
    ("cache_control", "period_ms"),
    [
        ("max-age=3600", HOUR_MS),
        ("public, max-age=7200", 2 * HOUR_MS),
        ("max-age=604800", 48 * HOUR_MS),
        ("max-age=0", 5 * MINUTE_MS),
        ("no-store", 5 * MINUTE_MS),
    ],
)
async def test_cache_control_sets_the_cache_period_within_bounds(
    resolver: ServerResolver, site: FakeSite, clock: FakeClock, cache_control: str, period_ms: int
) -> None:
    site.json(WELL_KNOWN, {"m.server": "d.example:1"}, **{"cache-control": cache_control})
    await resolver.well_known("example.org")
    await clock.advance(period_ms - 1)
    await resolver.well_known("example.org")
    assert site.hits[WELL_KNOWN] == 1
    await clock.advance(1)
    await resolver.well_known("example.org")
    assert site.hits[WELL_KNOWN] == 2


async def test_failures_are_cached_with_exponential_backoff_up_to_an_hour(
    resolver: ServerResolver, site: FakeSite, clock: FakeClock
) -> None:
    site.answer(WELL_KNOWN, 500)
    periods_min = [5, 10, 20, 40, 60, 60]
    await resolver.well_known("example.org")
    for fetches, period_min in enumerate(periods_min, start=1):
        await clock.advance(period_min * MINUTE_MS - 1)
        await resolver.well_known("example.org")
        assert site.hits[WELL_KNOWN] == fetches, f"refetched before {period_min} min"
        await clock.advance(1)
        await resolver.well_known("example.org")
        assert site.hits[WELL_KNOWN] == fetches + 1, f"not refetched after {period_min} min"


async def test_a_success_resets_the_failure_backoff(
    resolver: ServerResolver, site: FakeSite, clock: FakeClock
) -> None:
    site.answer(WELL_KNOWN, 500)
    await resolver.well_known("example.org")
    await clock.advance(5 * MINUTE_MS)
    await resolver.well_known("example.org")  # second failure: kept 10 min
    site.json(WELL_KNOWN, {"m.server": "d.example:1"}, **{"cache-control": "max-age=300"})
    await clock.advance(10 * MINUTE_MS)
    assert (await resolver.well_known("example.org")).m_server == "d.example:1"
    site.answer(WELL_KNOWN, 500)
    await clock.advance(5 * MINUTE_MS)
    await resolver.well_known("example.org")  # first failure again: 5 min
    await clock.advance(5 * MINUTE_MS)
    await resolver.well_known("example.org")
    assert site.hits[WELL_KNOWN] == 5


async def test_the_cache_is_bounded_least_recently_used_first(
    clock: FakeClock, site: FakeSite, dns: FakeSrvLookup
) -> None:
    async with ServerResolver(
        clock, srv_lookup=dns, transport=httpx.MockTransport(site.handle), max_cache_entries=2
    ) as resolver:
        # a, b fetched; a used again; c evicts b (least recently used); b fetched again.
        for name in ("a", "b", "a", "c", "a", "b"):
            await resolver.well_known(f"{name}.example")
    assert site.hits == Counter(
        {
            "https://a.example/.well-known/matrix/server": 1,
            "https://b.example/.well-known/matrix/server": 2,
            "https://c.example/.well-known/matrix/server": 1,
        }
    )


def test_cache_periods_known_answers() -> None:
    assert well_known_cache_period_ms(None) == 24 * HOUR_MS
    assert well_known_cache_period_ms("max-age=nonsense") == 24 * HOUR_MS
    assert well_known_cache_period_ms('max-age="600"') == 10 * MINUTE_MS
    assert well_known_cache_period_ms("MAX-AGE=900") == 15 * MINUTE_MS
    assert [failure_cache_period_ms(n) for n in range(1, 8)] == [
        m * MINUTE_MS for m in (5, 10, 20, 40, 60, 60, 60)
    ]
    assert failure_cache_period_ms(10_000) == HOUR_MS


def test_parse_well_known_keeps_the_m_server_string_as_written() -> None:
    assert parse_well_known(200, b'{"m.server": "Matrix.Example:443"}').m_server == (
        "Matrix.Example:443"
    )


# --- SRV selection (RFC 2782) ---------------------------------------------------------

srv_records = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 5),
        st.sampled_from(["a.example", "b.example", "c.example."]),
        st.integers(1, 65535),
    ),
    min_size=1,
    max_size=8,
)


@given(records=srv_records, seed=st.integers(0, 2**32))
def test_the_chosen_record_always_has_the_lowest_priority(
    records: list[tuple[int, int, str, int]], seed: int
) -> None:
    chosen = pick_srv_record(records, random.Random(seed))
    assert chosen is not None
    assert chosen in [SrvRecord(*r) for r in records]
    assert chosen.priority == min(r[0] for r in records)


def _target(records: list[tuple[int, int, str, int]], rng: random.Random) -> str:
    chosen = pick_srv_record(records, rng)
    assert chosen is not None
    return chosen.target


def test_weights_shape_the_choice_within_a_priority() -> None:
    records = [(10, 1, "light.example", 1), (10, 3, "heavy.example", 2), (20, 100, "z", 3)]
    rng = random.Random(2024)
    picks = Counter(_target(records, rng) for _ in range(4000))
    assert set(picks) == {"light.example", "heavy.example"}
    # Weight 1 of 4: 1000 expected; ±150 is over 5 standard deviations (σ ≈ 27).
    assert 850 <= picks["light.example"] <= 1150


def test_a_zero_weight_record_is_not_chosen_beside_weighted_ones() -> None:
    records = [(0, 0, "zero.example", 2), (0, 10, "weighted.example", 1)]
    for draw in range(10):
        assert _target(records, FixedDraw(draw)) == "weighted.example"


def test_each_draw_lands_on_the_record_whose_weight_covers_it() -> None:
    records = [(0, 2, "a.example", 1), (0, 1, "b.example", 2), (0, 3, "c.example", 3)]
    targets = [_target(records, FixedDraw(draw)) for draw in range(6)]
    assert targets == ["a.example"] * 2 + ["b.example"] + ["c.example"] * 3


def test_all_zero_weights_are_chosen_among_at_random() -> None:
    records = [(0, 0, "a.example", 1), (0, 0, "b.example", 2), (0, 0, "c.example", 3)]
    rng = random.Random(1)
    assert {_target(records, rng) for _ in range(200)} == {"a.example", "b.example", "c.example"}


def test_no_usable_record_picks_nothing() -> None:
    assert pick_srv_record([], random.Random(0)) is None
    assert pick_srv_record([(0, 0, ".", 0)], random.Random(0)) is None
