"""The worker's configuration: its values, and the YAML file they come from.

Owns the ``Config`` tree (frozen, slotted dataclasses that the rest of the
package reads and never mutates) and the only parser of the config file.

Invariants:

* A ``Config`` that exists is valid: every range, type and cross-field rule is
  checked here, once, so no other module re-validates settings.
* Every mistake is ONE readable line, ``<file>: <dotted.key>: <problem>``,
  raised as ``ConfigError(key, problem, source)``. File-level problems use the
  key ``(file)``, YAML syntax errors ``line L, column C``, a non-mapping
  document ``(top level)``. Values are quoted with ``repr`` so the line never
  breaks.
* Types are strict: booleans must be YAML booleans, integers must not be
  booleans, strings are not coerced to numbers. Unknown keys are errors with a
  "did you mean" suggestion. Duplicate keys in a mapping are errors (PyYAML
  would silently keep the last one).
* Durations are integer milliseconds or strings with a unit (``500ms``,
  ``30s``, ``5m``, ``1h``, ``2d``, ``1w``); YAML keys of durations drop the
  ``_ms`` of the field name (``key_valid_for`` -> ``key_valid_for_ms``).
* ``load_config`` is the only reader of the file and ``parse_config`` the only
  interpreter of its data; they live beside the schema on purpose (they change
  together), which puts this module a little over STYLE.md's ~600-line aim.
* Relative paths stay relative to the working directory (as in Synapse), not
  to the config file's directory.
* A file holding only comments (an empty document) means "all defaults".

Synapse habits accepted on purpose: ``database.name: psycopg2`` as an alias of
``postgres``, ``database.args.dbname`` for ``database``, ``database.args``
``cp_min``/``cp_max`` (the PostgreSQL read pool's bounds), Synapse-style
listener ``resources: [{names: [...], compress: false}]`` and listener keys
``type: http``, ``tls``, ``x_forwarded``, and ``presence.presence_router`` as
an alias of the top-level ``presence_router``.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote

import yaml

from federation_presence.errors import ConfigError
from federation_presence.federation.ip_policy import DEFAULT_IP_RANGE_BLACKLIST, ip_range_problem
from federation_presence.ids import parse_server_name, parse_user_id
from federation_presence.outbound.settings import SenderSettings
from federation_presence.presence.model import PresenceSettings
from federation_presence.store import DEFAULT_APPLY_TIMEOUT_MS, DEFAULT_TXN_FILTER_CAPACITY

__all__ = [
    "RESOURCE_NAMES",
    "AccessTokenConfig",
    "Config",
    "DatabaseConfig",
    "DelegatedAuthConfig",
    "FederationConfig",
    "ListenerConfig",
    "PresenceRouterConfig",
    "TrustedKeyServer",
    "load_config",
    "parse_config",
    "parse_duration_ms",
]

RESOURCE_NAMES = frozenset({"federation", "client", "admin", "ops"})
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    port: int = 8448
    bind_addresses: tuple[str, ...] = ("127.0.0.1",)
    tls_certificate_path: Path | None = None
    tls_private_key_path: Path | None = None
    resources: frozenset[str] = RESOURCE_NAMES
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    name: Literal["sqlite3", "postgres"] = "sqlite3"
    path: Path = Path("federation-presence.db")
    dsn: str | None = None
    synchronous: Literal["full", "normal"] = "full"
    # Synapse's connection-pool bounds (PostgreSQL), accepted and kept; the
    # store does not size its pool from them yet.
    cp_min: int | None = None
    cp_max: int | None = None
    apply_timeout_ms: int = DEFAULT_APPLY_TIMEOUT_MS
    txn_filter_capacity: int = DEFAULT_TXN_FILTER_CAPACITY


@dataclass(frozen=True, slots=True)
class TrustedKeyServer:
    server_name: str
    verify_keys: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class FederationConfig:
    verify_certificates: bool = True
    ca_bundle: Path | None = None
    trusted_key_servers: tuple[TrustedKeyServer, ...] = ()
    allow_origins: tuple[str, ...] = ()
    deny_origins: tuple[str, ...] = ()
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 200
    # The largest transaction a conformant sender may build: 50 PDUs and 100
    # EDUs of up to 65,536 bytes each (9,830,400) plus the envelope, < 10 MiB.
    max_request_body_bytes: int = 10 * 1_048_576
    max_status_msg_length: int = 1024
    request_timeout_ms: int = 30_000
    txn_retention_ms: int = 24 * HOUR_MS
    ip_range_blacklist: tuple[str, ...] = DEFAULT_IP_RANGE_BLACKLIST
    ip_range_whitelist: tuple[str, ...] = ()
    key_fetch_concurrency: int = 64
    key_fetch_timeout_ms: int = 10_000
    key_fetch_contended_timeout_ms: int = 2_000


DEFAULT_ROUTER_TIMEOUT_MS = 5_000


@dataclass(frozen=True, slots=True)
class PresenceRouterConfig:
    module: str
    config: Mapping[str, object]
    timeout_ms: int = DEFAULT_ROUTER_TIMEOUT_MS  # each call to the module is cut off after this


@dataclass(frozen=True, slots=True)
class AccessTokenConfig:
    """One local user's device token (``access_tokens``)."""

    token: str
    user_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class DelegatedAuthConfig:
    """Check client tokens with a homeserver's ``/account/whoami`` (``delegated_auth``)."""

    homeserver_url: str
    cache_ttl_ms: int = 5 * 60_000
    timeout_ms: int = 10_000
    max_cached_tokens: int = 100_000


DEFAULT_FORWARD_TIMEOUT_MS = 60_000


@dataclass(frozen=True, slots=True)
class BesideConfig:
    """Running beside a homeserver: where its federation ``/send`` goes after ours (tee)."""

    homeserver_url: str
    forward_timeout_ms: int = DEFAULT_FORWARD_TIMEOUT_MS
    ca_bundle: Path | None = None


def _no_old_keys() -> Mapping[str, tuple[str, int]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    server_name: str = "localhost:8448"
    signing_key_path: Path = Path("keys/signing.key")
    key_valid_for_ms: int = 24 * HOUR_MS
    old_signing_keys: Mapping[str, tuple[str, int]] = field(default_factory=_no_old_keys)
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    database: DatabaseConfig = DatabaseConfig()
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    federation: FederationConfig = FederationConfig()
    presence_router: PresenceRouterConfig | None = None
    admin_token: str | None = None
    log_level: str = "info"
    federation_sender: SenderSettings = field(default_factory=SenderSettings)
    beside: BesideConfig | None = None
    source: str | None = None
    access_tokens: tuple[AccessTokenConfig, ...] = ()
    delegated_auth: DelegatedAuthConfig | None = None


# --- loading -----------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` that refuses duplicate keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: Path | None) -> Config:
    """The config in ``path``; ``None`` means all defaults (the embedded run)."""
    if path is None:
        return Config()
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("(file)", "no such file", source) from None
    except IsADirectoryError:
        raise ConfigError("(file)", "is a directory, not a config file", source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("(file)", f"not UTF-8 text (byte {exc.start})", source) from None
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read: {exc.strerror or exc}", source) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: safe_load + duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        if not isinstance(exc, yaml.constructor.ConstructorError):
            problem = f"YAML syntax error: {problem}"
        raise ConfigError(where, problem, source) from None
    except yaml.YAMLError as exc:
        raise ConfigError("(file)", f"YAML error: {_one_line(str(exc))}", source) from None
    return parse_config(data, source)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- values ------------------------------------------------------------------


def _describe(value: object) -> str:
    """How a YAML value is shown in an error: short and on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        shown = repr(value)
        return shown if len(shown) <= 60 else shown[:56] + "...'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_DURATION_RE = re.compile(r"\s*([0-9]+)\s*(ms|s|m|h|d|w)\s*")
_DURATION_UNIT_MS = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": HOUR_MS,
    "d": 24 * HOUR_MS,
    "w": 7 * 24 * HOUR_MS,
}


def parse_duration_ms(value: object, key: str, source: str | None) -> int:
    """``value`` (integer ms, or ``"500ms" "30s" "5m" "1h" "2d" "1w"``) in ms."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(key, f"must not be negative, got {value}", source)
        return value
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match is not None:
            return int(match[1]) * _DURATION_UNIT_MS[match[2]]
    raise ConfigError(
        key,
        "must be a duration: integer milliseconds or a number with a unit"
        f" ms, s, m, h, d or w (e.g. '30s'), got {_describe(value)}",
        source,
    )


_SIZE_RE = re.compile(r"\s*([0-9]+)\s*([KMG]?)\s*", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class _Section:
    """One mapping of the file: typed reads of its keys, each named by path."""

    def __init__(
        self, value: object, path: str, source: str | None, known: tuple[str, ...]
    ) -> None:
        self.path = path
        self.source = source
        where = path or "(top level)"
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(where, f"must be a mapping, got {_describe(value)}", source)
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(where, f"keys must be strings, got {_describe(key)}", source)
            if key not in known:
                raise ConfigError(_join(path, key), _unknown(key, known, "key"), source)
        self.data: dict[str, object] = value

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.key(name), problem, self.source)

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str) -> object:
        """The raw value of ``name`` (None when absent)."""
        return self.data.get(name)

    def string(self, name: str, default: str) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"must be a non-empty string, got {_describe(value)}")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self.data.get(name)
        return None if value is None else self.string(name, "")

    def path_value(self, name: str, default: Path) -> Path:
        return Path(self.string(name, str(default))) if self.has(name) else default

    def optional_path(self, name: str) -> Path | None:
        value = self.optional_string(name)
        return None if value is None else Path(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_describe(value)}")
        return value

    def integer(self, name: str, default: int, low: int, high: int | None = None) -> int:
        value = self.data.get(name, default)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            bound = f" {low}-{high}" if high is not None else f" >= {low}"
            raise self.error(name, f"must be an integer{bound}, got {_describe(value)}")
        return value

    def number(self, name: str, default: float) -> float:
        value = self.data.get(name, default)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.error(name, f"must be a number > 0, got {_describe(value)}")
        return float(value)

    def size(self, name: str, default: int) -> int:
        value = self.data.get(name, default)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        match = _SIZE_RE.fullmatch(value) if isinstance(value, str) else None
        if match is None or int(match[1]) == 0:
            raise self.error(
                name,
                "must be a size in bytes > 0: an integer or a number with K, M or G"
                f" (e.g. '1M'), got {_describe(value)}",
            )
        return int(match[1]) * _SIZE_UNIT[match[2].lower()]

    def duration(self, name: str, default_ms: int) -> int:
        if name not in self.data:
            return default_ms
        value = parse_duration_ms(self.data[name], self.key(name), self.source)
        if value == 0:
            raise self.error(name, "must be longer than 0")
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str) or value.lower() not in allowed:
            raise self.error(name, f"must be one of {', '.join(allowed)}, got {_describe(value)}")
        return value.lower()

    def mapping(self, name: str) -> dict[object, object]:
        """A free-form mapping value (absent or null = empty)."""
        value = self.data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(name, f"must be a mapping, got {_describe(value)}")
        return value

    def server_name(self, name: str, default: str) -> str:
        value = self.string(name, default)
        if parse_server_name(value) is None:
            raise self.error(
                name,
                "must be a server name, hostname[:port] (e.g. 'example.org' or"
                f" 'example.org:8448'), got {_describe(value)}",
            )
        return value

    def items(self, name: str) -> list[tuple[str, object]]:
        """``(dotted key, value)`` of each element of a list (absent = empty)."""
        value = self.data.get(name, [])
        if value is None:
            value = []
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, got {_describe(value)}")
        return [(f"{self.key(name)}[{i}]", item) for i, item in enumerate(value)]

    def strings(self, name: str, check: Callable[[str], str | None] | None = None) -> list[str]:
        out = []
        for key, item in self.items(name):
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(
                    key, f"must be a non-empty string, got {_describe(item)}", self.source
                )
            problem = check(item) if check is not None else None
            if problem is not None:
                raise ConfigError(key, problem, self.source)
            out.append(item)
        return out


def _unknown(name: str, known: tuple[str, ...] | frozenset[str], what: str) -> str:
    options = sorted(known)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"unknown {what}; did you mean {close[0]!r}?"
    return f"unknown {what}; known: {', '.join(options)}"


_KEY_ID_RE = re.compile(r"ed25519:[A-Za-z0-9_]+")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _ed25519_public_key_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be an unpadded base64 ed25519 public key, got {_describe(value)}"
    decoded = b""
    if _BASE64_RE.fullmatch(value):
        stripped = value.rstrip("=")
        try:
            decoded = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
    if len(decoded) != 32:
        return f"must be an unpadded base64 ed25519 public key (32 bytes), got {_describe(value)}"
    return None


def _key_id_problem(key_id: object) -> str | None:
    if isinstance(key_id, str) and _KEY_ID_RE.fullmatch(key_id):
        return None
    return (
        "key id must look like 'ed25519:<version>' (version of [A-Za-z0-9_]),"
        f" got {_describe(key_id)}"
    )


# --- sections ----------------------------------------------------------------


def _yaml_keys(cls: type, *exclude: str) -> tuple[str, ...]:
    """The YAML keys of a section: its field names, durations without ``_ms``."""
    return tuple(f.name.removesuffix("_ms") for f in fields(cls) if f.name not in exclude)


_TOP_KEYS = _yaml_keys(Config, "source")


def parse_config(data: object, source: str | None) -> Config:
    """A ``Config`` from a parsed YAML document (``None`` = all defaults)."""
    top = _Section(data, "", source, _TOP_KEYS)
    defaults = Config()
    presence, nested_router = _presence(top.get("presence"), source)
    router_value = top.get("presence_router")
    router = None if router_value is None else _router(router_value, "presence_router", source)
    if router is not None and nested_router is not None:
        raise top.error(
            "presence_router", "given twice: also as presence.presence_router; keep one"
        )
    admin_token = top.optional_string("admin_token")
    if admin_token is not None and any(c.isspace() for c in admin_token):
        raise top.error("admin_token", "must not contain whitespace")
    server_name = top.server_name("server_name", defaults.server_name)
    return Config(
        server_name=server_name,
        signing_key_path=top.path_value("signing_key_path", defaults.signing_key_path),
        key_valid_for_ms=_key_valid_for(top, defaults.key_valid_for_ms),
        old_signing_keys=_old_signing_keys(top),
        listeners=_listeners(top),
        database=_database(top.get("database"), source),
        presence=presence,
        federation=_federation(top.get("federation"), source),
        presence_router=router if router is not None else nested_router,
        admin_token=admin_token,
        log_level=top.choice("log_level", defaults.log_level, LOG_LEVELS),
        federation_sender=_federation_sender(top.get("federation_sender"), source),
        beside=_beside(top.get("beside"), source),
        source=source,
        access_tokens=_access_tokens(top, server_name, admin_token),
        delegated_auth=_delegated_auth(top.get("delegated_auth"), source),
    )


def _key_valid_for(top: _Section, default_ms: int) -> int:
    value = top.duration("key_valid_for", default_ms)
    if value < HOUR_MS:
        raise top.error(
            "key_valid_for",
            "must be at least 1h (the spec says servers should not publish keys"
            f" that expire within the hour), got {value} ms",
        )
    return value


def _old_signing_keys(top: _Section) -> Mapping[str, tuple[str, int]]:
    keys: dict[str, tuple[str, int]] = {}
    for key_id, entry in top.mapping("old_signing_keys").items():
        path = f"old_signing_keys.{key_id}"
        problem = _key_id_problem(key_id)
        if problem is not None:
            raise ConfigError(path, problem, top.source)
        item = _Section(entry, path, top.source, ("key", "expired_ts"))
        for required in ("key", "expired_ts"):
            if not item.has(required):
                raise item.error(required, "required")
        key_problem = _ed25519_public_key_problem(item.get("key"))
        if key_problem is not None:
            raise item.error("key", key_problem)
        keys[str(key_id)] = (str(item.get("key")).rstrip("="), item.integer("expired_ts", 0, 0))
    return MappingProxyType(keys)


# Synapse's listener keys, accepted so that its listener blocks paste in:
# ``type`` (only ``http``), ``tls`` (false, or true with our two TLS paths),
# ``x_forwarded`` (no effect: the client address only appears in logs).
_SYNAPSE_LISTENER_KEYS = ("type", "tls", "x_forwarded")
_LISTENER_KEYS = (*_yaml_keys(ListenerConfig), *_SYNAPSE_LISTENER_KEYS)
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,253})?")


def _bind_address_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(value):
            return f"must be an IP address or hostname, got {_describe(value)}"
    return None


def _listeners(top: _Section) -> tuple[ListenerConfig, ...]:
    if not top.has("listeners"):
        return Config().listeners
    items = top.items("listeners")
    if not items:
        raise top.error("listeners", "must list at least one listener")
    listeners: list[ListenerConfig] = []
    taken: dict[tuple[str, int], str] = {}
    for path, item in items:
        section = _Section(item, path, top.source, _LISTENER_KEYS)
        default = ListenerConfig()
        port = section.integer("port", default.port, 1, 65535)
        if section.has("bind_addresses"):
            addresses = tuple(section.strings("bind_addresses", _bind_address_problem))
            if not addresses:
                raise section.error("bind_addresses", "must list at least one address")
        else:
            addresses = default.bind_addresses
        for address in addresses:
            clash = taken.get((address, port))
            if clash is not None:
                raise section.error("port", f"{address}:{port} is already used by {clash}")
            taken[(address, port)] = path
        cert = section.optional_path("tls_certificate_path")
        key = section.optional_path("tls_private_key_path")
        if (cert is None) != (key is None):
            given, missing = (
                ("tls_certificate_path", "tls_private_key_path")
                if cert is not None
                else ("tls_private_key_path", "tls_certificate_path")
            )
            raise section.error(missing, f"required when {given} is set (TLS needs both)")
        _synapse_listener_keys(section, tls=cert is not None)
        listeners.append(
            ListenerConfig(
                port=port,
                bind_addresses=addresses,
                tls_certificate_path=cert,
                tls_private_key_path=key,
                resources=_resources(section) if section.has("resources") else default.resources,
                header_timeout_ms=section.duration("header_timeout", default.header_timeout_ms),
                body_timeout_ms=section.duration("body_timeout", default.body_timeout_ms),
            )
        )
    return tuple(listeners)


def _synapse_listener_keys(section: _Section, *, tls: bool) -> None:
    """Check the Synapse listener keys we accept (see ``_SYNAPSE_LISTENER_KEYS``)."""
    if section.has("type") and section.get("type") != "http":
        raise section.error(
            "type", f"only 'http' listeners exist here, got {_describe(section.get('type'))}"
        )
    if section.boolean("tls", tls) != tls:
        raise section.error(
            "tls",
            "true needs this listener's tls_certificate_path and tls_private_key_path"
            if not tls
            else "false, but tls_certificate_path is set: drop one of them",
        )
    section.boolean("x_forwarded", False)


def _resources(section: _Section) -> frozenset[str]:
    names: list[tuple[str, object]] = []
    for key, item in section.items("resources"):
        if isinstance(item, dict):  # Synapse style: {names: [federation, client], compress: false}
            synapse_style = _Section(item, key, section.source, ("names", "compress"))
            synapse_style.boolean("compress", False)  # accepted; answers are small JSON
            names.extend(synapse_style.items("names"))
        else:
            names.append((key, item))
    for key, name in names:
        if not isinstance(name, str):
            raise ConfigError(
                key, f"must be a resource name, got {_describe(name)}", section.source
            )
        if name not in RESOURCE_NAMES:
            raise ConfigError(key, _unknown(name, RESOURCE_NAMES, "resource"), section.source)
    if not names:
        raise section.error(
            "resources", f"must name at least one of {', '.join(sorted(RESOURCE_NAMES))}"
        )
    return frozenset(str(name) for _, name in names)


_POOL_ARGS = ("cp_min", "cp_max")  # Synapse's pool bounds, not part of the DSN
_DATABASE_KEYS = ("name", "args", "synchronous")
_STORE_KEYS = ("apply_timeout", "txn_filter_capacity")
_SQLITE_ARGS = ("database", *_POOL_ARGS)
_POSTGRES_ARGS = ("user", "password", "host", "port", "database", "dbname", "dsn", *_POOL_ARGS)


def _database(value: object, source: str | None) -> DatabaseConfig:
    section = _Section(value, "database", source, (*_DATABASE_KEYS, *_STORE_KEYS))
    name = section.choice("name", "sqlite3", ("sqlite3", "postgres", "psycopg2"))
    apply_timeout_ms = section.duration("apply_timeout", DEFAULT_APPLY_TIMEOUT_MS)
    txn_filter_capacity = section.integer("txn_filter_capacity", DEFAULT_TXN_FILTER_CAPACITY, 0)
    if name == "sqlite3":
        args = _Section(section.get("args"), "database.args", source, _SQLITE_ARGS)
        synchronous = section.choice("synchronous", "full", ("full", "normal"))
        cp_min, cp_max = _pool_bounds(args)
        return DatabaseConfig(
            name="sqlite3",
            path=args.path_value("database", DatabaseConfig().path),
            synchronous="normal" if synchronous == "normal" else "full",
            cp_min=cp_min,
            cp_max=cp_max,
            apply_timeout_ms=apply_timeout_ms,
            txn_filter_capacity=txn_filter_capacity,
        )
    if section.has("synchronous"):
        raise section.error("synchronous", "applies only to sqlite3 (PostgreSQL always fsyncs)")
    if not section.has("args"):
        raise section.error("args", "required for postgres: give dsn, or database and the rest")
    args = _Section(section.get("args"), "database.args", source, _POSTGRES_ARGS)
    cp_min, cp_max = _pool_bounds(args)
    return DatabaseConfig(
        name="postgres",
        dsn=_postgres_dsn(args),
        cp_min=cp_min,
        cp_max=cp_max,
        apply_timeout_ms=apply_timeout_ms,
        txn_filter_capacity=txn_filter_capacity,
    )


def _pool_bounds(args: _Section) -> tuple[int | None, int | None]:
    """Synapse's ``cp_min``/``cp_max``: checked; they size PostgreSQL's read pool
    (SQLite has one connection and ignores them)."""
    cp_min = args.integer("cp_min", 1, 1) if args.has("cp_min") else None
    cp_max = args.integer("cp_max", 1, 1) if args.has("cp_max") else None
    if cp_min is not None and cp_max is not None and cp_min > cp_max:
        raise args.error("cp_min", f"must not exceed cp_max ({cp_max}), got {cp_min}")
    return cp_min, cp_max


def _postgres_dsn(args: _Section) -> str:
    """A ``postgresql://`` URL (asyncpg and psycopg both take it) from Synapse-style args."""
    if args.has("dsn"):
        others = sorted(k for k in args.data if k not in ("dsn", *_POOL_ARGS))
        if others:
            raise args.error("dsn", f"give either dsn or {', '.join(others)}, not both")
        return args.string("dsn", "")
    if args.has("database") and args.has("dbname"):
        raise args.error("dbname", "same as database; keep one")
    db_key = "dbname" if args.has("dbname") else "database"
    if not args.has(db_key):
        raise args.error("database", "required for postgres (or give dsn)")
    database = args.string(db_key, "")
    user = args.optional_string("user")
    password = args.optional_string("password")
    host = args.optional_string("host")
    port = args.integer("port", 5432, 1, 65535) if args.has("port") else None
    netloc = ""
    if user is not None or password is not None:
        netloc = quote(user or "", safe="")
        netloc += f":{quote(password, safe='')}" if password is not None else ""
        netloc += "@"
    socket_dir = host is not None and host.startswith("/")
    if host is not None and not socket_dir:
        netloc += f"[{host}]" if ":" in host and not host.startswith("[") else host
    netloc += f":{port}" if port is not None else ""
    url = f"postgresql://{netloc}/{quote(database, safe='')}"
    return f"{url}?host={quote(host, safe='')}" if socket_dir and host else url


_PRESENCE_TIMERS = _yaml_keys(PresenceSettings, "offline_cache_size")


def _presence(
    value: object, source: str | None
) -> tuple[PresenceSettings, PresenceRouterConfig | None]:
    section = _Section(
        value, "presence", source, (*_PRESENCE_TIMERS, "offline_cache_size", "presence_router")
    )
    defaults = PresenceSettings()
    settings = PresenceSettings(
        **{
            f"{name}_ms": section.duration(name, getattr(defaults, f"{name}_ms"))
            for name in _PRESENCE_TIMERS
        },
        offline_cache_size=section.integer("offline_cache_size", defaults.offline_cache_size, 0),
    )
    router_value = section.get("presence_router")
    if router_value is None:
        return settings, None
    return settings, _router(router_value, "presence.presence_router", source)


_MODULE_RE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _router(value: object, path: str, source: str | None) -> PresenceRouterConfig:
    section = _Section(value, path, source, ("module", "config", "timeout"))
    if not section.has("module"):
        raise section.error("module", "required: the router class, 'package.module.ClassName'")
    module = section.string("module", "")
    if not _MODULE_RE.fullmatch(module):
        raise section.error(
            "module", f"must be a dotted path 'package.module.ClassName', got {_describe(module)}"
        )
    config = {str(k): v for k, v in section.mapping("config").items()}
    timeout_ms = section.duration("timeout", DEFAULT_ROUTER_TIMEOUT_MS)
    return PresenceRouterConfig(
        module=module, config=MappingProxyType(config), timeout_ms=timeout_ms
    )


_FEDERATION_KEYS = _yaml_keys(FederationConfig)


def _origin_glob_problem(value: str) -> str | None:
    if any(c.isspace() for c in value):
        return f"must be a server name glob without spaces, got {_describe(value)}"
    return None


def _federation(value: object, source: str | None) -> FederationConfig:
    section = _Section(value, "federation", source, _FEDERATION_KEYS)
    d = FederationConfig()
    return FederationConfig(
        verify_certificates=section.boolean("verify_certificates", d.verify_certificates),
        ca_bundle=section.optional_path("ca_bundle"),
        trusted_key_servers=tuple(
            _trusted_key_server(item, path, source)
            for path, item in section.items("trusted_key_servers")
        ),
        allow_origins=tuple(section.strings("allow_origins", _origin_glob_problem)),
        deny_origins=tuple(section.strings("deny_origins", _origin_glob_problem)),
        rate_limit_per_second=section.number("rate_limit_per_second", d.rate_limit_per_second),
        rate_limit_burst=section.integer("rate_limit_burst", d.rate_limit_burst, 1),
        max_request_body_bytes=section.size("max_request_body_bytes", d.max_request_body_bytes),
        max_status_msg_length=section.integer("max_status_msg_length", d.max_status_msg_length, 1),
        request_timeout_ms=section.duration("request_timeout", d.request_timeout_ms),
        txn_retention_ms=section.duration("txn_retention", d.txn_retention_ms),
        ip_range_blacklist=(
            tuple(section.strings("ip_range_blacklist", ip_range_problem))
            if section.has("ip_range_blacklist")
            else d.ip_range_blacklist
        ),
        ip_range_whitelist=tuple(section.strings("ip_range_whitelist", ip_range_problem)),
        key_fetch_concurrency=section.integer(
            "key_fetch_concurrency", d.key_fetch_concurrency, 1, 4096
        ),
        key_fetch_timeout_ms=section.duration("key_fetch_timeout", d.key_fetch_timeout_ms),
        key_fetch_contended_timeout_ms=section.duration(
            "key_fetch_contended_timeout", d.key_fetch_contended_timeout_ms
        ),
    )


def _trusted_key_server(value: object, path: str, source: str | None) -> TrustedKeyServer:
    section = _Section(value, path, source, ("server_name", "verify_keys"))
    if not section.has("server_name"):
        raise section.error("server_name", "required")
    server_name = section.server_name("server_name", "")
    verify_keys: dict[str, str] = {}
    for key_id, key in section.mapping("verify_keys").items():
        problem = _key_id_problem(key_id) or _ed25519_public_key_problem(key)
        if problem is not None:
            raise ConfigError(f"{section.key('verify_keys')}.{key_id}", problem, source)
        verify_keys[str(key_id)] = str(key).rstrip("=")
    return TrustedKeyServer(server_name=server_name, verify_keys=MappingProxyType(verify_keys))


# --- local users' tokens (auth.py) ---------------------------------------------


def _access_tokens(
    top: _Section, server_name: str, admin_token: str | None
) -> tuple[AccessTokenConfig, ...]:
    out: list[AccessTokenConfig] = []
    seen: set[str] = set()
    for key, item in top.items("access_tokens"):
        entry = _Section(item, key, top.source, ("token", "user_id", "device_id"))
        for name in ("token", "user_id"):
            if not entry.has(name):
                raise entry.error(name, "required")
        token = entry.string("token", "")
        if any(c.isspace() for c in token):
            raise entry.error("token", "must not contain whitespace")
        if token in seen or token == admin_token:
            raise entry.error("token", "given twice (or equal to admin_token): tokens must differ")
        seen.add(token)
        user_id = entry.string("user_id", "")
        parsed = parse_user_id(user_id)
        if parsed is None:
            raise entry.error("user_id", f"must be a user ID '@local:server', got {user_id!r}")
        if parsed[1] != server_name:
            raise entry.error("user_id", f"must be a user of server_name {server_name!r}")
        device_id = entry.string("device_id", "") if entry.has("device_id") else ""
        out.append(AccessTokenConfig(token, user_id, device_id))
    return tuple(out)


def _delegated_auth(value: object, source: str | None) -> DelegatedAuthConfig | None:
    if value is None:
        return None
    section = _Section(value, "delegated_auth", source, _yaml_keys(DelegatedAuthConfig))
    if not section.has("homeserver_url"):
        raise section.error("homeserver_url", "required, e.g. 'http://127.0.0.1:8008'")
    url = section.string("homeserver_url", "")
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        raise section.error("homeserver_url", f"must be an http(s) URL, got {url!r}")
    defaults = DelegatedAuthConfig(url)
    return DelegatedAuthConfig(
        homeserver_url=url,
        cache_ttl_ms=section.duration("cache_ttl", defaults.cache_ttl_ms),
        timeout_ms=section.duration("timeout", defaults.timeout_ms),
        max_cached_tokens=section.integer("max_cached_tokens", defaults.max_cached_tokens, 1),
    )


_SENDER_KEYS = _yaml_keys(SenderSettings)
_TXN_ID_PREFIX_RE = re.compile(r"[A-Za-z0-9._~-]{1,32}")


def _txn_id_prefix_problem(value: str) -> str | None:
    if _TXN_ID_PREFIX_RE.fullmatch(value) is None:
        return f"must be 1-32 of A-Z a-z 0-9 . _ ~ -, got {_describe(value)}"
    return None


def _federation_sender(value: object, source: str | None) -> SenderSettings:
    section = _Section(value, "federation_sender", source, _SENDER_KEYS)
    d = SenderSettings()
    instances = tuple(section.strings("instances"))
    if len(set(instances)) != len(instances):
        raise section.error("instances", "lists an instance twice")
    instance_name = section.string("instance_name", d.instance_name)
    if instances and instance_name not in instances:
        raise section.error(
            "instance_name", f"{instance_name!r} is not one of instances {list(instances)}"
        )
    prefix = section.string("txn_id_prefix", d.txn_id_prefix)
    problem = _txn_id_prefix_problem(prefix)
    if problem is not None:
        raise section.error("txn_id_prefix", problem)
    jitter = section.number("backoff_jitter", d.backoff_jitter)
    if jitter >= 1:
        raise section.error("backoff_jitter", f"must be below 1, got {jitter!r}")
    settings = SenderSettings(
        enabled=section.boolean("enabled", d.enabled),
        instance_name=instance_name,
        instances=instances,
        linger_ms=section.duration("linger", d.linger_ms),
        pushes_per_edu=section.integer("pushes_per_edu", d.pushes_per_edu, 1, 1000),
        edus_per_transaction=section.integer(
            "edus_per_transaction", d.edus_per_transaction, 1, 100
        ),
        transaction_timeout_ms=section.duration("transaction_timeout", d.transaction_timeout_ms),
        connect_timeout_ms=_optional_duration(section, "connect_timeout"),
        read_timeout_ms=_optional_duration(section, "read_timeout"),
        backoff_initial_ms=section.duration("backoff_initial", d.backoff_initial_ms),
        backoff_max_ms=section.duration("backoff_max", d.backoff_max_ms),
        backoff_jitter=jitter,
        txn_id_prefix=prefix,
    )
    if settings.backoff_max_ms < settings.backoff_initial_ms:
        raise section.error("backoff_max", "must not be shorter than backoff_initial")
    for name, value in (
        ("connect_timeout", settings.connect_timeout_ms),
        ("read_timeout", settings.read_timeout_ms),
    ):
        if value is not None and value > settings.transaction_timeout_ms:
            raise section.error(name, "must not be longer than transaction_timeout")
    return settings


def _optional_duration(section: _Section, name: str) -> int | None:
    """A duration, or None when absent or null (the caller's default applies)."""
    return None if section.get(name) is None else section.duration(name, 0)


def _beside(value: object, source: str | None) -> BesideConfig | None:
    """``beside``: absent or null = standalone (``/send`` served by the worker alone)."""
    if value is None:
        return None
    section = _Section(value, "beside", source, _yaml_keys(BesideConfig))
    url = section.string("homeserver_url", "")
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest.strip("/"):
        raise section.error(
            "homeserver_url",
            f"must be an http:// or https:// URL of the homeserver (e.g. 'http://127.0.0.1:8008'),"
            f" got {_describe(url)}",
        )
    return BesideConfig(
        homeserver_url=url,
        forward_timeout_ms=section.duration("forward_timeout", DEFAULT_FORWARD_TIMEOUT_MS),
        ca_bundle=section.optional_path("ca_bundle"),
    )
