"""``beside``: the homeserver the ``/send`` tee forwards to."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation_presence.config import BesideConfig, parse_config
from federation_presence.errors import ConfigError


def test_absent_means_standalone() -> None:
    assert parse_config({}, "fp.yaml").beside is None
    assert parse_config({"beside": None}, "fp.yaml").beside is None


def test_a_url_with_defaults_and_a_full_section() -> None:
    assert parse_config({"beside": {"homeserver_url": "http://127.0.0.1:8008"}}, "x").beside == (
        BesideConfig("http://127.0.0.1:8008", 60_000, None)
    )
    full = {"homeserver_url": "https://hs.internal", "forward_timeout": "5s", "ca_bundle": "ca.pem"}
    assert parse_config({"beside": full}, "x").beside == BesideConfig(
        "https://hs.internal", 5_000, Path("ca.pem")
    )


@pytest.mark.parametrize(
    ("section", "line"),
    [
        (
            {"homeserver_url": "127.0.0.1:8008"},
            "fp.yaml: beside.homeserver_url: must be an http:// or https:// URL of the homeserver"
            " (e.g. 'http://127.0.0.1:8008'), got '127.0.0.1:8008'",
        ),
        ({}, "fp.yaml: beside.homeserver_url: must be a non-empty string, got ''"),
        (
            {"homeserver_url": "http://h", "forward_timeout": 0},
            "fp.yaml: beside.forward_timeout: must be longer than 0",
        ),
        (
            {"homeserver_uri": "http://h"},
            "fp.yaml: beside.homeserver_uri: unknown key; did you mean 'homeserver_url'?",
        ),
    ],
)
def test_each_mistake_is_one_line(section: dict[str, object], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"beside": section}, "fp.yaml")
    assert str(caught.value) == line
