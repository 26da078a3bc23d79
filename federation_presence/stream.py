"""The presence stream: the one change feed every reader follows.

``PresenceStream`` is the backbone DESIGN.md names: the keeper publishes each
durable write's notified changes to it, and readers (the outbound federation
sender, local ``/sync``) follow it from a position they keep in the store.

Positions are the store's stream ids. ``publish(stream_id, entries)`` is
called by the keeper right after ``store.apply`` returned ``stream_id`` (the
store's max id after that commit); every entry of that write is stamped with
it. A reader asks ``since(position, limit)`` for what came after
``position`` and gets back the entries and the position to ask from next.

Invariants:

* Publish order is commit order. The store answers every write of one group
  commit in one event-loop callback, so the writers of one group all publish
  (under the same id) before any other task runs, and a reader never sees
  half of an id. A publish below ``current_id`` would break that; it is
  stamped ``current_id`` instead and logged (a bug elsewhere, not lost data).
* The memory window is bounded (``window_entries``). ``since`` answers from
  it when ``position`` is inside it; a reader that fell behind the window, or
  any reader after a restart, is answered from the store
  (``Store.stream_since``), which coalesces per user: such a reader gets each
  user once, with the latest state, and ``notify`` None (the store keeps no
  reason). Nothing committed is skipped either way.
* ``wait(after)`` returns once ``current_id > after``; it never times out
  on its own: callers wrap it in ``anyio.move_on_after``/``fail_after``.

FEDERATION_PING re-sends are not on the stream: they change nothing a reader
could page through (the store gives them no id) and the outbound sender runs
its own staggered keep-alive (``outbound/keepalive.py``). ``is_ping`` marks
the entries a reader builds for such re-sends, so one type travels the
sender's queues.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from federation_presence.ids import UserId
from federation_presence.presence.model import NotifyReason, StateChange, UserPresence
from federation_presence.store.base import Store

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_ENTRIES = 20_000


# Not frozen: a frozen dataclass's __init__ costs ~0.9 µs against ~0.16 µs,
# and one entry is made per notified change of every write (BENCHMARKS.md,
# issue 18). Entries are shared between readers and never mutated.
@dataclass(slots=True, unsafe_hash=True)
class StreamEntry:
    """One user's state at one stream position.

    ``notify`` is why it was published (None when read back from the store,
    which keeps no reason); ``is_ping`` marks a keep-alive re-send of an
    unchanged state.
    """

    stream_id: int
    state: UserPresence
    is_local: bool
    notify: NotifyReason | None
    is_ping: bool = False

    @property
    def user_id(self) -> UserId:
        return self.state.user_id


def entries_of(
    stream_id: int, changes: Sequence[StateChange], is_local: Callable[[UserId], bool]
) -> list[StreamEntry]:
    """The stream entries of one durable write: its notified changes."""
    return [
        StreamEntry(stream_id, change.state, is_local(change.state.user_id), change.notify)
        for change in changes
        if change.notify is not None
    ]


class PresenceStream:
    """Recent changes in memory, older ones from the store; see the module docstring."""

    def __init__(
        self,
        store: Store,
        is_local: Callable[[UserId], bool],
        *,
        window_entries: int = DEFAULT_WINDOW_ENTRIES,
    ) -> None:
        if window_entries < 1:
            raise ValueError("window_entries must be positive")
        self._store = store
        self._is_local = is_local
        self._window_entries = window_entries
        self._entries: deque[StreamEntry] = deque()
        self._current_id = 0
        # Every entry with an id above this is in the window.
        self._floor = 0
        self._changed = anyio.Event()
        self.store_reads = 0

    async def open(self) -> None:
        """Start at the store's current id (after a restart: nothing in memory)."""
        self._current_id = self._floor = await self._store.current_stream_id()

    @property
    def current_id(self) -> int:
        return self._current_id

    @property
    def window_floor(self) -> int:
        """Readers at or above this position are answered from memory."""
        return self._floor

    def publish(self, stream_id: int, changes: Sequence[StreamEntry]) -> None:
        """Record a durable write's entries (the keeper, once the store confirmed it)."""
        if stream_id < self._current_id:
            logger.warning(
                "stream publish at %d below current id %d; stamped current",
                stream_id,
                self._current_id,
            )
            stream_id = self._current_id
        entries = self._entries
        if all(entry.stream_id == stream_id for entry in changes):
            entries.extend(changes)  # the keeper's case: entries_of stamped them
        else:
            entries.extend(
                StreamEntry(stream_id, entry.state, entry.is_local, entry.notify, entry.is_ping)
                for entry in changes
            )
        excess = len(entries) - self._window_entries
        if excess > 0:
            # Ids never decrease along the window: the last entry dropped has the greatest.
            for _ in range(excess - 1):
                entries.popleft()
            self._floor = max(self._floor, entries.popleft().stream_id)
        if stream_id > self._current_id:
            self._current_id = stream_id
            event, self._changed = self._changed, anyio.Event()
            event.set()

    def publish_changes(self, stream_id: int, changes: Sequence[StateChange]) -> None:
        """``publish`` the notified ones of ``changes`` (what the keeper calls)."""
        self.publish(stream_id, entries_of(stream_id, changes, self._is_local))

    async def since(self, position: int, limit: int) -> tuple[list[StreamEntry], int]:
        """Up to about ``limit`` entries after ``position``, and the next position.

        Entries sharing one id are never split (the answer may exceed
        ``limit`` by the rest of one write). Past the end, ``([], position)``.
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        current = self._current_id
        if position >= current:
            return [], position
        if position >= self._floor:
            return self._from_window(position, limit, current)
        return await self._from_store(position, limit, current)

    def _from_window(
        self, position: int, limit: int, current: int
    ) -> tuple[list[StreamEntry], int]:
        # Scan from the head back: readers are mostly near the head, and a
        # reader far behind costs at most the (bounded) window.
        after: list[StreamEntry] = []
        for entry in reversed(self._entries):
            if entry.stream_id <= position:
                break
            after.append(entry)
        after.reverse()
        out: list[StreamEntry] = []
        for entry in after:
            if len(out) >= limit and entry.stream_id != out[-1].stream_id:
                return out, out[-1].stream_id
            out.append(entry)
        return out, current

    async def _from_store(
        self, position: int, limit: int, current: int
    ) -> tuple[list[StreamEntry], int]:
        self.store_reads += 1
        rows = await self._store.stream_since(position, limit)
        is_local = self._is_local
        # A row past ``current`` is committed but not yet published: it comes
        # through the window once the keeper publishes it.
        out = [
            StreamEntry(row.stream_id, row.state, is_local(row.state.user_id), None)
            for row in rows
            if row.stream_id <= current
        ]
        if len(rows) < limit or len(out) < len(rows):
            return out, current
        return out, out[-1].stream_id

    async def wait(self, after: int) -> None:
        """Return once ``current_id > after`` (callers add their timeout)."""
        while self._current_id <= after:
            await self._changed.wait()
