"""DeadlineQueue: exact, ordered, and each deadline fires exactly once."""

from __future__ import annotations

import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from federation_presence.presence.timers import DeadlineQueue


def test_pop_due_returns_expired_keys_earliest_first_and_removes_them() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.schedule("a", 10)
    queue.schedule("b", 20)
    queue.schedule("c", 30)
    assert queue.pop_due(9) == []
    assert queue.pop_due(20) == ["a", "b"]
    assert queue.pop_due(20) == []
    assert queue.earliest() == 30
    assert list(queue) == ["c"]


def test_rescheduling_replaces_the_deadline() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.schedule("a", 10)
    queue.schedule("b", 15)
    queue.schedule("a", 20)
    assert queue.deadline_of("a") == 20
    assert queue.pop_due(15) == ["b"]
    assert queue.pop_due(25) == ["a"]
    assert len(queue) == 0


def test_a_deadline_earlier_than_the_newest_is_not_fired_late() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.schedule("late", 100)
    queue.schedule("early", 50)  # ``now`` went backwards
    assert queue.earliest() == 50
    assert queue.pop_due(60) == ["early"]
    assert queue.pop_due(100) == ["late"]


def test_a_key_moved_from_the_side_heap_back_to_the_queue_fires_once() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.schedule("x", 100)
    queue.schedule("a", 50)
    queue.schedule("a", 200)
    assert queue.pop_due(300) == ["x", "a"]
    assert queue.pop_due(300) == []


def test_cancel_removes_a_deadline_wherever_it_is() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.schedule("a", 100)
    queue.schedule("b", 50)
    queue.cancel("a")
    queue.cancel("b")
    queue.cancel("never")
    assert queue.earliest() is None
    assert queue.pop_due(1_000) == []
    assert "a" not in queue


def test_schedule_all_gives_every_key_the_shared_deadline() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.schedule("a", 5)
    queue.schedule_all(["b", "a", "c"], 10)
    assert queue.pop_due(10) == ["b", "a", "c"]
    queue.schedule("z", 50)
    queue.schedule_all(["y"], 20)  # before the newest: takes the exact path
    assert queue.pop_due(20) == ["y"]


def test_the_side_heap_is_compacted_under_churn() -> None:
    queue: DeadlineQueue[int] = DeadlineQueue()
    queue.schedule(-1, 10**9)
    for round_ in range(50):
        for key in range(10):
            queue.schedule(key, 1_000 - round_)
    assert len(queue._heap) <= 2 * len(queue._late) + 64
    assert queue.pop_due(10**9) == [*range(10), -1]


class QueueAgainstModel(RuleBasedStateMachine):
    """The queue behaves like a dict of deadlines; every expiry fires exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: DeadlineQueue[int] = DeadlineQueue()
        self.model: dict[int, int] = {}
        self.now = 0

    @rule(key=st.integers(0, 7), delay=st.integers(-50, 200))
    def schedule(self, key: int, delay: int) -> None:
        self.queue.schedule(key, self.now + delay)
        self.model[key] = self.now + delay

    @rule(keys=st.lists(st.integers(0, 7), max_size=4), delay=st.integers(-50, 200))
    def schedule_all(self, keys: list[int], delay: int) -> None:
        self.queue.schedule_all(keys, self.now + delay)
        for key in keys:
            self.model[key] = self.now + delay

    @rule(key=st.integers(0, 7))
    def cancel(self, key: int) -> None:
        self.queue.cancel(key)
        self.model.pop(key, None)

    @rule(step=st.integers(-20, 100))
    def pop_due(self, step: int) -> None:
        self.now += step  # may go slightly backwards
        fired = self.queue.pop_due(self.now)
        expected = sorted(
            (deadline, key) for key, deadline in self.model.items() if deadline <= self.now
        )
        assert sorted(fired) == sorted(key for _, key in expected)
        assert len(fired) == len(set(fired))
        deadlines = [self.model[key] for key in fired]
        assert deadlines == sorted(deadlines)
        for key in fired:
            del self.model[key]

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert len(self.queue) == len(self.model)
        assert self.queue.earliest() == (min(self.model.values()) if self.model else None)
        for key, deadline in self.model.items():
            assert self.queue.deadline_of(key) == deadline


TestQueueAgainstModel = QueueAgainstModel.TestCase
TestQueueAgainstModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@given(deadlines=st.lists(st.integers(0, 1_000), max_size=60), cut=st.integers(0, 1_000))
def test_every_deadline_fires_exactly_once_over_any_series_of_pops(
    deadlines: list[int], cut: int
) -> None:
    queue: DeadlineQueue[int] = DeadlineQueue()
    for key, deadline in enumerate(deadlines):
        queue.schedule(key, deadline)
    fired = queue.pop_due(cut) + queue.pop_due(cut) + queue.pop_due(1_000)
    assert sorted(fired) == list(range(len(deadlines)))
    assert queue.earliest() is None


def test_pop_due_with_a_limit_takes_the_earliest_of_ordered_and_late_deadlines() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.schedule("a", 10)
    queue.schedule("b", 20)
    queue.schedule("c", 30)
    queue.schedule("late", 15)  # out of order: the side heap
    assert queue.pop_due(100, limit=2) == ["a", "late"]
    assert queue.earliest() == 20
    assert queue.pop_due(100, limit=1) == ["b"]
    assert queue.pop_due(100) == ["c"]
    assert len(queue) == 0


def test_a_queue_emptied_by_pop_due_gives_its_table_back() -> None:
    queue: DeadlineQueue[int] = DeadlineQueue()
    queue.schedule_all(range(50_000), 10)
    grown = sys.getsizeof(queue._fifo)
    assert len(queue.pop_due(10, limit=49_990)) == 49_990
    assert sys.getsizeof(queue._fifo) < grown / 100
    assert queue.pop_due(10) == list(range(49_990, 50_000))
