"""A negative filter over the user ids a store holds (pure).

The keeper reads through every remote user the machine does not hold
(``Store.get_users``). Under load from users never seen ("cold"), nearly
every such read finds nothing, and each one costs a B-tree lookup per user on
the SQLite writer thread plus a round trip through its queue, waiting behind
whatever fold or commit it is running (BENCHMARKS.md, issue 18).
``StoredUsers`` answers "certainly not stored" in memory, so ``get_users``
reads only the users that may be stored.

The one invariant: **no false negatives.** Every user id the store holds
is in the filter once it is ``ready``. The SQLite store keeps it by adding
each user new to the journal when its group commits (before any caller is
answered), by scanning the table after ``open`` (until the scan is merged
the filter is not ``ready`` and every id counts as maybe stored), and by
turning the filter off for good when another connection writes the file
(its rows never pass through this journal).

Shape: one Bloom filter of ``2**bits_log2`` bits (8 MiB by default) and 3
probes, whatever the number of users: memory does not grow with the users
ever seen. False positives (a read that finds nothing) rise with the users
stored: about 0.2 % at 3 million, 5 % at 10 million, 30 % at 20 million; a
false positive costs the database read every id cost before. Probes come
from Python's ``hash`` of the id (cached on the string, randomised per
process: the filter lives in one process and is rebuilt at each open).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DEFAULT_BITS_LOG2 = 26


class StoredUsers:
    """No false negatives over stored user ids once ``ready`` (module doc)."""

    __slots__ = ("_bits", "_mask", "off", "ready")

    def __init__(self, bits_log2: int = DEFAULT_BITS_LOG2) -> None:
        if not 6 <= bits_log2 <= 34:
            raise ValueError(f"bits_log2 must be in 6..34, not {bits_log2}")
        self._mask = (1 << bits_log2) - 1
        self._bits = bytearray(1 << (bits_log2 - 3))
        self.ready = False
        """True once every user stored at open was added (``merge``)."""
        self.off = False
        """True for good once the filter can no longer be trusted."""

    @property
    def memory_bytes(self) -> int:
        return len(self._bits)

    def add(self, user_ids: Iterable[str]) -> None:
        bits = self._bits
        mask = self._mask
        # unrolled: the writer adds every user new to the journal, and a
        # loop over a tuple of the three probes cost ~20 % more (BENCHMARKS.md, session 6)
        for user_id in user_ids:
            h = hash(user_id)
            a = h & mask
            bits[a >> 3] |= 1 << (a & 7)
            a = (h >> 21) & mask
            bits[a >> 3] |= 1 << (a & 7)
            a = (h >> 42 ^ h >> 7) & mask
            bits[a >> 3] |= 1 << (a & 7)

    def maybe_stored(self, user_ids: Sequence[str]) -> list[str]:
        """The ids that may be stored; all of them before ``ready`` or once ``off``."""
        if not self.ready or self.off:
            return list(user_ids)
        bits = self._bits
        mask = self._mask
        out: list[str] = []
        for user_id in user_ids:
            h = hash(user_id)
            a = h & mask
            b = (h >> 21) & mask
            c = (h >> 42 ^ h >> 7) & mask
            if (
                bits[a >> 3] >> (a & 7) & 1
                and bits[b >> 3] >> (b & 7) & 1
                and bits[c >> 3] >> (c & 7) & 1
            ):
                out.append(user_id)
        return out

    def merge(self, other: StoredUsers) -> None:
        """Add every id ``other`` holds (same size), and become ``ready``."""
        if len(other._bits) != len(self._bits):
            raise ValueError("only filters of one size merge")
        size = len(self._bits)
        merged = int.from_bytes(self._bits, "little") | int.from_bytes(other._bits, "little")
        self._bits[:] = merged.to_bytes(size, "little")
        self.ready = True
