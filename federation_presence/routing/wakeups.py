"""Waking ``/sync`` long-polls: only those a change concerns.

A long-polling ``/sync`` registers a ``Waiter`` (its user, its router
interest, an ``anyio.Event``) and sleeps on the event: no CPU while it waits.
The keeper calls ``changed(states)`` after each durable write that notified
someone; that only records the states (coalesced per user, so memory is
bounded by users) and wakes the ``run`` task, which works out whom the batch
concerns and sets their events:

* local users sharing a room with a changed user, the changed users
  themselves, and the recipients the router's ``get_users_for_states`` names
  (``PresenceRouting.local_recipients``);
* waiters whose ``get_interested_users`` was ``ALL_USERS``, or named a changed
  user (indexed while they wait).

Everyone else sleeps on. A waiter woken for a change it then finds
invisible (a race with a room change) simply reads nothing and waits again.
With no waiters, ``changed`` does nothing: a poll that starts later reads the
stream from its ``since`` anyway. ``close`` (worker shutdown) wakes everyone,
so long-polls answer within the server's grace period, while the store is
still open for their ``SyncEnded``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence

import anyio
from anyio.abc import TaskStatus

from federation_presence.ids import UserId
from federation_presence.presence.model import UserPresence
from federation_presence.routing.modules import Interest
from federation_presence.routing.presence_routing import PresenceRouting

logger = logging.getLogger(__name__)


class Waiter:
    """One waiting ``/sync`` request."""

    __slots__ = ("event", "interest", "user_id")

    def __init__(self, user_id: UserId, interest: Interest) -> None:
        self.user_id = user_id
        self.interest = interest
        self.event = anyio.Event()


class SyncWakeups:
    def __init__(self, routing: PresenceRouting) -> None:
        self._routing = routing
        self._by_user: dict[UserId, set[Waiter]] = {}
        self._all_users: set[Waiter] = set()
        self._by_followed: dict[UserId, set[Waiter]] = {}
        self._pending: dict[UserId, UserPresence] = {}
        self._pending_event = anyio.Event()
        self.waiting_count = 0
        self.woken = 0
        self._closed = False

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """The worker is stopping: wake every waiter now (they answer what they have)."""
        self._closed = True
        for waiters in list(self._by_user.values()):
            for waiter in list(waiters):
                self._wake(waiter)

    def changed(self, states: Sequence[UserPresence]) -> None:
        """Notified states were made durable (called by the keeper; never blocks)."""
        if not self.waiting_count or not states:
            return
        for state in states:
            self._pending[state.user_id] = state
        self._pending_event.set()

    def wake(self, user_ids: Iterable[UserId]) -> None:
        """Wake every waiter of these users now."""
        for user_id in user_ids:
            for waiter in self._by_user.get(user_id, ()):
                self._wake(waiter)

    @contextlib.contextmanager
    def waiting(self, user_id: UserId, interest: Interest) -> Iterator[Waiter]:
        """Register a waiter for the duration of the block."""
        waiter = Waiter(user_id, interest)
        self._by_user.setdefault(user_id, set()).add(waiter)
        if interest.all_users:
            self._all_users.add(waiter)
        for followed in interest.users:
            self._by_followed.setdefault(followed, set()).add(waiter)
        self.waiting_count += 1
        try:
            yield waiter
        finally:
            self.waiting_count -= 1
            _discard(self._by_user, user_id, waiter)
            self._all_users.discard(waiter)
            for followed in interest.users:
                _discard(self._by_followed, followed, waiter)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Wake the waiters each batch of changes concerns (a worker child task)."""
        task_status.started()
        while True:
            await self._pending_event.wait()
            self._pending_event = anyio.Event()
            batch, self._pending = list(self._pending.values()), {}
            if not self.waiting_count:
                continue
            try:
                recipients = await self._routing.local_recipients(batch)
            except Exception:
                logger.exception("could not route a batch of %d changes to /sync", len(batch))
                recipients = set()
            self.wake(recipients)
            for waiter in list(self._all_users):
                self._wake(waiter)
            for state in batch:
                for waiter in list(self._by_followed.get(state.user_id, ())):
                    self._wake(waiter)

    def _wake(self, waiter: Waiter) -> None:
        if not waiter.event.is_set():
            self.woken += 1
            waiter.event.set()


def _discard(index: dict[UserId, set[Waiter]], key: UserId, waiter: Waiter) -> None:
    waiters = index.get(key)
    if waiters is not None:
        waiters.discard(waiter)
        if not waiters:
            del index[key]
