"""Combining devices into a user: the seed's truth table and its properties."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.ids import DeviceId
from federation_presence.presence.aggregate import (
    combined_state,
    combined_user,
    currently_active_until,
    is_currently_active,
)
from federation_presence.presence.inputs import Activity, LocalInput, SetPresence, SyncStarted
from federation_presence.presence.model import DevicePresence, UserPresence
from federation_presence.presence.states import PresenceState
from tests.unit.presence.timeline import ALICE, LAPTOP, PHONE, SETTINGS, T0, Timeline

ON = PresenceState.ONLINE
UNAV = PresenceState.UNAVAILABLE
OFF = PresenceState.OFFLINE
BUSY = PresenceState.BUSY


def device(name: str, state: PresenceState, last_active_ts: int = 0) -> DevicePresence:
    return DevicePresence(ALICE, DeviceId(name), state, last_active_ts, last_sync_ts=0)


# Seed 000 ("You can build simple truth tables…"), then the rest of the order.
TRUTH_TABLE = [
    (ON, UNAV, ON),
    (BUSY, ON, BUSY),
    (UNAV, OFF, UNAV),
    (OFF, OFF, OFF),
    (BUSY, UNAV, BUSY),
    (BUSY, OFF, BUSY),
    (ON, OFF, ON),
    (ON, ON, ON),
    (UNAV, UNAV, UNAV),
    (BUSY, BUSY, BUSY),
]


@pytest.mark.parametrize(("device_1", "device_2", "user_state"), TRUTH_TABLE)
def test_two_devices_combine_as_the_seed_truth_table_says(
    device_1: PresenceState, device_2: PresenceState, user_state: PresenceState
) -> None:
    assert combined_state([device("one", device_1), device("two", device_2)]) is user_state
    assert combined_state([device("two", device_2), device("one", device_1)]) is user_state


def test_a_user_without_devices_is_offline() -> None:
    assert combined_state([]) is OFF


# The same truth table, reached through inputs the way clients reach it.
_REACH: dict[PresenceState, Callable[[DeviceId], list[LocalInput]]] = {
    ON: lambda d: [SyncStarted(ALICE, d)],
    UNAV: lambda d: [SyncStarted(ALICE, d, UNAV)],
    BUSY: lambda d: [SetPresence(ALICE, d, BUSY)],
    OFF: lambda d: [SetPresence(ALICE, d, OFF)],
}


@pytest.mark.parametrize(("device_1", "device_2", "user_state"), TRUTH_TABLE)
def test_the_machine_combines_devices_reached_by_inputs_as_the_truth_table(
    device_1: PresenceState, device_2: PresenceState, user_state: PresenceState
) -> None:
    timeline = Timeline()
    timeline.do(*_REACH[device_1](PHONE), *_REACH[device_2](LAPTOP))
    assert timeline.device_state(ALICE, PHONE) is device_1
    assert timeline.device_state(ALICE, LAPTOP) is device_2
    assert timeline.state(ALICE) is user_state


def test_last_active_is_the_latest_over_devices() -> None:
    timeline = Timeline()
    timeline.do(Activity(ALICE, PHONE))
    timeline.advance(10_000)
    timeline.do(SyncStarted(ALICE, LAPTOP, UNAV))
    assert timeline.user(ALICE).last_active_ts == T0
    timeline.do(Activity(ALICE, LAPTOP))
    assert timeline.user(ALICE).last_active_ts == T0 + 10_000


def test_last_active_never_goes_back_when_devices_are_older() -> None:
    prev = UserPresence(ALICE, ON, last_active_ts=T0)
    new = combined_user(prev, [device("one", ON, T0 - 50_000)], T0, SETTINGS)
    assert new.last_active_ts == T0


def test_status_msg_is_carried_over_not_derived_from_devices() -> None:
    prev = UserPresence(ALICE, ON, last_active_ts=T0, status_msg="in a meeting")
    new = combined_user(prev, [device("one", OFF)], T0 + 3_600_000, SETTINGS)
    assert new.state is OFF
    assert new.status_msg == "in a meeting"


@pytest.mark.parametrize(
    ("state", "age_ms", "active"),
    [
        (ON, 0, True),
        (ON, SETTINGS.currently_active_window_ms - 1, True),
        (ON, SETTINGS.currently_active_window_ms, False),
        (BUSY, 0, False),
        (UNAV, 0, False),
        (OFF, 0, False),
    ],
)
def test_currently_active_only_while_online_and_recently_active(
    state: PresenceState, age_ms: int, active: bool
) -> None:
    window = SETTINGS.currently_active_window_ms
    assert is_currently_active(state, T0 - age_ms, T0, window) is active
    user = combined_user(UserPresence(ALICE), [device("one", state, T0 - age_ms)], T0, SETTINGS)
    assert user.currently_active is active
    expected_until = T0 - age_ms + window if active else None
    assert currently_active_until(user, window) == expected_until


_devices = st.lists(
    st.builds(
        DevicePresence,
        user_id=st.just(ALICE),
        device_id=st.text(min_size=1, max_size=4).map(DeviceId),
        state=st.sampled_from(PresenceState),
        last_active_ts=st.integers(0, 2 * T0),
        last_sync_ts=st.integers(0, 2 * T0),
        syncing=st.integers(0, 3),
    ),
    max_size=6,
)


@given(devices=_devices, data=st.data())
def test_aggregation_does_not_depend_on_device_order(
    devices: list[DevicePresence], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(devices))
    prev = UserPresence(ALICE, status_msg="hi")
    assert combined_user(prev, devices, T0, SETTINGS) == combined_user(prev, shuffled, T0, SETTINGS)
    assert combined_state(devices) is combined_state(shuffled)


@given(devices=_devices)
def test_the_combined_state_is_one_of_the_devices_or_offline(
    devices: list[DevicePresence],
) -> None:
    state = combined_state(devices)
    assert state is OFF or state in {d.state for d in devices}
    assert all(d.state.priority <= state.priority for d in devices)
