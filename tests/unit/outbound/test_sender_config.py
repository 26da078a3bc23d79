"""The ``federation_sender`` config section: defaults, values, one-line mistakes."""

from __future__ import annotations

import pytest

from federation_presence.config import parse_config
from federation_presence.errors import ConfigError
from federation_presence.outbound.settings import SenderSettings

SRC = "fp.yaml"


def test_no_section_gives_the_defaults() -> None:
    settings = parse_config({}, SRC).federation_sender
    assert settings == SenderSettings()
    assert settings.linger_ms == 20
    assert settings.max_pushes_per_transaction == 50 * 100
    assert settings.backoff_initial_ms == 10_000
    # connect and each read: the federation client's request_timeout, as before
    assert (settings.connect_timeout_ms, settings.read_timeout_ms) == (None, None)


def test_null_timeouts_keep_the_default() -> None:
    section = {"connect_timeout": None, "read_timeout": None}
    settings = parse_config({"federation_sender": section}, SRC).federation_sender
    assert (settings.connect_timeout_ms, settings.read_timeout_ms) == (None, None)


def test_every_key_is_read() -> None:
    settings = parse_config(
        {
            "federation_sender": {
                "enabled": False,
                "instance_name": "sender2",
                "instances": ["sender1", "sender2"],
                "linger": "50ms",
                "pushes_per_edu": 10,
                "edus_per_transaction": 5,
                "transaction_timeout": "20s",
                "connect_timeout": "5s",
                "read_timeout": "10s",
                "backoff_initial": "1s",
                "backoff_max": "1h",
                "backoff_jitter": 0.1,
                "txn_id_prefix": "fpx.",
            }
        },
        SRC,
    ).federation_sender
    assert settings == SenderSettings(
        enabled=False,
        instance_name="sender2",
        instances=("sender1", "sender2"),
        linger_ms=50,
        pushes_per_edu=10,
        edus_per_transaction=5,
        transaction_timeout_ms=20_000,
        connect_timeout_ms=5_000,
        read_timeout_ms=10_000,
        backoff_initial_ms=1_000,
        backoff_max_ms=3_600_000,
        backoff_jitter=0.1,
        txn_id_prefix="fpx.",
    )


@pytest.mark.parametrize(
    ("section", "line"),
    [
        (
            {"instances": ["a", "b"], "instance_name": "c"},
            "fp.yaml: federation_sender.instance_name: 'c' is not one of instances ['a', 'b']",
        ),
        (
            {"instances": ["a", "a"]},
            "fp.yaml: federation_sender.instances: lists an instance twice",
        ),
        (
            {"edus_per_transaction": 101},
            "fp.yaml: federation_sender.edus_per_transaction: must be an integer 1-100, got 101",
        ),
        (
            {"txn_id_prefix": "a/b"},
            "fp.yaml: federation_sender.txn_id_prefix: must be 1-32 of A-Z a-z 0-9 . _ ~ -,"
            " got 'a/b'",
        ),
        (
            {"backoff_initial": "1h", "backoff_max": "1m"},
            "fp.yaml: federation_sender.backoff_max: must not be shorter than backoff_initial",
        ),
        (
            {"read_timeout": "1m"},
            "fp.yaml: federation_sender.read_timeout: must not be longer than transaction_timeout",
        ),
        (
            {"connect_timeout": 0},
            "fp.yaml: federation_sender.connect_timeout: must be longer than 0",
        ),
        (
            {"backoff_jitter": 1.5},
            "fp.yaml: federation_sender.backoff_jitter: must be below 1, got 1.5",
        ),
    ],
)
def test_each_mistake_is_one_line(section: dict[str, object], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"federation_sender": section}, SRC)
    assert str(caught.value) == line
