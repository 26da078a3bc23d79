"""One load test end to end: the target, the origins, the runs, the report.

``run_load`` asks the target who it is (``GET /_matrix/key/v2/server`` gives
the server name that X-Matrix must name as destination; ``GET
/_matrix/federation/v1/version`` its software), starts ``origins`` synthetic
origins (each with its own key, served over TLS on loopback by
``origins.serving_origins``), makes every origin's key known to the target
untimed (warm users: a priming pass that also makes every user known; cold
users: one push per origin of a user not used again), pre-signs the
transactions of the run and sends them (``runner.send_requests``). Then the
same requests go to a no-op server in its own process (``noop``): the
client's ceiling, which the report compares with the rate it measured.

Loopback only: the target and every origin are 127.0.0.1, ::1 or localhost;
anything else is refused before a byte is sent. Bounded: the run stops at
``count`` transactions or ``duration_s``, whichever comes first, and every
step outside the timed run (discovery, priming, the no-op server) has its
own time limit.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from federation_presence.clock import Clock
from federation_presence.errors import UpstreamError
from federation_presence.loadtest.origins import SyntheticOrigin, serving_origins
from federation_presence.loadtest.plan import (
    STATES,
    LoadShape,
    priming_bodies,
    request_bytes,
    transaction_body,
)
from federation_presence.loadtest.report import LoadReport
from federation_presence.loadtest.runner import Progress, RunResult, send_requests

DISCOVERY_TIMEOUT_S = 10.0
PRIMING_TIMEOUT_S = 120.0
NOOP_START_TIMEOUT_S = 10.0
LOOPBACK_NAMES = ("localhost",)
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: a loopback address, with or without TLS."""

    tls: bool
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def host_header(self) -> str:
        return self.base_url.split("://", 1)[1]


def parse_target(text: str) -> Target:
    """``https://127.0.0.1:8448``, ``http://[::1]:8008`` or ``127.0.0.1:8448`` (https).

    ``ValueError`` for anything that is not a loopback address with a port.
    """
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        raise ValueError(f"{text!r}: expected https://HOST:PORT or http://HOST:PORT")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from exc
    if not host or port is None:
        raise ValueError(f"{text!r}: give the port explicitly")
    if host not in LOOPBACK_NAMES:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{text!r}: load tests target loopback only (127.0.0.1, ::1)")
    return Target(parts.scheme == "https", host, port)


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """Everything a run is told; shown in the report as given."""

    origins: int = 16
    users_per_origin: int = 100
    edus_per_txn: int = 1
    pushes_per_edu: int = 1
    users: str = "warm"
    mix: tuple[str, ...] = STATES
    concurrency: int | None = None  # None: one lane per origin
    rate: float | None = None  # txn/s, open loop; None: closed loop
    duration_s: float = 10.0
    count: int = 10_000
    server_name: str | None = None  # None: asked from the target's key server

    @property
    def shape(self) -> LoadShape:
        return LoadShape(
            self.edus_per_txn, self.pushes_per_edu, self.users_per_origin, self.users, self.mix
        )


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The origins' certificate and key (the target must trust their CA, or not verify),
    and how we verify the target: ``target_ca`` file, or not at all."""

    cert: Path
    key: Path
    target_ca: Path | None = None
    verify_target: bool = True

    def target_context(self) -> ssl.SSLContext:
        if not self.verify_target:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if self.target_ca is not None:
            return ssl.create_default_context(cafile=str(self.target_ca))
        return ssl.create_default_context()


@dataclass
class Discovered:
    server_name: str
    version: dict[str, Any] = field(default_factory=dict)


async def discover(target: Target, tls: TlsFiles, server_name: str | None) -> Discovered:
    """The target's server name (from its key server unless given) and ``/version``."""
    verify: ssl.SSLContext | bool = tls.target_context() if target.tls else False
    async with httpx.AsyncClient(
        base_url=target.base_url, verify=verify, timeout=DISCOVERY_TIMEOUT_S, trust_env=False
    ) as client:
        try:
            version_response = await client.get("/_matrix/federation/v1/version")
            version = version_response.json() if version_response.status_code == 200 else {}
            if server_name is None:
                keys = await client.get("/_matrix/key/v2/server")
                document = keys.json() if keys.status_code == 200 else None
                name = document.get("server_name") if isinstance(document, dict) else None
                if not isinstance(name, str):
                    raise UpstreamError(
                        f"{target.base_url}: no server_name in its key response "
                        f"(HTTP {keys.status_code}); pass --server-name"
                    )
                server_name = name
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(f"{target.base_url}: {type(exc).__name__}: {exc}") from exc
    return Discovered(server_name, version if isinstance(version, dict) else {})


def build_requests(
    origins: list[SyntheticOrigin],
    target: Target,
    destination: str,
    bodies: Callable[[SyntheticOrigin], list[dict[str, object]]],
    txn_prefix: str,
) -> list[list[bytes]]:
    """Every origin's signed requests, in order."""
    return [
        [
            request_bytes(
                origin=origin.server_name,
                signing_key=origin.signing_key,
                destination=destination,
                host_header=target.host_header,
                txn_id=f"{txn_prefix}{i}",
                body=body,
            )
            for i, body in enumerate(bodies(origin))
        ]
        for origin in origins
    ]


async def measure_ceiling(
    requests: list[list[bytes]],
    clock: Clock,
    settings: LoadSettings,
    tls: TlsFiles | None,
) -> RunResult:
    """The same requests, closed loop, against ``noop`` in its own process."""
    command = [sys.executable, "-m", "federation_presence.loadtest.noop"]
    if tls is not None:
        command += [str(tls.cert), str(tls.key)]
    # The same package as ours, whatever the working directory.
    package_root = PACKAGE_ROOT
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    process = await anyio.open_process(command, env={**os.environ, "PYTHONPATH": path})
    try:
        assert process.stdout is not None
        with anyio.fail_after(NOOP_START_TIMEOUT_S):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(64)
        port = int(line.strip())
        context = None
        if tls is not None:
            context = TlsFiles(tls.cert, tls.key, verify_target=False).target_context()
        return await send_requests(
            "127.0.0.1",
            port,
            requests,
            clock,
            duration_s=settings.duration_s,
            ssl_context=context,
            concurrency=settings.concurrency,
        )
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def run_load(
    target: Target,
    settings: LoadSettings,
    tls: TlsFiles,
    clock: Clock,
    *,
    ceiling: bool = True,
    progress: Callable[[Progress], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
    origins: list[SyntheticOrigin] | None = None,
    timed: Callable[[bool], None] = lambda _: None,
) -> LoadReport:
    """One load test of ``target``; the report (``UpstreamError`` if the target is unusable).

    ``origins``: origins the caller serves (``serving_origins``) and reuses
    across runs, so that warm users stay the same users; None serves
    ``settings.origins`` new ones for this run alone. ``timed`` is called with
    True just before the timed part and False just after it (benchmarks read
    CPU counters there).
    """
    hooks = _Hooks(ceiling, progress, say, timed)
    if origins is not None:
        return await _run_with(target, settings, tls, clock, hooks, origins)
    async with serving_origins(settings.origins, clock, tls.cert, tls.key) as served:
        return await _run_with(target, settings, tls, clock, hooks, served)


@dataclass(frozen=True, slots=True)
class _Hooks:
    ceiling: bool
    progress: Callable[[Progress], None] | None
    say: Callable[[str], None]
    timed: Callable[[bool], None]


async def _run_with(
    target: Target,
    settings: LoadSettings,
    tls: TlsFiles,
    clock: Clock,
    hooks: _Hooks,
    origins: list[SyntheticOrigin],
) -> LoadReport:
    say = hooks.say
    found = await discover(target, tls, settings.server_name)
    shape = settings.shape
    run_tag = _base36(clock.now_ms())
    context = tls.target_context() if target.tls else None
    server_hostname = target.host if target.tls else None
    notes: list[str] = []
    say(f"target {found.server_name} at {target.base_url}; {len(origins)} origins")
    now = clock.now_ms()
    if shape.users == "warm":
        primer = build_requests(
            origins,
            target,
            found.server_name,
            lambda o: priming_bodies(o.server_name, shape, now, run_tag),
            f"prime{run_tag}-",
        )
    else:
        single = LoadShape(1, 1, 1, "cold")
        primer = build_requests(
            origins,
            target,
            found.server_name,
            lambda o: [transaction_body(o.server_name, single, 0, now, f"w{run_tag}")],
            f"warm{run_tag}-",
        )
    say(f"priming: {sum(map(len, primer))} untimed transactions (keys, {shape.users} users)")
    primed = await send_requests(
        target.host,
        target.port,
        primer,
        clock,
        duration_s=PRIMING_TIMEOUT_S,
        ssl_context=context,
        server_hostname=server_hostname,
    )
    if primed.ok != sum(map(len, primer)):
        notes.append(
            f"priming: {primed.ok} of {sum(map(len, primer))} answered 200 "
            f"(statuses {dict(primed.statuses)}, errors {dict(primed.errors)})"
        )
    # settings.count transactions in all, dealt out to the origins.
    index = {origin.server_name: i for i, origin in enumerate(origins)}
    share, extra = divmod(settings.count, len(origins))
    say(f"signing {settings.count} transactions")
    requests = build_requests(
        origins,
        target,
        found.server_name,
        lambda o: [
            transaction_body(o.server_name, shape, i, now, run_tag)
            for i in range(share + (index[o.server_name] < extra))
        ],
        f"{run_tag}-",
    )
    hooks.timed(True)
    result = await send_requests(
        target.host,
        target.port,
        requests,
        clock,
        duration_s=settings.duration_s,
        ssl_context=context,
        server_hostname=server_hostname,
        concurrency=settings.concurrency,
        rate=settings.rate,
        progress=hooks.progress,
    )
    hooks.timed(False)
    ceiling_rate: float | None = None
    if hooks.ceiling:
        say("client ceiling: the same requests against a no-op server")
        noop = await measure_ceiling(requests, clock, settings, tls if target.tls else None)
        ceiling_rate = noop.ok / noop.elapsed_s if noop.elapsed_s else 0.0
        if noop.ok == sum(map(len, requests)) and noop.elapsed_s < settings.duration_s / 2:
            notes.append(
                "the no-op server answered every request before the duration ran out: "
                "the ceiling is at least this (raise --count for a tighter figure)"
            )
    if result.ok == sum(map(len, requests)):
        notes.append("the run ended when its requests ran out (--count), not at --duration")
    shown = {k: v for k, v in asdict(settings).items() if k != "mix"}
    shown["mix"] = ",".join(settings.mix)
    shown["origins"] = len(origins)
    shown["run_tag"] = run_tag
    return LoadReport(
        target=target.base_url,
        server_name=found.server_name,
        version=found.version,
        settings=shown,
        pushes_per_txn=shape.pushes_per_txn,
        result=result,
        ceiling_txn_per_s=ceiling_rate,
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
        notes=notes,
        origin_names=[origin.server_name for origin in origins],
    )


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while number:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
    return text or "0"
