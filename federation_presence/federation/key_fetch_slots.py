"""Key-fetch slots: how many key fetches run at once, for how long, and who goes next.

Every request from an origin whose key we do not hold makes the keyring fetch
that key from the origin's server (and its notaries). An attacker can name as
many origins as it likes and make each key server accept the connection and
never answer. ``KeyFetchSlots`` keeps that from costing more than a bounded
amount of memory and sockets, and from starving a legitimate origin that
arrives in the middle of it. The design, and why:

* **A cap.** At most ``concurrency`` fetches run at once (default 64): each
  holds a socket, a TLS state and a task, so the cap bounds what a flood of
  hanging origins can hold.

* **A deadline per fetch.** An admitted fetch runs for at most ``timeout_ms``
  (default 10 s), the origin's own server and every notary together. Running
  into it is the origin's own failure (``TIMED_OUT``): the keyring's failure
  cache may record it.

* **Preemption under contention.** A cap alone turns hanging fetches into a
  queue: with 2,000 hanging origins, a cap of 64 and a 10 s deadline, a FIFO
  queue makes the origin that arrives next wait ~5 minutes, which is the
  starvation the outside tester saw. So a fetch owns its slot outright only
  for ``contended_timeout_ms`` (default 2 s, ample for a healthy key server
  to answer a small static document). After that it keeps the slot only as
  long as nobody waits: when a fetch is waiting, the oldest fetch past that
  age is cancelled (``PREEMPTED``) and its slot handed over. Slots held by
  hung servers therefore recycle every ``contended_timeout_ms``, whatever the
  number of hung origins, and a hang costs its attacker a slot for 2 s, not
  10 s.

* **Newest waiter first.** A freed slot goes to the most recent waiter (LIFO;
  "adaptive LIFO" in overload control): after a burst, an origin arriving
  later is not queued behind the thousands that came before it, so it is
  admitted within ``contended_timeout_ms`` of arriving, then runs its own
  fetch. Older waiters give up after ``timeout_ms`` in the queue, and at most
  ``max_waiting`` wait (the oldest is turned away first), so memory is
  bounded by the cap plus ``max_waiting``. The limit of the guarantee: if
  more than ``concurrency`` new origins arrive per ``contended_timeout_ms``
  without pause, newcomers compete with later newcomers and some are turned
  away; none is ever queued for longer than ``timeout_ms``.

* **Whose fault.** ``PREEMPTED`` and ``BUSY`` (turned away, or waited
  ``timeout_ms`` without a slot) are our capacity, never the origin's: the
  keyring answers them with 429 and does not record a failure, so an origin
  turned away during a flood is fetched as soon as it asks again.

Time comes only from the injected ``Clock``; every wait here (for a slot, for
the work) ends by the deadlines above. The owner of the work decides what the
work found; this module only says how it ended.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from federation_presence.clock import Clock

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 64
DEFAULT_TIMEOUT_MS = 10_000
DEFAULT_CONTENDED_TIMEOUT_MS = 2_000
WAITING_PER_SLOT = 16


class FetchOutcome(enum.Enum):
    """How one ``KeyFetchSlots.run`` ended."""

    DONE = "done"  # the work returned
    TIMED_OUT = "timed out"  # its own deadline: the origin's fault
    PREEMPTED = "preempted"  # cancelled past contended_timeout_ms for a waiter: ours
    BUSY = "busy"  # never admitted (queue full, or waited timeout_ms): ours


@dataclass(eq=False, slots=True)
class _Slot:
    started_ms: int
    scope: anyio.CancelScope | None = None
    preempted: bool = False


@dataclass(eq=False, slots=True)
class _Waiter:
    arrived_ms: int
    wake: anyio.Event = field(default_factory=anyio.Event)  # a new one per wait
    slot: _Slot | None = None
    refused: bool = False


class KeyFetchSlots:
    """Admission of key fetches: a cap, a deadline each, preemption, newest first."""

    def __init__(
        self,
        clock: Clock,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        contended_timeout_ms: int = DEFAULT_CONTENDED_TIMEOUT_MS,
        max_waiting: int | None = None,
    ) -> None:
        """``contended_timeout_ms`` above ``timeout_ms`` is taken as ``timeout_ms``."""
        if concurrency < 1 or timeout_ms < 1 or contended_timeout_ms < 1:
            raise ValueError("concurrency and timeouts must be positive")
        self._clock = clock
        self._concurrency = concurrency
        self._timeout_ms = timeout_ms
        self._contended_ms = min(contended_timeout_ms, timeout_ms)
        self._max_waiting = (
            max_waiting if max_waiting is not None else WAITING_PER_SLOT * concurrency
        )
        self._running: set[_Slot] = set()
        self._waiting: deque[_Waiter] = deque()

    @property
    def running(self) -> int:
        """Fetches holding a slot now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Fetches waiting for a slot now."""
        return len(self._waiting)

    @property
    def contended_timeout_ms(self) -> int:
        return self._contended_ms

    async def run(self, work: Callable[[], Awaitable[None]]) -> FetchOutcome:
        """Run ``work`` in a slot under the deadlines; how it ended.

        ``work`` is cancelled at its deadline or when preempted; it should not
        raise (an exception is logged and counts as ``DONE``).
        """
        slot = await self._admitted()
        if slot is None:
            return FetchOutcome.BUSY
        try:
            return await self._run_in(slot, work)
        finally:
            self._release(slot)

    async def _run_in(self, slot: _Slot, work: Callable[[], Awaitable[None]]) -> FetchOutcome:
        finished = timed_out = False
        async with anyio.create_task_group() as tg:
            slot.scope = tg.cancel_scope

            async def deadline() -> None:
                nonlocal timed_out
                await self._clock.sleep_ms(self._timeout_ms)
                timed_out = True
                tg.cancel_scope.cancel()

            tg.start_soon(deadline)
            try:
                await work()
            except Exception:
                logger.exception("key fetch: unexpected error")
            finished = True
            tg.cancel_scope.cancel()
        if finished:
            return FetchOutcome.DONE
        if slot.preempted:
            return FetchOutcome.PREEMPTED
        assert timed_out  # the only other way the group's scope is cancelled
        return FetchOutcome.TIMED_OUT

    def _now_ms(self) -> int:
        return round(self._clock.monotonic() * 1000)

    def _start(self, now_ms: int) -> _Slot:
        slot = _Slot(now_ms)
        self._running.add(slot)
        return slot

    def _release(self, slot: _Slot) -> None:
        """Free ``slot``; hand a slot to the newest waiter, if any."""
        self._running.discard(slot)
        if self._waiting and len(self._running) < self._concurrency:
            waiter = self._waiting.pop()
            waiter.slot = self._start(self._now_ms())
            waiter.wake.set()
            self._nudge_newest()

    def _nudge_newest(self) -> None:
        """Wake the newest waiter: it keeps the preemption alarm for everyone.

        Only the newest waiter sleeps until the next preemption time; the
        others sleep until they are granted a slot or give up, so a
        preemption wakes one task, not every waiter (no thundering herd).
        """
        if self._waiting:
            self._waiting[-1].wake.set()

    async def _admitted(self) -> _Slot | None:
        """A slot now, or after waiting; None when turned away."""
        now_ms = self._now_ms()
        if len(self._running) < self._concurrency:
            return self._start(now_ms)
        waiter = _Waiter(now_ms)
        self._waiting.append(waiter)
        if len(self._waiting) > self._max_waiting:
            self._turn_away(self._waiting.popleft())
        self._preempt_for_waiters(now_ms)
        try:
            while waiter.slot is None and not waiter.refused:
                waiter.wake = anyio.Event()
                if waiter is self._waiting[-1]:
                    await self._wait(waiter.wake, self._alarm_ms())
                    now_ms = self._now_ms()
                    self._expire_waiters(now_ms)
                    self._preempt_for_waiters(now_ms)
                else:
                    await waiter.wake.wait()
        except BaseException:
            # Cancelled while waiting: leave the queue, pass on a slot just granted.
            if waiter.slot is not None:
                self._release(waiter.slot)
            else:
                self._leave(waiter)
            raise
        return waiter.slot

    def _alarm_ms(self) -> int:
        """The queue's one alarm: the next preemption or the oldest waiter's give-up.

        Only the newest waiter sleeps on it; the others wait for their wake
        event alone, so the queue costs one timer, not one per waiter.
        """
        alarm_ms = self._waiting[0].arrived_ms + self._timeout_ms
        next_preemption_ms = self._next_preemption_ms()
        return alarm_ms if next_preemption_ms is None else min(alarm_ms, next_preemption_ms)

    def _expire_waiters(self, now_ms: int) -> None:
        """Turn away every waiter that has waited ``timeout_ms``."""
        while self._waiting and now_ms >= self._waiting[0].arrived_ms + self._timeout_ms:
            self._turn_away(self._waiting.popleft())

    @staticmethod
    def _turn_away(waiter: _Waiter) -> None:
        waiter.refused = True
        waiter.wake.set()

    def _leave(self, waiter: _Waiter) -> None:
        if waiter in self._waiting:
            newest = waiter is self._waiting[-1]
            self._waiting.remove(waiter)
            if newest:
                self._nudge_newest()

    def _preempt_for_waiters(self, now_ms: int) -> None:
        """Cancel the oldest fetches past the contended timeout, one per waiter."""
        pending = sum(1 for slot in self._running if slot.preempted)
        needed = len(self._waiting) - pending
        if needed <= 0:
            return
        for slot in sorted(self._running, key=lambda s: s.started_ms):
            if needed <= 0 or now_ms - slot.started_ms < self._contended_ms:
                break
            if slot.preempted or slot.scope is None:
                continue
            slot.preempted = True
            slot.scope.cancel()
            needed -= 1

    def _next_preemption_ms(self) -> int | None:
        """When the next running fetch becomes preemptible for a waiter, if ever.

        None when the preemptions under way already cover every waiter: they
        get the slots those fetches free, nothing more is due.
        """
        pending = sum(1 for slot in self._running if slot.preempted)
        if len(self._waiting) <= pending:
            return None
        ages = [s.started_ms for s in self._running if not s.preempted]
        return min(ages) + self._contended_ms if ages else None

    async def _wait(self, event: anyio.Event, until_ms: int) -> None:
        """Until ``event`` is set or the clock reaches ``until_ms``."""
        delay_ms = until_ms - self._now_ms()
        if delay_ms <= 0 or event.is_set():
            await anyio.lowlevel.checkpoint()  # a caller's loop always yields
            return
        async with anyio.create_task_group() as tg:

            async def alarm() -> None:
                await self._clock.sleep_ms(delay_ms)
                tg.cancel_scope.cancel()

            tg.start_soon(alarm)
            await event.wait()
            tg.cancel_scope.cancel()
