"""``federation-presence probe SERVER``: an interop check of one homeserver, step by step.

The steps, each a ``Step`` (name, passed or not, one line of detail, data
for ``--json``), stopping at the first that fails:

1. ``resolve``: the spec's server discovery through the worker's own
   resolver (``resolver.ServerResolver``): IP literal or explicit port, else
   ``.well-known`` (shown), then SRV (shown) or port 8448. ``--address
   HOST:PORT`` replaces discovery (test networks, a name with no DNS);
2. ``certificate``: a TLS connection to the resolved address, verified as
   federation verifies it (``outbound_http.federation_tls_context``, the
   certificate name or the IP), and the certificate's subject, names, issuer
   and expiry;
3. ``keys``: ``GET /_matrix/key/v2/server`` (unsigned: it needs no auth),
   the self-signature checked by ``keyring.verified_server_keys``;
4. ``version``: ``GET /_matrix/federation/v1/version`` (unsigned too);
5. with ``send_presence``: one signed ``/send`` carrying one ``m.presence``
   push for that user of ours (our server name and key from the config; the
   target fetches our key from our running worker, so it must be up and
   reachable under our server name), and the target's answer;
6. with ``expect_presence``: polls our running worker's
   ``GET /_matrix/client/v3/presence/{userId}/status`` (``worker_url``, with
   the config's ``admin_token``) until that user's stored presence appears
   or changes, or ``wait_s`` passes. Ask the remote user to change presence
   after the probe has started.

Every network step runs under ``timeout_s``; the whole probe is bounded by
the sum of its steps' limits and ``wait_s``. Requests go through the one
outbound HTTP stack (``outbound_http.OutboundHttp``, via ``FederationClient``
and ``ServerResolver``), with the IP policy given (the CLI uses the config's,
or allows everything when no config is given: the operator named the
server).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from anyio.streams.tls import TLSAttribute
from signedjson.types import SigningKey

from federation_presence.clock import Clock
from federation_presence.errors import UpstreamError
from federation_presence.federation.client import FederationClient, request_url
from federation_presence.federation.ip_policy import IpPolicy
from federation_presence.federation.keyring import verified_server_keys
from federation_presence.federation.outbound_http import (
    BodyTooLarge,
    OutboundHttp,
    federation_tls_context,
    read_bounded,
)
from federation_presence.federation.resolver import (
    DnsSrvLookup,
    ResolvedDestination,
    ServerResolver,
    immediate_destination,
)
from federation_presence.federation.signing_keys import generate_signing_key

DEFAULT_TIMEOUT_S = 10.0
POLL_INTERVAL_MS = 500
MAX_RESPONSE_BYTES = 1024 * 1024
SRV_SERVICES = ("_matrix-fed._tcp", "_matrix._tcp")


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ours:
    """Our side, from the config: who we are, and where our worker answers."""

    server_name: str
    signing_key: SigningKey
    worker_url: str | None = None
    admin_token: str | None = None
    worker_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    server_name: str
    address: str | None = None  # HOST:PORT instead of discovery
    timeout_s: float = DEFAULT_TIMEOUT_S
    verify_certificates: bool = True
    ca_bundle: Path | None = None
    ip_policy: IpPolicy = field(default_factory=IpPolicy.allow_all)
    send_presence: str | None = None
    expect_presence: str | None = None
    wait_s: float = 60.0
    ours: Ours | None = None


class _Fixed:
    """A resolver that always answers the destination the probe resolved."""

    def __init__(self, destination: ResolvedDestination) -> None:
        self._destination = destination

    async def resolve(self, server_name: str) -> ResolvedDestination:
        return self._destination


class _UnsignedGet:
    """GETs without X-Matrix, through the same stack, to the resolved destination.

    The key and version endpoints need no authentication, and a server that
    sees an ``Authorization`` header verifies it (Synapse answers 401 when it
    cannot fetch the signer's key), so without our identity (no ``-c``) a
    signed GET would test our probe, not the server.
    """

    def __init__(self, http: OutboundHttp, destination: ResolvedDestination, timeout_s: float):
        self._http = http.client
        self._destination = destination
        self._timeout_s = timeout_s

    async def get_json(self, server_name: str, path: str) -> dict[str, Any]:
        destination = self._destination
        extensions = {}
        if destination.tls_server_name is not None:
            extensions["sni_hostname"] = destination.tls_server_name
        request = self._http.build_request(
            "GET",
            request_url(destination, path),
            headers={"Host": destination.host_header, "Accept": "application/json"},
            extensions=extensions,
            timeout=httpx.Timeout(self._timeout_s),
        )
        try:
            with anyio.fail_after(self._timeout_s):
                response = await self._http.send(request, stream=True)
                try:
                    body = await read_bounded(response, MAX_RESPONSE_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            raise UpstreamError(f"no answer within {self._timeout_s:g} s") from exc
        except (httpx.HTTPError, BodyTooLarge) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise UpstreamError(f"HTTP {response.status_code}: {body[:200]!r}")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"not JSON: {body[:200]!r}") from exc
        if not isinstance(document, dict):
            raise UpstreamError("not a JSON object")
        return document


class _Failed(Exception):
    def __init__(self, step: Step) -> None:
        self.step = step


async def probe(
    options: ProbeOptions, clock: Clock, emit: Callable[[Step], None] = lambda _: None
) -> list[Step]:
    """Run the steps; every step taken, in order (the last one failed if any did)."""
    steps: list[Step] = []

    def done(step: Step) -> Step:
        steps.append(step)
        emit(step)
        if not step.ok:
            raise _Failed(step)
        return step

    ours = options.ours or Ours("probe.invalid", generate_signing_key())
    try:
        async with OutboundHttp(
            verify_certificates=options.verify_certificates,
            ca_bundle=options.ca_bundle,
            ip_policy=options.ip_policy,
        ) as http:
            destination = await _resolve(options, clock, http, done)
            await _certificate(options, destination, done)
            async with FederationClient(
                ours.server_name,
                ours.signing_key,
                _Fixed(destination),
                clock,
                timeout_ms=int(options.timeout_s * 1000),
                http=http,
            ) as client:
                unsigned = _UnsignedGet(http, destination, options.timeout_s)
                await _keys(options, unsigned, clock, done)
                await _version(options, unsigned, done)
                if options.send_presence:
                    await _send_presence(options, ours, client, clock, done)
            if options.expect_presence:
                await _expect_presence(options, ours, clock, done)
    except _Failed:
        pass
    return steps


async def _resolve(
    options: ProbeOptions, clock: Clock, http: OutboundHttp, done: Callable[[Step], Step]
) -> ResolvedDestination:
    name = options.server_name
    if options.address:
        host, _, port = options.address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit():
            done(Step("resolve", False, f"--address {options.address!r}: expected HOST:PORT"))
        try:
            ipaddress.ip_address(host)
            certificate_name: str | None = None
        except ValueError:
            certificate_name = host
        destination = ResolvedDestination(name, host, int(port), name, certificate_name)
        done(
            Step("resolve", True, f"{_where(destination)} (given by --address)", _dest(destination))
        )
        return destination
    try:
        immediate = immediate_destination(name)
    except UpstreamError as exc:
        done(Step("resolve", False, str(exc)))
        raise AssertionError("unreachable") from None
    if immediate is not None:
        done(
            Step(
                "resolve",
                True,
                f"{_where(immediate)} (IP literal or explicit port: no .well-known, no SRV)",
                _dest(immediate),
            )
        )
        return immediate
    resolver = ServerResolver(
        clock,
        srv_lookup=DnsSrvLookup(timeout_ms=int(options.timeout_s * 1000)),
        well_known_timeout_ms=int(options.timeout_s * 1000),
        http=http,
    )
    hostname = name  # no port: an explicit one resolved immediately above
    well_known = await resolver.well_known(hostname)
    if well_known.m_server is not None:
        done(
            Step(
                "well-known",
                True,
                f"m.server = {well_known.m_server}",
                {"m_server": well_known.m_server},
            )
        )
    else:
        done(
            Step(
                "well-known", True, f"none ({well_known.problem})", {"problem": well_known.problem}
            )
        )
    if well_known.m_server is None:
        await _show_srv(hostname, options, done)
    try:
        with anyio.fail_after(options.timeout_s):
            destination = await resolver.resolve(name)
    except (UpstreamError, TimeoutError) as exc:
        done(Step("resolve", False, f"cannot resolve {name}: {exc or 'timed out'}"))
        raise AssertionError("unreachable") from None
    via = "delegated by .well-known" if well_known.m_server else "SRV or port 8448"
    done(
        Step(
            "resolve",
            True,
            f"{_where(destination)} ({via}; Host: {destination.host_header})",
            _dest(destination),
        )
    )
    return destination


async def _show_srv(hostname: str, options: ProbeOptions, done: Callable[[Step], Step]) -> None:
    """The SRV records discovery will consult (shown; resolution itself decides)."""
    lookup = DnsSrvLookup(timeout_ms=int(options.timeout_s * 1000))
    for service in SRV_SERVICES:
        try:
            records = await lookup.srv(f"{service}.{hostname}")
        except UpstreamError as exc:
            done(Step("srv", True, f"{service}.{hostname}: lookup failed: {exc}"))
            return
        if records:
            shown = ", ".join(f"{r[2]}:{r[3]} (priority {r[0]}, weight {r[1]})" for r in records)
            done(
                Step(
                    "srv",
                    True,
                    f"{service}.{hostname}: {shown}",
                    {"service": service, "records": [list(r) for r in records]},
                )
            )
            return
    done(Step("srv", True, f"no SRV records for {hostname}: port 8448"))


async def _certificate(
    options: ProbeOptions, destination: ResolvedDestination, done: Callable[[Step], Step]
) -> None:
    context = federation_tls_context(options.verify_certificates, options.ca_bundle)
    where = _where(destination)
    try:
        with anyio.fail_after(options.timeout_s):
            stream = await anyio.connect_tcp(
                destination.host,
                destination.port,
                ssl_context=context,
                tls_hostname=destination.tls_server_name or destination.host,
                tls_standard_compatible=False,
            )
    except TimeoutError:
        done(Step("connect", False, f"{where}: no TLS connection within {options.timeout_s} s"))
        return
    except ssl.SSLError as exc:
        done(Step("certificate", False, f"{where}: TLS failed: {_one_line(exc)}"))
        return
    except OSError as exc:
        done(Step("connect", False, f"{where}: {_connect_failure(exc)}"))
        return
    async with stream:
        cert = stream.extra(TLSAttribute.peer_certificate, None) or {}
        version = stream.extra(TLSAttribute.tls_version, "?")
    subject = _rdn(cert.get("subject", ()))
    issuer = _rdn(cert.get("issuer", ()))
    names = [str(entry[1]) for entry in cert.get("subjectAltName", ())]
    verified = "verified" if options.verify_certificates else "NOT verified (--insecure)"
    done(
        Step(
            "certificate",
            True,
            f"{version}, {verified} for {destination.tls_server_name or destination.host}; "
            f"subject {subject or '-'}, names {', '.join(names) or '-'}, issuer {issuer or '-'}, "
            f"expires {cert.get('notAfter', '?')}",
            {
                "subject": subject,
                "names": names,
                "issuer": issuer,
                "not_after": cert.get("notAfter"),
                "tls_version": version,
                "verified": verified,
            },
        )
    )


async def _keys(
    options: ProbeOptions, client: _UnsignedGet, clock: Clock, done: Callable[[Step], Step]
) -> None:
    try:
        response = await client.get_json(options.server_name, "/_matrix/key/v2/server")
        records = verified_server_keys(response, options.server_name, clock.now_ms())
    except UpstreamError as exc:
        done(Step("keys", False, f"GET /_matrix/key/v2/server: {exc}"))
        return
    current = [r.key_id for r in records if r.expired_ts is None]
    done(
        Step(
            "keys",
            True,
            f"self-signature verified; keys {', '.join(current) or '-'}; "
            f"valid_until_ts {response.get('valid_until_ts')}",
            {"key_ids": current, "valid_until_ts": response.get("valid_until_ts")},
        )
    )


async def _version(
    options: ProbeOptions, client: _UnsignedGet, done: Callable[[Step], Step]
) -> None:
    try:
        response = await client.get_json(options.server_name, "/_matrix/federation/v1/version")
    except UpstreamError as exc:
        done(Step("version", False, f"GET /_matrix/federation/v1/version: {exc}"))
        return
    server = response.get("server")
    server = server if isinstance(server, dict) else {}
    done(Step("version", True, f"{server.get('name', '?')} {server.get('version', '?')}", server))


async def _send_presence(
    options: ProbeOptions,
    ours: Ours,
    client: FederationClient,
    clock: Clock,
    done: Callable[[Step], Step],
) -> None:
    user = options.send_presence or ""
    if not user.startswith("@") or user.partition(":")[2] != ours.server_name:
        done(
            Step(
                "send-presence",
                False,
                f"{user!r} is not a user of ours ({ours.server_name}); give -c with our config",
            )
        )
        return
    txn_id = f"probe{clock.now_ms()}{secrets.token_hex(4)}"
    push = {"user_id": user, "presence": "online", "currently_active": True, "last_active_ago": 0}
    body = {
        "origin": ours.server_name,
        "origin_server_ts": clock.now_ms(),
        "pdus": [],
        "edus": [{"edu_type": "m.presence", "content": {"push": [push]}}],
    }
    try:
        answer = await client.put_json(
            options.server_name, f"/_matrix/federation/v1/send/{txn_id}", body
        )
    except UpstreamError as exc:
        done(Step("send-presence", False, f"PUT /send/{txn_id}: {exc}"))
        return
    done(
        Step(
            "send-presence",
            True,
            f"{user} online: 200 {orjson.dumps(answer).decode()[:200]}",
            {"txn_id": txn_id, "answer": answer},
        )
    )


async def _expect_presence(
    options: ProbeOptions, ours: Ours, clock: Clock, done: Callable[[Step], Step]
) -> None:
    user = options.expect_presence or ""
    if ours.worker_url is None or ours.admin_token is None:
        done(
            Step(
                "expect-presence",
                False,
                "needs our worker's URL and admin_token (give -c with our config)",
            )
        )
        return
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=str(ours.worker_ca)) if ours.worker_ca else True
    )
    path = f"/_matrix/client/v3/presence/{httpx.URL(path=user).raw_path.decode()}/status"
    started = clock.monotonic()
    first: tuple[int, bytes] | None = None
    async with httpx.AsyncClient(
        base_url=ours.worker_url,
        verify=verify,
        timeout=options.timeout_s,
        headers={"Authorization": f"Bearer {ours.admin_token}"},
        trust_env=False,
    ) as http:
        while clock.monotonic() - started < options.wait_s:
            try:
                response = await http.get(path)
            except httpx.HTTPError as exc:
                done(
                    Step(
                        "expect-presence",
                        False,
                        f"our worker at {ours.worker_url}: {type(exc).__name__}: {exc}",
                    )
                )
                return
            answer = (response.status_code, response.content)
            if first is None:
                first = answer
                known = "known" if response.status_code == 200 else "not known"
                done(
                    Step(
                        "waiting",
                        True,
                        f"up to {options.wait_s:g} s for new presence of {user} at our worker"
                        f" ({ours.worker_url}; now {known})",
                    )
                )
            elif response.status_code == 200 and answer != first:
                state = response.json()
                waited = clock.monotonic() - started
                done(
                    Step(
                        "expect-presence",
                        True,
                        f"{user} arrived after {waited:.1f} s: {state.get('presence')}",
                        {"presence": state, "waited_s": round(waited, 2)},
                    )
                )
                return
            elif response.status_code not in (200, 404):
                done(
                    Step(
                        "expect-presence",
                        False,
                        f"our worker answered HTTP {response.status_code}: {response.text[:200]}",
                    )
                )
                return
            await clock.sleep_ms(POLL_INTERVAL_MS)
    done(
        Step(
            "expect-presence",
            False,
            f"no new presence of {user} at our worker within {options.wait_s:g} s",
        )
    )


def _where(destination: ResolvedDestination) -> str:
    host = destination.host
    return f"[{host}]:{destination.port}" if ":" in host else f"{host}:{destination.port}"


def _dest(destination: ResolvedDestination) -> dict[str, Any]:
    return {
        "host": destination.host,
        "port": destination.port,
        "host_header": destination.host_header,
        "tls_server_name": destination.tls_server_name,
    }


def _rdn(value: Any) -> str:
    return ", ".join(f"{k}={v}" for rdn in value for k, v in rdn)


def _connect_failure(exc: OSError) -> str:
    """Why a connect failed: anyio's "All connection attempts failed" unwrapped."""
    cause: BaseException | None = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    real = cause if isinstance(cause, OSError) else exc
    return os.strerror(real.errno) if real.errno else _one_line(real)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
