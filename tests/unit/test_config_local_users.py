"""Config keys of local users: ``access_tokens`` and ``delegated_auth``."""

from __future__ import annotations

import pytest

from federation_presence.config import AccessTokenConfig, DelegatedAuthConfig, parse_config
from federation_presence.errors import ConfigError

SRC = "fp.yaml"
BASE = {"server_name": "hs.test"}


def _error(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, **data}, SRC)
    return str(caught.value)


def test_access_tokens_are_read_with_an_optional_device() -> None:
    config = parse_config(
        {
            **BASE,
            "access_tokens": [
                {"token": "t1", "user_id": "@a:hs.test", "device_id": "PHONE"},
                {"token": "t2", "user_id": "@b:hs.test"},
            ],
        },
        SRC,
    )
    assert config.access_tokens == (
        AccessTokenConfig("t1", "@a:hs.test", "PHONE"),
        AccessTokenConfig("t2", "@b:hs.test", ""),
    )


def test_delegated_auth_reads_durations_and_defaults() -> None:
    config = parse_config(
        {**BASE, "delegated_auth": {"homeserver_url": "http://127.0.0.1:8008", "cache_ttl": "1m"}},
        SRC,
    )
    assert config.delegated_auth == DelegatedAuthConfig(
        "http://127.0.0.1:8008", cache_ttl_ms=60_000, timeout_ms=10_000
    )


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (
            {"access_tokens": [{"token": "t", "user_id": "@a:elsewhere.test"}]},
            "fp.yaml: access_tokens[0].user_id: must be a user of server_name 'hs.test'",
        ),
        (
            {"access_tokens": [{"token": "t", "user_id": "alice"}]},
            "fp.yaml: access_tokens[0].user_id: must be a user ID '@local:server', got 'alice'",
        ),
        (
            {"access_tokens": [{"user_id": "@a:hs.test"}]},
            "fp.yaml: access_tokens[0].token: required",
        ),
        (
            {
                "access_tokens": [
                    {"token": "t", "user_id": "@a:hs.test"},
                    {"token": "t", "user_id": "@b:hs.test"},
                ]
            },
            "fp.yaml: access_tokens[1].token: given twice (or equal to admin_token):"
            " tokens must differ",
        ),
        (
            {"admin_token": "t", "access_tokens": [{"token": "t", "user_id": "@a:hs.test"}]},
            "fp.yaml: access_tokens[0].token: given twice (or equal to admin_token):"
            " tokens must differ",
        ),
        (
            {"delegated_auth": {"homeserver_url": "ftp://x"}},
            "fp.yaml: delegated_auth.homeserver_url: must be an http(s) URL, got 'ftp://x'",
        ),
        (
            {"delegated_auth": {}},
            "fp.yaml: delegated_auth.homeserver_url: required, e.g. 'http://127.0.0.1:8008'",
        ),
    ],
)
def test_each_mistake_is_one_line(data: dict[str, object], line: str) -> None:
    assert _error(data) == line
