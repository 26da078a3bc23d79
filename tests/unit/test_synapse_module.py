"""The Synapse-side module: stdlib only, config checks, one pending entry per user."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from federation_presence.synapse_module import (
    MAX_HEARTBEATS,
    ForwarderConfig,
    PresenceForwarder,
)


class RecordingModuleApi:
    """What the module uses of Synapse's ``ModuleApi``: records registrations (a fake)."""

    def __init__(self) -> None:
        self.registered: list[str] = []

    def register_account_validity_callbacks(self, **callbacks: Any) -> None:
        self.registered += sorted(callbacks)

    def register_third_party_rules_callbacks(self, **callbacks: Any) -> None:
        self.registered += sorted(callbacks)

    def looping_background_call(self, f: Any, msec: float, *, desc: str) -> None:
        self.registered.append(f"every {msec} ms: {desc}")

    def is_mine(self, user_id: str) -> bool:
        return user_id.endswith(":home")


def forwarder() -> tuple[PresenceForwarder, RecordingModuleApi]:
    api = RecordingModuleApi()
    config = PresenceForwarder.parse_config(
        {"worker_url": "http://127.0.0.1:8449", "admin_token": "t"}
    )
    return PresenceForwarder(config, api), api


def test_importing_it_loads_nothing_outside_the_standard_library() -> None:
    program = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import federation_presence.synapse_module\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(result.stdout)
    foreign = [
        name
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in ("federation_presence", "federation_presence.synapse_module")
    ]
    assert foreign == []


def test_it_registers_the_two_signals_and_a_flush() -> None:
    _, api = forwarder()
    assert api.registered == [
        "is_user_expired",
        "on_new_event",
        "every 1000 ms: federation_presence_forward",
    ]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"admin_token": "t"}, "worker_url"),
        ({"worker_url": "127.0.0.1:8449", "admin_token": "t"}, "worker_url"),
        ({"worker_url": "http://w"}, "admin_token"),
        ({"worker_url": "http://w", "admin_token": "t", "flush_interval_ms": 0}, "flush"),
        ({"worker_url": "http://w", "admin_token": "t", "device_id": ""}, "device_id"),
    ],
)
def test_a_bad_config_is_refused_naming_the_key(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PresenceForwarder.parse_config(config)


async def test_requests_and_events_of_local_users_become_one_heartbeat_each() -> None:
    module, _ = forwarder()
    assert await module._on_request("@a:home") is None  # no opinion on expiry
    await module._on_request("@a:home")
    await module._on_request("@remote:elsewhere")

    class Event:
        sender = "@b:home"

    await module._on_new_event(Event(), {})
    await module._on_request("@b:home")  # a plain request does not undo "active"
    batch = module.take_batch()
    assert batch == [
        {"user_id": "@a:home", "device_id": "synapse", "presence": "online", "active": False},
        {"user_id": "@b:home", "device_id": "synapse", "presence": "online", "active": True},
    ]
    assert module.take_batch() == []


def test_a_batch_not_taken_is_merged_back_and_batches_are_bounded() -> None:
    module, _ = forwarder()
    for index in range(MAX_HEARTBEATS + 5):
        module.saw(f"@u{index}:home", active=False)
    first = module.take_batch()
    assert len(first) == MAX_HEARTBEATS
    module.saw("@u0:home", active=True)
    module.put_back(first)
    second = module.take_batch()
    assert len(second) == MAX_HEARTBEATS  # 5 left over + the 10,000 put back, one per user
    assert {"user_id": "@u0:home", "device_id": "synapse", "presence": "online",
            "active": True} in second  # fmt: skip
    assert len(module.take_batch()) == 5


def test_the_config_is_a_value() -> None:
    assert ForwarderConfig("http://w", "t") == ForwarderConfig("http://w", "t", 1_000, "synapse")
