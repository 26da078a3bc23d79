"""Server-name resolution: where to connect for a Matrix server name.

The spec's "Server discovery → Resolving server names" algorithm, in its
order: IP literal; hostname with an explicit port; ``GET
https://<hostname>/.well-known/matrix/server`` and its delegated-host
sub-steps; SRV ``_matrix-fed._tcp``, then the deprecated ``_matrix._tcp``;
finally ``<hostname>:8448``. The answer is a ``ResolvedDestination``: the
address and port to connect to, the ``Host`` header and the TLS certificate
name (also sent as SNI; ``None`` for IP literals, whose certificate is checked
against the IP).

What this module owns:

* The decisions, pure and synchronous: ``immediate_destination`` (steps 1-2),
  ``delegated_destination`` (3.1-3.2), ``srv_destination`` (SRV records →
  destination, RFC 2782 priority then weighted-random pick with an injected
  ``random.Random``), ``fallback_destination``, ``parse_well_known`` and the
  cache periods (``well_known_cache_period_ms``, ``failure_cache_period_ms``).
  Given a name that is not a server name they raise ``UpstreamError``.
* The shell: ``ServerResolver`` (the ``.well-known`` fetch through the
  worker's one outbound HTTP stack, ``outbound_http.OutboundHttp``, its
  cache, the SRV lookups) and ``DnsSrvLookup`` (dnspython's ``dns.asyncresolver`` behind the
  ``SrvLookup`` protocol; A/AAAA/CNAME resolution of the chosen host is left to
  the connect, i.e. the OS resolver, in ``address_guard.AddressGuard``).

Invariants:

* ``ResolvedDestination.server_name`` is the name asked for: delegation never
  changes the names that X-Matrix signs.
* ``tls_server_name is None`` exactly when ``host`` is an IP literal.
* ``.well-known``: redirects are followed manually (https only, no URL twice,
  at most ``WELL_KNOWN_MAX_REDIRECTS``), the body is cut at a size limit, the
  whole fetch runs under one timeout, and the JSON is parsed whatever the
  ``Content-Type``. Anything invalid falls through to SRV, never raises.
* Cache: a valid answer is kept for its ``Cache-Control: max-age`` clamped to
  [5 min, 48 h] (24 h without one; the floor, as in Synapse, stops a peer with
  ``no-store`` from making us fetch on every request). A failure is kept for
  5 min, doubling on each consecutive failure up to 1 h. Entries are bounded
  (least recently used evicted first). Time comes only from the ``Clock``.
* The ``.well-known`` fetch connects through ``AddressGuard``: only to
  addresses ``ip_policy`` allows (default: Synapse's blocklist); a refused
  address is a failed fetch like any other. A fetch the stack had no room
  for (``OutboundBusyError``, our capacity) is raised, never cached.
* A DNS failure other than "no such record" raises ``UpstreamError`` (the
  caller backs off and retries) rather than silently skipping to port 8448.
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol, Self

import anyio
import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import httpx
import orjson

from federation_presence.clock import Clock
from federation_presence.errors import UpstreamError
from federation_presence.federation.ip_policy import IpPolicy
from federation_presence.federation.outbound_http import (
    BodyTooLarge,
    OutboundBusyError,
    OutboundHttp,
    PoolsExhausted,
    read_bounded,
)
from federation_presence.ids import ServerName, parse_server_name, split_server_name

DEFAULT_FEDERATION_PORT = 8448
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_DEFAULT_CACHE_MS = 24 * HOUR_MS
WELL_KNOWN_MIN_CACHE_MS = 5 * MINUTE_MS
WELL_KNOWN_MAX_CACHE_MS = 48 * HOUR_MS
WELL_KNOWN_FIRST_FAILURE_CACHE_MS = 5 * MINUTE_MS
WELL_KNOWN_MAX_FAILURE_CACHE_MS = HOUR_MS
WELL_KNOWN_MAX_REDIRECTS = 5
WELL_KNOWN_MAX_BYTES = 50 * 1024
WELL_KNOWN_TIMEOUT_MS = 10_000
WELL_KNOWN_MAX_CACHE_ENTRIES = 10_000
DNS_TIMEOUT_MS = 5_000
SRV_SERVICES = ("_matrix-fed._tcp", "_matrix._tcp")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class ResolvedDestination:
    """Where and how to reach ``server_name``."""

    server_name: str
    host: str  # IP (IPv6 without brackets) or DNS name to connect to
    port: int
    host_header: str
    tls_server_name: str | None  # certificate name and SNI; None for an IP literal


class SrvRecord(NamedTuple):
    """One SRV answer: ``(priority, weight, target, port)``."""

    priority: int
    weight: int
    target: str
    port: int


class SrvLookup(Protocol):
    async def srv(self, name: str) -> Sequence[tuple[int, int, str, int]]:
        """SRV records of ``name``; empty when there are none.

        Raises ``UpstreamError`` when the lookup itself failed.
        """
        ...


class DestinationResolver(Protocol):
    """What the federation client needs: ``ServerResolver`` or a test stand-in."""

    async def resolve(self, server_name: str) -> ResolvedDestination: ...


@dataclass(frozen=True, slots=True)
class WellKnownResult:
    """The outcome of one ``.well-known`` fetch: ``m_server`` or why not."""

    m_server: ServerName | None
    problem: str | None = None


# --- the pure decisions --------------------------------------------------------


def _ip_literal(host: str) -> str | None:
    """The IP of ``host`` (brackets stripped) if it is an IP literal, else None."""
    try:
        return str(ipaddress.ip_address(host.removeprefix("[").removesuffix("]")))
    except ValueError:
        return None


def _host_and_port(name: str) -> tuple[str, int | None] | None:
    """(hostname, port or None) of a valid server name, else None."""
    parsed = parse_server_name(name)
    if parsed is None:
        return None
    host, port = split_server_name(parsed)
    if host.startswith("[") and _ip_literal(host) is None:
        return None
    return host, port


def _split(name: str) -> tuple[str, int | None]:
    split = _host_and_port(name)
    if split is None:
        raise UpstreamError(f"{name[:300]!r} is not a valid server name")
    return split


def immediate_destination(server_name: str) -> ResolvedDestination | None:
    """Steps 1-2: an IP literal, or a hostname with an explicit port."""
    host, port = _split(server_name)
    ip = _ip_literal(host)
    if ip is not None:
        return ResolvedDestination(
            server_name, ip, port or DEFAULT_FEDERATION_PORT, server_name, None
        )
    if port is not None:
        return ResolvedDestination(server_name, host, port, server_name, host)
    return None


def delegated_destination(server_name: str, m_server: str) -> ResolvedDestination | None:
    """Steps 3.1-3.2: ``m.server`` is an IP literal or has an explicit port.

    ``Host`` is then ``m.server`` as written; the certificate is for the
    delegated IP or hostname. None when SRV must decide (3.3-3.5).
    """
    host, port = _split(m_server)
    ip = _ip_literal(host)
    if ip is not None:
        return ResolvedDestination(server_name, ip, port or DEFAULT_FEDERATION_PORT, m_server, None)
    if port is not None:
        return ResolvedDestination(server_name, host, port, m_server, host)
    return None


def srv_unavailable(records: Sequence[tuple[int, int, str, int]]) -> bool:
    """RFC 2782: a sole record with target "." means "decidedly not available"."""
    return len(records) == 1 and records[0][2].rstrip(".") == ""


def pick_srv_record(
    records: Sequence[tuple[int, int, str, int]], rng: random.Random
) -> SrvRecord | None:
    """RFC 2782 selection: the lowest priority, then weighted random.

    Within the priority group a record wins with probability weight/total.
    RFC 2782 draws from [0, total] inclusive, which skews the odds (1:3 comes
    out 2:3) to give weight-0 records "a very small chance"; we draw from
    [0, total) as Go's resolver does, so weights are exact and weight-0
    records are chosen only when the whole group weighs 0 (then uniformly).
    """
    usable = [SrvRecord(*r) for r in records if r[2].rstrip(".")]
    if not usable:
        return None
    best = min(r.priority for r in usable)
    group = [r for r in usable if r.priority == best]
    total = sum(r.weight for r in group)
    if total == 0:
        return rng.choice(group)
    draw = rng.randrange(total)
    running = 0
    for record in group:
        running += record.weight
        if running > draw:
            return record
    raise AssertionError("unreachable: the running sum ends at total > draw")


def srv_destination(
    server_name: str, name: str, records: Sequence[tuple[int, int, str, int]], rng: random.Random
) -> ResolvedDestination | None:
    """Steps 3.3-3.4 and 4-5: connect to the SRV target; Host and cert are ``name``."""
    record = pick_srv_record(records, rng)
    if record is None:
        return None
    target = record.target.rstrip(".")
    ip = _ip_literal(target)
    return ResolvedDestination(server_name, ip or target, record.port, name, name)


def fallback_destination(server_name: str, name: str) -> ResolvedDestination:
    """Steps 3.5 and 6: ``name`` on port 8448; Host and cert are ``name``."""
    return ResolvedDestination(server_name, name, DEFAULT_FEDERATION_PORT, name, name)


def parse_well_known(status: int, body: bytes) -> WellKnownResult:
    """Judge a ``.well-known/matrix/server`` answer, whatever its Content-Type."""
    if status != 200:
        return WellKnownResult(None, f"answered HTTP {status}")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return WellKnownResult(None, "body is not JSON")
    if not isinstance(document, dict):
        return WellKnownResult(None, "body is not a JSON object")
    m_server = document.get("m.server")
    if not isinstance(m_server, str):
        return WellKnownResult(None, "no m.server string")
    if _host_and_port(m_server) is None:
        return WellKnownResult(None, f"m.server {m_server[:100]!r} is not a server name")
    return WellKnownResult(ServerName(m_server))


def well_known_cache_period_ms(cache_control: str | None) -> int:
    """How long to keep a valid answer, from its ``Cache-Control`` header."""
    period_ms: int | None = None
    for directive in (cache_control or "").split(","):
        name, _, value = directive.strip().lower().partition("=")
        if name == "no-store":
            period_ms = 0
            break
        if name == "max-age":
            try:
                period_ms = int(value.strip().strip('"')) * 1000
            except ValueError:
                continue
    if period_ms is None:
        return WELL_KNOWN_DEFAULT_CACHE_MS
    return min(max(period_ms, WELL_KNOWN_MIN_CACHE_MS), WELL_KNOWN_MAX_CACHE_MS)


def failure_cache_period_ms(consecutive_failures: int) -> int:
    """How long to keep the n-th consecutive failure: 5 min doubling, ≤ 1 h."""
    doublings = min(max(consecutive_failures, 1) - 1, 16)
    return min(WELL_KNOWN_FIRST_FAILURE_CACHE_MS << doublings, WELL_KNOWN_MAX_FAILURE_CACHE_MS)


# --- the shell ------------------------------------------------------------------


class DnsSrvLookup:
    """SRV lookups through dnspython's async stub resolver.

    ``nameservers`` (with ``port``) replaces the system configuration, for test
    networks; otherwise ``/etc/resolv.conf`` is read on first use. Answers are
    cached by dnspython for their TTL.
    """

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        port: int = 53,
        timeout_ms: int = DNS_TIMEOUT_MS,
    ) -> None:
        self._nameservers = list(nameservers) if nameservers is not None else None
        self._port = port
        self._timeout_ms = timeout_ms
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _stub(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=self._nameservers is None)
            except dns.exception.DNSException as exc:
                raise UpstreamError(f"no DNS configuration: {exc}") from exc
            if self._nameservers is not None:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(address, self._port)
                    for address in self._nameservers
                ]
            resolver.lifetime = self._timeout_ms / 1000
            resolver.cache = dns.resolver.LRUCache(WELL_KNOWN_MAX_CACHE_ENTRIES)
            self._resolver = resolver
        return self._resolver

    async def srv(self, name: str) -> list[SrvRecord]:
        try:
            answer = await self._stub().resolve(name, dns.rdatatype.SRV)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise UpstreamError(f"SRV lookup of {name} failed: {exc}") from exc
        return [
            SrvRecord(r.priority, r.weight, r.target.to_text(omit_final_dot=True), r.port)
            for r in answer
        ]


@dataclass(frozen=True, slots=True)
class _CachedWellKnown:
    result: WellKnownResult
    expires_ts: int
    consecutive_failures: int


class ServerResolver:
    """Resolves server names; owns the ``.well-known`` HTTP client and cache.

    Use as an async context manager (or call ``aclose``) to close the HTTP
    stack it built. ``well_known_port`` is 443 on the real federation; test
    networks set it to their TLS peer's port.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        srv_lookup: SrvLookup | None = None,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify_certificates: bool = True,
        ca_bundle: Path | None = None,
        well_known_port: int = 443,
        well_known_timeout_ms: int = WELL_KNOWN_TIMEOUT_MS,
        well_known_max_bytes: int = WELL_KNOWN_MAX_BYTES,
        max_cache_entries: int = WELL_KNOWN_MAX_CACHE_ENTRIES,
        ip_policy: IpPolicy | None = None,
        http: OutboundHttp | None = None,
    ) -> None:
        """``http``: the worker's shared stack (then ``transport``,
        ``verify_certificates``, ``ca_bundle`` and ``ip_policy`` are unused and
        its owner closes it); None builds one from those arguments.
        ``ip_policy`` None = ``IpPolicy()``, Synapse's default blocklist.
        """
        self._clock = clock
        self._srv = srv_lookup if srv_lookup is not None else DnsSrvLookup()
        self._rng = rng if rng is not None else random.Random()
        self._well_known_port = well_known_port
        self._timeout_ms = well_known_timeout_ms
        self._max_bytes = well_known_max_bytes
        self._max_cache_entries = max_cache_entries
        self._cache: OrderedDict[str, _CachedWellKnown] = OrderedDict()
        self._owns_http = http is None
        if http is None:
            http = OutboundHttp(
                verify_certificates=verify_certificates,
                ca_bundle=ca_bundle,
                ip_policy=ip_policy,
                transport=transport,
            )
        self._stack = http
        self._http = http.client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._stack.aclose()

    async def resolve(self, server_name: str) -> ResolvedDestination:
        """The destination for ``server_name``; ``UpstreamError`` if none can be had."""
        immediate = immediate_destination(server_name)
        if immediate is not None:
            return immediate
        hostname, _ = _split(server_name)
        well_known = await self.well_known(hostname)
        if well_known.m_server is None:
            return await self._via_srv(server_name, hostname)
        delegated = delegated_destination(server_name, well_known.m_server)
        if delegated is not None:
            return delegated
        delegated_host, _ = _split(well_known.m_server)
        return await self._via_srv(server_name, delegated_host)

    async def _via_srv(self, server_name: str, name: str) -> ResolvedDestination:
        for service in SRV_SERVICES:
            records = await self._srv.srv(f"{service}.{name}")
            if srv_unavailable(records):
                raise UpstreamError(f"{service}.{name}: SRV says the service is not available")
            destination = srv_destination(server_name, name, records, self._rng)
            if destination is not None:
                return destination
        return fallback_destination(server_name, name)

    async def well_known(self, hostname: str) -> WellKnownResult:
        """The (cached) ``.well-known`` answer of ``hostname``."""
        now = self._clock.now_ms()
        cached = self._cache.get(hostname)
        if cached is not None and now < cached.expires_ts:
            self._cache.move_to_end(hostname)
            return cached.result
        result, cache_control = await self._fetch_well_known(hostname)
        now = self._clock.now_ms()
        if result.m_server is not None:
            entry = _CachedWellKnown(result, now + well_known_cache_period_ms(cache_control), 0)
        else:
            failures = 1
            if cached is not None and cached.result.m_server is None:
                failures = cached.consecutive_failures + 1
            entry = _CachedWellKnown(result, now + failure_cache_period_ms(failures), failures)
        self._cache[hostname] = entry
        self._cache.move_to_end(hostname)
        while len(self._cache) > self._max_cache_entries:
            self._cache.popitem(last=False)
        return result

    def _well_known_url(self, hostname: str) -> httpx.URL:
        port = None if self._well_known_port == 443 else self._well_known_port
        return httpx.URL(scheme="https", host=hostname, port=port, path=WELL_KNOWN_PATH)

    async def _fetch_well_known(self, hostname: str) -> tuple[WellKnownResult, str | None]:
        url = self._well_known_url(hostname)
        visited = {url}
        timeout = httpx.Timeout(self._timeout_ms / 1000)
        try:
            with anyio.fail_after(self._timeout_ms / 1000):
                for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
                    async with self._http.stream("GET", url, timeout=timeout) as response:
                        location = response.headers.get("location")
                        if response.status_code in _REDIRECT_STATUSES and location:
                            url = url.join(location)
                            if url.scheme != "https":
                                return WellKnownResult(None, f"redirected to non-https {url}"), None
                            if url in visited:
                                return WellKnownResult(None, f"redirect loop at {url}"), None
                            visited.add(url)
                            continue
                        body = await read_bounded(response, self._max_bytes)
                        result = parse_well_known(response.status_code, body)
                        return result, response.headers.get("cache-control")
                return WellKnownResult(None, "too many redirects"), None
        except TimeoutError:
            return WellKnownResult(None, f"timed out after {self._timeout_ms} ms"), None
        except BodyTooLarge:
            return WellKnownResult(None, f"body larger than {self._max_bytes} bytes"), None
        except PoolsExhausted as exc:
            raise OutboundBusyError(f".well-known of {hostname} not fetched: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return WellKnownResult(None, f"fetch failed: {type(exc).__name__}: {exc}"), None
