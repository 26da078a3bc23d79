"""Which sender instance owns a destination (pure).

Synapse shards federation senders by a stable hash of the destination over
the configured instance list; so do we. The hash is SHA-256 (not Python's
``hash``, which is salted per process): every instance, and every restart,
agrees on the owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def owner(destination: str, instances: Sequence[str]) -> str | None:
    """The instance that sends to ``destination``; None when ``instances`` is empty."""
    if not instances:
        return None
    digest = hashlib.sha256(destination.encode("utf-8")).digest()
    return instances[int.from_bytes(digest[:8], "big") % len(instances)]


def is_mine(destination: str, instances: Sequence[str], instance_name: str) -> bool:
    """Whether ``instance_name`` sends to ``destination`` (all of them if unsharded)."""
    chosen = owner(destination, instances)
    return chosen is None or chosen == instance_name
