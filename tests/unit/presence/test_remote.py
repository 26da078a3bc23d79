"""Remote users: state from pushes, the federation timeout, and the hot path's rules."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from federation_presence.ids import ServerName, UserId
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import NotifyReason, UserPresence
from federation_presence.presence.notify import notify_reason
from federation_presence.presence.remote import (
    after_federation_timeout,
    is_local_user,
    remote_state,
)
from federation_presence.presence.states import PresenceState
from tests.unit.presence.timeline import ALICE, OURS, REMOTE_CAROL, SETTINGS, T0, THEIRS, Timeline

ON = PresenceState.ONLINE
OFF = PresenceState.OFFLINE
TIMEOUT = SETTINGS.federation_timeout_ms
GRANULARITY = SETTINGS.last_active_granularity_ms


def push(
    state: PresenceState = ON,
    ago: int = 0,
    *,
    user_id: UserId = REMOTE_CAROL,
    active: bool = False,
    status_msg: str | None = None,
) -> RemotePush:
    return RemotePush(THEIRS, user_id, state, ago, active, status_msg)


def test_a_push_gives_the_state_last_active_from_ago_and_a_fresh_federation_update() -> None:
    user = remote_state(push(ON, 4_000, active=True, status_msg="hi"), T0)
    assert user == UserPresence(REMOTE_CAROL, ON, T0 - 4_000, "hi", True, T0, 0)


def test_a_last_active_before_the_epoch_is_clamped_to_zero() -> None:
    assert remote_state(push(ON, T0 + 5), T0).last_active_ts == 0


def test_is_local_user_needs_the_whole_server_name() -> None:
    assert is_local_user(ALICE, OURS)
    assert not is_local_user(UserId("@alice:notours.example"), OURS)
    assert not is_local_user(REMOTE_CAROL, OURS)


def test_a_remote_user_goes_offline_exactly_at_the_federation_timeout() -> None:
    user = remote_state(push(ON, active=True), T0)
    assert after_federation_timeout(user, T0 + TIMEOUT - 1, SETTINGS) is user
    expired = after_federation_timeout(user, T0 + TIMEOUT, SETTINGS)
    assert (expired.state, expired.currently_active) == (OFF, False)
    assert after_federation_timeout(expired, T0 + 10 * TIMEOUT, SETTINGS) is expired


def test_the_machine_times_out_a_silent_remote_user_and_notifies_it() -> None:
    timeline = Timeline()
    first = timeline.push(push(ON))
    assert first.changes[0].notify is NotifyReason.NEW_USER
    assert first.next_deadline_ms == T0 + TIMEOUT
    assert timeline.advance(TIMEOUT - 1) == []
    [fired] = timeline.advance(1)
    [change] = fired.changes
    assert (change.state.state, change.notify) == (OFF, NotifyReason.PRESENCE)
    assert timeline.machine.next_deadline_ms is None


def test_each_push_postpones_the_federation_timeout() -> None:
    timeline = Timeline()
    timeline.push(push(ON))
    timeline.advance(TIMEOUT - 1_000)
    timeline.push(push(ON))
    timeline.advance(TIMEOUT - 1)
    assert timeline.state(REMOTE_CAROL) is ON
    timeline.advance(1)
    assert timeline.state(REMOTE_CAROL) is OFF


def test_an_offline_remote_user_has_no_timeout() -> None:
    timeline = Timeline()
    timeline.push(push(ON))
    outcome = timeline.push(push(OFF))
    assert outcome.next_deadline_ms is None


def test_a_push_for_one_of_our_users_is_dropped_and_the_rest_applied() -> None:
    machine = PresenceMachine(OURS)
    pushes = [RemotePush(ServerName("evil.example"), ALICE, ON, 0), push(ON)]
    outcome = machine.handle_remote(pushes, T0)
    assert len(outcome.dropped) == 1
    assert ALICE in outcome.dropped[0]
    assert machine.get(ALICE) is None
    assert [c.state.user_id for c in outcome.changes] == [REMOTE_CAROL]


def test_a_suppressed_bump_is_persisted_without_notify_so_get_stays_fresh() -> None:
    timeline = Timeline()
    timeline.push(push(ON, active=True))
    timeline.advance(120_000)
    outcome = timeline.push(push(ON, 1_000, active=True))
    [change] = outcome.changes
    assert change.notify is None
    assert outcome.to_notify == ()
    assert timeline.user(REMOTE_CAROL).last_active_ts == T0 + 119_000
    assert timeline.rows.users[REMOTE_CAROL].last_active_ts == T0 + 119_000


def test_a_bump_past_the_granularity_is_told_when_not_currently_active() -> None:
    timeline = Timeline()
    timeline.push(push(PresenceState.UNAVAILABLE, 500_000))
    timeline.advance(120_000)
    outcome = timeline.push(push(PresenceState.UNAVAILABLE, 1_000))
    assert outcome.changes[0].notify is NotifyReason.LAST_ACTIVE


def test_several_pushes_for_one_user_in_a_batch_make_one_change_told_if_any_step_was() -> None:
    machine = PresenceMachine(OURS)
    machine.handle_remote([push(ON, active=True)], T0)
    outcome = machine.handle_remote(
        [push(PresenceState.UNAVAILABLE), push(ON, active=True, status_msg="back")], T0 + 10
    )
    [change] = outcome.changes
    assert change.state.status_msg == "back"
    assert change.notify is NotifyReason.STATUS_MSG
    flapped = machine.handle_remote([push(OFF), push(ON, active=True, status_msg="back")], T0 + 20)
    [change] = flapped.changes
    assert change.notify is None
    assert flapped.next_deadline_ms == T0 + 20 + TIMEOUT


def test_a_batch_ending_offline_for_a_user_leaves_no_timeout() -> None:
    machine = PresenceMachine(OURS)
    outcome = machine.handle_remote([push(ON), push(OFF)], T0)
    assert outcome.changes[0].state.state is OFF
    assert outcome.next_deadline_ms is None


def test_an_identical_push_at_the_same_instant_changes_nothing() -> None:
    machine = PresenceMachine(OURS)
    machine.handle_remote([push(ON, 5)], T0)
    assert machine.handle_remote([push(ON, 5)], T0).changes == ()


_pushes = st.lists(
    st.builds(
        RemotePush,
        origin=st.just(THEIRS),
        user_id=st.sampled_from(["@a:theirs.example", "@b:theirs.example"]).map(UserId),
        state=st.sampled_from(PresenceState),
        last_active_ago=st.integers(0, 10**7),
        currently_active=st.booleans(),
        status_msg=st.none() | st.sampled_from(["x", "y"]),
    ),
    max_size=8,
)


@settings(deadline=None)
@given(batches=st.lists(_pushes, max_size=5), gaps=st.lists(st.integers(0, 10**6), min_size=5))
def test_the_hot_path_agrees_with_remote_state_and_never_mutates_its_argument(
    batches: list[list[RemotePush]], gaps: list[int]
) -> None:
    machine = PresenceMachine(OURS)
    now = T0
    for batch, gap in zip(batches, gaps, strict=False):
        now += gap
        copy = list(batch)
        before = {p.user_id: machine.get(p.user_id) for p in batch}
        outcome = machine.handle_remote(batch, now)
        assert batch == copy
        last = {p.user_id: p for p in batch}
        changed = {c.state.user_id: c for c in outcome.changes}
        assert len(changed) == len(outcome.changes)
        for user_id, final in last.items():
            state = remote_state(final, now)
            assert machine.get(user_id) == state
            if user_id in changed:
                assert changed[user_id].state == state
                expected = notify_reason(before[user_id], state, GRANULARITY)
                assert changed[user_id].notify is expected
            else:
                assert before[user_id] == state
