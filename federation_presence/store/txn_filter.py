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

Shape: a Bloom filter split into *generations by time*. Stored answers live
``retention_ms`` (the store prunes older ones), so the keys are cut into
time slots of ``span_ms = retention_ms / (generations - 2)`` by their
``received_ts``: a key whose slot is later than the current generation's
seals it and starts a new one. A prune of transactions received before
``T`` may drop a sealed generation whose newest key was received before
``T`` — but only one that was already sealed when the prune was *called*
(``prunable``, then ``drop`` once it committed, and only if the prune
reached the cutoff): a key added after the call went to the generation that
was current then, and its transaction may commit after the prune and stay
stored. So at a steady rate the live generations are the ``generations - 2``
slots a retention spans, the current one and one waiting for the next prune.

Bounded memory, bounded false positives. At most ``generations`` generations
exist, each sized for ``capacity / (generations - 2)`` keys at a
false-positive rate of ``error_rate / generations``: while at most
``capacity`` keys arrive per retention the filter answers wrongly at most
``error_rate`` of the time, *at any time, however long it runs* — every
generation expires one retention after its slot, so nothing accumulates.
Above that rate each generation holds more keys than it was sized for and
the rate rises with the excess (simulated: ~1% at the capacity, ~10% at 1.5
times it, ~37% at twice it, ~90% at three times; a false positive costs one
database read, as with no filter), stays there while the excess lasts and
falls back one retention after it stops: size ``capacity`` for the expected
``/send`` rate (``database.txn_filter_capacity``). If prunes stop (a
database outage) and every generation is in use, the current generation
takes the new keys past its slot until a prune frees one: denser, never
wrong, no more memory (``memory_bytes``; the default, 10M keys a day at 1%
in 8 generations, is about 23 MB).

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
DEFAULT_GENERATIONS = 8
DEFAULT_RETENTION_MS = 24 * 3_600_000
_INT64_MIN = -(2**63)
_TWO_U64 = struct.Struct("<QQ")


class TxnGeneration:
    """One generation's bits; opaque to callers (``prunable`` hands them out)."""

    __slots__ = ("bits", "keys", "newest_ts", "slot")

    def __init__(self, size_bytes: int, slot: int) -> None:
        self.bits = bytearray(size_bytes)
        self.keys = 0
        self.newest_ts = _INT64_MIN
        self.slot = slot


class TxnFilter:
    """No false negatives over ``(origin, txn_id)`` keys; bounded memory (module doc).

    ``capacity``: keys per ``retention_ms`` the filter is sized for, with
    ``error_rate`` false positives at that rate.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        error_rate: float = DEFAULT_ERROR_RATE,
        generations: int = DEFAULT_GENERATIONS,
        *,
        retention_ms: int = DEFAULT_RETENTION_MS,
    ) -> None:
        if capacity < 1 or generations < 3 or not 0 < error_rate < 1 or retention_ms < 1:
            raise ValueError(
                "capacity >= 1, generations >= 3, 0 < error_rate < 1 and retention_ms >= 1"
            )
        self.capacity = capacity
        self.generations = generations
        self.retention_ms = retention_ms
        self.span_ms = max(1, math.ceil(retention_ms / (generations - 2)))
        self._per_generation = max(1, math.ceil(capacity / (generations - 2)))
        rate = error_rate / generations
        bits = math.ceil(-self._per_generation * math.log(rate) / math.log(2) ** 2)
        self._size_bytes = max(1, math.ceil(bits / 8))
        self._bits = self._size_bytes * 8
        hashes = max(1, round(self._bits / self._per_generation * math.log(2)))
        self._hash_numbers = range(hashes)
        self._sealed: list[TxnGeneration] = []
        self._current = TxnGeneration(self._size_bytes, _INT64_MIN)

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
        slot = received_ts // self.span_ms
        if slot > generation.slot:
            if not generation.keys:
                generation.slot = slot
            elif len(self._sealed) + 1 < self.generations:
                self._sealed.append(generation)
                generation = self._current = TxnGeneration(self._size_bytes, slot)
            # else: every generation is in use (prunes are behind): the
            # current one takes the key past its slot (module doc)
        bits = generation.bits
        for position in self._positions(origin, txn_id):
            bits[position >> 3] |= 1 << (position & 7)
        generation.keys += 1
        if received_ts > generation.newest_ts:
            generation.newest_ts = received_ts

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
