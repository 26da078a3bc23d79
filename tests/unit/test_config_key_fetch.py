"""The key-fetch keys of the ``federation`` section: defaults, units, bounds."""

from __future__ import annotations

import pytest

from federation_presence.config import parse_config
from federation_presence.errors import ConfigError


def test_key_fetch_defaults() -> None:
    federation = parse_config({}, "fp.yaml").federation
    assert (
        federation.key_fetch_concurrency,
        federation.key_fetch_timeout_ms,
        federation.key_fetch_contended_timeout_ms,
    ) == (64, 10_000, 2_000)


def test_key_fetch_keys_take_durations_and_a_count() -> None:
    federation = parse_config(
        {
            "federation": {
                "key_fetch_concurrency": 8,
                "key_fetch_timeout": "3s",
                "key_fetch_contended_timeout": 500,
            }
        },
        "fp.yaml",
    ).federation
    assert (
        federation.key_fetch_concurrency,
        federation.key_fetch_timeout_ms,
        federation.key_fetch_contended_timeout_ms,
    ) == (8, 3_000, 500)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"key_fetch_concurrency": 0}, "key_fetch_concurrency: must be an integer 1-4096, got 0"),
        ({"key_fetch_timeout": 0}, "key_fetch_timeout: must be longer than 0"),
        ({"key_fetch_contended_timeout": "soon"}, "key_fetch_contended_timeout: must be a dur"),
    ],
)
def test_bad_key_fetch_values_are_config_errors(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"federation": section}, "fp.yaml")
