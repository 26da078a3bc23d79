"""Key-fetch slots: the cap, the deadline, preemption under contention, newest first.

Work items are coroutines that finish when a test says so (or never, like a
key server that accepted the connection and went silent); time moves only by
``FakeClock.advance`` and tasks settle with ``wait_all_tasks_blocked``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from federation_presence.federation.key_fetch_slots import FetchOutcome, KeyFetchSlots
from tests.fakes import FakeClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Fetches:
    """Named work items, what ran concurrently, and how each ended."""

    def __init__(self, slots: KeyFetchSlots) -> None:
        self.slots = slots
        self.started: list[str] = []
        self.outcomes: dict[str, FetchOutcome] = {}
        self.finish: dict[str, anyio.Event] = {}
        self.most_at_once = 0
        self._now_running = 0

    def work(self, name: str) -> Callable[[], Awaitable[None]]:
        self.finish[name] = anyio.Event()

        async def fetch() -> None:
            self.started.append(name)
            self._now_running += 1
            self.most_at_once = max(self.most_at_once, self._now_running)
            try:
                await self.finish[name].wait()
            finally:
                self._now_running -= 1

        return fetch

    def start(self, tg: anyio.abc.TaskGroup, *names: str) -> None:
        for name in names:
            tg.start_soon(self._run, name)

    async def _run(self, name: str) -> None:
        self.outcomes[name] = await self.slots.run(self.work(name))


async def test_no_more_fetches_run_at_once_than_the_cap(clock: FakeClock) -> None:
    fetches = Fetches(KeyFetchSlots(clock, concurrency=3, timeout_ms=10_000))
    names = [f"o{n}" for n in range(10)]
    async with anyio.create_task_group() as tg:
        fetches.start(tg, *names)
        await wait_all_tasks_blocked()
        assert (fetches.slots.running, fetches.slots.waiting) == (3, 7)
        for name in names:  # each finish frees a slot for one waiter, never more
            fetches.finish[name].set()
            await wait_all_tasks_blocked()
    assert fetches.most_at_once == 3
    assert sorted(fetches.started) == sorted(names)
    assert set(fetches.outcomes.values()) == {FetchOutcome.DONE}


async def test_a_fetch_that_never_ends_times_out_at_its_deadline(clock: FakeClock) -> None:
    fetches = Fetches(KeyFetchSlots(clock, concurrency=2, timeout_ms=10_000))
    async with anyio.create_task_group() as tg:
        fetches.start(tg, "hung")
        await wait_all_tasks_blocked()
        await clock.advance(9_999)
        assert fetches.outcomes == {}
        await clock.advance(1)
    assert fetches.outcomes == {"hung": FetchOutcome.TIMED_OUT}
    assert fetches.slots.running == 0


async def test_without_waiters_a_slow_fetch_keeps_its_slot_past_the_contended_timeout(
    clock: FakeClock,
) -> None:
    fetches = Fetches(
        KeyFetchSlots(clock, concurrency=1, timeout_ms=10_000, contended_timeout_ms=2_000)
    )
    async with anyio.create_task_group() as tg:
        fetches.start(tg, "slow")
        await wait_all_tasks_blocked()
        await clock.advance(5_000)
        fetches.finish["slow"].set()
    assert fetches.outcomes == {"slow": FetchOutcome.DONE}


async def test_a_waiter_preempts_a_fetch_past_the_contended_timeout(clock: FakeClock) -> None:
    fetches = Fetches(
        KeyFetchSlots(clock, concurrency=1, timeout_ms=10_000, contended_timeout_ms=2_000)
    )
    async with anyio.create_task_group() as tg:
        fetches.start(tg, "hung")
        await wait_all_tasks_blocked()
        await clock.advance(500)
        fetches.start(tg, "newcomer")
        await wait_all_tasks_blocked()
        await clock.advance(1_499)
        assert fetches.started == ["hung"]  # the hung fetch still has its guaranteed share
        await clock.advance(1)
        assert fetches.outcomes == {"hung": FetchOutcome.PREEMPTED}
        assert fetches.started == ["hung", "newcomer"]
        fetches.finish["newcomer"].set()
    assert fetches.outcomes["newcomer"] is FetchOutcome.DONE


async def test_one_waiter_preempts_one_of_several_old_fetches_and_gets_its_slot(
    clock: FakeClock,
) -> None:
    slots = KeyFetchSlots(clock, concurrency=3, timeout_ms=10_000, contended_timeout_ms=2_000)
    fetches = Fetches(slots)
    async with anyio.create_task_group() as tg:
        for name in ("a", "b", "c"):
            fetches.start(tg, name)
            await wait_all_tasks_blocked()
            await clock.advance(1)
        await clock.advance(3_000)  # all three are past the contended timeout; "a" is oldest
        with anyio.fail_after(5):  # the waiter must not spin on the two it need not preempt
            fetches.start(tg, "newcomer")
            await wait_all_tasks_blocked()
        assert fetches.outcomes == {"a": FetchOutcome.PREEMPTED}
        assert fetches.started == ["a", "b", "c", "newcomer"]
        for name in ("b", "c", "newcomer"):
            fetches.finish[name].set()
    assert [fetches.outcomes[n] for n in ("b", "c", "newcomer")] == [FetchOutcome.DONE] * 3


async def test_a_freed_slot_goes_to_the_newest_waiter(clock: FakeClock) -> None:
    fetches = Fetches(KeyFetchSlots(clock, concurrency=1, timeout_ms=10_000))
    async with anyio.create_task_group() as tg:
        fetches.start(tg, "running")
        await wait_all_tasks_blocked()
        for name in ("first", "second", "third"):
            fetches.start(tg, name)
            await wait_all_tasks_blocked()
        for name in ("running", "third", "second", "first"):
            fetches.finish[name].set()
            await wait_all_tasks_blocked()
    assert fetches.started == ["running", "third", "second", "first"]


async def test_an_origin_arriving_after_a_burst_of_hung_fetches_is_admitted_within_the_contended_timeout(  # noqa: E501
    clock: FakeClock,
) -> None:
    slots = KeyFetchSlots(clock, concurrency=2, timeout_ms=10_000, contended_timeout_ms=2_000)
    fetches = Fetches(slots)
    hung = [f"hung{n}" for n in range(60)]
    async with anyio.create_task_group() as tg:
        fetches.start(tg, *hung)  # their key servers never answer
        await wait_all_tasks_blocked()
        await clock.advance(700)
        fetches.start(tg, "legit")
        await wait_all_tasks_blocked()
        # 2 running, 16 waiting per slot, the 27 oldest waiters turned away at once.
        assert (slots.running, slots.waiting) == (2, 32)
        assert sum(o is FetchOutcome.BUSY for o in fetches.outcomes.values()) == 27
        await clock.advance(1_300)  # the first hung fetches reach the contended timeout
        assert "legit" in fetches.started
        fetches.finish["legit"].set()
        await wait_all_tasks_blocked()
        assert fetches.outcomes["legit"] is FetchOutcome.DONE
        await clock.advance(10_000)  # every waiter gives up by its own deadline
        await clock.advance(10_000)  # and every admitted hung fetch ends by its own
    assert slots.running == slots.waiting == 0
    outcomes = [fetches.outcomes[name] for name in hung]
    assert FetchOutcome.DONE not in outcomes
    assert {FetchOutcome.PREEMPTED, FetchOutcome.BUSY, FetchOutcome.TIMED_OUT} >= set(outcomes)


async def test_a_waiter_gives_up_after_the_timeout_as_busy(clock: FakeClock) -> None:
    fetches = Fetches(
        KeyFetchSlots(clock, concurrency=1, timeout_ms=10_000, contended_timeout_ms=10_000)
    )
    async with anyio.create_task_group() as tg:
        fetches.start(tg, "running")
        await wait_all_tasks_blocked()
        await clock.advance(1)
        fetches.start(tg, "waiter")
        await wait_all_tasks_blocked()
        await clock.advance(9_999)  # "running" reaches its deadline first: no one preempted it
        assert fetches.outcomes == {"running": FetchOutcome.TIMED_OUT}
        assert fetches.started == ["running", "waiter"]
        fetches.finish["waiter"].set()
    assert fetches.outcomes["waiter"] is FetchOutcome.DONE


async def test_a_waiter_that_never_gets_a_slot_is_turned_away_at_its_deadline(
    clock: FakeClock,
) -> None:
    slots = KeyFetchSlots(clock, concurrency=1, timeout_ms=10_000, contended_timeout_ms=2_000)
    fetches = Fetches(slots)
    async with anyio.create_task_group() as tg:
        fetches.start(tg, "old")
        await wait_all_tasks_blocked()
        await clock.advance(100)
        # A fresh arrival every 1.5 s: each newest one wins the slot, "old" never does.
        for n in range(8):
            fetches.start(tg, f"new{n}")
            await wait_all_tasks_blocked()
            await clock.advance(1_500)
        assert fetches.outcomes["old"] is FetchOutcome.PREEMPTED
        fetches.start(tg, "late")
        await wait_all_tasks_blocked()
        await clock.advance(30_000)
    busy = [name for name, outcome in fetches.outcomes.items() if outcome is FetchOutcome.BUSY]
    assert busy  # turned away after 10 s in the queue, not kept forever
    assert slots.running == slots.waiting == 0


async def test_beyond_max_waiting_the_oldest_waiter_is_turned_away_at_once(
    clock: FakeClock,
) -> None:
    slots = KeyFetchSlots(clock, concurrency=1, timeout_ms=10_000, max_waiting=2)
    fetches = Fetches(slots)
    async with anyio.create_task_group() as tg:
        fetches.start(tg, "running")
        for name in ("a", "b", "c"):
            await wait_all_tasks_blocked()
            fetches.start(tg, name)
        await wait_all_tasks_blocked()
        assert fetches.outcomes == {"a": FetchOutcome.BUSY}
        assert slots.waiting == 2
        for name in ("running", "c", "b"):
            fetches.finish[name].set()
            await wait_all_tasks_blocked()
    assert fetches.started == ["running", "c", "b"]


async def test_a_cancelled_waiter_leaves_the_queue(clock: FakeClock) -> None:
    slots = KeyFetchSlots(clock, concurrency=1, timeout_ms=10_000)
    fetches = Fetches(slots)
    async with anyio.create_task_group() as tg:
        fetches.start(tg, "running")
        await wait_all_tasks_blocked()
        with anyio.CancelScope() as scope:
            tg.start_soon(fetches._run, "impatient")
            await wait_all_tasks_blocked()
            assert slots.waiting == 1
            tg.cancel_scope.cancel()
        del scope
    assert (slots.running, slots.waiting) == (0, 0)


async def test_an_error_in_the_work_frees_its_slot(clock: FakeClock) -> None:
    slots = KeyFetchSlots(clock, concurrency=1, timeout_ms=10_000)

    async def broken() -> None:
        raise RuntimeError("a bug")

    assert await slots.run(broken) is FetchOutcome.DONE
    assert slots.running == 0
