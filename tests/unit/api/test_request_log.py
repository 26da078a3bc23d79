"""``ThrottledLog``: a few lines per kind per window, then one count; bounded kinds.

Time is a ``FakeClock`` set by hand; records are captured with ``caplog``.
"""

from __future__ import annotations

import logging

import pytest

from federation_presence.api.request_log import OVERFLOW_KIND, ThrottledLog, ThrottlingFilter
from tests.fakes import FakeClock

LOGGER = logging.getLogger("tests.throttled")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER.name]


def test_the_first_lines_of_a_window_are_written_the_rest_counted_at_its_end(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    log = ThrottledLog(LOGGER, clock, lines_per_window=2, window_s=10)
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        for index in range(5):
            log.log("refusals", logging.INFO, "refused %d", index)
        log.flush()  # the window is not over: nothing yet
        clock.set(clock.now_ms() + 10_000)
        log.flush()
    assert _messages(caplog) == ["refused 0", "refused 1", "3 more refusals in the last 10s"]


def test_a_new_window_writes_again_after_summarising_the_last(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    log = ThrottledLog(LOGGER, clock, lines_per_window=1, window_s=10)
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        log.log("k", logging.INFO, "a")
        log.log("k", logging.INFO, "b")
        clock.set(clock.now_ms() + 12_000)
        log.log("k", logging.INFO, "c")
    assert _messages(caplog) == ["a", "1 more k in the last 12s", "c"]


def test_a_kind_may_have_its_own_budget(clock: FakeClock) -> None:
    log = ThrottledLog(LOGGER, clock, lines_per_window=10)
    assert log.allow("failures", lines=1)
    assert not log.allow("failures", lines=1)
    assert log.allow("refusals")


def test_the_summary_has_the_highest_level_of_what_it_counts(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    log = ThrottledLog(LOGGER, clock, lines_per_window=0)
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        log.log("k", logging.INFO, "x")
        log.log("k", logging.ERROR, "y")
        clock.set(clock.now_ms() + 10_000)
        log.flush()
    (summary,) = caplog.records
    assert summary.levelno == logging.ERROR


def test_kinds_are_bounded_and_quiet_ones_forgotten(clock: FakeClock) -> None:
    log = ThrottledLog(LOGGER, clock, lines_per_window=1, max_kinds=3)
    for index in range(100):
        log.allow(f"kind {index}")
    assert log.kinds == {"kind 0", "kind 1", OVERFLOW_KIND}
    clock.set(clock.now_ms() + 10_000)
    log.flush()
    assert log.kinds == frozenset()


def test_a_filter_passes_another_loggers_records_within_the_budget(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    other = logging.getLogger("tests.throttled.other")
    log = ThrottledLog(LOGGER, clock, lines_per_window=2)
    throttle = ThrottlingFilter(log, "other")
    other.addFilter(throttle)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(5):
                other.warning("Invalid HTTP request received.")
            clock.set(clock.now_ms() + 10_000)
            log.flush()
    finally:
        other.removeFilter(throttle)
    assert [r.getMessage() for r in caplog.records] == [
        "Invalid HTTP request received.",
        "Invalid HTTP request received.",
        "3 more other warnings (Invalid HTTP request received.) in the last 10s",
    ]
