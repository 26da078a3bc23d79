"""Per-destination retry timing after a failed transaction (pure).

Exponential: the n-th consecutive failure waits ``initial * 2**(n-1)``,
capped at ``backoff_max_ms``, times a jitter factor drawn from the injected
``random.Random`` in ``[1 - jitter, 1 + jitter]`` (so that destinations that
failed together do not all retry at one instant), never above the cap. A
destination's own ``retry_after_ms`` (429) is honoured as a floor.
"""

from __future__ import annotations

import random

from federation_presence.outbound.settings import SenderSettings


def retry_delay_ms(
    failures: int,
    settings: SenderSettings,
    rng: random.Random,
    retry_after_ms: int | None = None,
) -> int:
    """How long to wait after the ``failures``-th consecutive failure (``failures >= 1``)."""
    if failures < 1:
        raise ValueError("failures must be at least 1")
    # Past 2**62 every cap is reached; avoid building huge integers.
    base = settings.backoff_initial_ms * (1 << min(failures - 1, 62))
    base = min(base, settings.backoff_max_ms)
    jitter = settings.backoff_jitter
    delay = round(base * rng.uniform(1 - jitter, 1 + jitter))
    delay = min(max(delay, 1), settings.backoff_max_ms)
    if retry_after_ms is not None:
        delay = max(delay, min(retry_after_ms, settings.backoff_max_ms))
    return delay
