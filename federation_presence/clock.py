"""The only module that reads time.

Everything else takes ``now`` (wall-clock ms since the epoch) as an argument or
asks a ``Clock``. Tests use ``tests.fakes.FakeClock``, which moves only when
told to. ``monotonic()`` is for measuring durations (rate limits, timeouts
inside one process); ``now_ms()`` is what gets stored and sent.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time, ms since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...

    async def sleep_until(self, deadline_ms: int) -> None:
        """Return once ``now_ms()`` has reached ``deadline_ms``."""
        ...

    async def sleep_ms(self, duration_ms: int) -> None:
        """Return after ``duration_ms`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline_ms: int) -> None:
        delay_ms = deadline_ms - self.now_ms()
        if delay_ms > 0:
            await anyio.sleep(delay_ms / 1000)

    async def sleep_ms(self, duration_ms: int) -> None:
        await anyio.sleep(max(duration_ms, 0) / 1000)
