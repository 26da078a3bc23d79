"""Which sender instance owns a destination (pure).

Synapse shards federation senders by a stable hash of the destination over
the configured instance list (``ShardedWorkerHandlingConfig.get_instance``);
so do we, with its exact formula: the SHA-256 digest of the destination's
UTF-8 bytes, read as one little-endian integer, modulo the number of
instances, indexes ``instances`` in config order. Not Python's ``hash``
(salted per process): every instance, every restart, and a Synapse given
the same list, agree on the owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def owner(destination: str, instances: Sequence[str]) -> str | None:
    """The instance that sends to ``destination``; None when ``instances`` is empty."""
    if not instances:
        return None
    digest = hashlib.sha256(destination.encode("utf-8")).digest()
    return instances[int.from_bytes(digest, "little") % len(instances)]


def is_mine(destination: str, instances: Sequence[str], instance_name: str) -> bool:
    """Whether ``instance_name`` sends to ``destination`` (all of them if unsharded)."""
    chosen = owner(destination, instances)
    return chosen is None or chosen == instance_name
