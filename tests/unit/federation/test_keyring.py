"""The keyring: which keys verify requests, how they are fetched, cached and refetched.

Real ed25519 keys and real signed key responses (built with
``build_server_keys_response``); the network and the store are small fakes
that count calls; time moves only by ``FakeClock``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from federation_presence.errors import ConfigError, PeerError, StoreError, UpstreamError
from federation_presence.federation.keyring import (
    KEY_QUERY_PATH,
    KEY_SERVER_PATH,
    MAX_KEY_LIFETIME_MS,
    Keyring,
    ServerKeyRecord,
    TrustedKeyServer,
    verified_notary_keys,
    verified_server_keys,
)
from federation_presence.federation.outbound_http import OutboundBusyError
from federation_presence.federation.signing_keys import (
    build_server_keys_response,
    generate_signing_key,
    signing_key_id,
    verify_key_base64,
)
from federation_presence.federation.xmatrix import (
    XMatrixAuth,
    authorization_header,
    parse_authorization,
    signed_request_bytes,
)
from tests.fakes import FakeClock

US = "us.example"
ORIGIN = "origin.example"
NOTARY = "notary.example"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeKeyNetwork:
    """A ``KeyFetcher``: canned JSON per server, every call recorded.

    A server with no canned answer, or listed in ``dead``, fails with
    ``UpstreamError``; one in ``hanging`` never answers; one in ``not_sent``
    fails with ``OutboundBusyError`` (our HTTP stack full); while ``gate`` is
    set, every call waits for it.
    """

    def __init__(self) -> None:
        self.servers: dict[str, dict[str, Any]] = {}
        self.notaries: dict[str, dict[str, Any]] = {}
        self.dead: set[str] = set()
        self.hanging: set[str] = set()
        self.not_sent: set[str] = set()
        self.calls: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.gate: anyio.Event | None = None
        self.crash = False

    async def _answer(self, table: dict[str, dict[str, Any]], destination: str) -> dict[str, Any]:
        if self.gate is not None:
            await self.gate.wait()
        if destination in self.hanging:
            await anyio.Event().wait()
        if destination in self.not_sent:
            raise OutboundBusyError("all 1024 connection pools have a request in flight")
        if self.crash:
            raise RuntimeError("a bug in the fetcher")
        if destination in self.dead or destination not in table:
            raise UpstreamError(f"{destination} is unreachable")
        return copy.deepcopy(table[destination])

    async def get_json(self, destination: str, path: str) -> dict[str, Any]:
        self.calls.append(("GET", destination, path, None))
        return await self._answer(self.servers, destination)

    async def post_json(self, destination: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", destination, path, body))
        return await self._answer(self.notaries, destination)


class FakeKeyCache:
    """A ``KeyCache`` in a dict; ``broken`` makes every call a ``StoreError``."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], ServerKeyRecord] = {}
        self.reads = 0
        self.broken = False

    async def get_server_keys(self, server_name: str) -> list[ServerKeyRecord]:
        self.reads += 1
        if self.broken:
            raise StoreError("database is down")
        return [r for (s, _), r in self.records.items() if s == server_name]

    async def put_server_keys(self, records: Sequence[ServerKeyRecord]) -> None:
        if self.broken:
            raise StoreError("database is down")
        for record in records:
            self.records[(record.server_name, record.key_id)] = record


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def network() -> FakeKeyNetwork:
    return FakeKeyNetwork()


@pytest.fixture
def cache() -> FakeKeyCache:
    return FakeKeyCache()


@pytest.fixture
def origin_key() -> SigningKey:
    return generate_signing_key("k1")


@pytest.fixture
def notary_key() -> SigningKey:
    return generate_signing_key("n1")


@pytest.fixture
def keyring(
    network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock, notary_key: SigningKey
) -> Keyring:
    return Keyring(
        fetcher=network,
        cache=cache,
        clock=clock,
        own_server_name=US,
        trusted_key_servers=[(NOTARY, {signing_key_id(notary_key): verify_key_base64(notary_key)})],
    )


def key_response(
    key: SigningKey,
    now: int,
    valid_for_ms: int = DAY_MS,
    server_name: str = ORIGIN,
    old: SigningKey | None = None,
) -> dict[str, Any]:
    old_keys = {} if old is None else {signing_key_id(old): (verify_key_base64(old), now - 1)}
    return build_server_keys_response(server_name, key, now, valid_for_ms, old_keys)


def notarised(response: dict[str, Any], notary_key: SigningKey) -> dict[str, Any]:
    return {"server_keys": [sign_json(copy.deepcopy(response), NOTARY, notary_key)]}


def signed_request(
    key: SigningKey, destination: str = US, content: dict[str, Any] | None = None
) -> tuple[XMatrixAuth, bytes]:
    """(credentials, bytes to verify) as the inbound shell derives them."""
    body = {"edus": []} if content is None else content
    header = authorization_header(
        key, "PUT", "/_matrix/federation/v1/send/1", ORIGIN, destination, body
    )
    auth = parse_authorization([header])
    return auth, signed_request_bytes("PUT", "/_matrix/federation/v1/send/1", ORIGIN, US, body)


async def refused(keyring: Keyring, auth: XMatrixAuth, signed: bytes) -> str:
    with pytest.raises(PeerError) as caught:
        await keyring.verify_request(auth, signed)
    assert (caught.value.status, caught.value.errcode) == (401, "M_UNAUTHORIZED")
    return caught.value.message


def fetches(network: FakeKeyNetwork) -> list[tuple[str, str]]:
    return [(destination, path) for _, destination, path, _ in network.calls]


async def test_a_good_signature_verifies_after_one_fetch_and_then_from_memory(
    keyring: Keyring, network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock,
    origin_key: SigningKey,
) -> None:  # fmt: skip
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    for _ in range(5):
        await keyring.verify_request(*signed_request(origin_key))
    assert fetches(network) == [(ORIGIN, KEY_SERVER_PATH)]
    assert cache.reads == 1
    (stored,) = cache.records.values()
    assert (stored.key_id, stored.key, stored.expired_ts) == (
        "ed25519:k1",
        verify_key_base64(origin_key),
        None,
    )
    assert stored.fetched_ts == clock.now_ms()


async def test_a_signature_by_another_key_with_the_same_id_is_refused(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    impostor = generate_signing_key("k1")
    assert "invalid signature" in await refused(keyring, *signed_request(impostor))


async def test_a_signature_over_other_bytes_is_refused(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    auth, signed = signed_request(origin_key)
    tampered = signed.replace(b'"edus":[]', b'"edus":[{}]')
    assert "invalid signature" in await refused(keyring, auth, tampered)


async def test_an_unknown_key_id_is_refused(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    message = await refused(keyring, *signed_request(generate_signing_key("other")))
    assert message == f"unknown key ed25519:other for {ORIGIN}"


async def test_a_key_is_refused_once_its_valid_until_ts_has_passed(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms(), valid_for_ms=HOUR_MS)
    await keyring.verify_request(*signed_request(origin_key))
    await clock.advance(HOUR_MS)
    assert "has expired" in await refused(keyring, *signed_request(origin_key))
    assert fetches(network).count((ORIGIN, KEY_SERVER_PATH)) == 2  # it tried to refresh


async def test_a_key_is_valid_at_most_seven_days_after_it_was_fetched(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms(), valid_for_ms=30 * DAY_MS)
    await keyring.verify_request(*signed_request(origin_key))
    await clock.advance(MAX_KEY_LIFETIME_MS - 1)
    await keyring.verify_request(*signed_request(origin_key))
    network.dead.add(ORIGIN)
    await clock.advance(1)
    assert "could not fetch keys" in await refused(keyring, *signed_request(origin_key))


async def test_old_verify_keys_never_verify_requests(
    keyring: Keyring, network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock,
    origin_key: SigningKey,
) -> None:  # fmt: skip
    retired = generate_signing_key("k0")
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms(), old=retired)
    assert "unknown key ed25519:k0" in await refused(keyring, *signed_request(retired))
    old = cache.records[(ORIGIN, "ed25519:k0")]
    assert old.expired_ts == clock.now_ms() - 1  # kept for events, not for requests


async def test_a_key_moved_to_old_verify_keys_stops_verifying(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms(), valid_for_ms=HOUR_MS)
    await keyring.verify_request(*signed_request(origin_key))
    await clock.advance(HOUR_MS)
    network.servers[ORIGIN] = key_response(
        generate_signing_key("k2"), clock.now_ms(), old=origin_key
    )
    message = await refused(keyring, *signed_request(origin_key))
    assert message == f"unknown key ed25519:k1 for {ORIGIN}"


async def test_a_request_for_another_destination_is_refused_without_a_fetch(
    keyring: Keyring, network: FakeKeyNetwork, origin_key: SigningKey
) -> None:
    auth, signed = signed_request(origin_key, destination="elsewhere.example")
    assert "is not this server" in await refused(keyring, auth, signed)
    assert network.calls == []


async def test_a_request_without_destination_is_accepted(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    auth, signed = signed_request(origin_key)
    without = XMatrixAuth(auth.origin, None, auth.key_id, auth.signature)
    await keyring.verify_request(without, signed)


async def test_a_key_response_naming_another_server_is_refused(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    response = key_response(origin_key, clock.now_ms(), server_name="evil.example")
    response = sign_json(response, ORIGIN, origin_key)  # even signed in the origin's name
    with pytest.raises(UpstreamError, match=r"is for 'evil\.example', not origin\.example"):
        verified_server_keys(response, ORIGIN, clock.now_ms())
    network.servers[ORIGIN] = response
    assert "could not fetch keys for origin.example" in await refused(
        keyring, *signed_request(origin_key)
    )


async def test_a_key_response_with_a_forged_self_signature_is_refused(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    response = key_response(origin_key, clock.now_ms())
    response["valid_until_ts"] += 1  # the signature no longer covers what is served
    network.servers[ORIGIN] = response
    assert "could not fetch keys" in await refused(keyring, *signed_request(origin_key))


async def test_the_notary_is_asked_when_the_origin_is_unreachable(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey,
    notary_key: SigningKey,
) -> None:  # fmt: skip
    network.notaries[NOTARY] = notarised(key_response(origin_key, clock.now_ms()), notary_key)
    await keyring.verify_request(*signed_request(origin_key))
    assert network.calls == [
        ("GET", ORIGIN, KEY_SERVER_PATH, None),
        ("POST", NOTARY, KEY_QUERY_PATH, {"server_keys": {ORIGIN: {}}}),
    ]


async def test_a_notary_answer_not_signed_by_the_configured_notary_key_is_refused(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    forger = generate_signing_key("n1")  # the right key ID, the wrong key
    network.notaries[NOTARY] = notarised(key_response(origin_key, clock.now_ms()), forger)
    assert "could not fetch keys" in await refused(keyring, *signed_request(origin_key))


async def test_a_notary_answer_with_a_forged_origin_signature_is_refused(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, notary_key: SigningKey
) -> None:
    attacker = generate_signing_key("k1")
    forged = key_response(attacker, clock.now_ms())
    forged["signatures"][ORIGIN]["ed25519:k1"] = key_response(
        generate_signing_key("k1"), clock.now_ms()
    )["signatures"][ORIGIN]["ed25519:k1"]
    network.notaries[NOTARY] = notarised(forged, notary_key)
    assert "could not fetch keys" in await refused(keyring, *signed_request(attacker))


async def test_concurrent_requests_share_one_fetch(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    network.gate = anyio.Event()
    verified: list[int] = []

    async def verify(n: int) -> None:
        await keyring.verify_request(*signed_request(origin_key))
        verified.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(verify, n)
        await wait_all_tasks_blocked()
        calls_while_waiting = len(network.calls)
        network.gate.set()  # before asserting: the shielded fetch would never end otherwise
    assert calls_while_waiting == 1
    assert sorted(verified) == list(range(10))
    assert len(network.calls) == 1


async def test_the_fetch_survives_the_cancellation_of_the_request_that_started_it(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    network.gate = anyio.Event()
    leader_scope = anyio.CancelScope()
    outcomes: list[str] = []

    async def leader() -> None:
        with leader_scope:
            await keyring.verify_request(*signed_request(origin_key))
            outcomes.append("leader verified")

    async def follower() -> None:
        await keyring.verify_request(*signed_request(origin_key))
        outcomes.append("follower verified")

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await wait_all_tasks_blocked()
        tg.start_soon(follower)
        await wait_all_tasks_blocked()
        leader_scope.cancel()
        await wait_all_tasks_blocked()
        outcomes_while_waiting = list(outcomes)
        network.gate.set()
    assert outcomes_while_waiting == []  # the shielded fetch was still waiting on the network
    assert "follower verified" in outcomes
    assert len(network.calls) == 1


async def test_a_dead_server_is_fetched_once_per_failure_window_with_backoff(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    async def attempts(n: int) -> int:
        before = len(network.calls)
        for _ in range(n):
            assert "could not fetch keys" in await refused(keyring, *signed_request(origin_key))
        return len(network.calls) - before

    assert await attempts(20) == 2  # the origin, then the notary
    await clock.advance(59_999)
    assert await attempts(5) == 0
    await clock.advance(1)
    assert await attempts(5) == 2
    await clock.advance(60_000)  # the second failure doubled the window
    assert await attempts(5) == 0
    await clock.advance(60_000)
    assert await attempts(5) == 2


async def test_a_flood_of_unknown_key_ids_costs_one_fetch_per_refetch_interval(
    keyring: Keyring, network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock,
    origin_key: SigningKey,
) -> None:  # fmt: skip
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    for n in range(50):
        message = await refused(keyring, *signed_request(generate_signing_key(f"bad{n}")))
        assert message.startswith("unknown key")
    # One fetch for the first, the notary as fallback for it: the rest are rate limited,
    # and do not even read the store.
    assert fetches(network) == [(ORIGIN, KEY_SERVER_PATH), (NOTARY, KEY_QUERY_PATH)]
    assert cache.reads == 1
    await clock.advance(30_000)
    await refused(keyring, *signed_request(generate_signing_key("bad_again")))
    assert len(network.calls) == 4
    await keyring.verify_request(*signed_request(origin_key))  # the good key still verifies
    assert len(network.calls) == 4


async def test_a_stale_key_is_refetched_and_verifies_again(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms(), valid_for_ms=HOUR_MS)
    await keyring.verify_request(*signed_request(origin_key))
    await clock.advance(HOUR_MS)
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms(), valid_for_ms=HOUR_MS)
    await keyring.verify_request(*signed_request(origin_key))
    assert fetches(network) == [(ORIGIN, KEY_SERVER_PATH)] * 2


async def test_keys_in_the_store_cache_are_used_without_a_fetch(
    keyring: Keyring, network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock,
    origin_key: SigningKey,
) -> None:  # fmt: skip
    cache.records[(ORIGIN, "ed25519:k1")] = ServerKeyRecord(
        ORIGIN, "ed25519:k1", verify_key_base64(origin_key), clock.now_ms() + DAY_MS, None,
        clock.now_ms() - HOUR_MS,
    )  # fmt: skip
    await keyring.verify_request(*signed_request(origin_key))
    assert network.calls == []


async def test_a_failing_store_cache_does_not_fail_verification(
    keyring: Keyring, network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock,
    origin_key: SigningKey,
) -> None:  # fmt: skip
    cache.broken = True
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    await keyring.verify_request(*signed_request(origin_key))
    assert len(network.calls) == 1


async def test_a_key_server_that_never_answers_is_given_up_after_the_fetch_timeout(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.gate = anyio.Event()  # never set
    messages: list[str] = []

    async def verify() -> None:
        messages.append(await refused(keyring, *signed_request(origin_key)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(verify)
        await wait_all_tasks_blocked()
        assert messages == []
        await clock.advance(30_000)
    assert messages == [f"could not fetch keys for {ORIGIN}"]


async def test_an_unexpected_fetcher_error_is_a_401_not_a_crash(
    keyring: Keyring, network: FakeKeyNetwork, origin_key: SigningKey
) -> None:
    network.crash = True
    assert "could not fetch keys" in await refused(keyring, *signed_request(origin_key))


async def test_a_server_forgotten_by_the_memory_bound_is_reloaded_from_the_store(
    network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock
) -> None:
    keyring = Keyring(fetcher=network, cache=cache, clock=clock, own_server_name=US, max_servers=1)
    key = generate_signing_key("k1")
    network.servers[ORIGIN] = key_response(key, clock.now_ms())
    await keyring.verify_request(*signed_request(key))
    other = XMatrixAuth("other.example", None, "ed25519:x", "A" * 86)  # type: ignore[arg-type]
    await refused(keyring, other, b"")
    reads = cache.reads
    await keyring.verify_request(*signed_request(key))
    assert cache.reads == reads + 1
    assert fetches(network).count((ORIGIN, KEY_SERVER_PATH)) == 1


def test_a_trusted_key_server_with_a_bad_key_is_a_config_error(
    network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock
) -> None:
    with pytest.raises(ConfigError) as caught:
        Keyring(
            fetcher=network,
            cache=cache,
            clock=clock,
            own_server_name=US,
            trusted_key_servers=[(NOTARY, {"ed25519:n1": "not base64!"})],
        )
    assert caught.value.key == "trusted_key_servers"


BROKEN_RESPONSES = [
    pytest.param(lambda r: [], "not a JSON object", id="not-object"),
    pytest.param(lambda r: {**r, "valid_until_ts": 1.5}, "valid_until_ts", id="float-valid-until"),
    pytest.param(lambda r: {**r, "valid_until_ts": True}, "valid_until_ts", id="bool-valid-until"),
    pytest.param(lambda r: {**r, "verify_keys": []}, "verify_keys", id="verify-keys-list"),
    pytest.param(
        lambda r: {**r, "verify_keys": {"ed25519:k1": {"key": "short"}}}, "not a base64", id="key"
    ),
    pytest.param(lambda r: {**r, "extra": 0.5}, "not canonical", id="float-anywhere"),
    pytest.param(lambda r: {**r, "signatures": {}}, "no signature", id="unsigned"),
    pytest.param(
        lambda r: {**r, "signatures": {ORIGIN: {"ed25519:zz": "x"}}},
        "not signed by a known",
        id="u",
    ),
    pytest.param(
        lambda r: {**r, "verify_keys": {"curve25519:k1": r["verify_keys"]["ed25519:k1"]}},
        "not signed by a known",
        id="only-other-algorithms",
    ),
]


@pytest.mark.parametrize(("breaks", "problem"), BROKEN_RESPONSES)
def test_broken_key_responses_are_upstream_errors(
    origin_key: SigningKey, breaks: Any, problem: str
) -> None:
    response = breaks(key_response(origin_key, 1_700_000_000_000))
    with pytest.raises(UpstreamError, match=problem):
        verified_server_keys(response, ORIGIN, 1_700_000_000_000)


def test_unsupported_key_algorithms_are_ignored_not_fatal(origin_key: SigningKey) -> None:
    response = key_response(origin_key, 1_700_000_000_000)
    del response["signatures"]
    response["verify_keys"]["curve25519:x"] = {"key": "whatever"}
    response = sign_json(response, ORIGIN, origin_key)
    (record,) = verified_server_keys(response, ORIGIN, 1_700_000_000_000)
    assert record.key_id == "ed25519:k1"


def test_notary_items_for_other_servers_are_skipped(
    origin_key: SigningKey, notary_key: SigningKey
) -> None:
    notary = TrustedKeyServer(NOTARY, {"ed25519:n1": notary_key.verify_key})
    answer = notarised(
        key_response(generate_signing_key("z"), 5, server_name="x.example"), notary_key
    )
    answer["server_keys"] += notarised(key_response(origin_key, 5), notary_key)["server_keys"]
    (record,) = verified_notary_keys(answer, ORIGIN, notary, 7)
    assert (record.key_id, record.fetched_ts) == ("ed25519:k1", 7)
    with pytest.raises(UpstreamError, match=r"no keys of y\.example"):
        verified_notary_keys(answer, "y.example", notary, 7)


# --- bounded, fair fetching; the failure cache holds only the origin's own failures ----


OTHER = "other.example"


def request_from(origin: str, key: SigningKey) -> tuple[XMatrixAuth, bytes]:
    body: dict[str, Any] = {"edus": []}
    path = "/_matrix/federation/v1/send/1"
    header = authorization_header(key, "PUT", path, origin, US, body)
    return parse_authorization([header]), signed_request_bytes("PUT", path, origin, US, body)


async def test_an_unexpected_fetcher_error_is_not_held_against_the_origin(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.crash = True
    assert "could not fetch keys" in await refused(keyring, *signed_request(origin_key))
    network.crash = False
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    await keyring.verify_request(*signed_request(origin_key))  # asked again at once


async def test_a_full_http_stack_is_a_429_and_not_held_against_the_origin(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.not_sent = {ORIGIN, NOTARY}
    with pytest.raises(PeerError) as caught:
        await keyring.verify_request(*signed_request(origin_key))
    assert (caught.value.status, caught.value.errcode) == (429, "M_LIMIT_EXCEEDED")
    assert caught.value.extra == {"retry_after_ms": 2_000}
    network.not_sent = set()
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    await keyring.verify_request(*signed_request(origin_key))


async def test_an_origin_whose_server_never_answers_is_held_in_the_failure_cache(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey
) -> None:
    network.hanging = {ORIGIN, NOTARY}
    messages: list[str] = []
    async with anyio.create_task_group() as tg:

        async def verify() -> None:
            messages.append(await refused(keyring, *signed_request(origin_key)))

        tg.start_soon(verify)
        await wait_all_tasks_blocked()
        await clock.advance(10_000)  # the whole fetch, notary included, ends by its deadline
    assert messages == [f"could not fetch keys for {ORIGIN}"]
    calls = len(network.calls)
    network.hanging = set()
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    assert "could not fetch keys" in await refused(keyring, *signed_request(origin_key))
    assert len(network.calls) == calls  # its own failure: not asked again for 60 s
    await clock.advance(60_000)
    await keyring.verify_request(*signed_request(origin_key))


async def test_the_notary_gets_the_second_half_of_the_deadline_when_the_origin_is_silent(
    keyring: Keyring, network: FakeKeyNetwork, clock: FakeClock, origin_key: SigningKey,
    notary_key: SigningKey,
) -> None:  # fmt: skip
    network.hanging = {ORIGIN}
    network.notaries[NOTARY] = notarised(key_response(origin_key, clock.now_ms()), notary_key)
    verified: list[bool] = []
    async with anyio.create_task_group() as tg:

        async def verify() -> None:
            await keyring.verify_request(*signed_request(origin_key))
            verified.append(True)

        tg.start_soon(verify)
        await wait_all_tasks_blocked()
        await clock.advance(4_999)
        assert fetches(network) == [(ORIGIN, KEY_SERVER_PATH)]
        await clock.advance(1)
    assert verified == [True]
    assert fetches(network) == [(ORIGIN, KEY_SERVER_PATH), (NOTARY, KEY_QUERY_PATH)]


async def test_a_hung_fetch_is_preempted_for_another_origin_and_is_not_cached(
    network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock, origin_key: SigningKey
) -> None:
    keyring = Keyring(
        fetcher=network, cache=cache, clock=clock, own_server_name=US, fetch_concurrency=1
    )
    other_key = generate_signing_key("o1")
    network.hanging = {ORIGIN}
    network.servers[OTHER] = key_response(other_key, clock.now_ms(), server_name=OTHER)
    outcomes: dict[str, int] = {}

    async def verify(origin: str, key: SigningKey) -> None:
        try:
            await keyring.verify_request(*request_from(origin, key))
            outcomes[origin] = 200
        except PeerError as error:
            outcomes[origin] = error.status

    async with anyio.create_task_group() as tg:
        tg.start_soon(verify, ORIGIN, origin_key)
        await wait_all_tasks_blocked()
        await clock.advance(1_000)
        tg.start_soon(verify, OTHER, other_key)
        await wait_all_tasks_blocked()
        assert outcomes == {}  # the hung fetch still has its first 2 s
        await clock.advance(1_000)
    assert outcomes == {ORIGIN: 429, OTHER: 200}
    # Preempted is our capacity, not the origin's failure: it is asked again at once.
    network.hanging = set()
    network.servers[ORIGIN] = key_response(origin_key, clock.now_ms())
    await keyring.verify_request(*signed_request(origin_key))


async def test_a_waiter_that_never_gets_a_slot_is_turned_away_as_busy_not_cached(
    network: FakeKeyNetwork, cache: FakeKeyCache, clock: FakeClock
) -> None:
    keyring = Keyring(
        fetcher=network,
        cache=cache,
        clock=clock,
        own_server_name=US,
        fetch_concurrency=1,
        contended_fetch_timeout_ms=10_000,  # no preemption: only deadlines free the slot
    )
    names = ("hung.example", "old.example", "hung-new.example")
    keys = {name: generate_signing_key("k") for name in names}
    network.hanging = {"hung.example", "hung-new.example"}
    network.servers["old.example"] = key_response(
        keys["old.example"], clock.now_ms(), server_name="old.example"
    )
    statuses: dict[str, int] = {}

    async def verify(origin: str) -> None:
        try:
            await keyring.verify_request(*request_from(origin, keys[origin]))
            statuses[origin] = 200
        except PeerError as error:
            statuses[origin] = error.status

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(verify, name)
            await wait_all_tasks_blocked()
            await clock.advance(1)
        assert keyring.fetch_slots.waiting == 2
        await clock.advance(20_000)
    # The hung origins timed out (their own fault); the slot the first freed went to
    # the newest waiter; the older one waited 10 s and was turned away: ours, a 429.
    assert statuses == {"hung.example": 401, "old.example": 429, "hung-new.example": 401}
    await keyring.verify_request(*request_from("old.example", keys["old.example"]))
