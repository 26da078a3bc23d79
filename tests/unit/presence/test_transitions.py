"""Per-device transitions: each local input and each timeout, table-driven."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from federation_presence.presence.model import DevicePresence
from federation_presence.presence.states import PresenceState
from federation_presence.presence.transitions import (
    after_activity,
    after_heartbeat,
    after_set_presence,
    after_sync_ended,
    after_sync_started,
    after_timeouts,
    idle_deadline,
    new_device,
    offline_deadline,
)
from tests.unit.presence.timeline import ALICE, PHONE, SETTINGS, T0

ON = PresenceState.ONLINE
UNAV = PresenceState.UNAVAILABLE
OFF = PresenceState.OFFLINE
BUSY = PresenceState.BUSY
NOW = T0 + 1_000_000
IDLE = SETTINGS.idle_timeout_ms
SYNC = SETTINGS.sync_timeout_ms

Transition = Callable[[DevicePresence], DevicePresence]


def at(state: PresenceState, *, syncing: int = 0) -> DevicePresence:
    return DevicePresence(ALICE, PHONE, state, last_active_ts=T0, last_sync_ts=T0, syncing=syncing)


INPUTS: dict[str, Transition] = {
    "activity": lambda d: after_activity(d, NOW),
    "sync without set_presence": lambda d: after_sync_started(d, None, NOW),
    "sync set_presence=online": lambda d: after_sync_started(d, ON, NOW),
    "sync set_presence=unavailable": lambda d: after_sync_started(d, UNAV, NOW),
    "sync set_presence=busy": lambda d: after_sync_started(d, BUSY, NOW),
    "sync set_presence=offline": lambda d: after_sync_started(d, OFF, NOW),
    "PUT online": lambda d: after_set_presence(d, ON, NOW),
    "PUT unavailable": lambda d: after_set_presence(d, UNAV, NOW),
    "PUT busy": lambda d: after_set_presence(d, BUSY, NOW),
    "PUT offline": lambda d: after_set_presence(d, OFF, NOW),
}

# (input, state before, state after, pro-active: last_active_ts bumped to NOW)
TABLE = [
    ("activity", OFF, ON, True),
    ("activity", UNAV, ON, True),
    ("activity", ON, ON, True),
    ("activity", BUSY, BUSY, True),
    ("sync without set_presence", OFF, ON, True),
    ("sync without set_presence", UNAV, ON, True),
    ("sync without set_presence", ON, ON, True),
    ("sync without set_presence", BUSY, BUSY, True),
    ("sync set_presence=online", OFF, ON, True),
    ("sync set_presence=online", UNAV, ON, True),
    ("sync set_presence=online", ON, ON, True),
    ("sync set_presence=online", BUSY, BUSY, True),
    ("sync set_presence=unavailable", OFF, UNAV, False),
    ("sync set_presence=unavailable", UNAV, UNAV, False),
    ("sync set_presence=unavailable", ON, ON, False),
    ("sync set_presence=unavailable", BUSY, BUSY, False),
    ("sync set_presence=busy", OFF, BUSY, True),
    ("sync set_presence=busy", UNAV, BUSY, True),
    ("sync set_presence=busy", ON, BUSY, True),
    ("sync set_presence=busy", BUSY, BUSY, False),
    ("sync set_presence=offline", OFF, OFF, False),
    ("sync set_presence=offline", UNAV, UNAV, False),
    ("sync set_presence=offline", ON, ON, False),
    ("sync set_presence=offline", BUSY, BUSY, False),
    ("PUT online", OFF, ON, True),
    ("PUT online", UNAV, ON, True),
    ("PUT online", BUSY, ON, True),
    ("PUT unavailable", ON, UNAV, False),
    ("PUT unavailable", BUSY, UNAV, False),
    ("PUT unavailable", OFF, UNAV, False),
    ("PUT busy", ON, BUSY, True),
    ("PUT busy", BUSY, BUSY, True),
    ("PUT busy", OFF, BUSY, True),
    ("PUT offline", ON, OFF, False),
    ("PUT offline", BUSY, OFF, False),
]


@pytest.mark.parametrize(("name", "before", "after", "pro_active"), TABLE)
def test_each_input_moves_the_device_as_the_rules_say(
    name: str, before: PresenceState, after: PresenceState, pro_active: bool
) -> None:
    device = INPUTS[name](at(before))
    assert device.state is after
    assert device.last_active_ts == (NOW if pro_active else T0)


@pytest.mark.parametrize("state", list(PresenceState))
def test_a_sync_with_set_presence_offline_is_not_a_sync(state: PresenceState) -> None:
    device = at(state)
    assert after_sync_started(device, OFF, NOW) is device
    assert after_sync_ended(device, OFF, NOW) is device


@pytest.mark.parametrize("set_presence", [None, ON, UNAV, BUSY])
def test_a_sync_is_in_flight_until_it_ends(set_presence: PresenceState | None) -> None:
    started = after_sync_started(at(UNAV), set_presence, NOW)
    assert started.syncing == 1
    assert started.last_sync_ts == NOW
    ended = after_sync_ended(started, set_presence, NOW + 30_000)
    assert ended.syncing == 0
    assert ended.last_sync_ts == NOW + 30_000
    assert ended.state is started.state


def test_an_unmatched_sync_end_never_makes_the_count_negative() -> None:
    assert after_sync_ended(at(ON), None, NOW).syncing == 0


@pytest.mark.parametrize("state", [None, ON, UNAV, BUSY])
def test_a_heartbeat_is_a_sync_that_starts_and_ends_at_once(
    state: PresenceState | None,
) -> None:
    device = at(OFF)
    beat = after_heartbeat(device, state, NOW)
    synced = after_sync_ended(after_sync_started(device, state, NOW), state, NOW)
    assert beat == synced
    assert beat.syncing == 0
    assert beat.last_sync_ts == NOW


def test_a_put_counts_as_contact_from_the_device() -> None:
    assert after_set_presence(at(ON), UNAV, NOW).last_sync_ts == NOW


def test_timestamps_never_move_back_when_now_does() -> None:
    device = after_activity(at(ON), T0 - 5_000)
    assert device.last_active_ts == T0
    assert after_sync_started(at(ON), None, T0 - 5_000).last_sync_ts == T0


def test_a_new_device_is_offline_and_never_seen() -> None:
    device = new_device(ALICE, PHONE)
    assert (device.state, device.last_active_ts, device.last_sync_ts, device.syncing) == (
        OFF,
        0,
        0,
        0,
    )


# (state, syncing, now - T0, state after the timeouts)
TIMEOUTS = [
    (ON, 1, IDLE - 1, ON),
    (ON, 1, IDLE, UNAV),
    (ON, 1, 100 * IDLE, UNAV),
    (BUSY, 1, 100 * IDLE, BUSY),
    (UNAV, 1, 100 * IDLE, UNAV),
    (ON, 0, SYNC - 1, ON),
    (ON, 0, SYNC, OFF),
    (UNAV, 0, SYNC, OFF),
    (BUSY, 0, SYNC - 1, BUSY),
    (BUSY, 0, SYNC, OFF),
    (ON, 0, IDLE, OFF),
    (OFF, 0, 100 * IDLE, OFF),
]


@pytest.mark.parametrize(("state", "syncing", "elapsed", "after"), TIMEOUTS)
def test_timeouts_idle_online_devices_and_take_silent_devices_offline(
    state: PresenceState, syncing: int, elapsed: int, after: PresenceState
) -> None:
    assert after_timeouts(at(state, syncing=syncing), T0 + elapsed, SETTINGS).state is after


def test_busy_has_no_idle_deadline_but_an_offline_one() -> None:
    assert idle_deadline(at(BUSY), SETTINGS) is None
    assert offline_deadline(at(BUSY), SETTINGS) == T0 + SYNC


def test_a_device_with_a_sync_in_flight_has_no_offline_deadline() -> None:
    assert offline_deadline(at(ON, syncing=1), SETTINGS) is None
    assert idle_deadline(at(ON, syncing=1), SETTINGS) == T0 + IDLE


def test_recent_activity_keeps_a_device_that_does_not_sync() -> None:
    device = DevicePresence(ALICE, PHONE, ON, last_active_ts=T0 + 20_000, last_sync_ts=T0)
    assert offline_deadline(device, SETTINGS) == T0 + 20_000 + SYNC
    assert after_timeouts(device, T0 + SYNC, SETTINGS).state is ON


def test_an_offline_device_has_no_deadlines() -> None:
    assert idle_deadline(at(OFF), SETTINGS) is None
    assert offline_deadline(at(OFF), SETTINGS) is None


def test_timeouts_return_the_same_device_when_nothing_expired() -> None:
    device = at(ON, syncing=1)
    assert after_timeouts(device, T0 + 1, SETTINGS) is device
