"""The shell around the presence core: decide, then make it durable.

``PresenceKeeper`` owns the one ``PresenceMachine`` of a worker and the store
it persists to. Every change goes the same way (STYLE.md, seam 1):

    now = clock.now_ms()                      # read once
    outcome = machine.handle...(input, now)   # pure, no await in between
    await store.apply(outcome, txn)           # durable (group commit)
    wake stream listeners and the timer loop  # only then is anyone told

The machine is updated before the write is durable. If the write fails the
caller is told (``StoreError`` → 503, the sender retries the transaction) and
the keeper remembers what it could not persist: the users (with the strongest
notify reason they were owed) and the device rows. The next write, whoever
makes it, carries them first, built from the machine's *current* state of
those users, so nothing is lost and nothing stale is written back: a retried
transaction finds the machine already changed and would otherwise persist
nothing and notify nobody. Until then, reads may show the unpersisted state;
no request carrying it has been answered 200.

The timer loop is a child of the worker's task group: it sleeps until the
machine's next deadline, is woken early when a change brings that deadline
forward, and applies ``machine.tick(now)`` like any other outcome. A mass
timeout comes in outcomes of at most ``TIMEOUT_BATCH`` users, each its own
bounded write.

Read-through. The machine holds remote users that are not offline plus a
bounded cache of offline ones; the rest live only in the store. Before a
batch of pushes the keeper asks the machine which of its users it does not
hold, reads those with ONE ``store.get_users`` call and ``admit``s what came
back, then decides (a user the store does not have either is new). ``get``
answers from the machine, else from the store. The machine evicts only what
is durable: every outcome carries a ``seq``, and after each write the keeper
passes ``forget_offline`` the greatest seq below every write still in flight
or owed; and no lower than what every read-through in flight was issued
after, so a read never brings back a state older than one the machine had
(``_durable_for_reads``). ``restore`` loads only what the machine must hold
(``store.load_live_users``), not every user ever seen.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence

import anyio
from anyio.abc import TaskStatus

from federation_presence.clock import Clock
from federation_presence.errors import StoreError
from federation_presence.ids import UserId
from federation_presence.memory import release_free_memory
from federation_presence.metrics import Metrics
from federation_presence.presence.inputs import LocalInput, RemotePush
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import (
    DevicePresence,
    NotifyReason,
    Outcome,
    StateChange,
    UserPresence,
)
from federation_presence.presence.remote import local_suffix
from federation_presence.store.base import InboundTxn, Store
from federation_presence.stream import PresenceStream

# Notify reasons in order of precedence when several changes are owed for one
# user: any reason beats None, a new user beats everything.
_REASON_RANK: dict[NotifyReason | None, int] = dict.fromkeys(NotifyReason, 1)
_REASON_RANK[None] = 0
_REASON_RANK[NotifyReason.NEW_USER] = 2


def _stronger(a: NotifyReason | None, b: NotifyReason | None) -> NotifyReason | None:
    return a if _REASON_RANK[a] >= _REASON_RANK[b] else b


logger = logging.getLogger(__name__)

TIMEOUT_BATCH = 10_000
"""Remote users one timer outcome times out at most (bounds a tick's write)."""
TRIM_AFTER_EVICTIONS = 100_000
"""Users evicted since the last ``release_free_memory`` that make the next one worth it."""


class PresenceKeeper:
    def __init__(
        self,
        machine: PresenceMachine,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        stream: PresenceStream | None = None,
    ) -> None:
        self._machine = machine
        self._stream = stream
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._sleeping_until: int | None = None
        self._sleep_scope: anyio.CancelScope | None = None
        # What failed writes could not persist; carried by the next write.
        self._owed_users: dict[UserId, NotifyReason | None] = {}
        self._owed_devices: dict[tuple[UserId, str], DevicePresence] = {}
        self._change_listeners: list[Callable[[tuple[UserPresence, ...]], None]] = []
        # Eviction bookkeeping (module docstring): writes in flight, seq ->
        # seq; writes carrying owed changes, seq -> the lowest seq they carry;
        # the lowest seq a failed write left owed; read-throughs in flight,
        # token -> the durable seq when they were issued.
        self._writing: dict[int, None] = {}
        self._carrying: dict[int, int] = {}
        self._owed_floor: int | None = None
        self._reads: dict[int, int] = {}
        self._read_tokens = itertools.count()
        self._evicted_since_trim = 0

    async def restore(self) -> None:
        """Load what the machine must hold; persist what expired meanwhile."""
        users = await self._store.load_live_users(local_suffix(self._machine.server_name))
        devices = await self._store.load_devices()
        outcome = self._machine.restore(users, devices, self._clock.now_ms())
        await self._persist(outcome)
        # Read at scrape time, so it is never stale.
        self._metrics.known_users.set_function(lambda: self._machine.user_count)

    def held(self, user_id: UserId) -> UserPresence | None:
        """The state the machine holds, without a read: every local user and every
        live remote one (a remote user evicted once durably offline is not held)."""
        return self._machine.get(user_id)

    async def get(self, user_id: UserId) -> UserPresence | None:
        """The user's state: the machine's, else the store's (an evicted user); None if unknown."""
        held = self._machine.get(user_id)
        if held is not None:
            return held
        found = await self._store.get_users([user_id])
        return found[0] if found else None

    async def apply_remote(
        self, pushes: Sequence[RemotePush], txn: InboundTxn | None = None
    ) -> Outcome:
        """Apply validated pushes (and record ``txn``); returns once durable."""
        await self._read_through(push.user_id for push in pushes)
        outcome = self._machine.handle_remote(pushes, self._clock.now_ms())
        await self._persist(outcome, txn)
        return outcome

    async def apply_local(self, event: LocalInput) -> Outcome:
        """Apply one authenticated local input; returns once durable."""
        return await self.apply_local_batch((event,))

    async def apply_local_batch(self, inputs: Sequence[LocalInput]) -> Outcome:
        """Apply local inputs (authenticated) at one ``now``; returns once durable.

        However many inputs (a bridge's heartbeat batch), it is one store
        write: the machine's outcomes are merged, per user into the last
        state with the strongest notify reason owed, per device into its last row.
        """
        await self._read_through(event.user_id for event in inputs)
        now = self._clock.now_ms()
        outcome = merge_outcomes([self._machine.handle(event, now) for event in inputs])
        await self._persist(outcome)
        return outcome

    async def _read_through(self, user_ids: Iterable[UserId]) -> None:
        """Hand the machine the stored rows of the users it does not hold (one read)."""
        missing = self._machine.missing(user_ids)
        if not missing:
            return
        token = next(self._read_tokens)
        self._reads[token] = self._durable_seq()
        try:
            found = await self._store.get_users(missing)
        finally:
            del self._reads[token]
        self._machine.admit(found)

    async def _persist(self, outcome: Outcome, txn: InboundTxn | None = None) -> None:
        carried = self._owed_floor
        if self._owed_users or self._owed_devices:
            outcome = self._with_owed(outcome)
            self._owed_floor = None
        if not outcome.changes and not outcome.devices and txn is None:
            self._maybe_wake_timers(outcome.next_deadline_ms)
            return
        seq = outcome.seq
        self._writing[seq] = None
        if carried is not None:
            self._carrying[seq] = carried
        started = self._clock.monotonic()
        try:
            stream_id = await self._store.apply(outcome, txn)
        except BaseException:
            # A failed write (or one cut off, which may or may not land)
            # owes its changes to the next write; until one carries them,
            # nothing they touched may be evicted.
            self._owe(outcome)
            floor = min(seq, carried) if carried is not None else seq
            owes = self._owed_users or self._owed_devices
            if owes and (self._owed_floor is None or floor < self._owed_floor):
                self._owed_floor = floor
            raise
        finally:
            del self._writing[seq]
            self._carrying.pop(seq, None)
        self._forget_durable()
        self._metrics.apply_seconds.observe(self._clock.monotonic() - started)
        if self._stream is not None:
            # No await since the store answered: a group's writers publish together.
            self._stream.publish_changes(stream_id, outcome.changes)
        if self._change_listeners and (notified := outcome.to_notify):
            for listener in self._change_listeners:
                listener(notified)
        self._maybe_wake_timers(outcome.next_deadline_ms)

    def _durable_seq(self) -> int:
        """The greatest seq all of whose writes (and every earlier call's) committed."""
        floor = self._machine.seq + 1
        if self._writing:
            floor = min(floor, next(iter(self._writing)))
        if self._carrying:
            floor = min(floor, *self._carrying.values())
        if self._owed_floor is not None:
            floor = min(floor, self._owed_floor)
        return floor - 1

    def _durable_for_reads(self) -> int:
        """``_durable_seq``, but no later than what every read in flight can see."""
        durable = self._durable_seq()
        if self._reads:
            durable = min(durable, next(iter(self._reads.values())))
        return durable

    def _forget_durable(self) -> None:
        machine = self._machine
        if not machine.can_evict():
            return
        evicted = machine.forget_offline(self._durable_for_reads())
        self._evicted_since_trim += evicted
        if self._evicted_since_trim >= TRIM_AFTER_EVICTIONS and not machine.can_evict():
            # A mass eviction is over: hand the freed heap back to the system.
            self._evicted_since_trim = 0
            release_free_memory()

    def _owe(self, outcome: Outcome) -> None:
        for change in outcome.changes:
            user_id = change.state.user_id
            self._owed_users[user_id] = _stronger(self._owed_users.get(user_id), change.notify)
        for device in outcome.devices:
            self._owed_devices[(device.user_id, device.device_id)] = device

    def _with_owed(self, outcome: Outcome) -> Outcome:
        """``outcome`` preceded by what earlier failed writes owe (current state)."""
        owed_users, self._owed_users = self._owed_users, {}
        owed_devices, self._owed_devices = self._owed_devices, {}
        in_outcome = {change.state.user_id for change in outcome.changes}
        changes = [
            StateChange(state, reason)
            for user_id, reason in owed_users.items()
            if user_id not in in_outcome and (state := self._machine.get(user_id)) is not None
        ]
        device_keys = {(d.user_id, d.device_id) for d in outcome.devices}
        devices = [d for key, d in owed_devices.items() if key not in device_keys]
        return dataclasses.replace(
            outcome,
            changes=(*changes, *outcome.changes),
            devices=(*devices, *outcome.devices),
        )

    def add_change_listener(self, listener: Callable[[tuple[UserPresence, ...]], None]) -> None:
        """Call ``listener(states)`` after each durable write with notified states.

        Called synchronously on the writer's task: it must not block or raise.
        """
        self._change_listeners.append(listener)

    def _maybe_wake_timers(self, deadline_ms: int | None) -> None:
        if deadline_ms is None or self._sleep_scope is None:
            return
        if self._sleeping_until is None or deadline_ms < self._sleeping_until:
            self._sleep_scope.cancel()

    async def run_timers(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Fire the machine's timers forever (a child of the worker's task group)."""
        task_status.started()
        while True:
            deadline = self._machine.next_deadline_ms
            with anyio.CancelScope() as scope:
                self._sleep_scope = scope
                self._sleeping_until = deadline
                if deadline is None:
                    await anyio.sleep_forever()
                else:
                    await self._clock.sleep_until(deadline)
            self._sleep_scope = None
            self._sleeping_until = None
            if scope.cancelled_caught:
                continue
            outcome = self._machine.tick(self._clock.now_ms(), TIMEOUT_BATCH)
            try:
                await self._persist(outcome)
            except StoreError:
                # Owed, and carried by the next write; the loop must live.
                logger.exception("could not persist timer outcome")


def merge_outcomes(outcomes: Sequence[Outcome]) -> Outcome:
    """One outcome doing what ``outcomes`` did in order (the last state of each user
    and device; each user's strongest notify reason)."""
    if len(outcomes) == 1:
        return outcomes[0]
    changes: dict[UserId, StateChange] = {}
    devices: dict[tuple[UserId, str], DevicePresence] = {}
    pings: dict[UserId, UserPresence] = {}
    dropped: list[str] = []
    for outcome in outcomes:
        for change in outcome.changes:
            user_id = change.state.user_id
            before = changes.pop(user_id, None)
            reason = change.notify if before is None else _stronger(before.notify, change.notify)
            changes[user_id] = StateChange(change.state, reason)
        for device in outcome.devices:
            devices[(device.user_id, device.device_id)] = device
        for ping in outcome.federation_pings:
            pings[ping.user_id] = ping
        dropped.extend(outcome.dropped)
    return Outcome(
        tuple(changes.values()),
        tuple(devices.values()),
        outcomes[-1].next_deadline_ms if outcomes else None,
        tuple(dropped),
        tuple(pings.values()),
        # The last machine call's seq: the merged write stands for all of them
        # (eviction bookkeeping keys in-flight writes by seq).
        seq=outcomes[-1].seq if outcomes else 0,
    )
