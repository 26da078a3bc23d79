"""A negative filter over stored inbound transactions' ``(origin, txn_id)`` (pure).

Every new ``/send`` transaction is looked up (``Store.get_txn_response``)
before it is applied, and nearly every lookup misses. ``TxnFilter`` answers
"certainly not stored" in memory, so a miss costs no database round trip
(for SQLite, no wait behind the commit the writer thread is busy with); a
possible hit goes to the database as before.

The one invariant: **no false negatives.** A key whose transaction is stored
always gets ``might_contain`` True. The stores keep it by adding a key when
``apply`` is *called* (before its transaction commits: a batch that then
fails leaves only a false positive), by loading every stored key at ``open``,
and by dropping bits only for transactions a prune certainly deleted.

Shape: a Bloom filter split into *generations* of equal size, so pruning
needs no rebuild (a rebuild would scan the table on the writer thread).
Keys go into the current generation; when it holds ``capacity /
(generations - 1)`` keys it is sealed and a new one started, so ``capacity``
keys fill the sealed generations and leave the current one empty. A prune of
transactions received before ``T`` may drop a sealed generation whose newest
key was received before ``T`` — but only one that was already sealed when
the prune was *called* (``prunable``, then ``drop`` once it committed): a key
added after the call went to a generation that was current then, and its
transaction may commit after the prune and stay stored.

Bounded memory: at most ``generations`` generations exist. Sealing one more
ORs the two oldest sealed ones into one (a union still has no false
negatives, only more false positives), so more than ``capacity`` keys make
the filter less useful, never wrong, and use no more memory
(``memory_bytes``; the default, 10M keys at 1%, is about 20 MB).

Hashing: one ``blake2b`` (16 bytes) of ``origin NUL txn_id`` gives two
64-bit halves, combined into the k bit positions by double hashing
(Kirsch-Mitzenmacher). It is stable across processes, unlike ``hash()``,
though the filter itself only ever lives in one process's memory.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from hashlib import blake2b

DEFAULT_CAPACITY = 10_000_000
DEFAULT_ERROR_RATE = 0.01
DEFAULT_GENERATIONS = 4
_INT64_MIN = -(2**63)
_TWO_U64 = struct.Struct("<QQ")


class TxnGeneration:
    """One generation's bits; opaque to callers (``prunable`` hands them out)."""

    __slots__ = ("bits", "keys", "newest_ts")

    def __init__(self, size_bytes: int) -> None:
        self.bits = bytearray(size_bytes)
        self.keys = 0
        self.newest_ts = _INT64_MIN


class TxnFilter:
    """No false negatives over ``(origin, txn_id)`` keys; bounded memory (module doc).

    ``error_rate`` is the false-positive rate when ``capacity`` keys are held
    (each generation is sized for ``error_rate / (generations - 1)``).
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        error_rate: float = DEFAULT_ERROR_RATE,
        generations: int = DEFAULT_GENERATIONS,
    ) -> None:
        if capacity < 1 or generations < 2 or not 0 < error_rate < 1:
            raise ValueError("capacity >= 1, generations >= 2 and 0 < error_rate < 1")
        self.capacity = capacity
        self.generations = generations
        self._per_generation = max(1, math.ceil(capacity / (generations - 1)))
        rate = error_rate / (generations - 1)
        bits = math.ceil(-self._per_generation * math.log(rate) / math.log(2) ** 2)
        self._size_bytes = max(1, math.ceil(bits / 8))
        self._bits = self._size_bytes * 8
        hashes = max(1, round(self._bits / self._per_generation * math.log(2)))
        self._hash_numbers = range(hashes)
        self._sealed: list[TxnGeneration] = []
        self._current = TxnGeneration(self._size_bytes)

    def __len__(self) -> int:
        """Keys added and not dropped (a key added twice counts twice)."""
        return self._current.keys + sum(g.keys for g in self._sealed)

    @property
    def generations_in_use(self) -> int:
        return 1 + len(self._sealed)

    @property
    def memory_bytes(self) -> int:
        """The most the filter's bits will ever take."""
        return self._size_bytes * self.generations

    def add(self, origin: str, txn_id: str, received_ts: int) -> None:
        """Remember a key (call before its transaction can commit)."""
        generation = self._current
        bits = generation.bits
        for position in self._positions(origin, txn_id):
            bits[position >> 3] |= 1 << (position & 7)
        generation.keys += 1
        if received_ts > generation.newest_ts:
            generation.newest_ts = received_ts
        if generation.keys >= self._per_generation:
            self._seal()

    def might_contain(self, origin: str, txn_id: str) -> bool:
        """False only if no transaction with this key can be stored."""
        positions = self._positions(origin, txn_id)
        if self._holds(self._current, positions):
            return True
        for generation in self._sealed:
            if self._holds(generation, positions):
                return True
        return False

    def prunable(self, older_than_ts: int) -> tuple[TxnGeneration, ...]:
        """Generations a prune of keys received before ``older_than_ts``, called now, empties."""
        return tuple(g for g in self._sealed if g.newest_ts < older_than_ts)

    def drop(self, generations: Sequence[TxnGeneration]) -> None:
        """The prune that ``prunable`` was asked about committed: forget those generations."""
        gone = {id(g) for g in generations}
        self._sealed = [g for g in self._sealed if id(g) not in gone]

    def _positions(self, origin: str, txn_id: str) -> list[int]:
        key = f"{origin}\x00{txn_id}".encode("utf-8", "surrogatepass")
        first, step = _TWO_U64.unpack(blake2b(key, digest_size=16).digest())
        size = self._bits
        first %= size
        step = step % size or 1  # small ints from here on: cheaper arithmetic
        return [(first + i * step) % size for i in self._hash_numbers]

    @staticmethod
    def _holds(generation: TxnGeneration, positions: list[int]) -> bool:
        bits = generation.bits
        for p in positions:
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True

    def _seal(self) -> None:
        self._sealed.append(self._current)
        self._current = TxnGeneration(self._size_bytes)
        if len(self._sealed) >= self.generations:
            oldest, second = self._sealed[0], self._sealed[1]
            merged = TxnGeneration(0)
            union = int.from_bytes(oldest.bits, "little") | int.from_bytes(second.bits, "little")
            merged.bits = bytearray(union.to_bytes(self._size_bytes, "little"))
            merged.keys = oldest.keys + second.keys
            merged.newest_ts = max(oldest.newest_ts, second.newest_ts)
            # a new object: a prune may hold the old ones from ``prunable``;
            # dropping them later must not drop the other's keys with them
            self._sealed[0:2] = [merged]
