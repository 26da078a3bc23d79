"""Deadlines keyed by what they are for, found without scanning (pure).

``DeadlineQueue`` holds at most one deadline per key. Rescheduling replaces
the key's deadline; ``pop_due(now)`` removes and returns every key whose
deadline is ``<= now``, earliest first.

Why not a heap: almost every deadline of the presence core is
``event_ts + constant`` with ``event_ts`` the current ``now``, so deadlines
of one kind are scheduled in non-decreasing order. An insertion-ordered
``OrderedDict`` (a linked list in C) then *is* a sorted queue: reschedule is
"move to the end" (O(1), no garbage left behind, unlike a heap with lazy
deletion), the earliest is the first entry (O(1); a plain ``dict`` would
scan over the holes its deletions leave at the front), and ``pop_due`` costs
only what it returns. This matters on the hot path: every remote push
reschedules its user's federation timeout.

Deadlines that arrive out of order (``now`` went slightly backwards; a
restore loads old timestamps in any order) go to a small side heap with lazy
deletion, compacted when stale entries outnumber live ones. So the queue is
exact whatever the order: it never fires early, never late, and each
scheduled deadline fires exactly once unless replaced or cancelled first.

Memory follows what is live: an ``OrderedDict`` (like a ``dict``) keeps its
table at the largest size it ever had, however many keys leave it. So the
queue remembers its high-water mark and rebuilds ``_fifo`` once it holds less
than a quarter of it (``_SHRINK_BELOW``): a million remote users timing out
leave a small queue behind, not a million-slot table. The rebuild copies only
what is left, at most a third of what was removed since the last one, so it
costs O(1) amortised per removal.

Invariants: ``_fifo`` values are non-decreasing and ``<= _tail``; a key is in
at most one of ``_fifo`` and ``_late``; every live ``_late`` entry has a heap
entry ``(deadline, seq, key)``; stale heap entries are skipped on sight.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_NO_TAIL = -(2**63)
_COMPACT_SLACK = 64
_SHRINK_BELOW = 4
"""Rebuild ``_fifo`` when it holds less than 1/_SHRINK_BELOW of its high-water mark."""
_SHRINK_MIN = 1024
"""Below this high-water mark a table is too small to be worth rebuilding."""


class DeadlineQueue(Generic[K]):
    """At most one deadline (ms) per key; ``pop_due`` returns what expired."""

    __slots__ = ("_fifo", "_heap", "_high", "_late", "_seq", "_tail")

    def __init__(self) -> None:
        self._fifo: OrderedDict[K, int] = OrderedDict()
        self._tail = _NO_TAIL
        self._late: dict[K, int] = {}
        self._heap: list[tuple[int, int, K]] = []
        self._seq = itertools.count()
        self._high = 0  # the most keys ``_fifo`` held since it was last rebuilt

    def __len__(self) -> int:
        return len(self._fifo) + len(self._late)

    def __contains__(self, key: object) -> bool:
        return key in self._fifo or key in self._late

    def __iter__(self) -> Iterator[K]:
        yield from self._fifo
        yield from self._late

    def deadline_of(self, key: K) -> int | None:
        """The key's deadline, or None if it has none."""
        deadline = self._fifo.get(key)
        return deadline if deadline is not None else self._late.get(key)

    def schedule(self, key: K, deadline: int) -> None:
        """Give ``key`` this deadline, replacing any it had."""
        fifo = self._fifo
        if deadline < self._tail:
            if fifo.get(key) == deadline:
                return
            fifo.pop(key, None)
            if not fifo:
                self._tail = _NO_TAIL
        if deadline >= self._tail:
            if self._late and key in self._late:
                del self._late[key]
            fifo[key] = deadline
            fifo.move_to_end(key)
            self._tail = deadline
            if len(fifo) > self._high:
                self._high = len(fifo)
            return
        if self._late.get(key) == deadline:
            return
        self._late[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), key))
        if len(self._heap) > 2 * len(self._late) + _COMPACT_SLACK:
            self._compact()

    def schedule_all(self, keys: Iterable[K], deadline: int) -> None:
        """``schedule(key, deadline)`` for every key: the batch case, one shared deadline."""
        if deadline < self._tail or self._late:
            for key in keys:
                self.schedule(key, deadline)
            return
        fifo = self._fifo
        move_to_end = fifo.move_to_end
        for key in keys:
            fifo[key] = deadline
            move_to_end(key)
        if fifo:
            self._tail = deadline
            if len(fifo) > self._high:
                self._high = len(fifo)

    def cancel(self, key: K) -> None:
        """Remove ``key``'s deadline, if any."""
        fifo = self._fifo
        if fifo.pop(key, None) is not None:
            if not fifo:
                self._tail = _NO_TAIL
            if len(fifo) * _SHRINK_BELOW < self._high and self._high > _SHRINK_MIN:
                self._shrink()
        if self._late:
            self._late.pop(key, None)

    def earliest(self) -> int | None:
        """The earliest deadline, or None when empty."""
        best: int | None = None
        if self._fifo:
            best = next(iter(self._fifo.values()))
        if self._late:
            self._drop_stale_top()
            top = self._heap[0][0]
            if best is None or top < best:
                best = top
        return best

    def pop_due(self, now: int, limit: int | None = None) -> list[K]:
        """Remove and return the keys whose deadline is ``<= now``, earliest first.

        With ``limit``, at most that many (the earliest); the rest stay due.
        """
        due: list[tuple[int, K]] = []
        fifo = self._fifo
        room = len(fifo) + len(self._late) if limit is None else limit
        while fifo and len(due) < room:
            key, deadline = next(iter(fifo.items()))
            if deadline > now:
                break
            fifo.popitem(last=False)
            due.append((deadline, key))
        if not fifo:
            self._tail = _NO_TAIL
        if self._late:
            late = self._late
            heap = self._heap
            while heap and heap[0][0] <= now:
                deadline, _, key = heapq.heappop(heap)
                if late.get(key) == deadline:
                    del late[key]
                    due.append((deadline, key))
            if not late:
                heap.clear()
            due.sort(key=_deadline_of_pair)
            if len(due) > room:
                # the late ones beat some fifo ones: give back the latest
                for deadline, key in due[room:]:
                    self.schedule(key, deadline)
                del due[room:]
        if due and len(fifo) * _SHRINK_BELOW < self._high and self._high > _SHRINK_MIN:
            self._shrink()
        return [key for _, key in due]

    def _shrink(self) -> None:
        """Rebuild ``_fifo`` at the size of what it holds (see the module docstring)."""
        self._fifo = OrderedDict(self._fifo)
        self._high = len(self._fifo)

    def _drop_stale_top(self) -> None:
        heap = self._heap
        late = self._late
        while late.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [(deadline, next(self._seq), key) for key, deadline in self._late.items()]
        heapq.heapify(self._heap)


def _deadline_of_pair(pair: tuple[int, object]) -> int:
    return pair[0]
