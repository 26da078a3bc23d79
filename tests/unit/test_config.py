"""Tests of ``federation_presence.config``: every key's happy path, the exact
error line of a representative set of mistakes, durations, and the file-level
failures (missing file, YAML syntax, duplicates).

``parse_config`` is fed plain data as ``yaml.safe_load`` returns it; the file
tests go through ``load_config`` on real files in ``tmp_path``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from federation_presence.config import (
    Config,
    DatabaseConfig,
    FederationConfig,
    ListenerConfig,
    PresenceRouterConfig,
    TrustedKeyServer,
    load_config,
    parse_config,
    parse_duration_ms,
)
from federation_presence.errors import ConfigError
from federation_presence.presence.model import PresenceSettings

KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")
OTHER_KEY = base64.b64encode(bytes(range(32, 64))).decode().rstrip("=")
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "federation-presence.example.yaml"
SRC = "fp.yaml"


def _parse(data: object) -> Config:
    return parse_config(data, SRC)


def _error(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, SRC)
    return str(caught.value)


# --- happy paths: (YAML data, what to read, expected) -------------------------

Read = Callable[[Config], object]

HAPPY: list[tuple[str, dict[str, Any], Read, object]] = [
    ("server_name", {"server_name": "example.org"}, lambda c: c.server_name, "example.org"),
    ("server_name port", {"server_name": "hs.test:8448"}, lambda c: c.server_name, "hs.test:8448"),
    ("server_name ipv6", {"server_name": "[::1]:8448"}, lambda c: c.server_name, "[::1]:8448"),
    (
        "signing_key_path",
        {"signing_key_path": "/etc/fp/key"},
        lambda c: c.signing_key_path,
        Path("/etc/fp/key"),
    ),
    ("key_valid_for unit", {"key_valid_for": "2h"}, lambda c: c.key_valid_for_ms, 7_200_000),
    ("key_valid_for ms", {"key_valid_for": 3_600_000}, lambda c: c.key_valid_for_ms, 3_600_000),
    (
        "old_signing_keys",
        {"old_signing_keys": {"ed25519:a_1": {"key": KEY, "expired_ts": 5}}},
        lambda c: dict(c.old_signing_keys),
        {"ed25519:a_1": (KEY, 5)},
    ),
    (
        "old_signing_keys padded key is stored unpadded",
        {"old_signing_keys": {"ed25519:a_1": {"key": KEY + "=", "expired_ts": 0}}},
        lambda c: c.old_signing_keys["ed25519:a_1"][0],
        KEY,
    ),
    ("old_signing_keys null", {"old_signing_keys": None}, lambda c: dict(c.old_signing_keys), {}),
    (
        "listener all keys",
        {
            "listeners": [
                {
                    "port": 8443,
                    "bind_addresses": ["::", "0.0.0.0"],
                    "tls_certificate_path": "c.pem",
                    "tls_private_key_path": "k.pem",
                    "resources": ["federation", "ops"],
                }
            ]
        },
        lambda c: c.listeners,
        (
            ListenerConfig(
                port=8443,
                bind_addresses=("::", "0.0.0.0"),
                tls_certificate_path=Path("c.pem"),
                tls_private_key_path=Path("k.pem"),
                resources=frozenset({"federation", "ops"}),
            ),
        ),
    ),
    (
        "listener defaults",
        {"listeners": [{}]},
        lambda c: c.listeners,
        (ListenerConfig(),),
    ),
    (
        "listener hostname bind address",
        {"listeners": [{"bind_addresses": ["localhost"]}]},
        lambda c: c.listeners[0].bind_addresses,
        ("localhost",),
    ),
    (
        "listener Synapse-style resources",
        {"listeners": [{"resources": [{"names": ["client", "federation"]}, "ops"]}]},
        lambda c: c.listeners[0].resources,
        frozenset({"client", "federation", "ops"}),
    ),
    (
        "two listeners on one port, different addresses",
        {"listeners": [{"bind_addresses": ["127.0.0.1"]}, {"bind_addresses": ["::1"]}]},
        lambda c: len(c.listeners),
        2,
    ),
    (
        "sqlite3",
        {"database": {"name": "sqlite3", "synchronous": "normal", "args": {"database": "x.db"}}},
        lambda c: c.database,
        DatabaseConfig(name="sqlite3", path=Path("x.db"), synchronous="normal"),
    ),
    ("sqlite3 default", {"database": None}, lambda c: c.database, DatabaseConfig()),
    (
        "postgres dsn",
        {"database": {"name": "postgres", "args": {"dsn": "postgresql://u@h/db"}}},
        lambda c: c.database,
        DatabaseConfig(name="postgres", dsn="postgresql://u@h/db"),
    ),
    (
        "psycopg2 is an alias of postgres",
        {"database": {"name": "psycopg2", "args": {"dbname": "db"}}},
        lambda c: (c.database.name, c.database.dsn),
        ("postgres", "postgresql:///db"),
    ),
    (
        "postgres from args",
        {
            "database": {
                "name": "postgres",
                "args": {
                    "user": "fp",
                    "password": "pw",
                    "host": "db.test",
                    "port": 5433,
                    "database": "presence",
                },
            }
        },
        lambda c: c.database.dsn,
        "postgresql://fp:pw@db.test:5433/presence",
    ),
    (
        "presence idle_timeout",
        {"presence": {"idle_timeout": "10m"}},
        lambda c: c.presence.idle_timeout_ms,
        600_000,
    ),
    (
        "presence offline_cache_size",
        {"presence": {"offline_cache_size": 0}},
        lambda c: c.presence.offline_cache_size,
        0,
    ),
    (
        "presence sync_timeout",
        {"presence": {"sync_timeout": 45_000}},
        lambda c: c.presence.sync_timeout_ms,
        45_000,
    ),
    (
        "presence federation_timeout",
        {"presence": {"federation_timeout": "1h"}},
        lambda c: c.presence.federation_timeout_ms,
        3_600_000,
    ),
    (
        "presence federation_ping_interval",
        {"presence": {"federation_ping_interval": "20m"}},
        lambda c: c.presence.federation_ping_interval_ms,
        1_200_000,
    ),
    (
        "presence last_active_granularity",
        {"presence": {"last_active_granularity": "2m"}},
        lambda c: c.presence.last_active_granularity_ms,
        120_000,
    ),
    (
        "presence currently_active_window",
        {"presence": {"currently_active_window": "90s"}},
        lambda c: c.presence.currently_active_window_ms,
        90_000,
    ),
    ("presence empty", {"presence": {}}, lambda c: c.presence, PresenceSettings()),
    (
        "federation verify_certificates",
        {"federation": {"verify_certificates": False}},
        lambda c: c.federation.verify_certificates,
        False,
    ),
    (
        "federation ca_bundle",
        {"federation": {"ca_bundle": "ca.pem"}},
        lambda c: c.federation.ca_bundle,
        Path("ca.pem"),
    ),
    (
        "federation trusted_key_servers",
        {
            "federation": {
                "trusted_key_servers": [
                    {"server_name": "matrix.org", "verify_keys": {"ed25519:auto": KEY}},
                    {"server_name": "notary.test"},
                ]
            }
        },
        lambda c: c.federation.trusted_key_servers,
        (
            TrustedKeyServer("matrix.org", {"ed25519:auto": KEY}),
            TrustedKeyServer("notary.test", {}),
        ),
    ),
    (
        "federation allow_origins",
        {"federation": {"allow_origins": ["*.test", "a.org"]}},
        lambda c: c.federation.allow_origins,
        ("*.test", "a.org"),
    ),
    (
        "federation deny_origins",
        {"federation": {"deny_origins": ["evil.*"]}},
        lambda c: c.federation.deny_origins,
        ("evil.*",),
    ),
    (
        "federation rate_limit_per_second int",
        {"federation": {"rate_limit_per_second": 5}},
        lambda c: c.federation.rate_limit_per_second,
        5.0,
    ),
    (
        "federation rate_limit_per_second float",
        {"federation": {"rate_limit_per_second": 0.5}},
        lambda c: c.federation.rate_limit_per_second,
        0.5,
    ),
    (
        "federation rate_limit_burst",
        {"federation": {"rate_limit_burst": 1}},
        lambda c: c.federation.rate_limit_burst,
        1,
    ),
    (
        "federation max_request_body_bytes",
        {"federation": {"max_request_body_bytes": 4096}},
        lambda c: c.federation.max_request_body_bytes,
        4096,
    ),
    (
        "federation max_request_body_bytes size",
        {"federation": {"max_request_body_bytes": "2M"}},
        lambda c: c.federation.max_request_body_bytes,
        2 * 1024 * 1024,
    ),
    (
        "federation max_request_body_bytes k",
        {"federation": {"max_request_body_bytes": "64k"}},
        lambda c: c.federation.max_request_body_bytes,
        65_536,
    ),
    (
        "federation max_status_msg_length",
        {"federation": {"max_status_msg_length": 10}},
        lambda c: c.federation.max_status_msg_length,
        10,
    ),
    (
        "federation request_timeout",
        {"federation": {"request_timeout": "5s"}},
        lambda c: c.federation.request_timeout_ms,
        5_000,
    ),
    (
        "federation txn_retention",
        {"federation": {"txn_retention": "1w"}},
        lambda c: c.federation.txn_retention_ms,
        604_800_000,
    ),
    ("federation empty", {"federation": None}, lambda c: c.federation, FederationConfig()),
    (
        "presence_router",
        {"presence_router": {"module": "pkg.mod.Router", "config": {"a": [1]}}},
        lambda c: c.presence_router,
        PresenceRouterConfig("pkg.mod.Router", {"a": [1]}),
    ),
    (
        "presence_router in Synapse's place",
        {"presence": {"presence_router": {"module": "pkg.Router"}}},
        lambda c: c.presence_router,
        PresenceRouterConfig("pkg.Router", {}),
    ),
    (
        "presence_router timeout",
        {"presence_router": {"module": "pkg.Router", "timeout": "250ms"}},
        lambda c: c.presence_router.timeout_ms,
        250,
    ),
    ("presence_router null", {"presence_router": None}, lambda c: c.presence_router, None),
    ("admin_token", {"admin_token": "s3cret-token"}, lambda c: c.admin_token, "s3cret-token"),
    ("log_level lower-cased", {"log_level": "DEBUG"}, lambda c: c.log_level, "debug"),
]


@pytest.mark.parametrize(
    ("data", "read", "expected"),
    [pytest.param(data, read, expected, id=name) for name, data, read, expected in HAPPY],
)
def test_each_key_is_read_into_its_field(
    data: dict[str, Any], read: Read, expected: object
) -> None:
    assert read(_parse(data)) == expected


def test_no_data_means_the_defaults_of_the_schema() -> None:
    assert parse_config(None, SRC) == Config(source=SRC)
    assert parse_config({}, SRC) == Config(source=SRC)
    assert load_config(None) == Config()


def test_embedded_defaults_are_the_documented_ones() -> None:
    config = Config()
    assert config.server_name == "localhost:8448"
    assert config.signing_key_path == Path("keys/signing.key")
    assert config.listeners == (
        ListenerConfig(
            8448, ("127.0.0.1",), None, None, frozenset({"federation", "client", "admin", "ops"})
        ),
    )
    assert config.database == DatabaseConfig(
        "sqlite3", Path("federation-presence.db"), None, "full"
    )
    assert config.key_valid_for_ms == 86_400_000
    assert config.admin_token is None
    assert config.log_level == "info"


def test_config_values_are_frozen() -> None:
    config = _parse({"old_signing_keys": {"ed25519:a": {"key": KEY, "expired_ts": 1}}})
    with pytest.raises(AttributeError):
        config.server_name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.old_signing_keys["ed25519:b"] = (KEY, 2)  # type: ignore[index]


# --- errors: (YAML data, the exact line) --------------------------------------

ERRORS: list[tuple[str, object, str]] = [
    ("top level list", ["a"], "fp.yaml: (top level): must be a mapping, got a list"),
    ("top level scalar", "hello", "fp.yaml: (top level): must be a mapping, got 'hello'"),
    ("non-string key", {1: "x"}, "fp.yaml: (top level): keys must be strings, got 1"),
    (
        "unknown key, close",
        {"server_nam": "x"},
        "fp.yaml: server_nam: unknown key; did you mean 'server_name'?",
    ),
    (
        "unknown key, far",
        {"zzz": 1},
        "fp.yaml: zzz: unknown key; known: access_tokens, admin_token, beside, database, "
        "delegated_auth, federation, federation_sender, key_valid_for, listeners, log_level, "
        "old_signing_keys, presence, presence_router, server_name, signing_key_path",
    ),
    (
        "unknown nested key",
        {"listeners": [{"prot": 1}]},
        "fp.yaml: listeners[0].prot: unknown key; did you mean 'port'?",
    ),
    (
        "unknown federation key keeps _ms out",
        {"federation": {"request_timeout_ms": 1}},
        "fp.yaml: federation.request_timeout_ms: unknown key; did you mean 'request_timeout'?",
    ),
    (
        "port as string",
        {"listeners": [{"port": "abc"}]},
        "fp.yaml: listeners[0].port: must be an integer 1-65535, got 'abc'",
    ),
    (
        "port quoted number",
        {"listeners": [{"port": "8448"}]},
        "fp.yaml: listeners[0].port: must be an integer 1-65535, got '8448'",
    ),
    (
        "port out of range",
        {"listeners": [{}, {"port": 70000}]},
        "fp.yaml: listeners[1].port: must be an integer 1-65535, got 70000",
    ),
    (
        "port zero",
        {"listeners": [{"port": 0}]},
        "fp.yaml: listeners[0].port: must be an integer 1-65535, got 0",
    ),
    (
        "port bool",
        {"listeners": [{"port": True}]},
        "fp.yaml: listeners[0].port: must be an integer 1-65535, got true",
    ),
    ("listeners empty", {"listeners": []}, "fp.yaml: listeners: must list at least one listener"),
    (
        "listeners not a list",
        {"listeners": {"port": 1}},
        "fp.yaml: listeners: must be a list, got a mapping",
    ),
    (
        "listener not a mapping",
        {"listeners": [8448]},
        "fp.yaml: listeners[0]: must be a mapping, got 8448",
    ),
    (
        "cert without key",
        {"listeners": [{"tls_certificate_path": "c.pem"}]},
        "fp.yaml: listeners[0].tls_private_key_path: required when tls_certificate_path is set "
        "(TLS needs both)",
    ),
    (
        "key without cert",
        {"listeners": [{"tls_private_key_path": "k.pem"}]},
        "fp.yaml: listeners[0].tls_certificate_path: required when tls_private_key_path is set "
        "(TLS needs both)",
    ),
    (
        "same address and port twice",
        {"listeners": [{}, {"resources": ["ops"]}]},
        "fp.yaml: listeners[1].port: 127.0.0.1:8448 is already used by listeners[0]",
    ),
    (
        "bad bind address",
        {"listeners": [{"bind_addresses": ["not an address"]}]},
        "fp.yaml: listeners[0].bind_addresses[0]: must be an IP address or hostname, "
        "got 'not an address'",
    ),
    (
        "unknown resource",
        {"listeners": [{"resources": ["federaton"]}]},
        "fp.yaml: listeners[0].resources[0]: unknown resource; did you mean 'federation'?",
    ),
    (
        "empty resources",
        {"listeners": [{"resources": []}]},
        "fp.yaml: listeners[0].resources: must name at least one of admin, client, federation, ops",
    ),
    (
        "bad server_name",
        {"server_name": "exa mple.org"},
        "fp.yaml: server_name: must be a server name, hostname[:port] (e.g. 'example.org' or "
        "'example.org:8448'), got 'exa mple.org'",
    ),
    (
        "server_name bad port",
        {"server_name": "example.org:99999"},
        "fp.yaml: server_name: must be a server name, hostname[:port] (e.g. 'example.org' or "
        "'example.org:8448'), got 'example.org:99999'",
    ),
    (
        "server_name not a string",
        {"server_name": 12},
        "fp.yaml: server_name: must be a non-empty string, got 12",
    ),
    (
        "bool as string",
        {"federation": {"verify_certificates": "yes"}},
        "fp.yaml: federation.verify_certificates: must be true or false, got 'yes'",
    ),
    (
        "bool as int",
        {"federation": {"verify_certificates": 1}},
        "fp.yaml: federation.verify_certificates: must be true or false, got 1",
    ),
    (
        "bad duration",
        {"presence": {"idle_timeout": "5 minutes"}},
        "fp.yaml: presence.idle_timeout: must be a duration: integer milliseconds or a number with "
        "a unit ms, s, m, h, d or w (e.g. '30s'), got '5 minutes'",
    ),
    (
        "negative offline cache",
        {"presence": {"offline_cache_size": -1}},
        "fp.yaml: presence.offline_cache_size: must be an integer >= 0, got -1",
    ),
    (
        "zero duration",
        {"presence": {"sync_timeout": "0s"}},
        "fp.yaml: presence.sync_timeout: must be longer than 0",
    ),
    (
        "negative duration",
        {"federation": {"request_timeout": -5}},
        "fp.yaml: federation.request_timeout: must not be negative, got -5",
    ),
    (
        "key_valid_for under an hour",
        {"key_valid_for": "30m"},
        "fp.yaml: key_valid_for: must be at least 1h (the spec says servers should not publish "
        "keys that expire within the hour), got 1800000 ms",
    ),
    (
        "rate bool",
        {"federation": {"rate_limit_per_second": True}},
        "fp.yaml: federation.rate_limit_per_second: must be a number > 0, got true",
    ),
    (
        "rate zero",
        {"federation": {"rate_limit_per_second": 0}},
        "fp.yaml: federation.rate_limit_per_second: must be a number > 0, got 0",
    ),
    (
        "rate infinite",
        {"federation": {"rate_limit_per_second": float("inf")}},
        "fp.yaml: federation.rate_limit_per_second: must be a number > 0, got inf",
    ),
    (
        "burst zero",
        {"federation": {"rate_limit_burst": 0}},
        "fp.yaml: federation.rate_limit_burst: must be an integer >= 1, got 0",
    ),
    (
        "bad size",
        {"federation": {"max_request_body_bytes": "1 MB"}},
        "fp.yaml: federation.max_request_body_bytes: must be a size in bytes > 0: an integer or a "
        "number with K, M or G (e.g. '1M'), got '1 MB'",
    ),
    (
        "origins not a list",
        {"federation": {"allow_origins": "*.test"}},
        "fp.yaml: federation.allow_origins: must be a list, got '*.test'",
    ),
    (
        "origin empty",
        {"federation": {"deny_origins": [""]}},
        "fp.yaml: federation.deny_origins[0]: must be a non-empty string, got ''",
    ),
    (
        "trusted server without name",
        {"federation": {"trusted_key_servers": [{}]}},
        "fp.yaml: federation.trusted_key_servers[0].server_name: required",
    ),
    (
        "trusted server bad key",
        {
            "federation": {
                "trusted_key_servers": [
                    {"server_name": "m.org", "verify_keys": {"ed25519:auto": "short"}}
                ]
            }
        },
        "fp.yaml: federation.trusted_key_servers[0].verify_keys.ed25519:auto: must be an unpadded "
        "base64 ed25519 public key (32 bytes), got 'short'",
    ),
    (
        "trusted server bad key id",
        {
            "federation": {
                "trusted_key_servers": [{"server_name": "m.org", "verify_keys": {"rsa:1": KEY}}]
            }
        },
        "fp.yaml: federation.trusted_key_servers[0].verify_keys.rsa:1: key id must look like "
        "'ed25519:<version>' (version of [A-Za-z0-9_]), got 'rsa:1'",
    ),
    (
        "old key missing expired_ts",
        {"old_signing_keys": {"ed25519:a": {"key": KEY}}},
        "fp.yaml: old_signing_keys.ed25519:a.expired_ts: required",
    ),
    (
        "old key not base64",
        {"old_signing_keys": {"ed25519:a": {"key": "!!", "expired_ts": 1}}},
        "fp.yaml: old_signing_keys.ed25519:a.key: must be an unpadded base64 ed25519 public key "
        "(32 bytes), got '!!'",
    ),
    (
        "old keys not a mapping",
        {"old_signing_keys": [KEY]},
        "fp.yaml: old_signing_keys: must be a mapping, got a list",
    ),
    (
        "unknown database",
        {"database": {"name": "mysql"}},
        "fp.yaml: database.name: must be one of sqlite3, postgres, psycopg2, got 'mysql'",
    ),
    (
        "postgres arg under sqlite3",
        {"database": {"args": {"user": "x"}}},
        "fp.yaml: database.args.user: unknown key; known: cp_max, cp_min, database",
    ),
    (
        "synchronous bad",
        {"database": {"synchronous": "off"}},
        "fp.yaml: database.synchronous: must be one of full, normal, got 'off'",
    ),
    (
        "synchronous on postgres",
        {"database": {"name": "postgres", "synchronous": "full", "args": {"database": "d"}}},
        "fp.yaml: database.synchronous: applies only to sqlite3 (PostgreSQL always fsyncs)",
    ),
    (
        "postgres without args",
        {"database": {"name": "postgres"}},
        "fp.yaml: database.args: required for postgres: give dsn, or database and the rest",
    ),
    (
        "postgres without database",
        {"database": {"name": "postgres", "args": {"user": "u"}}},
        "fp.yaml: database.args.database: required for postgres (or give dsn)",
    ),
    (
        "postgres dsn and args",
        {"database": {"name": "postgres", "args": {"dsn": "postgresql://", "user": "u"}}},
        "fp.yaml: database.args.dsn: give either dsn or user, not both",
    ),
    (
        "postgres port string",
        {"database": {"name": "postgres", "args": {"database": "d", "port": "5432"}}},
        "fp.yaml: database.args.port: must be an integer 1-65535, got '5432'",
    ),
    (
        "router without module",
        {"presence_router": {"config": {}}},
        "fp.yaml: presence_router.module: required: the router class, 'package.module.ClassName'",
    ),
    (
        "router module not dotted",
        {"presence_router": {"module": "Router"}},
        "fp.yaml: presence_router.module: must be a dotted path 'package.module.ClassName', "
        "got 'Router'",
    ),
    (
        "router config not a mapping",
        {"presence_router": {"module": "a.B", "config": [1]}},
        "fp.yaml: presence_router.config: must be a mapping, got a list",
    ),
    (
        "router given twice",
        {"presence_router": {"module": "a.B"}, "presence": {"presence_router": {"module": "c.D"}}},
        "fp.yaml: presence_router: given twice: also as presence.presence_router; keep one",
    ),
    (
        "admin token empty",
        {"admin_token": ""},
        "fp.yaml: admin_token: must be a non-empty string, got ''",
    ),
    (
        "admin token with space",
        {"admin_token": "a b"},
        "fp.yaml: admin_token: must not contain whitespace",
    ),
    (
        "log level",
        {"log_level": "verbose"},
        "fp.yaml: log_level: must be one of debug, info, warning, error, critical, got 'verbose'",
    ),
    (
        "signing_key_path null",
        {"signing_key_path": None},
        "fp.yaml: signing_key_path: must be a non-empty string, got null",
    ),
    (
        "long value is shortened",
        {"server_name": "x" * 100 + " y"},
        "fp.yaml: server_name: must be a server name, hostname[:port] (e.g. 'example.org' or "
        "'example.org:8448'), got '" + "x" * 55 + "...'",
    ),
]


@pytest.mark.parametrize(
    ("data", "line"), [pytest.param(data, line, id=name) for name, data, line in ERRORS]
)
def test_each_mistake_is_one_exact_line(data: object, line: str) -> None:
    assert _error(data) == line


def test_config_error_carries_key_problem_and_source() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"listeners": [{"port": "abc"}]}, SRC)
    assert (caught.value.key, caught.value.source) == ("listeners[0].port", SRC)
    assert caught.value.problem == "must be an integer 1-65535, got 'abc'"


# --- durations ----------------------------------------------------------------

DURATIONS: list[tuple[object, int]] = [
    (0, 0),
    (1500, 1500),
    ("500ms", 500),
    ("30s", 30_000),
    ("5m", 300_000),
    ("1h", 3_600_000),
    ("2d", 172_800_000),
    ("1w", 604_800_000),
    (" 10 s ", 10_000),
]


@pytest.mark.parametrize(("value", "expected"), DURATIONS)
def test_durations_are_integer_ms_or_a_number_with_a_unit(value: object, expected: int) -> None:
    assert parse_duration_ms(value, "k", SRC) == expected


@pytest.mark.parametrize(
    "value", ["30", "1.5h", "5 minutes", "10S", "", "h", True, False, None, 1.5, [], {}, "-1s"]
)
def test_anything_else_is_not_a_duration(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration_ms(value, "presence.idle_timeout", SRC)
    assert str(caught.value).startswith("fp.yaml: presence.idle_timeout: must ")


# --- postgres DSN -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            {
                "user": "p@r t",
                "password": "p:w/@?#",
                "host": "db.test",
                "port": 6543,
                "database": "my db",
            },
            {
                "user": "p@r t",
                "password": "p:w/@?#",
                "host": "db.test",
                "port": "6543",
                "dbname": "my db",
            },
        ),
        (
            {"host": "/var/run/postgresql", "database": "d"},
            {"host": "/var/run/postgresql", "dbname": "d"},
        ),
        (
            {"host": "::1", "user": "u", "database": "d"},
            {"host": "::1", "user": "u", "dbname": "d"},
        ),
        ({"dbname": "d", "password": "pw"}, {"password": "pw", "dbname": "d"}),
    ],
)
def test_postgres_args_become_a_url_that_libpq_reads_back(
    args: dict[str, object], expected: dict[str, str]
) -> None:
    dsn = _parse({"database": {"name": "postgres", "args": args}}).database.dsn
    assert dsn is not None
    assert dsn.startswith("postgresql://")
    assert conninfo_to_dict(dsn) == expected


# --- files --------------------------------------------------------------------


def _load_text(tmp_path: Path, text: str | bytes, name: str = "fp.yaml") -> Config:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return load_config(path)


def _load_error(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(ConfigError) as caught:
        _load_text(tmp_path, text)
    message = str(caught.value)
    prefix = f"{tmp_path / 'fp.yaml'}: "
    assert message.startswith(prefix)
    return message.removeprefix(prefix)


def test_a_file_is_read_and_named_as_the_source(tmp_path: Path) -> None:
    config = _load_text(tmp_path, "server_name: example.org\nlisteners:\n  - port: 8009\n")
    assert (config.server_name, config.listeners[0].port) == ("example.org", 8009)
    assert config.source == str(tmp_path / "fp.yaml")


def test_a_file_of_comments_only_means_all_defaults(tmp_path: Path) -> None:
    config = _load_text(tmp_path, "# nothing set\n\n")
    assert config == Config(source=str(tmp_path / "fp.yaml"))


def test_yaml_booleans_and_durations_parse_from_text(tmp_path: Path) -> None:
    text = "federation:\n  verify_certificates: no\n  request_timeout: 2s\n"
    config = _load_text(tmp_path, text)
    assert config.federation.verify_certificates is False
    assert config.federation.request_timeout_ms == 2_000


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "server_name: [\n",
            "line 2, column 1: YAML syntax error: expected the node content, "
            "but found '<stream end>'",
        ),
        (
            "a: b\n  c: d\n",
            "line 2, column 4: YAML syntax error: mapping values are not allowed here",
        ),
        ("listeners:\n  - port: 1\n    port: 2\n", "line 3, column 5: duplicate key 'port'"),
        (
            "x: !!python/object:os.system {}\n",
            "line 1, column 4: could not determine a "
            "constructor for the tag 'tag:yaml.org,2002:python/object:os.system'",
        ),
        (b"server_name: \xff\n", "(file): not UTF-8 text (byte 13)"),
        ("- just\n- a list\n", "(top level): must be a mapping, got a list"),
        (
            "log_level: 3\n",
            "log_level: must be one of debug, info, warning, error, critical, got 3",
        ),
    ],
)
def test_file_problems_are_one_line_with_a_position(
    tmp_path: Path, text: str | bytes, line: str
) -> None:
    assert _load_error(tmp_path, text) == line


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = "listeners:\n  - &base {port: 8001, resources: [ops]}\n  - <<: *base\n    port: 8002\n"
    config = _load_text(tmp_path, text)
    assert [listener.port for listener in config.listeners] == [8001, 8002]


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: (file): no such file"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == f"{tmp_path}: (file): is a directory, not a config file"


# --- the example config -------------------------------------------------------


def _keys_of(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys_of(v)}
    return set()


SCHEMA_KEYS = {
    "server_name",
    "signing_key_path",
    "key_valid_for",
    "old_signing_keys",
    "key",
    "expired_ts",
    "listeners",
    "port",
    "bind_addresses",
    "tls_certificate_path",
    "tls_private_key_path",
    "resources",
    "header_timeout",
    "body_timeout",
    "database",
    "name",
    "synchronous",
    "args",
    "presence",
    "idle_timeout",
    "sync_timeout",
    "federation_timeout",
    "federation_ping_interval",
    "last_active_granularity",
    "currently_active_window",
    "offline_cache_size",
    "federation",
    "verify_certificates",
    "ca_bundle",
    "trusted_key_servers",
    "verify_keys",
    "allow_origins",
    "deny_origins",
    "rate_limit_per_second",
    "rate_limit_burst",
    "max_request_body_bytes",
    "max_status_msg_length",
    "request_timeout",
    "txn_retention",
    "presence_router",
    "module",
    "config",
    "admin_token",
    "log_level",
    "access_tokens",
    "token",
    "user_id",
    "device_id",
    "delegated_auth",
    "homeserver_url",
    "cache_ttl",
    "timeout",
    "max_cached_tokens",
}


def test_the_example_config_sets_every_key_and_parses() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert SCHEMA_KEYS <= _keys_of(data)
    config = load_config(EXAMPLE)
    assert config.server_name == "example.org"
    assert config.listeners[1].tls_certificate_path == Path("keys/dev-cert.pem")
    assert config.presence == PresenceSettings()  # the example states the defaults


def test_the_example_postgres_alternative_parses() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text.split("#database:\n", 1)[1].split("\n\n", 1)[0]
    uncommented = "database:\n" + "\n".join(line[1:] for line in block.splitlines())
    database = _parse(yaml.safe_load(uncommented)).database
    assert database.dsn == "postgresql://presence:secret@127.0.0.1:5432/presence"


# --- whatever the data, a ConfigError of one line or a Config -----------------

_NAMES = st.sampled_from(sorted(SCHEMA_KEYS | {"bogus", "names", "dsn", "user", "host"}))
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 100_000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["30s", "sqlite3", "postgres", "ed25519:a", KEY]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_NAMES, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_NAMES, _VALUES, max_size=5))
def test_any_data_gives_a_config_or_one_config_error_line(data: dict[str, object]) -> None:
    outcome: Config | ConfigError
    try:
        outcome = parse_config(data, SRC)
    except ConfigError as exc:  # anything else fails the test
        outcome = exc
    if isinstance(outcome, ConfigError):
        assert "\n" not in str(outcome)
        assert str(outcome).startswith("fp.yaml: ")


def test_a_trusted_key_server_may_list_several_keys() -> None:
    config = _parse(
        {
            "federation": {
                "trusted_key_servers": [
                    {
                        "server_name": "a.test",
                        "verify_keys": {"ed25519:x": KEY, "ed25519:y": OTHER_KEY},
                    }
                ]
            }
        }
    )
    assert dict(config.federation.trusted_key_servers[0].verify_keys) == {
        "ed25519:x": KEY,
        "ed25519:y": OTHER_KEY,
    }


# --- Synapse's own sample config, and the listener time limits -----------------


def test_synapse_sample_listener_and_database_blocks_are_accepted() -> None:
    config = _parse(
        {
            "listeners": [
                {
                    "port": 8008,
                    "tls": False,
                    "type": "http",
                    "x_forwarded": True,
                    "bind_addresses": ["::1", "127.0.0.1"],
                    "resources": [{"names": ["client", "federation"], "compress": False}],
                }
            ],
            "database": {
                "name": "psycopg2",
                "args": {
                    "user": "synapse_user",
                    "password": "secretpassword",
                    "database": "synapse",
                    "host": "localhost",
                    "cp_min": 5,
                    "cp_max": 10,
                },
            },
        }
    )
    assert config.listeners[0].resources == frozenset({"client", "federation"})
    assert config.listeners[0].tls_certificate_path is None
    assert (config.database.cp_min, config.database.cp_max) == (5, 10)
    assert config.database.dsn == "postgresql://synapse_user:secretpassword@localhost/synapse"


def test_sqlite_accepts_synapse_pool_bounds_too() -> None:
    database = _parse({"database": {"args": {"database": "x.db", "cp_min": 1, "cp_max": 1}}})
    assert database.database.path == Path("x.db")


def test_a_dsn_may_come_with_pool_bounds() -> None:
    database = _parse(
        {"database": {"name": "postgres", "args": {"dsn": "postgresql:///p", "cp_max": 3}}}
    ).database
    assert (database.dsn, database.cp_max) == ("postgresql:///p", 3)


def test_listener_time_limits_are_durations() -> None:
    listener = _parse({"listeners": [{"header_timeout": "2s", "body_timeout": "2m"}]}).listeners[0]
    assert (listener.header_timeout_ms, listener.body_timeout_ms) == (2_000, 120_000)
    assert (ListenerConfig().header_timeout_ms, ListenerConfig().body_timeout_ms) == (
        10_000,
        60_000,
    )


def test_the_default_body_limit_admits_150_items_of_64_kib_and_an_envelope() -> None:
    assert FederationConfig().max_request_body_bytes == 10 * 1024 * 1024
    assert FederationConfig().max_request_body_bytes > 150 * 65_536 + 1024


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            {"listeners": [{"type": "metrics"}]},
            "fp.yaml: listeners[0].type: only 'http' listeners exist here, got 'metrics'",
        ),
        (
            {"listeners": [{"tls": True}]},
            "fp.yaml: listeners[0].tls: true needs this listener's tls_certificate_path"
            " and tls_private_key_path",
        ),
        (
            {
                "listeners": [
                    {"tls": False, "tls_certificate_path": "c", "tls_private_key_path": "k"}
                ]
            },
            "fp.yaml: listeners[0].tls: false, but tls_certificate_path is set: drop one of them",
        ),
        (
            {"listeners": [{"x_forwarded": "yes"}]},
            "fp.yaml: listeners[0].x_forwarded: must be true or false, got 'yes'",
        ),
        (
            {"listeners": [{"resources": [{"names": ["client"], "compress": 1}]}]},
            "fp.yaml: listeners[0].resources[0].compress: must be true or false, got 1",
        ),
        (
            {"listeners": [{"resources": [{"names": ["client"], "compres": False}]}]},
            "fp.yaml: listeners[0].resources[0].compres: unknown key; did you mean 'compress'?",
        ),
        (
            {"listeners": [{"header_timeout": 0}]},
            "fp.yaml: listeners[0].header_timeout: must be longer than 0",
        ),
        (
            {"database": {"name": "postgres", "args": {"database": "p", "cp_min": 0}}},
            "fp.yaml: database.args.cp_min: must be an integer >= 1, got 0",
        ),
        (
            {"database": {"name": "postgres", "args": {"database": "p", "cp_min": 5, "cp_max": 2}}},
            "fp.yaml: database.args.cp_min: must not exceed cp_max (2), got 5",
        ),
        (
            {"database": {"args": {"database": "x.db", "cp_max": "2"}}},
            "fp.yaml: database.args.cp_max: must be an integer >= 1, got '2'",
        ),
    ],
)
def test_synapse_keys_are_still_checked(data: object, line: str) -> None:
    assert _error(data) == line
