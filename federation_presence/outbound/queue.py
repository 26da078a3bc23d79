"""One destination's owed presence, its transaction in flight and suppression (pure).

``DestinationQueue`` holds, for one remote server:

* ``owed``: the latest state of each local user the destination is owed,
  one entry per user whatever the number of updates (memory is bounded by
  users, not by updates); a newer state replaces an older one in place, so a
  recovered destination gets the latest state and never the intermediate
  ones;
* the transaction in flight (at most one): its users left ``owed`` when it
  was taken; on failure they are put back (merged under any newer state),
  never dropped;
* ``last_sent``: what the destination last acknowledged per user. Suppression
  is decided here, per destination, at the moment a transaction is built:
  an owed state goes out only if DESIGN.md's notify rule
  (``presence.notify.notify_reason``) says it differs from what *this
  destination* was last sent. A forced entry (keep-alive, an explicit
  ``send_current_presence``) goes out regardless. An offline user's
  ``last_sent`` is forgotten (compared with nothing, offline-and-never-active
  is not news; anything else is), so ``last_sent`` holds present users only.

Stream positions: each owed entry remembers the earliest stream id merged
into it (``first_id``; None for a forced re-send, which is not a stream
change). ``oldest_unacked`` is the smallest over owed and in-flight entries:
everything before it has been acknowledged by (or suppressed for) this
destination, which is the position the sender persists for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from federation_presence.ids import UserId
from federation_presence.presence.model import UserPresence
from federation_presence.presence.notify import notify_reason
from federation_presence.presence.states import PresenceState


@dataclass(slots=True)
class Owed:
    """A user's latest owed state for one destination (mutable: merged in place)."""

    state: UserPresence
    first_id: int | None
    forced: bool


@dataclass(frozen=True, slots=True)
class Batch:
    """What ``take`` decided: the states to send now, and how many it suppressed."""

    users: tuple[UserPresence, ...]
    suppressed: int


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


class DestinationQueue:
    """Owed states, one transaction in flight, last-sent states; see the module docstring."""

    def __init__(self, last_active_granularity_ms: int) -> None:
        self._granularity_ms = last_active_granularity_ms
        self._owed: dict[UserId, Owed] = {}
        self._in_flight: dict[UserId, Owed] | None = None
        self._last_sent: dict[UserId, UserPresence] = {}

    @property
    def depth(self) -> int:
        """Users owed and not in flight."""
        return len(self._owed)

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    @property
    def idle(self) -> bool:
        """Nothing owed, nothing in flight."""
        return not self._owed and self._in_flight is None

    def last_sent(self, user_id: UserId) -> UserPresence | None:
        return self._last_sent.get(user_id)

    def owe(self, state: UserPresence, stream_id: int | None, *, forced: bool = False) -> None:
        """Owe the destination ``state`` (the user's newest); merges with what is owed."""
        owed = self._owed.get(state.user_id)
        if owed is None:
            self._owed[state.user_id] = Owed(state, stream_id, forced)
            return
        owed.state = state
        owed.first_id = _earliest(owed.first_id, stream_id)
        owed.forced = owed.forced or forced

    def take(self, max_pushes: int) -> Batch:
        """Move up to ``max_pushes`` states worth sending into flight.

        Owed states the destination already has (by the notify rule) are
        dropped and counted. An empty ``Batch.users`` means nothing to send
        and nothing in flight. Only one transaction may be in flight.
        """
        if self._in_flight is not None:
            raise RuntimeError("a transaction is already in flight")
        taken: dict[UserId, Owed] = {}
        suppressed = 0
        last_sent = self._last_sent
        granularity = self._granularity_ms
        candidates: Iterable[tuple[UserId, Owed]]
        if len(self._owed) <= max_pushes:
            # All of it fits (the usual case): take the dict whole, no pops.
            whole, self._owed = self._owed, {}
            candidates = whole.items()
        else:
            candidates = self._pop_oldest()
        for user_id, owed in candidates:
            if not owed.forced and (
                notify_reason(last_sent.get(user_id), owed.state, granularity) is None
            ):
                suppressed += 1
                continue
            taken[user_id] = owed
            if len(taken) >= max_pushes:
                break  # the rest stays owed: the generator popped no further
        if taken:
            self._in_flight = taken
        return Batch(tuple([owed.state for owed in taken.values()]), suppressed)

    def _pop_oldest(self) -> Iterator[tuple[UserId, Owed]]:
        """Owed states oldest first, each popped only when asked for."""
        for user_id in list(self._owed):
            yield user_id, self._owed.pop(user_id)

    def acknowledged(self) -> None:
        """The transaction in flight was delivered: its states are what was last sent."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        for user_id, owed in in_flight.items():
            if owed.state.state is PresenceState.OFFLINE:
                self._last_sent.pop(user_id, None)
            else:
                self._last_sent[user_id] = owed.state

    def failed(self) -> None:
        """The transaction in flight failed: its states are owed again (newer ones win)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        for user_id, owed in in_flight.items():
            newer = self._owed.get(user_id)
            if newer is None:
                self._owed[user_id] = owed
            else:
                newer.first_id = _earliest(newer.first_id, owed.first_id)
                newer.forced = newer.forced or owed.forced

    def oldest_unacked(self) -> int | None:
        """The smallest stream id owed or in flight, or None if there is none."""
        oldest: int | None = None
        for owed in self._entries():
            if owed.first_id is not None and (oldest is None or owed.first_id < oldest):
                oldest = owed.first_id
        return oldest

    def _entries(self) -> Iterator[Owed]:
        yield from self._owed.values()
        if self._in_flight is not None:
            yield from self._in_flight.values()
