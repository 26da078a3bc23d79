"""The presence machine: the seed's four scenarios, timers, pings, restore."""

from __future__ import annotations

import pytest

from federation_presence.ids import DeviceId, UserId
from federation_presence.presence.inputs import (
    Activity,
    DeviceHeartbeat,
    LocalInput,
    RemotePush,
    SetPresence,
    SyncEnded,
    SyncStarted,
)
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import (
    DevicePresence,
    NotifyReason,
    Outcome,
    UserPresence,
)
from federation_presence.presence.states import PresenceState
from tests.unit.presence.timeline import (
    ALICE,
    BOB,
    LAPTOP,
    OURS,
    PHONE,
    REMOTE_CAROL,
    SETTINGS,
    T0,
    THEIRS,
    Timeline,
)

ON = PresenceState.ONLINE
UNAV = PresenceState.UNAVAILABLE
OFF = PresenceState.OFFLINE
BUSY = PresenceState.BUSY
IDLE = SETTINGS.idle_timeout_ms
SYNC = SETTINGS.sync_timeout_ms
WINDOW = SETTINGS.currently_active_window_ms
PING = SETTINGS.federation_ping_interval_ms
LONG_POLL = 30_000


def resync(user: UserId, device: DeviceId, set_presence: PresenceState | None) -> list[LocalInput]:
    """A long-poll ends and the client immediately starts the next one."""
    return [SyncEnded(user, device, set_presence), SyncStarted(user, device, set_presence)]


# -- the four scenarios of seed 000 ------------------------------------------


def test_scenario_1_two_devices_syncing_online_and_unavailable_make_the_user_online() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE), SyncStarted(ALICE, LAPTOP, UNAV))
    for _ in range(3 * IDLE // LONG_POLL):
        timeline.advance(LONG_POLL)
        timeline.do(*resync(ALICE, PHONE, None), *resync(ALICE, LAPTOP, UNAV))
        assert timeline.state(ALICE) is ON


def test_scenario_2_a_device_syncing_unavailable_idles_after_its_last_pro_active_event() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE, UNAV))
    assert timeline.state(ALICE) is UNAV
    timeline.do(Activity(ALICE, PHONE))
    assert timeline.state(ALICE) is ON
    active_at = timeline.now
    while timeline.now + LONG_POLL < active_at + IDLE:
        timeline.advance(LONG_POLL)
        timeline.do(*resync(ALICE, PHONE, UNAV))
        assert timeline.state(ALICE) is ON
    timeline.advance(active_at + IDLE - 1 - timeline.now)
    assert timeline.state(ALICE) is ON
    timeline.advance(1)
    assert timeline.state(ALICE) is UNAV
    timeline.advance(10 * LONG_POLL)
    assert timeline.state(ALICE) is UNAV


def test_scenario_3_a_device_that_stops_syncing_goes_offline_after_the_sync_timeout() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE))
    timeline.advance(LONG_POLL)
    timeline.do(SyncEnded(ALICE, PHONE))
    timeline.advance(SYNC - 1)
    assert timeline.state(ALICE) is ON
    [fired] = timeline.advance(1)
    assert timeline.state(ALICE) is OFF
    assert fired.changes[0].notify is NotifyReason.PRESENCE
    assert [d.state for d in fired.devices] == [OFF]
    assert timeline.machine.devices(ALICE) == ()


def test_scenario_4_when_the_online_device_stops_syncing_the_user_becomes_unavailable() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE), SyncStarted(ALICE, LAPTOP, UNAV))
    timeline.advance(LONG_POLL)
    timeline.do(SyncEnded(ALICE, PHONE), *resync(ALICE, LAPTOP, UNAV))
    stopped_at = timeline.now
    while timeline.now + LONG_POLL <= stopped_at + 2 * SYNC:
        assert timeline.state(ALICE) is (ON if timeline.now < stopped_at + SYNC else UNAV)
        timeline.advance(LONG_POLL)
        timeline.do(*resync(ALICE, LAPTOP, UNAV))
    assert timeline.state(ALICE) is UNAV
    assert timeline.device_state(ALICE, PHONE) is OFF


# -- busy (MSC3026) -------------------------------------------------------------


def test_busy_never_idles_to_unavailable() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE), SetPresence(ALICE, PHONE, BUSY))
    timeline.advance(10 * IDLE)
    assert timeline.state(ALICE) is BUSY


def test_busy_goes_offline_when_the_device_stops_syncing() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE, BUSY))
    timeline.do(*resync(ALICE, PHONE, BUSY), SyncEnded(ALICE, PHONE, BUSY))
    timeline.advance(SYNC)
    assert timeline.state(ALICE) is OFF


def test_a_sync_does_not_override_busy_but_a_put_does() -> None:
    timeline = Timeline()
    timeline.do(SetPresence(ALICE, PHONE, BUSY), SyncStarted(ALICE, PHONE))
    assert timeline.state(ALICE) is BUSY
    timeline.do(SetPresence(ALICE, PHONE, ON))
    assert timeline.state(ALICE) is ON


# -- currently_active and the suppression rule ------------------------------------


def test_currently_active_turns_false_by_a_timer_and_that_is_told() -> None:
    timeline = Timeline()
    outcome = timeline.do(SyncStarted(ALICE, PHONE, UNAV), Activity(ALICE, PHONE))
    assert timeline.user(ALICE).currently_active
    assert outcome.next_deadline_ms == T0 + WINDOW
    [fired] = timeline.advance(WINDOW)
    [change] = fired.changes
    assert change.state.currently_active is False
    assert change.notify is NotifyReason.CURRENTLY_ACTIVE


def test_bumps_while_currently_active_are_persisted_but_not_told() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE))
    for _ in range(5):
        timeline.advance(WINDOW // 2)
        outcome = timeline.do(Activity(ALICE, PHONE))
        [change] = outcome.changes
        assert change.notify is None
        assert change.state.last_active_ts == timeline.now
        assert timeline.rows.users[ALICE].last_active_ts == timeline.now


def test_activity_brings_an_unavailable_user_back_online_and_is_told() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE, UNAV))
    timeline.advance(LONG_POLL)
    outcome = timeline.do(Activity(ALICE, PHONE))
    assert outcome.changes[0].notify is NotifyReason.PRESENCE
    assert outcome.changes[0].state.last_federation_update_ts == timeline.now


# -- status_msg ----------------------------------------------------------------------


def test_status_msg_is_per_user_sticky_and_changed_only_when_given() -> None:
    timeline = Timeline()
    outcome = timeline.do(SetPresence(ALICE, PHONE, ON, "in a meeting", status_msg_set=True))
    assert outcome.changes[0].state.status_msg == "in a meeting"
    timeline.do(SetPresence(ALICE, LAPTOP, UNAV))
    assert timeline.user(ALICE).status_msg == "in a meeting"
    timeline.advance(10 * IDLE)
    assert timeline.state(ALICE) is OFF
    assert timeline.user(ALICE).status_msg == "in a meeting"
    outcome = timeline.do(SetPresence(ALICE, PHONE, OFF, None, status_msg_set=True))
    assert outcome.changes[0].state.status_msg is None
    assert outcome.changes[0].notify is NotifyReason.STATUS_MSG


# -- inputs the machine refuses or ignores --------------------------------------------


def test_a_local_input_for_a_remote_user_is_dropped() -> None:
    machine = PresenceMachine(OURS)
    outcome = machine.handle(Activity(REMOTE_CAROL, PHONE), T0)
    assert outcome.changes == ()
    assert len(outcome.dropped) == 1
    assert machine.get(REMOTE_CAROL) is None


def test_a_sync_with_set_presence_offline_changes_nothing() -> None:
    machine = PresenceMachine(OURS)
    assert machine.handle(SyncStarted(ALICE, PHONE, OFF), T0) == Outcome()
    assert machine.handle(SyncEnded(ALICE, PHONE, OFF), T0) == Outcome()
    assert machine.get(ALICE) is None


def test_a_sync_with_set_presence_offline_does_not_keep_a_device_alive() -> None:
    timeline = Timeline()
    timeline.do(DeviceHeartbeat(ALICE, PHONE))
    timeline.advance(SYNC // 2)
    timeline.do(SyncStarted(ALICE, PHONE, OFF))
    timeline.advance(SYNC // 2)
    assert timeline.state(ALICE) is OFF


def test_a_bridge_heartbeat_keeps_a_device_present_for_the_sync_timeout() -> None:
    timeline = Timeline()
    for _ in range(4):
        timeline.do(DeviceHeartbeat(ALICE, PHONE, UNAV))
        timeline.advance(SYNC - 1)
        assert timeline.state(ALICE) is UNAV
    timeline.advance(1)
    assert timeline.state(ALICE) is OFF


# -- federation pings -------------------------------------------------------------------


def test_a_present_local_user_is_pinged_every_federation_ping_interval() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE, UNAV))
    fired = [o for o in timeline.advance(PING) if o.federation_pings]
    [ping] = fired
    [pinged] = ping.federation_pings
    assert pinged.last_federation_update_ts == T0 + PING
    assert [(c.state, c.notify) for c in ping.changes] == [(pinged, None)]
    assert ping.next_deadline_ms == T0 + 2 * PING
    assert [o for o in timeline.advance(PING - 1) if o.federation_pings] == []
    assert len([o for o in timeline.advance(1) if o.federation_pings]) == 1


def test_an_offline_local_user_is_not_pinged() -> None:
    timeline = Timeline()
    timeline.do(DeviceHeartbeat(ALICE, PHONE))
    outcomes = timeline.advance(3 * PING)
    assert all(o.federation_pings == () for o in outcomes)
    assert timeline.machine.next_deadline_ms is None


# -- the tick -------------------------------------------------------------------------------


def test_a_second_tick_at_the_same_instant_fires_nothing() -> None:
    timeline = Timeline()
    timeline.do(DeviceHeartbeat(ALICE, PHONE), SyncStarted(BOB, PHONE))
    timeline.advance(IDLE + SYNC)
    again = timeline.machine.tick(timeline.now)
    assert (again.changes, again.devices, again.federation_pings) == ((), (), ())


def test_the_outcome_tells_the_next_deadline() -> None:
    machine = PresenceMachine(OURS)
    outcome = machine.handle(DeviceHeartbeat(ALICE, PHONE), T0)
    assert outcome.next_deadline_ms == machine.next_deadline_ms == T0 + SYNC


def test_the_same_calls_give_the_same_outcomes() -> None:
    def run() -> list[Outcome]:
        timeline = Timeline()
        timeline.do(SyncStarted(ALICE, PHONE), Activity(BOB, LAPTOP))
        timeline.push(RemotePush(THEIRS, REMOTE_CAROL, ON, 10, True))
        timeline.advance(2 * IDLE)
        return timeline.outcomes

    assert run() == run()


# -- restore ----------------------------------------------------------------------------------


def test_restore_gives_back_what_was_persisted() -> None:
    timeline = Timeline()
    timeline.do(SyncStarted(ALICE, PHONE), SetPresence(ALICE, LAPTOP, BUSY, "call", True))
    timeline.push(RemotePush(THEIRS, REMOTE_CAROL, ON, 10, True))
    timeline.do(SyncEnded(ALICE, PHONE))
    rows = timeline.rows
    restored = PresenceMachine(OURS)
    outcome = restored.restore(rows.users.values(), rows.devices.values(), timeline.now)
    assert outcome.changes == ()
    assert outcome.devices == ()
    for user_id in (ALICE, REMOTE_CAROL):
        assert restored.get(user_id) == timeline.machine.get(user_id)
    assert set(restored.devices(ALICE)) == set(timeline.machine.devices(ALICE))
    assert outcome.next_deadline_ms == timeline.machine.next_deadline_ms


def test_restore_returns_what_expired_while_down() -> None:
    timeline = Timeline()
    timeline.do(DeviceHeartbeat(ALICE, PHONE))
    timeline.push(RemotePush(THEIRS, REMOTE_CAROL, ON, 10, True))
    rows = timeline.rows
    restored = PresenceMachine(OURS)
    later = T0 + SETTINGS.federation_timeout_ms
    outcome = restored.restore(rows.users.values(), rows.devices.values(), later)
    told = {c.state.user_id: (c.state.state, c.notify) for c in outcome.changes}
    assert told == {
        ALICE: (OFF, NotifyReason.PRESENCE),
        REMOTE_CAROL: (OFF, NotifyReason.PRESENCE),
    }
    assert [d.state for d in outcome.devices] == [OFF]
    assert outcome.next_deadline_ms is None


def test_restore_gives_syncs_cut_by_the_restart_a_full_sync_timeout() -> None:
    in_flight = DevicePresence(ALICE, PHONE, ON, T0, T0, syncing=2)
    user = UserPresence(ALICE, ON, T0, None, True, T0, T0)
    restored = PresenceMachine(OURS)
    now = T0 + 3 * SYNC
    outcome = restored.restore([user], [in_flight], now)
    [device] = outcome.devices
    assert (device.syncing, device.last_sync_ts, device.state) == (0, now, ON)
    assert restored.next_deadline_ms == now + SYNC
    assert restored.tick(now + SYNC - 1).changes == ()
    restored.tick(now + SYNC)
    assert restored.get(ALICE) == UserPresence(ALICE, OFF, T0, None, False, now + SYNC, now)


def test_restore_refuses_device_rows_of_remote_users() -> None:
    restored = PresenceMachine(OURS)
    outcome = restored.restore([], [DevicePresence(REMOTE_CAROL, PHONE, ON)], T0)
    assert len(outcome.dropped) == 1
    assert restored.devices(REMOTE_CAROL) == ()


@pytest.mark.parametrize("state", [ON, UNAV, BUSY])
def test_restore_of_a_user_without_devices_settles_it_offline(state: PresenceState) -> None:
    restored = PresenceMachine(OURS)
    outcome = restored.restore([UserPresence(ALICE, state, T0)], [], T0)
    [change] = outcome.changes
    assert (change.state.state, change.notify) == (OFF, NotifyReason.PRESENCE)
