"""Bounded waits of store callers: an answer within ``timeout_s``, or ``StoreError``.

Both stores hand each caller a future that the writer completes. A stalled
database (a lock held elsewhere, a disk that stopped answering, a lost
PostgreSQL server) must not hold a ``/send`` request forever, so every such
wait goes through ``CallerDeadlines.answer``: past the timeout the future
fails with ``StoreError`` (the API answers 503). The write itself is not
withdrawn: it stays queued and may commit later, which
``base.DEFAULT_APPLY_TIMEOUT_S`` explains is harmless.

One timer for all callers. Every wait has the same timeout, so deadlines
come in the order the waits start: a FIFO of ``(deadline, future)`` and one
``call_at`` for the oldest unanswered entry do the work of a timer per call
(``call_later`` plus ``cancel`` costs 4-6 us a call here, about as much as
writing a one-push change). Answered entries leave the front when the next
wait starts or the timer fires, so the FIFO holds at most the waits started
within one timeout behind the oldest unanswered one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, TypeVar

from federation_presence.errors import StoreError
from federation_presence.store.base import StoreStats

T = TypeVar("T")


class CallerDeadlines:
    """The deadlines of one store's callers, all ``timeout_s`` after their wait began."""

    def __init__(self, timeout_s: float, stats: StoreStats) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = timeout_s
        self._stats = stats
        self._waiting: deque[tuple[float, asyncio.Future[Any], str]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    async def answer(self, fut: asyncio.Future[T], what: str) -> T:
        """``await fut``, but ``StoreError`` once ``timeout_s`` passed without an answer."""
        loop = fut.get_loop()
        waiting = self._waiting
        while waiting and waiting[0][1].done():
            waiting.popleft()
        waiting.append((loop.time() + self.timeout_s, fut, what))
        if self._timer is None:
            self._timer = loop.call_at(waiting[0][0], self._expire, loop)
        return await fut

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        waiting = self._waiting
        while waiting:
            deadline, fut, what = waiting[0]
            if not fut.done():
                if deadline > now:
                    break
                self._stats.timeouts += 1
                fut.set_exception(
                    StoreError(
                        f"{what} got no answer within {self.timeout_s:g} s (the database is"
                        " stalled; the write stays queued and may still commit)"
                    )
                )
            waiting.popleft()
        if waiting:
            self._timer = loop.call_at(waiting[0][0], self._expire, loop)
