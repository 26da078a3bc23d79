"""Fakes for the seams (not mocks): a clock that moves only when told to."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import anyio

# Not 0.1 s: anyio's wait_all_tasks_blocked re-checks every 0.1 s, the same
# period as uvicorn's main-loop tick, and the two can lock in phase so that
# it always finds the server task just woken and never returns.
_BLOCKED_RECHECK_S = 0.013


async def wait_all_tasks_blocked() -> None:
    """Return once every other task is waiting (anyio's, minus the lock-step hang)."""
    await asyncio.sleep(0)
    this_task = asyncio.current_task()
    while True:
        for task in asyncio.all_tasks():
            if task is this_task:
                continue
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if waiter is None or waiter.done():
                await asyncio.sleep(_BLOCKED_RECHECK_S)
                break
        else:
            return


class FakeClock:
    """A ``Clock`` whose time moves only by ``advance``.

    Sleepers wake in deadline order: ``advance(ms)`` steps time to each due
    deadline in turn, wakes its sleepers and lets them run (they are woken by
    an ``anyio.Event``; callers then use ``wait_all_tasks_blocked``).
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms
        self._sleepers: list[tuple[int, int, anyio.Event]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._now_ms / 1000

    async def sleep_until(self, deadline_ms: int) -> None:
        if deadline_ms <= self._now_ms:
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (deadline_ms, next(self._seq), event))
        await event.wait()

    async def sleep_ms(self, duration_ms: int) -> None:
        await self.sleep_until(self._now_ms + duration_ms)

    async def advance(self, ms: int) -> None:
        """Move time forward by ``ms``, waking sleepers in deadline order."""
        from anyio.lowlevel import checkpoint

        target = self._now_ms + ms
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now_ms = max(self._now_ms, deadline)
            event.set()
            await checkpoint()
            await wait_all_tasks_blocked()
        self._now_ms = target

    def set(self, now_ms: int) -> None:
        """Jump without waking anyone (for pure-core tests)."""
        self._now_ms = now_ms
