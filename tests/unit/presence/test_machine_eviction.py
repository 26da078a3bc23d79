"""Offline remote users leave memory once durable; read back through, nothing changes."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from federation_presence.ids import UserId
from federation_presence.presence.inputs import Activity, LocalInput, RemotePush, SetPresence
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import NotifyReason, Outcome, UserPresence
from federation_presence.presence.states import PresenceState
from tests.unit.presence.timeline import ALICE, OURS, PHONE, SETTINGS, T0, THEIRS

ON = PresenceState.ONLINE
OFF = PresenceState.OFFLINE
TIMEOUT = SETTINGS.federation_timeout_ms
CAROL = UserId("@carol:theirs.example")
DAN = UserId("@dan:theirs.example")
ERIN = UserId("@erin:theirs.example")


def push(user: UserId, state: PresenceState, status_msg: str | None = None) -> RemotePush:
    return RemotePush(THEIRS, user, state, last_active_ago=0, status_msg=status_msg)


def timed_out(machine: PresenceMachine, *users: UserId) -> Outcome:
    """Push ``users`` online at T0, then tick past their federation timeout."""
    machine.handle_remote([push(user, ON) for user in users], T0)
    return machine.tick(T0 + TIMEOUT)


def test_offline_users_beyond_the_cache_are_evicted_least_recently_seen_first() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=1)
    machine.handle_remote([push(CAROL, OFF)], T0)
    last = machine.handle_remote([push(DAN, OFF)], T0 + 1)
    assert machine.offline_cached == 2

    assert machine.forget_offline(last.seq) == 1
    assert machine.get(CAROL) is None
    assert machine.get(DAN) is not None
    assert machine.user_count == 1


def test_users_timed_out_by_our_clock_are_evicted_before_users_seen_offline() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=1)
    machine.handle_remote([push(CAROL, ON)], T0)
    machine.handle_remote([push(DAN, OFF)], T0 + 1)
    tick = machine.tick(T0 + TIMEOUT)
    assert [c.state.user_id for c in tick.changes] == [CAROL]

    assert machine.forget_offline(tick.seq) == 1
    assert machine.get(CAROL) is None
    assert machine.get(DAN) is not None


def test_nothing_is_evicted_before_its_write_is_durable() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=0)
    tick = timed_out(machine, CAROL)
    assert machine.forget_offline(tick.seq - 1) == 0
    assert machine.get(CAROL) is not None
    assert machine.forget_offline(tick.seq) == 1


def test_users_not_offline_are_never_evicted() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=0)
    outcome = machine.handle_remote([push(CAROL, ON), push(DAN, PresenceState.UNAVAILABLE)], T0)
    assert machine.forget_offline(outcome.seq) == 0
    assert machine.user_count == 2


def test_a_user_pushed_back_online_leaves_the_offline_cache() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=0)
    timed_out(machine, CAROL)
    assert machine.offline_cached == 1
    outcome = machine.handle_remote([push(CAROL, ON)], T0 + TIMEOUT + 5)
    assert machine.offline_cached == 0
    assert machine.forget_offline(outcome.seq) == 0
    assert machine.get(CAROL) is not None


def test_a_user_pushed_offline_enters_the_offline_cache() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=0)
    outcome = machine.handle_remote([push(CAROL, ON), push(CAROL, OFF)], T0)
    assert machine.offline_cached == 1
    assert machine.forget_offline(outcome.seq) == 1


def test_missing_names_remote_users_not_held_once_each_never_local_ones() -> None:
    machine = PresenceMachine(OURS)
    machine.handle_remote([push(CAROL, ON)], T0)
    assert machine.missing([CAROL, DAN, ALICE, DAN, ERIN]) == [DAN, ERIN]


def evicted(machine: PresenceMachine, user: UserId) -> UserPresence:
    """Time ``user`` out, evict it; its last state (what the store holds)."""
    tick = timed_out(machine, user)
    machine.forget_offline(tick.seq)
    assert machine.get(user) is None
    return tick.changes[0].state


def test_an_evicted_user_read_back_and_coming_online_is_a_presence_change() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=0)
    stored = evicted(machine, CAROL)
    machine.admit([stored])
    outcome = machine.handle_remote([push(CAROL, ON)], T0 + TIMEOUT + 10)
    assert [c.notify for c in outcome.changes] == [NotifyReason.PRESENCE]


def test_an_offline_push_for_an_evicted_offline_user_is_not_notified() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=0)
    stored = evicted(machine, CAROL)
    machine.admit([stored])
    same_activity = RemotePush(THEIRS, CAROL, OFF, last_active_ago=TIMEOUT + 10)
    outcome = machine.handle_remote([same_activity], T0 + TIMEOUT + 10)
    assert [c.notify for c in outcome.changes] == [None]


def test_a_user_the_store_never_had_is_new() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=0)
    machine.admit([])
    outcome = machine.handle_remote([push(CAROL, OFF)], T0)
    assert [c.notify for c in outcome.changes] == [NotifyReason.NEW_USER]


def test_admit_keeps_what_the_machine_holds() -> None:
    machine = PresenceMachine(OURS)
    machine.handle_remote([push(CAROL, ON)], T0)
    held = machine.get(CAROL)
    machine.admit([UserPresence(CAROL, OFF, 5, "stale")])
    assert machine.get(CAROL) is held


def test_an_admitted_user_that_is_not_offline_times_out_as_usual() -> None:
    machine = PresenceMachine(OURS)
    machine.admit([UserPresence(CAROL, ON, T0, None, False, T0)])
    assert machine.next_deadline_ms == T0 + TIMEOUT
    outcome = machine.tick(T0 + TIMEOUT)
    assert [c.state.state for c in outcome.changes] == [OFF]


def test_a_tick_with_a_remote_limit_times_out_the_earliest_and_leaves_the_rest_due() -> None:
    machine = PresenceMachine(OURS)
    machine.handle_remote([push(CAROL, ON)], T0)
    machine.handle_remote([push(DAN, ON)], T0 + 1)
    machine.handle_remote([push(ERIN, ON)], T0 + 2)
    now = T0 + 2 + TIMEOUT
    first = machine.tick(now, remote_limit=2)
    assert [c.state.user_id for c in first.changes] == [CAROL, DAN]
    assert first.next_deadline_ms is not None
    assert first.next_deadline_ms <= now
    second = machine.tick(now, remote_limit=2)
    assert [c.state.user_id for c in second.changes] == [ERIN]
    assert second.next_deadline_ms is None


def test_mass_eviction_rebuilds_the_user_table_at_its_new_size() -> None:
    machine = PresenceMachine(OURS, offline_cache_size=10)
    users = [UserId(f"@u{i}:theirs.example") for i in range(20_000)]
    machine.handle_remote([push(user, ON) for user in users], T0)
    grown = sys.getsizeof(machine._users)
    tick = machine.tick(T0 + TIMEOUT)
    assert machine.forget_offline(tick.seq) == 20_000  # timed out: none is cached
    assert sys.getsizeof(machine._users) < grown / 100


def test_seq_grows_with_every_call_and_is_not_part_of_what_was_decided() -> None:
    machine = PresenceMachine(OURS)
    first = machine.tick(T0)
    second = machine.tick(T0)
    assert second.seq == first.seq + 1 == machine.seq
    assert first == second


# -- evicting and reading back gives the decisions of never evicting ---------------

REMOTE_USERS = [CAROL, DAN, ERIN]


@dataclass(frozen=True)
class Wait:
    ms: int


_push = st.builds(
    RemotePush,
    origin=st.just(THEIRS),
    user_id=st.sampled_from(REMOTE_USERS),
    state=st.sampled_from(PresenceState),
    last_active_ago=st.integers(0, 200_000),
    currently_active=st.booleans(),
    status_msg=st.none() | st.just("away"),
)
_local: st.SearchStrategy[LocalInput] = st.one_of(
    st.builds(Activity, st.just(ALICE), st.just(PHONE)),
    st.builds(SetPresence, st.just(ALICE), st.just(PHONE), st.sampled_from(PresenceState)),
)
_step = st.one_of(
    st.lists(_push, min_size=1, max_size=4),
    _local,
    st.builds(
        Wait, st.sampled_from([1, 60_001, TIMEOUT - 1, TIMEOUT]) | st.integers(0, 2 * TIMEOUT)
    ),
)


class EvictingShell:
    """Drives a machine with no offline cache the way the keeper does, over a dict store."""

    def __init__(self, durable_lag: int) -> None:
        self.machine = PresenceMachine(OURS, SETTINGS, offline_cache_size=0)
        self.stored: dict[UserId, UserPresence] = {}
        self.durable_lag = durable_lag

    def persisted(self, outcome: Outcome) -> Outcome:
        for change in outcome.changes:
            self.stored[change.state.user_id] = change.state
        self.machine.forget_offline(outcome.seq - self.durable_lag)
        return outcome

    def read_through(self, pushes: list[RemotePush]) -> None:
        missing = self.machine.missing(p.user_id for p in pushes)
        self.machine.admit([self.stored[u] for u in missing if u in self.stored])

    def get(self, user_id: UserId) -> UserPresence | None:
        held = self.machine.get(user_id)
        return held if held is not None else self.stored.get(user_id)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_step, max_size=30), durable_lag=st.sampled_from([0, 1]))
def test_evicting_and_reading_back_decides_as_never_evicting(
    steps: list[list[RemotePush] | LocalInput | Wait], durable_lag: int
) -> None:
    keeping = PresenceMachine(OURS, SETTINGS)  # nobody calls forget_offline: keeps all
    shell = EvictingShell(durable_lag)
    evicting = shell.machine
    now = T0
    for step in steps:
        if isinstance(step, Wait):
            target = now + step.ms
            deadline = keeping.next_deadline_ms
            while deadline is not None and deadline <= target:
                now = max(now, deadline)
                assert keeping.tick(now) == shell.persisted(evicting.tick(now))
                deadline = keeping.next_deadline_ms
            now = target
        elif isinstance(step, list):
            shell.read_through(step)
            assert keeping.handle_remote(step, now) == shell.persisted(
                evicting.handle_remote(step, now)
            )
        else:
            assert keeping.handle(step, now) == shell.persisted(evicting.handle(step, now))
        for user in [*REMOTE_USERS, ALICE]:
            assert keeping.get(user) == shell.get(user)
    assert keeping.next_deadline_ms == evicting.next_deadline_ms
