"""merge_outcomes: a heartbeat batch's outcomes as one write."""

from __future__ import annotations

from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.keeper import merge_outcomes
from federation_presence.presence.inputs import Activity, DeviceHeartbeat, SetPresence
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import NotifyReason
from federation_presence.presence.states import PresenceState

NOW = 1_700_000_000_000
A = UserId("@a:here")
D1, D2 = DeviceId("d1"), DeviceId("d2")


def test_merged_outcome_has_each_users_last_state_and_strongest_reason() -> None:
    machine = PresenceMachine(ServerName("here"))
    outcomes = [
        machine.handle(DeviceHeartbeat(A, D1, PresenceState.ONLINE), NOW),
        machine.handle(Activity(A, D1), NOW),
        machine.handle(SetPresence(A, D2, PresenceState.BUSY, "call", True), NOW),
    ]
    merged = merge_outcomes(outcomes)
    assert len(merged.changes) == 1
    change = merged.changes[0]
    assert change.state == machine.get(A)
    assert change.state.state is PresenceState.BUSY
    assert change.notify is NotifyReason.NEW_USER
    assert {(d.device_id, d.state) for d in merged.devices} == {
        (D1, PresenceState.ONLINE),
        (D2, PresenceState.BUSY),
    }
    assert merged.next_deadline_ms == outcomes[-1].next_deadline_ms


def test_merged_outcome_carries_the_seq_of_its_last_machine_call() -> None:
    # The keeper keys writes in flight by seq: two merged batches in flight at
    # once must not share one (they did, as the default 0).
    machine = PresenceMachine(ServerName("here"))
    outcomes = [
        machine.handle(DeviceHeartbeat(A, D1, PresenceState.ONLINE), NOW),
        machine.handle(Activity(A, D1), NOW),
    ]
    assert merge_outcomes(outcomes).seq == outcomes[-1].seq == machine.seq
    assert merge_outcomes(outcomes).seq > 0
