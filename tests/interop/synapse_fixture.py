"""A real Synapse for the interop suite: its own cached venv, TLS both ways, loopback only.

What this module owns:

* **The install.** ``ensure_synapse_install`` makes a virtual environment
  with ``matrix-synapse==SYNAPSE_VERSION`` under
  ``~/.cache/federation-presence/synapse-venv/<version>-py<X.Y>`` (never the
  project's venv), once per machine: it is built in a temporary directory and
  renamed into place only after ``import synapse`` worked, so a killed install
  never leaves a half venv behind and two concurrent runs cannot mix theirs.
  A failed install raises ``SynapseUnavailable`` with pip's last lines: the
  interop tests then fail with that message, they never skip.
* **The config.** ``homeserver_yaml`` writes a homeserver.yaml in which every
  setting carries a comment saying why it is there: a server name with an
  explicit port on ``localhost`` (no ``.well-known``, no SRV, nothing but
  loopback is ever resolved), one HTTPS listener with a certificate from the
  test CA, certificate verification on for its outbound federation with that
  CA trusted, loopback allowed through the IP-range blocklist, federation and
  client rate limits raised, and the interop presence router
  (``synapse_modules/interop_presence_router.py``) so that its users and the
  worker's are interested in each other.
* **The process.** ``SynapseServer`` starts and stops Synapse
  (``anyio.open_process``; its output goes to ``homeserver.log`` in the
  work directory, whose tail is quoted when it fails to start), and can be
  restarted on the same port and database.
* **A client.** ``SynapseServer`` also offers the few client-server calls the
  tests make (register, presence, ``/sync``) and reads its Prometheus
  metrics, so that EDUs can be counted on Synapse's side.

Waiting for Synapse is polling with a deadline: it is an external process
with no event to wait on (its readiness is "its HTTPS port answers"). Each
poll interval goes through ``SystemClock``; every wait has a time limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import httpx
from anyio.abc import Process
from signedjson.types import SigningKey

from federation_presence.clock import SystemClock
from federation_presence.federation.signing_keys import (
    generate_signing_key,
    write_signing_key_file,
)
from federation_presence.federation.xmatrix import authorization_header
from tests.integration.tls_peer import TlsCertificates

# The Synapse the suite runs against; the cache is keyed by it.
SYNAPSE_VERSION = "1.163.2"
# A cold install took ~75 s here; CI's whole budget is 20 min.
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
POLL_INTERVAL_MS = 100
REQUEST_TIMEOUT_S = 30.0
MODULES_DIR = Path(__file__).parent / "synapse_modules"
REPO_ROOT = Path(__file__).resolve().parents[2]
ROUTER_MODULE = "interop_presence_router.InteropPresenceRouter"

T = TypeVar("T")


class SynapseUnavailable(RuntimeError):
    """Synapse could not be installed or started; the message says why."""


@dataclass(frozen=True, slots=True)
class SynapseInstall:
    python: Path
    version: str


def synapse_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    major, minor = sys.version_info[:2]
    return (
        Path(base) / "federation-presence" / "synapse-venv" / f"{SYNAPSE_VERSION}-py{major}.{minor}"
    )


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "import synapse; print(synapse.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_synapse_install() -> SynapseInstall:
    """The cached Synapse venv, created on first use (see the module docstring)."""
    target = synapse_cache_dir()
    python = target / "bin" / "python"
    version = _installed_version(python)
    if version == SYNAPSE_VERSION:
        return SynapseInstall(python, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        steps = [
            [sys.executable, "-m", "venv", str(building)],
            [
                str(building / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"matrix-synapse=={SYNAPSE_VERSION}",
            ],
        ]
        for step in steps:
            try:
                result = subprocess.run(
                    step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise SynapseUnavailable(
                    f"installing matrix-synapse=={SYNAPSE_VERSION} took over "
                    f"{INSTALL_TIMEOUT_S} s: {' '.join(step)}"
                ) from exc
            if result.returncode != 0:
                tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
                raise SynapseUnavailable(
                    f"cannot install matrix-synapse=={SYNAPSE_VERSION} into a venv "
                    f"(needed by tests/interop): {' '.join(step)} exited "
                    f"{result.returncode}:\n{tail}"
                )
        built_version = _installed_version(building / "bin" / "python")
        if built_version != SYNAPSE_VERSION:
            raise SynapseUnavailable(
                f"the venv built for matrix-synapse=={SYNAPSE_VERSION} imports {built_version!r}"
            )
        # A venv's interpreter symlink and pyvenv.cfg do not depend on its own
        # path, so the finished directory can be renamed into place; the
        # console scripts (unused: we run ``python -m``) would keep the old path.
        if target.exists():
            shutil.rmtree(target)  # a broken or other-version leftover
        try:
            building.rename(target)
        except OSError:
            if _installed_version(python) != SYNAPSE_VERSION:  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return SynapseInstall(python, SYNAPSE_VERSION)


def free_port() -> int:
    """A port the OS says is free on 127.0.0.1.

    Both servers must know each other's name (``localhost:PORT``) before
    either starts, so the port is chosen here and bound later by its server;
    on loopback in a test the window in between is harmless.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class SynapseSpec:
    """What one test's Synapse looks like."""

    workdir: Path
    certificates: TlsCertificates
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    # Users on the worker's server that get every local presence change.
    routed_users: tuple[str, ...] = ()
    # ``presence.enabled``: true, or "untracked" beside a presence worker.
    presence_enabled: bool | str = True
    # Extra top-level settings: (key, value, the comment saying why).
    extra: tuple[tuple[str, object, str], ...] = ()
    # Beside a worker: the port the server name points at (the worker's, in
    # front), and a plain-HTTP listener the worker's /send tee forwards to.
    name_port: int | None = None
    plain_port: int | None = None

    @property
    def server_name(self) -> str:
        return f"localhost:{self.name_port or self.port}"

    @property
    def signing_key_path(self) -> Path:
        return self.workdir / "signing.key"

    @property
    def log_path(self) -> Path:
        return self.workdir / "homeserver.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "homeserver.yaml"


def _y(value: object) -> str:
    """A YAML scalar or flow collection (JSON is YAML)."""
    return json.dumps(value)


def homeserver_yaml(spec: SynapseSpec) -> str:
    """The homeserver.yaml of ``spec``, one comment per setting."""
    w = spec.workdir
    lines = [
        "# Written by tests/interop/synapse_fixture.py: one Synapse of a closed",
        "# two-server federation on loopback.",
        "",
        "# An explicit port on localhost: peers connect to it directly (no",
        "# .well-known, no SRV lookup) and nothing beyond loopback is resolved.",
        f"server_name: {_y(spec.server_name)}",
        f"public_baseurl: {_y(f'https://{spec.server_name}/')}",
        "# Files of this test only.",
        f"pid_file: {_y(str(w / 'homeserver.pid'))}",
        f"media_store_path: {_y(str(w / 'media'))}",
        f"log_config: {_y(str(w / 'log.yaml'))}",
        "# Written by the fixture in Synapse's key format, so a worker beside",
        "# this homeserver can sign with the same key.",
        f"signing_key_path: {_y(str(spec.signing_key_path))}",
        "# SQLite, as the worker's embedded default: nothing to provision.",
        "database:",
        "  name: sqlite3",
        f"  args: {{database: {_y(str(w / 'homeserver.db'))}}}",
        "# A test never reports usage statistics anywhere.",
        "report_stats: false",
        "# Secrets Synapse insists on; fresh per test.",
        f"macaroon_secret_key: {_y(secrets.token_hex(16))}",
        f"form_secret: {_y(secrets.token_hex(16))}",
        "",
        "listeners:",
        "  # Federation and client API over HTTPS: the worker verifies this",
        "  # certificate against the test CA, as it would a real homeserver's.",
        f"  - port: {spec.port}",
        "    bind_addresses: ['127.0.0.1']",
        "    type: http",
        "    tls: true",
        "    x_forwarded: false",
        "    resources: [{names: [client, federation], compress: false}]",
        "  # Prometheus metrics: the tests count the EDUs Synapse sent and received.",
        f"  - port: {spec.metrics_port}",
        "    bind_addresses: ['127.0.0.1']",
        "    type: metrics",
    ]
    if spec.plain_port is not None:
        lines += [
            "  # Plain HTTP on loopback for the worker in front (its /send tee),",
            "  # as a reverse proxy would reach Synapse.",
            f"  - port: {spec.plain_port}",
            "    bind_addresses: ['127.0.0.1']",
            "    type: http",
            "    x_forwarded: false",
            "    resources: [{names: [federation], compress: false}]",
        ]
    lines += [
        "# Needed for the metrics listener to export anything.",
        "enable_metrics: true",
        "# The listener's certificate, issued for localhost by the test CA.",
        f"tls_certificate_path: {_y(str(spec.certificates.cert_path))}",
        f"tls_private_key_path: {_y(str(spec.certificates.key_path))}",
        "",
        "# Outbound federation verifies certificates (the default, said out loud)",
        "# and trusts the test CA that issued the worker's certificate.",
        "federation_verify_certificates: true",
        f"federation_custom_ca_list: [{_y(str(spec.certificates.ca_path))}]",
        "# The worker listens on 127.0.0.1, which the default blocklist refuses;",
        "# the allowlist lets loopback through and keeps the rest of the blocklist.",
        "ip_range_whitelist: ['127.0.0.0/8', '::1/128']",
        "# No notary: keys are fetched from the servers themselves (no internet).",
        "trusted_key_servers: []",
        "suppress_key_server_warning: true",
        "",
        "# Test users register themselves, without email or captcha.",
        "enable_registration: true",
        "enable_registration_without_verification: true",
        "# Test passwords need no hashing strength; the default costs ~0.3 s a user.",
        "bcrypt_rounds: 4",
        "",
        "# Rate limits out of the way: tests change presence and send",
        "# transactions faster than a person would.",
        "rc_federation: {window_size: 1000, sleep_limit: 1000000, sleep_delay: 0,",
        "                reject_limit: 1000000, concurrent: 1000}",
        "rc_presence: {per_user: {per_second: 1000, burst_count: 1000}}",
        "rc_registration: {per_second: 1000, burst_count: 1000}",
        "rc_login: {address: {per_second: 1000, burst_count: 1000},",
        "           account: {per_second: 1000, burst_count: 1000}}",
        "rc_message: {per_second: 1000, burst_count: 1000}",
        "",
        "# busy (MSC3026) is behind an experimental flag in Synapse.",
        "experimental_features: {msc3026_enabled: true}",
        "",
        "presence:",
        "  # true: Synapse runs presence; 'untracked': it relays but does not",
        "  # track (beside a presence worker).",
        f"  enabled: {_y(spec.presence_enabled)}",
        "  # Synapse sends presence only to servers its users share rooms with,",
        "  # or that a presence router names: this one names the worker's users.",
        "  presence_router:",
        f"    module: {ROUTER_MODULE}",
        f"    config: {{users: {_y(list(spec.routed_users))}}}",
    ]
    for key, value, why in spec.extra:
        lines += [f"# {why}", f"{key}: {_y(value)}"]
    return "\n".join(lines) + "\n"


def log_yaml(spec: SynapseSpec) -> str:
    """Synapse's logging: warnings, plus federation traffic (read when a test fails)."""
    return f"""\
version: 1
formatters:
  precise: {{format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s'}}
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {_y(str(spec.log_path))}
loggers:
  synapse.federation: {{level: INFO}}
  synapse.handlers.presence: {{level: INFO}}
root: {{level: WARNING, handlers: [file]}}
disable_existing_loggers: false
"""


class SynapseServer:
    """One Synapse process for ``spec``; ``start``/``stop`` may be repeated (restarts)."""

    def __init__(self, install: SynapseInstall, spec: SynapseSpec) -> None:
        self.install = install
        self.spec = spec
        self._process: Process | None = None
        self._log_file: Any = None
        self._clock = SystemClock()
        spec.workdir.mkdir(parents=True, exist_ok=True)
        if not spec.signing_key_path.exists():
            write_signing_key_file(spec.signing_key_path, [generate_signing_key()])
        spec.config_path.write_text(homeserver_yaml(spec))
        (spec.workdir / "log.yaml").write_text(log_yaml(spec))
        context = ssl.create_default_context(cafile=str(spec.certificates.ca_path))
        self.http = httpx.AsyncClient(
            base_url=f"https://localhost:{spec.port}", verify=context, timeout=REQUEST_TIMEOUT_S
        )

    @property
    def server_name(self) -> str:
        return self.spec.server_name

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    async def start(self) -> None:
        command = [
            str(self.install.python),
            "-m",
            "synapse.app.homeserver",
            "--config-path",
            str(self.spec.config_path),
        ]
        env = dict(os.environ)
        # The presence router (and our Synapse-side module) come from this
        # checkout, not from an install into Synapse's venv.
        env["PYTHONPATH"] = os.pathsep.join([str(MODULES_DIR), str(REPO_ROOT)])
        self._log_file = self.spec.log_path.open("ab")
        self._process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=str(self.spec.workdir),
            env=env,
        )
        try:
            await self._wait_ready()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop()
            raise

    async def _wait_ready(self) -> None:
        deadline = self._clock.monotonic() + START_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.returncode is not None:
                raise SynapseUnavailable(
                    f"Synapse exited with {self._process.returncode} while starting:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(httpx.HTTPError):
                response = await self.http.get("/_matrix/federation/v1/version", timeout=2)
                if response.status_code == 200:
                    return
            if self._clock.monotonic() > deadline:
                raise SynapseUnavailable(
                    f"Synapse did not answer within {START_TIMEOUT_S:.0f} s:\n" + self.log_tail()
                )
            await self._clock.sleep_until(self._clock.now_ms() + POLL_INTERVAL_MS)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.terminate()
                    with anyio.move_on_after(STOP_TIMEOUT_S):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        with anyio.fail_after(STOP_TIMEOUT_S):
                            await process.wait()
                await process.aclose()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.spec.log_path.exists():
            return "(no log)"
        return "\n".join(self.spec.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- the client-server calls the tests make ------------------------------------

    async def register(self, localpart: str) -> str:
        """Register ``localpart``; its access token."""
        response = await self.http.post(
            "/_matrix/client/v3/register",
            json={
                "username": localpart,
                "password": secrets.token_hex(8),
                "auth": {"type": "m.login.dummy"},
            },
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    async def set_presence(
        self, token: str, user_id: str, presence: str, status_msg: str | None = None
    ) -> None:
        body: dict[str, object] = {"presence": presence}
        if status_msg is not None:
            body["status_msg"] = status_msg
        response = await self.http.put(
            f"/_matrix/client/v3/presence/{quote(user_id)}/status",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()

    async def get_presence(self, token: str, user_id: str) -> httpx.Response:
        return await self.http.get(
            f"/_matrix/client/v3/presence/{quote(user_id)}/status",
            headers={"Authorization": f"Bearer {token}"},
        )

    async def sync(
        self, token: str, since: str | None = None, timeout_ms: int = 0
    ) -> dict[str, Any]:
        params: dict[str, str] = {"timeout": str(timeout_ms), "set_presence": "offline"}
        if since is not None:
            params["since"] = since
        response = await self.http.get(
            "/_matrix/client/v3/sync",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT_S + timeout_ms / 1000,
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def signed_put(
        self, origin: str, signing_key: SigningKey, path: str, body: dict[str, Any]
    ) -> httpx.Response:
        """A federation PUT signed by ``origin`` (X-Matrix), as that server would send it."""
        authorization = authorization_header(
            signing_key, "PUT", path, origin, self.server_name, body
        )
        return await self.http.put(path, json=body, headers={"Authorization": authorization})

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of Prometheus samples named ``name`` whose labels include ``labels``."""
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            response = await client.get(f"http://127.0.0.1:{self.spec.metrics_port}/metrics")
        return prometheus_sum(response.text, name, labels)


def prometheus_sum(text: str, name: str, labels: dict[str, str]) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{key}="{want}"' in label_text for key, want in labels.items()):
            total += float(value)
    return total


def presence_events(sync_body: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = sync_body.get("presence", {}).get("events", [])
    return events


async def poll_until(
    what: str,
    probe: Callable[[], Awaitable[T | None]],
    timeout_s: float = 30.0,
    describe: Callable[[], str] = lambda: "",
) -> T:
    """Call ``probe`` until it returns something other than None, within ``timeout_s``.

    For conditions on an external process (Synapse) that offers no event to
    wait on; the poll interval is ``POLL_INTERVAL_MS``.
    """
    clock = SystemClock()
    deadline = clock.monotonic() + timeout_s
    while True:
        result = await probe()
        if result is not None:
            return result
        if clock.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}. {describe()}"
            )
        await clock.sleep_until(clock.now_ms() + POLL_INTERVAL_MS)


@contextlib.asynccontextmanager
async def running_synapse(
    install: SynapseInstall, spec: SynapseSpec
) -> AsyncIterator[SynapseServer]:
    server = SynapseServer(install, spec)
    try:
        await server.start()
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop()
            await server.http.aclose()


def users_of(pushes: Iterable[dict[str, Any]]) -> set[str]:
    return {push["user_id"] for push in pushes}


def main() -> int:
    """``python -m tests.interop.synapse_fixture``: make or check the cached install (CI)."""
    try:
        install = ensure_synapse_install()
    except SynapseUnavailable as exc:
        print(f"interop: {exc}", file=sys.stderr)
        return 1
    print(f"interop: Synapse {install.version} at {install.python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
