"""When each present local user is re-sent over federation (pure).

FEDERATION_PING: every interval, each interested destination is re-sent the
state of every local user who is not offline, so that it does not time them
out (FEDERATION_TIMEOUT). Doing all users at one instant would be a traffic
spike, so each user gets a phase of its own, drawn once from the injected
``random.Random`` when it is first tracked, uniform over the interval: user
``u`` is due at every ``t`` with ``t % interval == phase(u)``. Load is flat
over the interval whatever the moment users came online (a restart does not
line them up).

A real change sent to a destination resets its timeout there too, so a
re-send right after one is waste (and the extra transaction a peer sees).
``sent(user, now)`` says a change of ``user`` was just sent: its re-send
due within ``quiet_ms`` is moved one interval on, to the same phase. The
gap between two sends then stays at most ``interval + quiet``; the sender
picks ``quiet`` so that this is below the remote's FEDERATION_TIMEOUT
(``quiet_after_send_ms``). Phases, and so the flat load, are unchanged.

A min-heap of (deadline, user) with lazy deletion; a user untracked and
tracked again gets a fresh phase. The heap is compacted when stale entries
outnumber live ones, so memory stays bounded by tracked users.
"""

from __future__ import annotations

import heapq
import random

from federation_presence.ids import UserId

_COMPACT_SLACK = 64


def quiet_after_send_ms(interval_ms: int, remote_timeout_ms: int) -> int:
    """How long after a sent change a re-send is skipped: half the slack
    between the interval and the remote's timeout (2.5 min at 25 / 30 min),
    so a send follows the last one within ``interval + quiet``, which stays
    half that slack inside the timeout; 0 when there is no slack."""
    return max(0, (remote_timeout_ms - interval_ms) // 2)


class KeepAliveSchedule:
    """Per-user keep-alive deadlines on fixed random phases."""

    def __init__(self, interval_ms: int, rng: random.Random, quiet_ms: int = 0) -> None:
        if interval_ms < 1:
            raise ValueError("interval_ms must be positive")
        if not 0 <= quiet_ms < interval_ms:
            raise ValueError("quiet_ms must be in [0, interval_ms)")
        self._interval_ms = interval_ms
        self._quiet_ms = quiet_ms
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

    def sent(self, user_id: UserId, now: int) -> None:
        """A change of ``user_id`` (present) was just sent: track it, and skip
        a re-send due within ``quiet_ms`` to the same phase one interval on."""
        self.track(user_id, True, now)
        deadline = self._deadlines[user_id]
        if deadline - now <= self._quiet_ms:
            deadline += self._interval_ms
            self._deadlines[user_id] = deadline
            heapq.heappush(self._heap, (deadline, user_id))
            self._maybe_compact()

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
