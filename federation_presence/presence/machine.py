"""The presence machine: current states and timers of one server (pure).

Design
------
The machine is the one place that owns presence *state in memory*: the
combined ``UserPresence`` of every user we know (local and remote), the
per-device ``DevicePresence`` of local users' live devices, and five deadline
queues. It does no I/O and reads no clock: every call takes ``now`` and
returns an ``Outcome`` that the shell makes durable with
``store.apply(outcome)`` before it answers anyone. Calls are deterministic:
the same sequence of calls and ``now`` values gives the same outcomes.

The rules live in small pure modules and the machine only sequences them:
``transitions`` (what an input or time does to a device), ``aggregate``
(devices → user), ``notify`` (what is worth telling), ``remote`` (a push →
a remote user's state) and ``timers`` (``DeadlineQueue``).

Every local change goes through one step, *settling* the user at ``now``:
apply the timeouts to each live device, combine the devices into the user,
decide the notify reason against the previous state, decide a federation
ping, then reschedule the user's timers from the new state. Because settling
recomputes from timestamps rather than trusting which timer fired, a late or
extra tick changes nothing and timers may be rescheduled freely; because
each user is settled at most once per call, one call yields at most one
``StateChange`` per user.

Timers (all ``DeadlineQueue``; deadlines are "timestamp + constant", so each
queue is fed in order and every operation is O(1)):

* idle, per local device: ``online`` → ``unavailable`` (IDLE);
* offline, per local device: no sync in flight and no contact → ``offline``;
* currently-active, per local user: ``currently_active`` turns false (this is
  notified: it ends the suppression of ``last_active`` bumps);
* ping, per local user not offline: FEDERATION_PING re-send; the user goes
  to ``Outcome.federation_pings`` and its ``last_federation_update_ts`` is
  persisted without notify (an interested server would otherwise time an
  idle-but-present user out after FEDERATION_TIMEOUT);
* remote, per remote user not offline: FEDERATION_TIMEOUT → ``offline``.

Notified local changes set ``last_federation_update_ts = now``: they go out
over federation, which restarts the ping interval (as Synapse does).

``handle_remote`` is the hot path (a /send transaction carries up to 5,000
pushes): per push it builds one ``UserPresence`` and one ``StateChange``,
decides notify inline and moves one key in the remote queue. Several pushes
for one user in one batch coalesce into one change, notified if the final
state differs from the state before the batch in a notify-worthy way.

Memory: a local device is forgotten once it is offline with no sync in
flight (it adds nothing to its user: its activity is already folded into the
user's ``last_active_ts``), so local memory is bounded by live devices plus
one row per user. A forgotten device that comes back starts afresh (its
stored row is overwritten with the new one), whether or not a tick noticed
its going offline first: inputs first bring their device to ``now``.

Remote users are held while they are not offline (their federation timeout
needs them) plus, in ``_resting``, the ``offline_cache_size``
(``PresenceSettings``) offline ones most recently *seen*: pushed offline, or
read through for a push (hot senders flap between states). A user our clock
timed out was not seen (its server has been silent for FEDERATION_TIMEOUT):
it waits in ``_timed_out`` only until its offline state is durable. So a
mass timeout keeps none of its users, which matters beyond their own bytes:
survivors allocated amid a burst pin CPython's small-object arenas, which
are freed only when wholly empty (``bench/bench_memory.py``, BENCHMARKS.md).
*Eviction*: ``forget_offline`` drops the timed-out users and the least
recently seen beyond the cache, once the shell says their state is durable
(every outcome carries ``seq``,
the number of the call that made it; the shell passes the greatest ``seq``
all of whose writes have committed). The store then holds them, and the
shell reads them through before a call that needs them: ``missing`` names
the remote users of a batch the machine does not hold, ``admit`` hands their
stored rows back (users the store does not have stay unknown: a push for
them is a ``NEW_USER``). Decisions are the same as if nothing had been
evicted, because an evicted user's stored row is exactly its last state.
So remote memory follows what is live, not what was ever seen.

Python keeps a ``dict``'s table at the largest size it reached; after a mass
eviction ``_users``, ``_resting`` and ``_timed_out`` are rebuilt at the size they now have
(once under a quarter of their high-water mark; O(1) amortised), as the
deadline queues are (``timers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TypeVar, assert_never

from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.presence.aggregate import combined_user, currently_active_until
from federation_presence.presence.inputs import (
    Activity,
    DeviceHeartbeat,
    LocalInput,
    RemotePush,
    SetPresence,
    SyncEnded,
    SyncStarted,
)
from federation_presence.presence.model import (
    DevicePresence,
    NotifyReason,
    Outcome,
    PresenceSettings,
    StateChange,
    UserPresence,
)
from federation_presence.presence.notify import new_user_reason, notify_reason
from federation_presence.presence.remote import (
    after_federation_timeout,
    federation_timeout_deadline,
    local_suffix,
)
from federation_presence.presence.states import PresenceState
from federation_presence.presence.timers import DeadlineQueue
from federation_presence.presence.transitions import (
    after_activity,
    after_heartbeat,
    after_set_presence,
    after_sync_ended,
    after_sync_started,
    after_timeouts,
    idle_deadline,
    new_device,
    offline_deadline,
)

_OFFLINE = PresenceState.OFFLINE
_PRESENCE = NotifyReason.PRESENCE
_STATUS_MSG = NotifyReason.STATUS_MSG
_CURRENTLY_ACTIVE = NotifyReason.CURRENTLY_ACTIVE
_LAST_ACTIVE = NotifyReason.LAST_ACTIVE

DeviceKey = tuple[UserId, DeviceId]
_Key = TypeVar("_Key", DeviceKey, UserId)


class _Keep:
    """Marker: leave ``status_msg`` as it is."""


_KEEP = _Keep()

DEFAULT_SETTINGS = PresenceSettings()
_SHRINK_BELOW = 4
_SHRINK_MIN = 1024


class _Step:
    """What one call has decided so far (private, mutable while the call runs)."""

    __slots__ = ("changes", "devices", "dropped", "pings")

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        # Keyed so a device changed twice in one call (an input, then a
        # timeout) is written once, in its final form.
        self.devices: dict[DeviceKey, DevicePresence] = {}
        self.dropped: list[str] = []
        self.pings: list[UserPresence] = []


class PresenceMachine:
    """Presence of one server name: decides, never performs."""

    def __init__(
        self,
        server_name: ServerName,
        settings: PresenceSettings = DEFAULT_SETTINGS,
        *,
        offline_cache_size: int | None = None,
    ) -> None:
        if offline_cache_size is None:
            offline_cache_size = settings.offline_cache_size
        if offline_cache_size < 0:
            raise ValueError("offline_cache_size must be >= 0")
        self._server_name = server_name
        self._settings = settings
        self._suffix = local_suffix(server_name)
        self._users: dict[UserId, UserPresence] = {}
        self._devices: dict[UserId, dict[DeviceId, DevicePresence]] = {}
        self._idle: DeadlineQueue[DeviceKey] = DeadlineQueue()
        self._offline: DeadlineQueue[DeviceKey] = DeadlineQueue()
        self._active: DeadlineQueue[UserId] = DeadlineQueue()
        self._ping: DeadlineQueue[UserId] = DeadlineQueue()
        self._remote: DeadlineQueue[UserId] = DeadlineQueue()
        # Offline remote users held -> the seq of the call that last changed
        # them (0: read from the store). Plain dicts, in insertion order:
        # seen offline (least recently seen first; the cache), and timed out
        # by our clock (evicted as soon as durable). No OrderedDict: its
        # per-entry nodes, allocated amid a burst, would pin arenas.
        self._resting: dict[UserId, int] = {}
        self._timed_out: dict[UserId, int] = {}
        self._offline_cache_size = offline_cache_size
        self._users_high = 0  # the most users held since ``_users`` was last rebuilt
        self._seq = 0  # calls that returned an Outcome (Outcome.seq)

    # -- reading -------------------------------------------------------------

    @property
    def server_name(self) -> ServerName:
        return self._server_name

    @property
    def settings(self) -> PresenceSettings:
        return self._settings

    @property
    def user_count(self) -> int:
        """How many users (local and remote) the machine holds."""
        return len(self._users)

    @property
    def offline_cached(self) -> int:
        """How many offline remote users the machine holds (evictable)."""
        return len(self._resting) + len(self._timed_out)

    def can_evict(self) -> bool:
        """Whether ``forget_offline`` may have something to evict."""
        return bool(self._timed_out) or len(self._resting) > self._offline_cache_size

    @property
    def offline_cache_size(self) -> int:
        """How many offline remote users ``forget_offline`` leaves held."""
        return self._offline_cache_size

    @property
    def seq(self) -> int:
        """The ``Outcome.seq`` of the latest call."""
        return self._seq

    def get(self, user_id: UserId) -> UserPresence | None:
        """The user's current combined state; None if never seen, or evicted."""
        return self._users.get(user_id)

    def missing(self, user_ids: Iterable[UserId]) -> list[UserId]:
        """The remote users among ``user_ids`` the machine does not hold, once each.

        They are new, or were evicted: the shell reads them from the store
        and ``admit``s what it found before the call that needs them.
        """
        users = self._users
        suffix = self._suffix
        return [
            user_id
            for user_id in dict.fromkeys(user_ids)
            if user_id not in users and not user_id.endswith(suffix)
        ]

    def admit(self, users: Iterable[UserPresence]) -> None:
        """Hold stored remote users again (read through); a user held already is kept.

        The machine's own state is never older than the store's, so a user it
        came to hold while the read was in flight keeps that state.
        """
        held = self._users
        settings = self._settings
        for user in users:
            user_id = user.user_id
            if user_id in held or user_id.endswith(self._suffix):
                continue
            held[user_id] = user
            deadline = federation_timeout_deadline(user, settings)
            if deadline is None:
                self._resting[user_id] = 0
            else:
                # Only another writer of the store can leave a remote user
                # present without us holding it; it times out as usual.
                self._remote.schedule(user_id, deadline)
        self._note_users_high()

    def forget_offline(self, durable_seq: int) -> int:
        """Evict users timed out, then the least recently seen offline users
        beyond the cache; how many went.

        Only users whose latest change came from a call with ``seq <=
        durable_seq`` (its write committed) are evicted: the store must hold
        what the machine forgets.
        """
        gone = _durable_prefix(self._timed_out, len(self._timed_out), durable_seq)
        excess = len(self._resting) - self._offline_cache_size
        if excess > 0:
            gone += _durable_prefix(self._resting, excess, durable_seq)
        if not gone:
            return 0
        users = self._users
        for user_id in gone:
            del users[user_id]
        evicted = len(gone)
        if (
            evicted
            and self._users_high > _SHRINK_MIN
            and len(users) * _SHRINK_BELOW < self._users_high
        ):
            self._shrink()
        return evicted

    def devices(self, user_id: UserId) -> tuple[DevicePresence, ...]:
        """The local user's live devices (not offline, or with a sync in flight)."""
        devices = self._devices.get(user_id)
        return tuple(devices.values()) if devices else ()

    def is_local(self, user_id: UserId) -> bool:
        return user_id.endswith(self._suffix)

    @property
    def next_deadline_ms(self) -> int | None:
        """When ``tick`` is next needed, or None if no timer is set."""
        best: int | None = None
        for queue in (self._idle, self._offline, self._active, self._ping, self._remote):
            earliest = queue.earliest()
            if earliest is not None and (best is None or earliest < best):
                best = earliest
        return best

    # -- local inputs --------------------------------------------------------

    def handle(self, event: LocalInput, now: int) -> Outcome:
        """Apply one local input (already authenticated) at ``now``."""
        self._seq += 1
        step = _Step()
        user_id = event.user_id
        if not user_id.endswith(self._suffix):
            step.dropped.append(f"not a local user: {user_id}")
            return self._outcome(step)
        device_id = event.device_id
        key = (user_id, device_id)
        devices = self._devices.get(user_id)
        prev_device = devices.get(device_id) if devices is not None else None
        if prev_device is not None:
            # Bring the device to ``now`` before the input applies, so the
            # outcome does not depend on whether a tick came first.
            timed = after_timeouts(prev_device, now, self._settings)
            if timed is not prev_device:
                step.devices[key] = timed
                self._put_device(timed)
                prev_device = self._device(user_id, device_id)
        base = prev_device if prev_device is not None else new_device(user_id, device_id)
        device = _after_input(base, event, now)
        status_msg: str | _Keep | None = _KEEP
        if isinstance(event, SetPresence) and event.status_msg_set:
            status_msg = event.status_msg
        if device != base:
            step.devices[key] = device
            self._put_device(device)
        elif prev_device is None and not step.devices and isinstance(status_msg, _Keep):
            # Nothing happened to a device we do not track (e.g. a sync with
            # set_presence=offline): there is nothing to settle.
            return self._outcome(step)
        self._settle_local(step, user_id, now, status_msg)
        return self._outcome(step)

    # -- remote pushes (hot path) --------------------------------------------

    def handle_remote(self, pushes: Sequence[RemotePush], now: int) -> Outcome:
        """Apply validated pushes received at ``now`` (one /send transaction).

        A push for a user on our own server is dropped with a reason.
        """
        self._seq += 1
        suffix = self._suffix
        users = self._users
        users_get = users.get
        granularity = self._settings.last_active_granularity_ms
        changes: list[StateChange] = []
        befores: list[UserPresence | None] = []
        index: dict[UserId, int] = {}
        index_get = index.get
        offline: list[UserId] = []
        dropped: list[str] = []
        for push in pushes:
            user_id = push.user_id
            if user_id.endswith(suffix):
                dropped.append(f"push for local user {user_id} from {push.origin}")
                continue
            # remote.remote_state, inlined (a test checks they agree): this loop
            # is the hot path, and a call per push is a tenth of its cost.
            last_active_ts = now - push.last_active_ago
            new = UserPresence(
                user_id,
                push.state,
                last_active_ts if last_active_ts > 0 else 0,
                push.status_msg,
                push.currently_active,
                now,
            )
            position = index_get(user_id)
            prev = users_get(user_id) if position is None else befores[position]
            # notify.notify_reason, inlined for the same reason.
            reason: NotifyReason | None
            if prev is None:
                reason = new_user_reason(new, granularity)
            elif prev.state is not new.state:
                reason = _PRESENCE
            elif prev.status_msg != new.status_msg:
                reason = _STATUS_MSG
            elif prev.currently_active != new.currently_active:
                reason = _CURRENTLY_ACTIVE
            elif (
                new.last_active_ts - prev.last_active_ts > granularity and not new.currently_active
            ):
                reason = _LAST_ACTIVE
            else:
                reason = None
                if prev.last_federation_update_ts == now and position is None and prev == new:
                    continue
            users[user_id] = new
            if new.state is _OFFLINE:
                offline.append(user_id)
            if position is None:
                index[user_id] = len(changes)
                changes.append(StateChange(new, reason))
                befores.append(prev)
            else:
                changes[position] = StateChange(new, reason)
        # Every user refreshed by this batch shares one deadline; an offline
        # one has none (it may have come back online later in the batch).
        remote = self._remote
        remote.schedule_all(index, now + self._settings.federation_timeout_ms)
        resting = self._resting
        if resting:
            resting_pop = resting.pop
            for user_id in index:
                resting_pop(user_id, None)
        timed_out = self._timed_out
        if timed_out:
            timed_out_pop = timed_out.pop
            for user_id in index:
                timed_out_pop(user_id, None)
        seq = self._seq
        for user_id in offline:
            if users[user_id].state is _OFFLINE:
                remote.cancel(user_id)
                resting[user_id] = seq
        if len(users) > self._users_high:
            self._users_high = len(users)
        return Outcome(tuple(changes), (), self.next_deadline_ms, tuple(dropped), (), seq)

    # -- time ----------------------------------------------------------------

    def tick(self, now: int, remote_limit: int | None = None) -> Outcome:
        """Fire every timer due at ``now``; afterwards none is due at ``now``.

        With ``remote_limit``, at most that many remote users time out (the
        earliest due): a mass timeout then comes as several bounded outcomes
        (and bounded writes), and ``next_deadline_ms <= now`` while some are
        still due.
        """
        self._seq += 1
        step = _Step()
        local: dict[UserId, None] = {}
        for user_id, _ in self._idle.pop_due(now):
            local[user_id] = None
        for user_id, _ in self._offline.pop_due(now):
            local[user_id] = None
        for user_id in self._active.pop_due(now):
            local[user_id] = None
        for user_id in self._ping.pop_due(now):
            local[user_id] = None
        for user_id in self._remote.pop_due(now, remote_limit):
            self._settle_remote(step, user_id, now)
        for user_id in local:
            self._settle_local(step, user_id, now, _KEEP)
        return self._outcome(step)

    # -- restart -------------------------------------------------------------

    def restore(
        self, users: Iterable[UserPresence], devices: Iterable[DevicePresence], now: int
    ) -> Outcome:
        """Load persisted rows after a restart; return what expired meanwhile.

        Syncs that were in flight died with the old process: their devices get
        ``syncing=0`` and a full sync timeout from ``now`` to reconnect (those
        device rows are in the outcome). Offline devices are not kept (see the
        module docstring). A row loaded again replaces what the machine had.
        """
        self._seq += 1
        step = _Step()
        local: dict[UserId, None] = {}
        remote: list[tuple[int, UserId]] = []
        for user in users:
            self._users[user.user_id] = user
            if self.is_local(user.user_id):
                local[user.user_id] = None
                continue
            remote_deadline = federation_timeout_deadline(user, self._settings)
            if remote_deadline is None:
                self._remote.cancel(user.user_id)
                self._resting.pop(user.user_id, None)
                self._timed_out.pop(user.user_id, None)
                self._timed_out[user.user_id] = 0
            else:
                self._resting.pop(user.user_id, None)
                self._timed_out.pop(user.user_id, None)
                remote.append((remote_deadline, user.user_id))
        for device in devices:
            if not self.is_local(device.user_id):
                step.dropped.append(f"device row of a remote user: {device.user_id}")
                continue
            if device.syncing:
                device = replace(device, syncing=0, last_sync_ts=max(device.last_sync_ts, now))
                step.devices[(device.user_id, device.device_id)] = device
            self._put_device(device)
            local[device.user_id] = None
        remote.sort()
        for remote_deadline, user_id in remote:
            if remote_deadline <= now:
                self._settle_remote(step, user_id, now)
            else:
                self._remote.schedule(user_id, remote_deadline)
        for user_id in local:
            self._settle_local(step, user_id, now, _KEEP)
        self._note_users_high()
        return self._outcome(step)

    # -- the steps -----------------------------------------------------------

    def _device(self, user_id: UserId, device_id: DeviceId) -> DevicePresence | None:
        devices = self._devices.get(user_id)
        return devices.get(device_id) if devices is not None else None

    def _put_device(self, device: DevicePresence) -> None:
        """Keep a live device; forget one that is offline with no sync in flight."""
        user_id = device.user_id
        devices = self._devices.get(user_id)
        if device.state is not _OFFLINE or device.syncing > 0:
            if devices is None:
                self._devices[user_id] = {device.device_id: device}
            else:
                devices[device.device_id] = device
            return
        if devices is not None:
            devices.pop(device.device_id, None)
            if not devices:
                del self._devices[user_id]
        key = (user_id, device.device_id)
        self._idle.cancel(key)
        self._offline.cancel(key)

    def _settle_local(
        self, step: _Step, user_id: UserId, now: int, status_msg: str | _Keep | None
    ) -> None:
        """Bring a local user and its devices to ``now``; record what changed."""
        settings = self._settings
        devices = self._devices.get(user_id)
        if devices:
            for device in list(devices.values()):
                timed = after_timeouts(device, now, settings)
                if timed is not device:
                    step.devices[(user_id, timed.device_id)] = timed
                    self._put_device(timed)
            devices = self._devices.get(user_id)
        live = devices.values() if devices else ()
        prev = self._users.get(user_id)
        base = prev if prev is not None else UserPresence(user_id)
        if not isinstance(status_msg, _Keep):
            base = replace(base, status_msg=status_msg)
        new = combined_user(base, live, now, settings)
        reason = notify_reason(prev, new, settings.last_active_granularity_ms)
        if reason is not None:
            new = _sent_at(new, now)
        elif (
            new.state is not _OFFLINE
            and now - new.last_federation_update_ts >= settings.federation_ping_interval_ms
        ):
            new = _sent_at(new, now)
            step.pings.append(new)
        self._schedule_local(user_id, live, new)
        if new != prev:
            self._users[user_id] = new
            step.changes.append(StateChange(new, reason))

    def _schedule_local(
        self, user_id: UserId, devices: Iterable[DevicePresence], user: UserPresence
    ) -> None:
        settings = self._settings
        for device in devices:
            key = (user_id, device.device_id)
            _set(self._idle, key, idle_deadline(device, settings))
            _set(self._offline, key, offline_deadline(device, settings))
        _set(
            self._active, user_id, currently_active_until(user, settings.currently_active_window_ms)
        )
        ping_at = None
        if user.state is not _OFFLINE:
            ping_at = user.last_federation_update_ts + settings.federation_ping_interval_ms
        _set(self._ping, user_id, ping_at)

    def _settle_remote(self, step: _Step, user_id: UserId, now: int) -> None:
        prev = self._users.get(user_id)
        if prev is None:
            return
        new = after_federation_timeout(prev, now, self._settings)
        _set(self._remote, user_id, federation_timeout_deadline(new, self._settings))
        if new is not prev:
            self._users[user_id] = new
            if new.state is _OFFLINE:
                # Timed out by our clock, not seen: evicted once durable.
                self._timed_out[user_id] = self._seq
            step.changes.append(
                StateChange(
                    new, notify_reason(prev, new, self._settings.last_active_granularity_ms)
                )
            )

    def _outcome(self, step: _Step) -> Outcome:
        return Outcome(
            tuple(step.changes),
            tuple(step.devices.values()),
            self.next_deadline_ms,
            tuple(step.dropped),
            tuple(step.pings),
            self._seq,
        )

    def _note_users_high(self) -> None:
        if len(self._users) > self._users_high:
            self._users_high = len(self._users)

    def _shrink(self) -> None:
        """Rebuild the user tables at the size of what they hold (module docstring)."""
        self._users = dict(self._users)
        self._users_high = len(self._users)
        self._resting = dict(self._resting)
        self._timed_out = dict(self._timed_out)


def _sent_at(user: UserPresence, now: int) -> UserPresence:
    """``user`` as just sent over federation (``dataclasses.replace``, but cheaper)."""
    return UserPresence(
        user.user_id,
        user.state,
        user.last_active_ts,
        user.status_msg,
        user.currently_active,
        now,
        user.last_user_sync_ts,
    )


def _durable_prefix(offline: dict[UserId, int], most: int, durable_seq: int) -> list[UserId]:
    """Remove and return up to ``most`` users from the front of ``offline``,
    stopping at the first whose change is not durable yet."""
    gone: list[UserId] = []
    if most <= 0:
        return gone
    for user_id, changed_seq in offline.items():
        if changed_seq > durable_seq:
            break
        gone.append(user_id)
        if len(gone) == most:
            break
    for user_id in gone:
        del offline[user_id]
    return gone


def _set(queue: DeadlineQueue[_Key], key: _Key, at: int | None) -> None:
    if at is None:
        queue.cancel(key)
    else:
        queue.schedule(key, at)


def _after_input(device: DevicePresence, event: LocalInput, now: int) -> DevicePresence:
    """What one local input does to its device (``transitions``)."""
    if isinstance(event, Activity):
        return after_activity(device, now)
    if isinstance(event, SyncStarted):
        return after_sync_started(device, event.set_presence, now)
    if isinstance(event, SyncEnded):
        return after_sync_ended(device, event.set_presence, now)
    if isinstance(event, SetPresence):
        return after_set_presence(device, event.state, now)
    if isinstance(event, DeviceHeartbeat):
        return after_heartbeat(device, event.state, now)
    assert_never(event)
