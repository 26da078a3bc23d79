"""Log lines that a flood cannot multiply: per-kind windows, then a count.

What this module owns: deciding whether a log line of some *kind* ("refused
requests", "store failures (StoreError)") is written now, or only counted and
summarised later as ``N more <kind> in the last Xs``.

Invariants:

* Per kind, at most ``lines_per_window`` lines (or the kind's own budget,
  given to ``allow``) are written per window of
  ``window_s`` seconds; whatever else happens in that window is one summary
  line, written when the window is over (by the next event of that kind or by
  ``flush``, which ``run_flush`` calls when a window with a count ends).
* The number of kinds is bounded (``max_kinds``): past it, new kinds share one
  overflow kind, and kinds whose window ended with nothing to report are
  forgotten at each flush. Memory does not grow with traffic.
* Time is read from the injected ``Clock`` (``monotonic`` for windows).

Kinds are chosen by the caller from a closed set (a route, an exception
class name), never from request data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from federation_presence.clock import Clock

__all__ = ["OVERFLOW_KIND", "ThrottledLog", "ThrottlingFilter"]

OVERFLOW_KIND = "other events"


@dataclass(slots=True)
class _Window:
    started: float
    level: int
    written: int = 0
    suppressed: int = 0


class ThrottledLog:
    """Rate-limited lines on ``logger``: a few per kind per window, then a count."""

    def __init__(
        self,
        logger: logging.Logger,
        clock: Clock,
        *,
        lines_per_window: int,
        window_s: float = 10.0,
        max_kinds: int = 64,
    ) -> None:
        if max_kinds < 2:
            raise ValueError("max_kinds must leave room for one kind and the overflow")
        self._logger = logger
        self._clock = clock
        self._lines_per_window = lines_per_window
        self._window_s = window_s
        self._max_kinds = max_kinds
        self._windows: dict[str, _Window] = {}
        self._suppressing: anyio.Event | None = None  # set when a count starts (run_flush)

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds being tracked now (at most ``max_kinds``)."""
        return frozenset(self._windows)

    def allow(self, kind: str, level: int = logging.INFO, lines: int | None = None) -> bool:
        """Whether a line of ``kind`` may be written now (else it is counted).

        ``lines`` overrides ``lines_per_window`` for this kind (e.g. 1 for
        failures whose every occurrence says the same).
        """
        now = self._clock.monotonic()
        window = self._windows.get(kind)
        if window is None:
            if len(self._windows) >= self._max_kinds - 1:  # one slot kept for overflow
                kind = OVERFLOW_KIND
                window = self._windows.get(kind)
            if window is None:
                window = self._windows[kind] = _Window(now, level)
        if now - window.started >= self._window_s:
            self._summarise(kind, window, now)
            window.started, window.written = now, 0
        window.level = max(window.level, level)
        if window.written < (self._lines_per_window if lines is None else lines):
            window.written += 1
            return True
        window.suppressed += 1
        if self._suppressing is not None:
            self._suppressing.set()
        return False

    def log(self, kind: str, level: int, message: str, *args: object) -> None:
        """Write ``message % args`` if ``kind`` is within its budget, else count it."""
        if self.allow(kind, level):
            self._logger.log(level, message, *args)

    def flush(self) -> None:
        """Summarise every window that is over; forget kinds with nothing pending."""
        now = self._clock.monotonic()
        for kind, window in list(self._windows.items()):
            if now - window.started >= self._window_s:
                self._summarise(kind, window, now)
                del self._windows[kind]

    async def run_flush(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write each pending count when its window ends, forever (a child task).

        Sleeps on the clock only while a count is pending, so an idle log
        costs no wake-ups (and a ``FakeClock`` test none of its steps).
        """
        task_status.started()
        while True:
            self._suppressing = anyio.Event()
            pending = [w.started for w in self._windows.values() if w.suppressed]
            if not pending:
                await self._suppressing.wait()
                continue
            wait_s = min(pending) + self._window_s - self._clock.monotonic()
            await self._clock.sleep_ms(max(math.ceil(wait_s * 1000), 0))
            self.flush()

    def _summarise(self, kind: str, window: _Window, now: float) -> None:
        if window.suppressed:
            self._logger.log(
                window.level,
                "%d more %s in the last %.0fs",
                window.suppressed,
                kind,
                now - window.started,
            )
            window.suppressed = 0


class ThrottlingFilter(logging.Filter):
    """Passes another logger's records within a ``ThrottledLog``'s budget.

    For loggers we do not write to ourselves (uvicorn's: one warning per
    malformed request); the kind is the record's message template.
    """

    def __init__(self, throttled: ThrottledLog, source: str) -> None:
        super().__init__()
        self._throttled = throttled
        self._source = source

    def filter(self, record: logging.LogRecord) -> bool:
        template = " ".join(str(record.msg).split())[:80]
        return self._throttled.allow(f"{self._source} warnings ({template})", record.levelno)
