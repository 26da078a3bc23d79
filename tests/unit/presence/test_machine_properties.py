"""Properties of the machine over random sequences of inputs, pushes and time."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

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
from federation_presence.presence.model import DevicePresence, Outcome, UserPresence
from federation_presence.presence.states import PresenceState
from tests.unit.presence.timeline import ALICE, BOB, LAPTOP, OURS, PHONE, SETTINGS, T0, THEIRS

LOCAL_USERS = [ALICE, BOB]
REMOTE_USERS = [UserId("@carol:theirs.example"), UserId("@dan:theirs.example")]
DEVICES = [PHONE, LAPTOP]

_user = st.sampled_from(LOCAL_USERS)
_device = st.sampled_from(DEVICES)
_state = st.sampled_from(PresenceState)
_maybe_state = st.none() | _state

_input: st.SearchStrategy[LocalInput] = st.one_of(
    st.builds(Activity, _user, _device),
    st.builds(SyncStarted, _user, _device, _maybe_state),
    st.builds(SyncEnded, _user, _device, _maybe_state),
    st.builds(SetPresence, _user, _device, _state, st.none() | st.just("busy day"), st.booleans()),
    st.builds(DeviceHeartbeat, _user, _device, _maybe_state),
)
_push = st.builds(
    RemotePush,
    origin=st.just(THEIRS),
    user_id=st.sampled_from(REMOTE_USERS),
    state=_state,
    last_active_ago=st.integers(0, 2 * T0),
    currently_active=st.booleans(),
    status_msg=st.none() | st.just("remote"),
)


@dataclass(frozen=True)
class Wait:
    ms: int


_step = st.one_of(
    _input,
    st.lists(_push, min_size=1, max_size=4),
    st.builds(
        Wait,
        st.sampled_from([1, 999, 29_999, 30_000, 59_999, 60_000, 300_000, 1_500_000, 1_800_000])
        | st.integers(0, 2_000_000),
    ),
)
_steps = st.lists(_step, max_size=30)

Step = LocalInput | list[RemotePush] | Wait
Snapshot = tuple[dict[UserId, UserPresence], dict[tuple[UserId, DeviceId], DevicePresence]]


def snapshot(machine: PresenceMachine) -> Snapshot:
    users = {u: s for u in LOCAL_USERS + REMOTE_USERS if (s := machine.get(u)) is not None}
    devices = {(d.user_id, d.device_id): d for u in LOCAL_USERS for d in machine.devices(u)}
    return users, devices


def check_outcome(machine: PresenceMachine, before: Snapshot, outcome: Outcome, now: int) -> None:
    """What must hold of every outcome, whatever the call."""
    users_before, _ = before
    assert outcome.next_deadline_ms == machine.next_deadline_ms
    changed = [c.state.user_id for c in outcome.changes]
    assert len(changed) == len(set(changed)), "one change per user per call"
    for change in outcome.changes:
        new = change.state
        assert isinstance(new.state, PresenceState)
        assert new.last_active_ts >= 0
        assert machine.get(new.user_id) == new
        prev = users_before.get(new.user_id)
        if change.notify is None and prev is not None:
            assert (new.state, new.status_msg, new.currently_active) == (
                prev.state,
                prev.status_msg,
                prev.currently_active,
            )
    for device in outcome.devices:
        assert isinstance(device.state, PresenceState)
        assert device.last_active_ts >= 0
        assert device.syncing >= 0
    for pinged in outcome.federation_pings:
        assert pinged.state is not PresenceState.OFFLINE
        assert pinged.last_federation_update_ts == now


def check_tick(machine: PresenceMachine, before: Snapshot, outcome: Outcome, now: int) -> None:
    check_outcome(machine, before, outcome, now)
    assert outcome.next_deadline_ms is None or outcome.next_deadline_ms > now
    _, devices_before = before
    for device in outcome.devices:
        prev = devices_before.get((device.user_id, device.device_id))
        if prev is not None and prev.state is PresenceState.BUSY:
            assert device.state is not PresenceState.UNAVAILABLE, "busy idled by a timer"
    again = machine.tick(now)
    assert (again.changes, again.devices, again.federation_pings) == ((), (), ())


def run(steps: list[Step], *, tick_at_every_deadline: bool) -> PresenceMachine:
    """Apply the steps; tick at every deadline, or only once at the very end."""
    machine = PresenceMachine(OURS, SETTINGS)
    now = T0
    for step in steps:
        if isinstance(step, Wait):
            target = now + step.ms
            if tick_at_every_deadline:
                deadline = machine.next_deadline_ms
                while deadline is not None and deadline <= target:
                    now = max(now, deadline)
                    before = snapshot(machine)
                    check_tick(machine, before, machine.tick(now), now)
                    deadline = machine.next_deadline_ms
                now = target
                before = snapshot(machine)
                check_tick(machine, before, machine.tick(now), now)
            now = target
        elif isinstance(step, list):
            before = snapshot(machine)
            check_outcome(machine, before, machine.handle_remote(step, now), now)
        else:
            before = snapshot(machine)
            check_outcome(machine, before, machine.handle(step, now), now)
    machine.tick(now)
    return machine


@settings(max_examples=150, deadline=None)
@given(steps=_steps)
def test_random_sequences_keep_every_invariant(steps: list[Step]) -> None:
    run(steps, tick_at_every_deadline=True)


def _presence(machine: PresenceMachine) -> object:
    users, devices = snapshot(machine)
    return (
        {
            u: (s.state, s.last_active_ts, s.status_msg, s.currently_active, s.last_user_sync_ts)
            for u, s in users.items()
        },
        devices,
    )


@settings(max_examples=150, deadline=None)
@given(steps=_steps)
def test_late_ticks_give_the_same_presence_as_punctual_ones(steps: list[Step]) -> None:
    punctual = run(steps, tick_at_every_deadline=True)
    late = run(steps, tick_at_every_deadline=False)
    assert _presence(punctual) == _presence(late)
