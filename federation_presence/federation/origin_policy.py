"""Which origins may send to us, and how fast (pure; time passed in).

``OriginPolicy``: allow/deny lists of server-name globs (``fnmatch``, case
sensitive, as server names are compared). Deny wins; an empty allow list
allows every origin not denied.

``OriginRateLimiter``: a token bucket per origin. ``check(origin, now_s)``
takes a token or says how long to wait. The table of buckets follows what is
live: a bucket that has refilled completely carries no information (a new
one would be the same), so whenever the table has doubled since the last
sweep, full buckets are dropped and the table is rebuilt (a ``dict`` never
shrinks on deletion). It is thus at most twice the origins sending within
one refill time (``burst / rate``), plus ``SWEEP_FLOOR``, and never more
than ``max_origins``: past that, the oldest half goes, so a flood of
distinct origins cannot grow memory. Sweeps cost O(1) amortised per insert.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass


class OriginPolicy:
    def __init__(self, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> None:
        self._allow = _compile(allow)
        self._deny = _compile(deny)

    def allows(self, origin: str) -> bool:
        if self._deny is not None and self._deny.fullmatch(origin):
            return False
        return self._allow is None or self._allow.fullmatch(origin) is not None


def _compile(globs: tuple[str, ...]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


SWEEP_FLOOR = 64
"""Tables this small are not swept (a sweep would cost more than it frees)."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class OriginRateLimiter:
    """Token buckets: ``rate`` tokens per second up to ``burst``, per origin."""

    def __init__(self, rate_per_second: float, burst: int, max_origins: int = 100_000) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate_per_second must be > 0 and burst >= 1")
        self._rate = rate_per_second
        self._burst = float(burst)
        self._max_origins = max_origins
        self._buckets: dict[str, _Bucket] = {}
        self._sweep_at = min(SWEEP_FLOOR, max_origins)

    def __len__(self) -> int:
        """Origins with a bucket."""
        return len(self._buckets)

    def check(self, origin: str, now_s: float) -> float:
        """Take one token: 0.0 if allowed, else seconds until a token is due."""
        bucket = self._buckets.get(origin)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._evict_full(now_s)
                self._sweep_at = min(max(SWEEP_FLOOR, 2 * len(self._buckets)), self._max_origins)
            bucket = self._buckets[origin] = _Bucket(self._burst, now_s)
        elapsed = max(now_s - bucket.updated_s, 0.0)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated_s = max(now_s, bucket.updated_s)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def _evict_full(self, now_s: float) -> None:
        full_after_s = self._burst / self._rate
        self._buckets = {
            origin: bucket
            for origin, bucket in self._buckets.items()
            if now_s - bucket.updated_s < full_after_s
        }
        if len(self._buckets) >= self._max_origins:
            # Every bucket is in use: forget the oldest half rather than grow.
            by_age = sorted(self._buckets, key=lambda o: self._buckets[o].updated_s)
            for origin in by_age[: len(by_age) // 2]:
                del self._buckets[origin]
