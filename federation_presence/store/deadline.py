"""Bounded waits of store callers: an answer within ``timeout_s``, or ``StoreError``.

Both stores hand each caller a future that the writer completes. A stalled
database (a lock held elsewhere, a disk that stopped answering, a lost
PostgreSQL server) must not hold a ``/send`` request forever, so every such
wait goes through ``answer_within``: past the timeout the future fails with
``StoreError`` (the API answers 503). The write itself is not withdrawn: it
stays queued and may commit later, which ``base.DEFAULT_APPLY_TIMEOUT_S``
explains is harmless. The timer is the event loop's own (``call_later``):
one handle per wait, no task.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from federation_presence.errors import StoreError
from federation_presence.store.base import StoreStats

T = TypeVar("T")


async def answer_within(
    fut: asyncio.Future[T], timeout_s: float, what: str, stats: StoreStats
) -> T:
    """``await fut``, but ``StoreError`` once ``timeout_s`` passed without an answer."""
    handle = fut.get_loop().call_later(timeout_s, _expire, fut, timeout_s, what, stats)
    try:
        return await fut
    finally:
        handle.cancel()


def _expire(fut: asyncio.Future[Any], timeout_s: float, what: str, stats: StoreStats) -> None:
    if fut.done():
        return
    stats.timeouts += 1
    fut.set_exception(
        StoreError(
            f"{what} got no answer within {timeout_s:g} s"
            " (the database is stalled; the write stays queued and may still commit)"
        )
    )
