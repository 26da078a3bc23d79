"""When each present local user is re-sent over federation (pure).

FEDERATION_PING: every interval, each interested destination is re-sent the
state of every local user who is not offline, so that it does not time them
out (FEDERATION_TIMEOUT). Doing all users at one instant would be a traffic
spike, so each user gets a phase of its own, drawn once from the injected
``random.Random`` when it is first tracked, uniform over the interval: user
``u`` is due at every ``t`` with ``t % interval == phase(u)``. Load is flat
over the interval whatever the moment users came online (a restart does not
line them up).

A min-heap of (deadline, user) with lazy deletion; a user untracked and
tracked again gets a fresh phase. The heap is compacted when stale entries
outnumber live ones, so memory stays bounded by tracked users.
"""

from __future__ import annotations

import heapq
import random

from federation_presence.ids import UserId

_COMPACT_SLACK = 64


class KeepAliveSchedule:
    """Per-user keep-alive deadlines on fixed random phases."""

    def __init__(self, interval_ms: int, rng: random.Random) -> None:
        if interval_ms < 1:
            raise ValueError("interval_ms must be positive")
        self._interval_ms = interval_ms
        self._rng = rng
        self._deadlines: dict[UserId, int] = {}
        self._heap: list[tuple[int, UserId]] = []

    @property
    def interval_ms(self) -> int:
        return self._interval_ms

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._deadlines

    def track(self, user_id: UserId, present: bool, now: int) -> None:
        """Keep re-sending ``user_id`` while ``present`` (not offline); stop otherwise."""
        if not present:
            self._deadlines.pop(user_id, None)
            self._maybe_compact()
            return
        if user_id in self._deadlines:
            return
        interval = self._interval_ms
        phase = self._rng.randrange(interval)
        deadline = now - now % interval + phase
        if deadline <= now:
            deadline += interval
        self._deadlines[user_id] = deadline
        heapq.heappush(self._heap, (deadline, user_id))

    def earliest(self) -> int | None:
        """The next deadline, or None when nobody is tracked."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def due(self, now: int) -> list[UserId]:
        """Users due at ``now`` (each once), rescheduled one interval on."""
        out: list[UserId] = []
        heap = self._heap
        while True:
            self._drop_stale_top()
            if not heap or heap[0][0] > now:
                return out
            deadline, user_id = heapq.heappop(heap)
            out.append(user_id)
            following = deadline + self._interval_ms
            while following <= now:  # asleep for whole intervals: one re-send is enough
                following += self._interval_ms
            self._deadlines[user_id] = following
            heapq.heappush(heap, (following, user_id))

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and self._deadlines.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * len(self._deadlines) + _COMPACT_SLACK:
            self._heap = [(deadline, user) for user, deadline in self._deadlines.items()]
            heapq.heapify(self._heap)
