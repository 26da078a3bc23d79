"""The ``probe`` and ``loadtest`` subcommands: their arguments, output and exit codes.

``cli.py`` adds them with ``add_probe`` and ``add_loadtest``; the handlers
import the network code lazily, so ``--help`` and the other commands stay
light.

Exit codes: 0 every step passed (probe) / the run got 200s and nothing but
200s and honoured 429s (loadtest); 1 a step failed, or the target refused or
dropped transactions, or could not be reached; 2 a usage or configuration
mistake. A failure is also one line on stderr, ``probe SERVER: FAIL at
STEP: why`` or ``loadtest TARGET: why``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation_presence.errors import ConfigError

if TYPE_CHECKING:
    from federation_presence.loadtest.probe import Ours, Step
    from federation_presence.loadtest.runner import Progress

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_probe(commands: Any) -> None:
    probe = commands.add_parser(
        "probe",
        help="interop check of a homeserver: discovery, TLS, keys, /version, presence",
        description="Resolve SERVER (showing .well-known, SRV, address, certificate), fetch"
        " and verify its keys, check /version; optionally send one signed presence EDU"
        " (--send-presence) and wait for the server's presence to reach our running"
        " worker (--expect-presence). Exit 0 when every step passes, 1 at the first"
        " failure (one line on stderr), 2 on a usage mistake.",
    )
    probe.add_argument("server", metavar="SERVER", help="server name of the homeserver")
    probe.add_argument("-c", "--config", type=Path, metavar="FILE", help="our worker's config")
    probe.add_argument("--address", metavar="HOST:PORT", help="connect here, skip discovery")
    probe.add_argument("--timeout", type=float, default=10.0, help="per network step, s")
    probe.add_argument("--ca-bundle", type=Path, help="trust this CA file (test networks)")
    probe.add_argument("--insecure", action="store_true", help="do not verify certificates")
    probe.add_argument("--send-presence", metavar="@USER:OURS", help="send one presence EDU")
    probe.add_argument("--expect-presence", metavar="@USER:THEIRS", help="wait for it at ours")
    probe.add_argument("--wait", type=float, default=60.0, help="--expect-presence limit, s")
    probe.add_argument("--worker-url", help="our worker's client API (default: from -c)")
    probe.add_argument("--json", action="store_true", help="one JSON document on stdout")
    probe.set_defaults(handler=run_probe)


def add_loadtest(commands: Any) -> None:
    load = commands.add_parser(
        "loadtest",
        help="signed presence EDU load against a homeserver on loopback",
        description="Send signed /send transactions of m.presence EDUs from many synthetic"
        " origins (each with its own key, served over TLS on 127.0.0.1) to TARGET"
        " (https://127.0.0.1:PORT or http://...; loopback only). Every push is a real"
        " change for the target. Bounded by --count and --duration.",
    )
    load.add_argument("target", metavar="TARGET", help="base URL on loopback")
    load.add_argument("--server-name", help="the target's server name (default: asked)")
    load.add_argument("--origins", type=int, default=16)
    load.add_argument("--users-per-origin", type=int, default=100)
    load.add_argument(
        "--users",
        choices=["warm", "cold"],  # plan.USER_KINDS (plan is imported lazily)
        default="warm",
        help="warm: known users (primed untimed); cold: users never seen",
    )
    load.add_argument(
        "--shape",
        default="1x1",
        metavar="EDUSxPUSHES",
        help="EDUs per transaction x pushes per EDU (default 1x1)",
    )
    load.add_argument(
        "--mix", default="online=2,unavailable=1,offline=1", help="presence states and weights"
    )
    load.add_argument("--concurrency", type=int, help="connections (default: one per origin)")
    load.add_argument("--rate", type=float, help="open loop: transactions/s to offer")
    load.add_argument("--duration", type=float, default=10.0, help="seconds (cap)")
    load.add_argument("--count", type=int, default=10_000, help="transactions (cap)")
    load.add_argument("--origin-cert", type=Path, help="origins' TLS certificate (PEM)")
    load.add_argument("--origin-key", type=Path, help="its private key (PEM)")
    load.add_argument("--target-ca", type=Path, help="CA file to verify an https target")
    load.add_argument("--insecure", action="store_true", help="do not verify the target")
    load.add_argument("--no-ceiling", action="store_true", help="skip the client's ceiling")
    load.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    load.add_argument("--html", type=Path, metavar="FILE", help="write an HTML report")
    load.add_argument("--quiet", action="store_true", help="no progress line")
    load.set_defaults(handler=run_loadtest)


# --- probe ---------------------------------------------------------------------


def _ours(args: argparse.Namespace) -> tuple[Ours | None, Any]:
    """Our identity and IP policy from ``-c`` (None and allow-all without it)."""
    from federation_presence.config import load_config
    from federation_presence.federation import signing_keys
    from federation_presence.federation.ip_policy import IpPolicy
    from federation_presence.loadtest.probe import Ours

    if args.config is None:
        return None, IpPolicy.allow_all()
    config = load_config(args.config)
    key = signing_keys.read_signing_key_file(config.signing_key_path)[0]
    worker_url = args.worker_url
    if worker_url is None and config.listeners:
        listener = config.listeners[0]
        scheme = "https" if listener.tls_certificate_path else "http"
        host = listener.bind_addresses[0] if listener.bind_addresses else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        worker_url = f"{scheme}://{host}:{listener.port}"
    policy = IpPolicy(config.federation.ip_range_blacklist, config.federation.ip_range_whitelist)
    ours = Ours(
        config.server_name, key, worker_url, config.admin_token, config.federation.ca_bundle
    )
    return ours, policy


def run_probe(args: argparse.Namespace) -> int:
    import anyio

    from federation_presence.clock import SystemClock
    from federation_presence.loadtest.probe import ProbeOptions, probe

    if (args.send_presence or args.expect_presence) and args.config is None:
        raise ConfigError("-c", "--send-presence and --expect-presence need our config (-c FILE)")
    ours, policy = _ours(args)
    ca_bundle = args.ca_bundle or (ours.worker_ca if ours else None)
    options = ProbeOptions(
        server_name=args.server,
        address=args.address,
        timeout_s=args.timeout,
        verify_certificates=not args.insecure,
        ca_bundle=ca_bundle,
        ip_policy=policy,
        send_presence=args.send_presence,
        expect_presence=args.expect_presence,
        wait_s=args.wait,
        ours=ours,
    )

    def show(step: Step) -> None:
        if not args.json:
            print(f"{'ok  ' if step.ok else 'FAIL'} {step.name}: {step.detail}", flush=True)

    steps = anyio.run(probe, options, SystemClock(), show)
    passed = bool(steps) and all(step.ok for step in steps)
    if args.json:
        document = {
            "server": args.server,
            "passed": passed,
            "steps": [
                {"name": s.name, "ok": s.ok, "detail": s.detail, "data": s.data} for s in steps
            ],
        }
        print(json.dumps(document, indent=2, default=str))
    if not passed:
        failed = steps[-1] if steps else None
        why = f"FAIL at {failed.name}: {failed.detail}" if failed else "FAIL: no step ran"
        print(f"probe {args.server}: {why}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# --- loadtest ------------------------------------------------------------------


def _shape(text: str) -> tuple[int, int]:
    edus, _, pushes = text.lower().partition("x")
    try:
        shape = int(edus), int(pushes)
    except ValueError:
        shape = (0, 0)
    if not (1 <= shape[0] <= 100 and 1 <= shape[1] <= 10_000):
        raise ConfigError("--shape", f"{text!r}: expected EDUSxPUSHES, 1-100 x 1-10000")
    return shape


def _origin_tls(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    if args.origin_cert and args.origin_key:
        return args.origin_cert, args.origin_key
    if args.origin_cert or args.origin_key:
        raise ConfigError("--origin-cert", "give both --origin-cert and --origin-key")
    try:
        import trustme
    except ImportError as exc:
        raise ConfigError(
            "--origin-cert", "give --origin-cert/--origin-key (or install trustme)"
        ) from exc
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
    cert, key, ca_path = workdir / "origin.pem", workdir / "origin.key", workdir / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_path))
    print(
        f"origins use a fresh test CA ({ca_path}): the target must not verify their"
        " certificates, or pass --origin-cert/--origin-key from a CA it trusts",
        file=sys.stderr,
    )
    return cert, key


def run_loadtest(args: argparse.Namespace) -> int:
    import anyio

    from federation_presence.clock import SystemClock
    from federation_presence.errors import UpstreamError
    from federation_presence.loadtest.plan import parse_mix
    from federation_presence.loadtest.session import LoadSettings, TlsFiles, parse_target, run_load

    try:
        target = parse_target(args.target)
    except ValueError as exc:
        raise ConfigError("TARGET", str(exc)) from exc
    edus, pushes = _shape(args.shape)
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        raise ConfigError("--mix", str(exc)) from exc
    for name in ("origins", "users_per_origin", "count"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", "must be at least 1")
    if args.duration <= 0 or (args.rate is not None and args.rate <= 0):
        raise ConfigError("--duration", "--duration and --rate must be positive")
    settings = LoadSettings(
        origins=args.origins,
        users_per_origin=args.users_per_origin,
        edus_per_txn=edus,
        pushes_per_edu=pushes,
        users=args.users,
        mix=mix,
        concurrency=args.concurrency,
        rate=args.rate,
        duration_s=args.duration,
        count=args.count,
        server_name=args.server_name,
    )
    say = (lambda _: None) if args.quiet else (lambda text: print(text, file=sys.stderr))

    def progress(p: Progress) -> None:
        if not args.quiet:
            print(
                f"  {p.elapsed_s:5.1f} s  {p.last_second_ok:,} txn/s  ok {p.ok:,}  "
                f"non-200 {p.other:,}  errors {p.errors:,}  p50 {p.p50_ms:.1f} ms  "
                f"p99 {p.p99_ms:.1f} ms",
                file=sys.stderr,
                flush=True,
            )

    with tempfile.TemporaryDirectory(prefix="fp-loadtest-") as tmp:
        cert, key = _origin_tls(args, Path(tmp))
        tls = TlsFiles(cert, key, args.target_ca, not args.insecure)
        try:
            report = anyio.run(
                lambda: run_load(
                    target,
                    settings,
                    tls,
                    SystemClock(),
                    ceiling=not args.no_ceiling,
                    progress=progress,
                    say=say,
                ),
                backend="asyncio",
                backend_options={"use_uvloop": sys.platform != "win32"},
            )
        except UpstreamError as exc:
            print(f"loadtest {args.target}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.html:
        args.html.write_text(report.as_html(), encoding="utf-8")
    print(json.dumps(report.as_json(), indent=2) if args.json else report.as_text())
    result = report.result
    refused = sum(n for status, n in result.statuses.items() if status not in (200, 429))
    if result.ok == 0 or refused or result.errors:
        print(
            f"loadtest {args.target}: {result.ok} transactions accepted, {refused} refused,"
            f" {sum(result.errors.values())} connection errors",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
