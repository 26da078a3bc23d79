"""The keyring: remote servers' verify keys, and verifying X-Matrix requests.

What this module owns: which key may verify a request from which origin, and
how keys are found, checked, cached and refetched.

Verifying (``Keyring.verify_request``), cheapest first: the ``destination`` is
us; the key is in memory and valid now (one dict lookup, then one ed25519
verify over the caller's bytes with a cached ``nacl.signing.VerifyKey``; this
is the hot path, ~3,000 requests/s). Otherwise the key is *refreshed*:

1. the store's cache (``KeyCache``; other workers may have fetched already);
2. the origin itself, ``GET /_matrix/key/v2/server``: the answer must name the
   origin as ``server_name`` and be signed by the keys it lists (every listed
   key that signed must verify, and at least one must have signed);
3. if that fails or lacks a key valid now, each trusted notary in turn,
   ``POST /_matrix/key/v2/query``: each item must carry the notary's signature
   by a configured notary key *and* the origin's self-signature.

Rules that hold:

* A key verifies requests only from ``verify_keys`` and only until
  min(``valid_until_ts``, ``fetched_ts`` + 7 days). ``old_verify_keys`` are
  cached (events may need them) but never verify a request.
* Every refusal is ``PeerError(401, "M_UNAUTHORIZED")``, also when no key
  server answers ("could not fetch keys for X"): never a 5xx. The one
  exception is our own capacity: a fetch that ``KeyFetchSlots`` turned away
  or preempted is ``PeerError(429, "M_LIMIT_EXCEEDED")`` with
  ``retry_after_ms``, "try again", not "your keys are bad".
* One refresh per server at a time (singleflight): concurrent requests wait on
  the refresh in flight. The refresh runs in the task of the request that
  started it, shielded from that request's cancellation (a client hanging up
  must not fail the others). No task outlives the call that started it.
* Fetches from the network (the origin, then notaries) run in
  ``key_fetch_slots.KeyFetchSlots``: at most ``fetch_concurrency`` at once,
  each under ``fetch_timeout_ms`` for the origin and every notary together
  (the origin's own server gets half of it when notaries are configured, so
  that a silent origin leaves them time), preempted past
  ``contended_fetch_timeout_ms`` when other origins wait, newest waiter
  first. That module's docstring says why; the upshot is that thousands of
  hanging key servers cannot keep a new origin from being fetched.
* At most one fetch per server per ``refetch_interval_ms`` after a success, so
  a flood of unknown key IDs costs one fetch, not one per request; after a
  failure the next fetch waits ``failure_cache_ms``, doubling per consecutive
  failure up to ``max_failure_cache_ms``.
* The failure cache records only the origin's own failures: its server
  refused, timed out, could not be resolved or reached, or answered something
  that is not a valid self-signed key response. Never our capacity (the fetch
  was turned away, preempted, or the HTTP stack was full:
  ``OutboundBusyError``) and never an unexpected error here (a bug): those
  are answered, and the next request tries again.
* Memory is bounded: at most ``max_servers`` servers (least recently used
  dropped; a server's failure-cache entry is part of its state) and
  ``MAX_KEYS_PER_SERVER`` keys each; responses are read only up to
  ``MAX_KEYS_PER_RESPONSE`` keys and ``MAX_NOTARY_ITEMS`` items; the fetches
  themselves are bounded by ``KeyFetchSlots``.
* A failing store cache never fails a request: it is logged and skipped.
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from unpaddedbase64 import encode_base64

from federation_presence.clock import Clock
from federation_presence.errors import ConfigError, PeerError, StoreError, UpstreamError
from federation_presence.federation.key_fetch_slots import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONTENDED_TIMEOUT_MS,
    DEFAULT_TIMEOUT_MS,
    FetchOutcome,
    KeyFetchSlots,
)
from federation_presence.federation.outbound_http import OutboundBusyError
from federation_presence.federation.xmatrix import (
    ED25519_SIGNATURE_BYTES,
    MAX_SAFE_INTEGER,
    XMatrixAuth,
    canonical_json_bytes,
)
from federation_presence.store.base import ServerKeyRecord

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

KEY_SERVER_PATH = "/_matrix/key/v2/server"
KEY_QUERY_PATH = "/_matrix/key/v2/query"
MAX_KEY_LIFETIME_MS = 7 * 24 * 60 * 60 * 1000
MAX_KEYS_PER_RESPONSE = 32
MAX_KEYS_PER_SERVER = 16
MAX_NOTARY_ITEMS = 16
_ED25519_KEY_BYTES = 32
_ED25519_KEY_ID_RE = re.compile(r"ed25519:[a-zA-Z0-9_]+")

__all__ = [
    "KEY_QUERY_PATH",
    "KEY_SERVER_PATH",
    "MAX_KEY_LIFETIME_MS",
    "KeyCache",
    "KeyFetcher",
    "Keyring",
    "ServerKeyRecord",
    "TrustedKeyServer",
    "verified_notary_keys",
    "verified_server_keys",
]


class KeyFetcher(Protocol):
    """HTTPS to a server name; a JSON object back, ``UpstreamError`` on any failure.

    ``OutboundBusyError`` (an ``UpstreamError``) means the request was not
    sent for lack of capacity here: not held against the server.
    """

    async def get_json(self, destination: str, path: str) -> dict[str, Any]: ...

    async def post_json(
        self, destination: str, path: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...


class KeyCache(Protocol):
    """Persistent key cache (the store); ``StoreError`` on failure."""

    async def get_server_keys(self, server_name: str) -> list[ServerKeyRecord]: ...

    async def put_server_keys(self, records: Sequence[ServerKeyRecord]) -> None: ...


@dataclass(frozen=True, slots=True)
class TrustedKeyServer:
    """A notary and the keys its signatures are checked with."""

    server_name: str
    verify_keys: Mapping[str, VerifyKey]


def _base64_bytes(text: object, length: int) -> bytes | None:
    """``length`` bytes from (un)padded standard or URL-safe base64, else None."""
    if not isinstance(text, str):
        return None
    stripped = text.rstrip("=")
    try:
        raw = base64.b64decode(stripped + "=" * (-len(stripped) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == length else None


def _decode_key(text: object) -> bytes | None:
    """32 ed25519 public-key bytes, or None."""
    return _base64_bytes(text, _ED25519_KEY_BYTES)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SAFE_INTEGER


def _signature_bytes(signature: str) -> bytes | None:
    """64 ed25519 signature bytes, or None."""
    return _base64_bytes(signature, ED25519_SIGNATURE_BYTES)


def _verifies(verify_key: VerifyKey, message: bytes, signature: object) -> bool:
    if not isinstance(signature, str):
        return False
    raw = _signature_bytes(signature)
    if raw is None:
        return False
    try:
        verify_key.verify(message, raw)
    except (CryptoError, ValueError):
        return False
    return True


def _signed_message(obj: dict[str, Any]) -> bytes:
    """Canonical bytes of a signed object: everything but ``signatures``/``unsigned``."""
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    try:
        return canonical_json_bytes(unsigned)
    except ValueError as exc:
        raise UpstreamError(f"key response is not canonical JSON: {exc}") from None


def _checked_signatures(
    obj: dict[str, Any], signer: str, keys: Mapping[str, VerifyKey], message: bytes
) -> None:
    """Every signature of ``signer`` by one of ``keys`` verifies, and there is one."""
    signatures = obj.get("signatures")
    by_signer = signatures.get(signer) if isinstance(signatures, dict) else None
    if not isinstance(by_signer, dict):
        raise UpstreamError(f"key response carries no signature of {signer}")
    checked = 0
    for key_id, signature in by_signer.items():
        verify_key = keys.get(key_id)
        if verify_key is None:
            continue  # a key we were not given, e.g. an old one: neither proof nor disproof
        if not _verifies(verify_key, message, signature):
            raise UpstreamError(f"bad signature of {signer} by {key_id} on a key response")
        checked += 1
    if checked == 0:
        raise UpstreamError(f"key response is not signed by a known key of {signer}")


def verified_server_keys(
    response: object, server_name: str, fetched_ts: int
) -> list[ServerKeyRecord]:
    """The keys of a self-signed Server Keys object of ``server_name``, checked.

    Raises ``UpstreamError`` naming what is wrong. Keys of algorithms other
    than ed25519 are ignored; malformed ``old_verify_keys`` entries are skipped.
    """
    if not isinstance(response, dict):
        raise UpstreamError("key response is not a JSON object")
    if response.get("server_name") != server_name:
        raise UpstreamError(
            f"key response is for {response.get('server_name')!r}, not {server_name}"
        )
    valid_until_ts = response.get("valid_until_ts")
    if not _is_int(valid_until_ts):
        raise UpstreamError("key response has no integer valid_until_ts")
    assert isinstance(valid_until_ts, int)
    verify_keys = response.get("verify_keys")
    if not isinstance(verify_keys, dict):
        raise UpstreamError("key response has no verify_keys object")
    current: dict[str, bytes] = {}
    for key_id, entry in list(verify_keys.items())[:MAX_KEYS_PER_RESPONSE]:
        if not isinstance(key_id, str) or not _ED25519_KEY_ID_RE.fullmatch(key_id):
            continue
        raw = _decode_key(entry.get("key") if isinstance(entry, dict) else None)
        if raw is None:
            raise UpstreamError(f"verify key {key_id} is not a base64 ed25519 key")
        current[key_id] = raw
    message = _signed_message(response)
    _checked_signatures(
        response, server_name, {k: VerifyKey(raw) for k, raw in current.items()}, message
    )
    records = [
        ServerKeyRecord(server_name, key_id, encode_base64(raw), valid_until_ts, None, fetched_ts)
        for key_id, raw in current.items()
    ]
    old_verify_keys = response.get("old_verify_keys")
    if isinstance(old_verify_keys, dict):
        for key_id, entry in list(old_verify_keys.items())[:MAX_KEYS_PER_RESPONSE]:
            if not isinstance(entry, dict) or key_id in current:
                continue
            raw = _decode_key(entry.get("key"))
            expired_ts = entry.get("expired_ts")
            if raw is None or not _is_int(expired_ts) or not _ED25519_KEY_ID_RE.fullmatch(key_id):
                continue
            assert isinstance(expired_ts, int)
            records.append(
                ServerKeyRecord(
                    server_name, key_id, encode_base64(raw), valid_until_ts, expired_ts, fetched_ts
                )
            )
    return records


def verified_notary_keys(
    response: object, server_name: str, notary: TrustedKeyServer, fetched_ts: int
) -> list[ServerKeyRecord]:
    """The keys of ``server_name`` in a notary's ``/query`` answer, checked.

    An item counts only with the notary's signature (by one of its configured
    keys) and the origin's own; bad items are skipped. ``UpstreamError`` when
    no item is left.
    """
    items = response.get("server_keys") if isinstance(response, dict) else None
    if not isinstance(items, list):
        raise UpstreamError(f"notary {notary.server_name} answered without a server_keys list")
    records: list[ServerKeyRecord] = []
    problems: list[str] = []
    for item in items[:MAX_NOTARY_ITEMS]:
        if not isinstance(item, dict) or item.get("server_name") != server_name:
            continue
        try:
            message = _signed_message(item)
            _checked_signatures(item, notary.server_name, notary.verify_keys, message)
            records.extend(verified_server_keys(item, server_name, fetched_ts))
        except UpstreamError as exc:
            problems.append(str(exc))
    if not records:
        why = "; ".join(problems) or f"no keys of {server_name}"
        raise UpstreamError(f"notary {notary.server_name}: {why}")
    return records


def _trusted_key_servers(
    configured: Sequence[tuple[str, Mapping[str, str]]],
) -> list[TrustedKeyServer]:
    notaries: list[TrustedKeyServer] = []
    for server_name, keys in configured:
        decoded: dict[str, VerifyKey] = {}
        for key_id, key in keys.items():
            raw = _decode_key(key)
            if not _ED25519_KEY_ID_RE.fullmatch(key_id) or raw is None:
                raise ConfigError(
                    key="trusted_key_servers",
                    problem=f"{server_name}: {key_id!r} is not an ed25519 key ID with a base64 key",
                )
            decoded[key_id] = VerifyKey(raw)
        if not decoded:
            raise ConfigError(key="trusted_key_servers", problem=f"{server_name}: no verify key")
        notaries.append(TrustedKeyServer(server_name, decoded))
    return notaries


def _unauthorized(problem: str) -> PeerError:
    return PeerError(401, "M_UNAUTHORIZED", problem)


@dataclass(frozen=True, slots=True)
class _UsableKey:
    verify_key: VerifyKey
    valid_until_ts: int  # min(valid_until_ts, fetched_ts + 7 days)


class _Refresh(enum.Enum):
    """What one refresh of a server's keys came to."""

    NOT_FETCHED = "not fetched"  # the store had the key, or a fetch is not due
    FETCHED = "fetched"  # verified keys came back (maybe not the one asked for)
    ORIGIN_FAILED = "origin failed"  # its own failure: recorded in the failure cache
    UNAVAILABLE = "unavailable"  # an error on our side: not recorded
    BUSY = "busy"  # no fetch slot (turned away or preempted): not recorded


@dataclass(slots=True)
class _Flight:
    """A refresh in progress; waiters wait on ``done``, then read ``result``."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: _Refresh = _Refresh.NOT_FETCHED


@dataclass(slots=True)
class _Attempt:
    """What one network fetch found, and whether the origin's own server failed."""

    records: list[ServerKeyRecord] = field(default_factory=list)
    origin_failed: bool = False
    asking_origin: bool = False
    not_sent: bool = False  # a request was not sent: our HTTP stack was full


@dataclass(slots=True)
class _ServerState:
    keys: dict[str, _UsableKey] = field(default_factory=dict)
    store_loaded: bool = False
    next_fetch_at: float = float("-inf")  # Clock.monotonic() seconds
    failures: int = 0
    flight: _Flight | None = None


class Keyring:
    """Remote verify keys: find, check, cache, and verify requests with them."""

    def __init__(
        self,
        *,
        fetcher: KeyFetcher,
        cache: KeyCache,
        clock: Clock,
        own_server_name: str,
        trusted_key_servers: Sequence[tuple[str, Mapping[str, str]]] = (),
        refetch_interval_ms: int = 30_000,
        failure_cache_ms: int = 60_000,
        max_failure_cache_ms: int = 15 * 60_000,
        fetch_timeout_ms: int = DEFAULT_TIMEOUT_MS,
        max_servers: int = 10_000,
        fetch_concurrency: int = DEFAULT_CONCURRENCY,
        contended_fetch_timeout_ms: int = DEFAULT_CONTENDED_TIMEOUT_MS,
    ) -> None:
        self._fetcher = fetcher
        self._cache = cache
        self._clock = clock
        self._own_server_name = own_server_name
        self._notaries = _trusted_key_servers(trusted_key_servers)
        self._refetch_interval_s = refetch_interval_ms / 1000
        self._failure_cache_ms = failure_cache_ms
        self._max_failure_cache_ms = max_failure_cache_ms
        self._fetch_timeout_ms = fetch_timeout_ms
        self._max_servers = max_servers
        self._servers: OrderedDict[str, _ServerState] = OrderedDict()
        self._slots = KeyFetchSlots(
            clock,
            concurrency=fetch_concurrency,
            timeout_ms=fetch_timeout_ms,
            contended_timeout_ms=contended_fetch_timeout_ms,
        )

    @property
    def fetch_slots(self) -> KeyFetchSlots:
        """The key-fetch scheduler (its ``running``/``waiting`` counts)."""
        return self._slots

    async def verify_request(self, auth: XMatrixAuth, signed_bytes: bytes) -> None:
        """Check an X-Matrix signature; ``PeerError(401)`` unless it is good.

        ``signed_bytes`` is ``signed_request_bytes(method, uri, auth.origin,
        <our server name>, content)``: the destination signed is always us.
        """
        if auth.destination is not None and auth.destination != self._own_server_name:
            raise _unauthorized(f"destination {auth.destination!r} is not this server")
        signature = _signature_bytes(auth.signature)
        if signature is None:
            raise _unauthorized("sig is not a base64 ed25519 signature")
        state = self._servers.get(auth.origin)
        key = state.keys.get(auth.key_id) if state is not None else None
        if key is None or self._clock.now_ms() >= key.valid_until_ts:
            key = await self._refreshed_key(auth.origin, auth.key_id)
        else:
            self._servers.move_to_end(auth.origin)
        try:
            key.verify_key.verify(signed_bytes, signature)
        except (CryptoError, ValueError):
            raise _unauthorized(
                f"invalid signature from {auth.origin} with key {auth.key_id}"
            ) from None

    async def _refreshed_key(self, origin: str, key_id: str) -> _UsableKey:
        state = self._state(origin)
        flight = state.flight
        if flight is not None:
            await flight.done.wait()
        elif not state.store_loaded or self._clock.monotonic() >= state.next_fetch_at:
            flight = state.flight = _Flight()
            try:
                with anyio.CancelScope(shield=True):
                    flight.result = await self._refresh(origin, key_id, state)
            finally:
                state.flight = None
                flight.done.set()
        key = state.keys.get(key_id)
        if key is not None and self._clock.now_ms() < key.valid_until_ts:
            return key
        result = flight.result if flight is not None else _Refresh.NOT_FETCHED
        if result is _Refresh.BUSY:
            raise PeerError(
                429,
                "M_LIMIT_EXCEEDED",
                f"too many key fetches in progress: keys of {origin} not fetched yet",
                {"retry_after_ms": self._slots.contended_timeout_ms},
            )
        if state.failures or result is _Refresh.UNAVAILABLE:
            raise _unauthorized(f"could not fetch keys for {origin}")
        if key is not None:
            raise _unauthorized(f"key {key_id} of {origin} has expired")
        raise _unauthorized(f"unknown key {key_id} for {origin}")

    def _state(self, origin: str) -> _ServerState:
        state = self._servers.get(origin)
        if state is None:
            state = self._servers[origin] = _ServerState()
            if len(self._servers) > self._max_servers:
                self._servers.popitem(last=False)
        else:
            self._servers.move_to_end(origin)
        return state

    def _usable(self, state: _ServerState, key_id: str) -> bool:
        key = state.keys.get(key_id)
        return key is not None and self._clock.now_ms() < key.valid_until_ts

    async def _refresh(self, origin: str, key_id: str, state: _ServerState) -> _Refresh:
        """Store first, then (if still needed and allowed) a fetch in a slot."""
        records = await self._bounded(lambda: self._cached_records(origin)) or []
        state.store_loaded = True
        self._merge(state, records)
        if self._usable(state, key_id) or self._clock.monotonic() < state.next_fetch_at:
            return _Refresh.NOT_FETCHED
        attempt = _Attempt()
        outcome = await self._slots.run(lambda: self._fetch(origin, key_id, attempt))
        now_s = self._clock.monotonic()
        if attempt.records:
            state.failures = 0
            state.next_fetch_at = now_s + self._refetch_interval_s
            self._merge(state, attempt.records)
            await self._bounded(lambda: self._store_records(attempt.records))
            return _Refresh.FETCHED
        if outcome is FetchOutcome.TIMED_OUT and attempt.asking_origin:
            logger.info("keys of %s: its server did not answer in time", origin)
            attempt.origin_failed = True
        if attempt.origin_failed:
            state.failures += 1
            backoff_ms = min(
                self._failure_cache_ms * 2 ** min(state.failures - 1, 30),
                self._max_failure_cache_ms,
            )
            state.next_fetch_at = now_s + backoff_ms / 1000
            return _Refresh.ORIGIN_FAILED
        if outcome in (FetchOutcome.PREEMPTED, FetchOutcome.BUSY) or attempt.not_sent:
            logger.info("keys of %s: not fetched, key fetches are busy (%s)", origin, outcome.value)
            return _Refresh.BUSY
        return _Refresh.UNAVAILABLE

    async def _bounded(
        self, work: Callable[[], Awaitable[_T]], limit_ms: int | None = None
    ) -> _T | None:
        """``work()``'s result, or None if it took over ``limit_ms`` of clock time.

        ``limit_ms`` defaults to ``fetch_timeout_ms``.
        """
        result: list[_T] = []

        async def run(scope: anyio.CancelScope) -> None:
            try:
                result.append(await work())
            except Exception:
                # Callers map expected failures themselves; anything else is a bug
                # elsewhere that must still not turn a remote's request into a 5xx.
                logger.exception("keyring: unexpected error")
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, tg.cancel_scope)
            await self._clock.sleep_ms(self._fetch_timeout_ms if limit_ms is None else limit_ms)
            tg.cancel_scope.cancel()
        return result[0] if result else None

    async def _cached_records(self, origin: str) -> list[ServerKeyRecord]:
        try:
            return await self._cache.get_server_keys(origin)
        except StoreError as exc:
            logger.warning("key cache read for %s failed: %s", origin, exc)
            return []

    async def _store_records(self, records: list[ServerKeyRecord]) -> None:
        try:
            await self._cache.put_server_keys(records)
        except StoreError as exc:
            logger.warning("key cache write for %s failed: %s", records[0].server_name, exc)

    async def _fetch(self, origin: str, key_id: str, attempt: _Attempt) -> None:
        """Verified records into ``attempt``: the origin first, then notaries as needed."""
        own_share_ms = self._fetch_timeout_ms // 2 if self._notaries else self._fetch_timeout_ms
        attempt.asking_origin = True
        answered = await self._bounded(lambda: self._ask(origin, None, attempt), own_share_ms)
        attempt.asking_origin = False
        if answered is None:
            logger.info("keys of %s: its server did not answer in %d ms", origin, own_share_ms)
            attempt.origin_failed = True
        for notary in self._notaries:
            if _has_current(attempt.records, key_id, self._clock.now_ms()):
                return
            await self._ask(origin, notary, attempt)

    async def _ask(self, origin: str, notary: TrustedKeyServer | None, attempt: _Attempt) -> bool:
        """Add what ``notary`` (None: the origin itself) has for ``origin`` to ``attempt``.

        Returns once it has an answer or a failure; True, for ``_bounded``.
        """
        source = origin if notary is None else notary.server_name
        try:
            if notary is None:
                records = await self._direct(origin, self._clock.now_ms())
            else:
                records = await self._via_notary(origin, notary, self._clock.now_ms())
        except OutboundBusyError as exc:
            logger.info("keys of %s from %s not asked: %s", origin, source, exc)
            attempt.not_sent = True
        except UpstreamError as exc:
            logger.info("keys of %s from %s: %s", origin, source, exc)
            if notary is None:
                attempt.origin_failed = True
        except Exception:
            # The fetcher's contract is UpstreamError; anything else is its bug:
            # logged, not held against the origin, and the next source is tried.
            logger.exception("keys of %s from %s: unexpected error", origin, source)
        else:
            attempt.records.extend(records)
        return True

    async def _direct(self, origin: str, now: int) -> list[ServerKeyRecord]:
        response = await self._fetcher.get_json(origin, KEY_SERVER_PATH)
        return verified_server_keys(response, origin, now)

    async def _via_notary(
        self, origin: str, notary: TrustedKeyServer, now: int
    ) -> list[ServerKeyRecord]:
        body: dict[str, Any] = {"server_keys": {origin: {}}}
        response = await self._fetcher.post_json(notary.server_name, KEY_QUERY_PATH, body)
        return verified_notary_keys(response, origin, notary, now)

    def _merge(self, state: _ServerState, records: Sequence[ServerKeyRecord]) -> None:
        """Fold records into ``state.keys``: current keys in, retired keys out."""
        for record in records:
            if record.expired_ts is not None:
                state.keys.pop(record.key_id, None)
                continue
            until = _usable_until(record)
            known = state.keys.get(record.key_id)
            if known is not None and known.valid_until_ts >= until:
                continue
            raw = _decode_key(record.key)
            if raw is None or not _ED25519_KEY_ID_RE.fullmatch(record.key_id):
                continue
            state.keys[record.key_id] = _UsableKey(VerifyKey(raw), until)
        if len(state.keys) > MAX_KEYS_PER_SERVER:
            newest = sorted(state.keys.items(), key=lambda item: item[1].valid_until_ts)
            state.keys = dict(newest[-MAX_KEYS_PER_SERVER:])


def _usable_until(record: ServerKeyRecord) -> int:
    return min(record.valid_until_ts, record.fetched_ts + MAX_KEY_LIFETIME_MS)


def _has_current(records: Sequence[ServerKeyRecord], key_id: str, now: int) -> bool:
    """Whether ``records`` hold ``key_id`` as a current key usable at ``now``."""
    return any(
        r.key_id == key_id and r.expired_ts is None and now < _usable_until(r) for r in records
    )
