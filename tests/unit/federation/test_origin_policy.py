"""Origin allow/deny globs and the per-origin token bucket."""

from __future__ import annotations

import pytest

from federation_presence.federation.origin_policy import OriginPolicy, OriginRateLimiter


@pytest.mark.parametrize(
    ("allow", "deny", "origin", "allowed"),
    [
        ((), (), "anything.example", True),
        (("*.example",), (), "a.example", True),
        (("*.example",), (), "a.example.org", False),
        ((), ("evil.*",), "evil.org", False),
        ((), ("evil.*",), "good.org", True),
        (("*",), ("evil.org",), "evil.org", False),
        (("matrix.org",), (), "MATRIX.ORG", False),
        (("host:*",), (), "host:8448", True),
    ],
)
def test_policy_allows_by_glob_and_deny_wins(
    allow: tuple[str, ...], deny: tuple[str, ...], origin: str, allowed: bool
) -> None:
    assert OriginPolicy(allow, deny).allows(origin) is allowed


def test_a_burst_is_allowed_then_the_rate_applies() -> None:
    limiter = OriginRateLimiter(rate_per_second=2.0, burst=3)
    assert [limiter.check("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a", 0.0) == pytest.approx(0.5)
    assert limiter.check("a", 0.5) == 0.0
    assert limiter.check("b", 0.5) == 0.0


def test_origins_are_limited_independently() -> None:
    limiter = OriginRateLimiter(rate_per_second=1.0, burst=1)
    assert limiter.check("a", 10.0) == 0.0
    assert limiter.check("a", 10.0) > 0
    assert limiter.check("b", 10.0) == 0.0


def test_the_bucket_table_stays_bounded() -> None:
    limiter = OriginRateLimiter(rate_per_second=1.0, burst=1, max_origins=10)
    for i in range(1000):
        limiter.check(f"o{i}", float(i) / 1000)
    assert len(limiter._buckets) <= 10


def test_time_going_backwards_does_not_add_tokens() -> None:
    limiter = OriginRateLimiter(rate_per_second=1.0, burst=1)
    assert limiter.check("a", 100.0) == 0.0
    assert limiter.check("a", 50.0) > 0


def test_the_bucket_table_follows_the_origins_sending_within_a_refill_time() -> None:
    # burst/rate = 1 s: a bucket untouched for 1 s is full and carries nothing.
    limiter = OriginRateLimiter(rate_per_second=10.0, burst=10)
    for i in range(100_000):
        # 100 origins a second, each sending once: about 100 live at any time
        limiter.check(f"o{i}", i / 100)
        assert len(limiter) <= 2 * 100 + 64


def test_a_sweep_keeps_the_buckets_that_still_limit() -> None:
    limiter = OriginRateLimiter(rate_per_second=1.0, burst=1)
    assert limiter.check("busy", 0.0) == 0.0
    for i in range(1_000):
        limiter.check(f"o{i}", 0.5)
    assert limiter.check("busy", 0.5) > 0  # its empty bucket survived every sweep
