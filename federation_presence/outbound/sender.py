"""The outbound federation sender: local presence out, batched, suppressed, resumable.

Design
------
One ``OutboundSender`` per worker follows the presence stream
(``stream.PresenceStream``) from a position it keeps in the store. For each
batch of stream entries it takes the local users' ones, asks the routing seam
(``routing.DestinationSource``) which remote servers are interested, and
*owes* each destination the new state in that destination's
``queue.DestinationQueue``: one entry per user, merged in place, so a
destination's memory is bounded by users however many updates arrive and
however long it stays down.

Each destination with something owed has one task of its own (a child of the
sender's task group; it ends when its queue is empty). The task lingers
``linger_ms`` once when it starts, so a burst of changes leaves as one
transaction. Destinations woken within ``LINGER_JOIN_MS`` of each other (a
change routed to many: one stream batch) share one linger window: one timer
(kept by the first one's task) ends it for all of them at once, so they
build and send back to back in one turn of the event loop, before any of
their answers is handled, instead of on timers a few µs apart that let
earlier destinations' answers cut in. Then each sends what is owed, at
most ``max_pushes_per_transaction`` users (split into EDUs of
``pushes_per_edu``) per transaction and one
transaction in flight: while it is in flight, updates coalesce in the queue
and leave together right after it. Suppression is decided by the queue when
a transaction is built, against what *that destination* last acknowledged.
No destination waits for another's I/O: there is no shared send loop, a
shared linger ends on its timer whatever the destinations do, and a hanging
destination only holds its own task.

Timeouts: the client bounds each transaction as a whole (resolution,
connect, send, answer: ``transaction_timeout_ms``), its connect (TCP and
TLS: ``connect_timeout_ms``) and each socket read or write
(``read_timeout_ms``); the last two default to the client's own
(``federation.request_timeout``). A timeout is a failure like any other.

Failure: anything but a 200 with a transaction answer (``{"pdus": {...}}``)
puts the transaction's users back (newer states win) and arms the
destination's retry timer (``backoff.retry_delay_ms``: exponential, jitter,
cap; a 429's ``retry_after_ms`` as a floor). When it fires, the task sends
the latest state of everything owed, with no new change needed. 400, 401,
403 and 413 are logged with the destination's answer (the request itself is
wrong) and retried on the same backoff, never in a hot loop.

Positions and restart (at-least-once, latest state): the sender persists

* ``outbound:<destination>``: the stream position up to which the
  destination has acknowledged (or was spared by suppression) everything it
  was owed: one below its oldest unacknowledged entry, or the sender's read
  position when nothing is owed;
* ``outbound_sender:<instance>``: the minimum of those over destinations
  with something owed, and the read position: every change at or below it
  has been acknowledged by every destination it was routed to.

Both only ever grow, and are flushed ``POSITION_FLUSH_MS`` after they
moved (no timer while idle) and at shutdown. After a restart (or
``kill -9``) the sender reads the stream from
``outbound_sender:<instance>`` (the store coalesces: each user once, latest
state), routes again and owes a destination only entries above its own
stored position. Every destination converges to the latest state of every
user it is owed; what a destination acknowledged after the last flush is
sent again (the in-flight transaction, and at most a flush interval's
worth).

Keep-alive (FEDERATION_PING): ``keepalive.KeepAliveSchedule`` re-sends
each present local user to the destinations interested in it once per
interval, each user on its own random phase (injected ``random.Random``), as
forced entries that suppression does not drop; a re-send due within a few
minutes after a change of the user was sent is skipped to its next phase
(``keepalive.quiet_after_send_ms``).

Why the sender owns keep-alive and the stream does not carry pings (issue
15, item 0, decided here): a ping changes nothing, so it has no stream id
and moves no reader's position; ``/sync`` readers must never see it. To
reach a sender in another process it would need a store write per user per
interval, and every instance would read every ping only to drop those of
destinations it does not own. What a ping needs is sender state: routing at
ping time (who is interested *now*), a forced entry past the per-destination
suppression, and a phase per user that stays put across the interval. So
each sender instance keeps its own schedule of the present local users (it
sees every local change on the stream, and seeds from the store at start),
bounded by those users. The core's own ping timer
(``Outcome.federation_pings``) is not read by anyone for sending.

Transaction ids: ``<prefix><epoch>_<n>``: ``epoch`` is the destination's
durable counter in the store (``Store.next_txn_id``), taken once per process
and destination, ``n`` counts in memory. Unique per destination across
restarts, one store write per destination per process, none per send.

Encoding once: a change routed to many destinations is the same
``UserPresence`` object in each of their queues; ``edu.PushEncodings``
encodes it to canonical JSON once (its ``last_active_ago`` is written in at
each transaction's own ``now``, so it is exact), and each destination joins
the pieces into its body (``edu.transaction_bytes``), which the client sends
as it is and signs around (``xmatrix.CanonicalJson``); destinations that send
the same states in the same ms share one body (``edu.TransactionBodies``).
A destination's own cost is the signature and the HTTP request.

Sharding: a destination is handled only by the instance ``sharding.owner``
names; others ignore it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import anyio
from anyio.abc import TaskGroup, TaskStatus

from federation_presence.clock import Clock
from federation_presence.errors import StoreError, UpstreamError
from federation_presence.federation.client import DestinationError, RequestTimeouts
from federation_presence.federation.edu import TransactionBodies
from federation_presence.ids import ServerName, UserId
from federation_presence.outbound.backoff import retry_delay_ms
from federation_presence.outbound.keepalive import KeepAliveSchedule, quiet_after_send_ms
from federation_presence.outbound.metrics import SenderMetrics
from federation_presence.outbound.queue import DestinationQueue
from federation_presence.outbound.routing import DestinationSource
from federation_presence.outbound.settings import SenderSettings
from federation_presence.outbound.sharding import is_mine
from federation_presence.presence.model import PresenceSettings, UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.store.base import Store
from federation_presence.stream import PresenceStream, StreamEntry

logger = logging.getLogger(__name__)

READ_BATCH = 1_000
STREAM_WAIT_S = 30.0
POSITION_FLUSH_MS = 1_000
ROUTE_RETRY_MS = 5_000
SHUTDOWN_FLUSH_S = 5.0
LINGER_JOIN_MS = 2
REJECTED_STATUSES = frozenset({400, 401, 403, 413})
_SHOWN_CHARS = 300


class TransactionClient(Protocol):
    """What the sender needs of ``FederationClient``: one signed PUT within ``timeouts``."""

    async def put_json(
        self, destination: str, path: str, body: object, *, timeouts: RequestTimeouts
    ) -> dict[str, Any]: ...


@dataclass(eq=False)
class _Destination:
    """The sender's state for one destination (its queue, retry timer, position)."""

    name: ServerName
    queue: DestinationQueue
    acked_position: int
    stored_position: int
    running: bool = False
    failures: int = 0
    retry_at: int | None = None
    txn_epoch: int | None = None
    txn_counter: int = 0
    txn_path: str = ""  # the send path less the counter, once the epoch is known


@dataclass(eq=False)
class _Linger:
    """One linger window, shared by the destinations woken within ``LINGER_JOIN_MS``."""

    opened_at: int
    over: anyio.Event
    owned: bool = False


class OutboundSender:
    """Sends local presence to interested destinations; see the module docstring."""

    def __init__(
        self,
        *,
        server_name: ServerName,
        stream: PresenceStream,
        store: Store,
        client: TransactionClient,
        destinations: DestinationSource,
        current: Callable[[UserId], Awaitable[UserPresence | None]],
        clock: Clock,
        settings: SenderSettings,
        presence: PresenceSettings,
        rng: random.Random,
        metrics: SenderMetrics | None = None,
    ) -> None:
        self._server_name = server_name
        self._stream = stream
        self._store = store
        self._client = client
        self._routing = destinations
        self._current = current
        self._clock = clock
        self._settings = settings
        self._granularity_ms = presence.last_active_granularity_ms
        self._rng = rng
        self._metrics = metrics if metrics is not None else SenderMetrics()
        self._keepalive = KeepAliveSchedule(
            presence.federation_ping_interval_ms,
            rng,
            quiet_after_send_ms(
                presence.federation_ping_interval_ms, presence.federation_timeout_ms
            ),
        )
        self._keepalive_until: int | None = None
        self._keepalive_scope: anyio.CancelScope | None = None
        self._destinations: dict[ServerName, _Destination] = {}
        self._bodies = TransactionBodies(server_name, settings.pushes_per_edu)
        self._linger: _Linger | None = None
        self._timeouts = RequestTimeouts(
            connect_ms=settings.connect_timeout_ms,
            read_ms=settings.read_timeout_ms,
            total_ms=settings.transaction_timeout_ms,
        )
        self._position = 0
        self._stored_position = 0
        self._tg: TaskGroup | None = None
        # Set when a position moved: the flusher sleeps on it, not on a
        # periodic timer, so an idle sender sets no timers at all.
        self._positions_moved = anyio.Event()
        self._metrics.read_gauges_from(
            lambda: sum(1 for d in self._destinations.values() if d.retry_at is not None),
            lambda: sum(d.queue.depth for d in self._destinations.values()),
            lambda: len(self._destinations),
        )

    # -- reading --------------------------------------------------------------

    @property
    def position(self) -> int:
        """The stream position up to which every entry has been routed."""
        return self._position

    @property
    def position_name(self) -> str:
        return f"outbound_sender:{self._settings.instance_name}"

    @staticmethod
    def destination_position_name(destination: str) -> str:
        return f"outbound:{destination}"

    def queue_depth(self, destination: str) -> int:
        found = self._destinations.get(ServerName(destination))
        return 0 if found is None else found.queue.depth

    def in_backoff(self, destination: str) -> int | None:
        """When ``destination``'s retry timer fires, or None if it is not backing off."""
        found = self._destinations.get(ServerName(destination))
        return None if found is None else found.retry_at

    def busy(self, destination: str) -> bool:
        """Whether ``destination`` has anything owed, in flight or lingering."""
        found = self._destinations.get(ServerName(destination))
        return found is not None and (found.running or not found.queue.idle)

    def owns(self, destination: str) -> bool:
        """Whether this instance sends to ``destination`` (never to our own server)."""
        settings = self._settings
        return destination != self._server_name and is_mine(
            destination, settings.instances, settings.instance_name
        )

    # -- running --------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the stream and send, until cancelled (a child of the worker's group)."""
        self._position = self._stored_position = await self._store.get_position(self.position_name)
        await self._seed_keepalive()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for target in self._destinations.values():
                    if not target.queue.idle:
                        self._wake(target)  # owed before we ran (send_current_presence)
                tg.start_soon(self._follow_stream)
                tg.start_soon(self._run_keepalive)
                tg.start_soon(self._flush_positions_periodically)
                task_status.started()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_FLUSH_S):
                try:
                    await self.flush_positions()
                except StoreError as exc:
                    logger.warning("could not store outbound positions at shutdown: %s", exc)

    async def send_current_presence(
        self, destinations: Iterable[str], user_ids: Collection[UserId]
    ) -> None:
        """Owe these destinations the current state of these local users, unsuppressed.

        Backs Synapse's module API ``send_local_online_presence_to``. Users
        with no known state, remote users and destinations this instance
        does not own are skipped.
        """
        states = [
            state
            for user_id in user_ids
            if self._is_local(user_id) and (state := await self._current(user_id)) is not None
        ]
        if not states:
            return
        for destination in destinations:
            if not self.owns(destination):
                continue
            target = self._destination_known(ServerName(destination))
            for state in states:
                target.queue.owe(state, None, forced=True)
            self._wake(target)

    # -- following the stream -------------------------------------------------

    async def _follow_stream(self) -> None:
        while True:
            entries, following = await self._stream.since(self._position, READ_BATCH)
            if not entries and following == self._position:
                with anyio.move_on_after(STREAM_WAIT_S):
                    await self._stream.wait(self._position)
                continue
            local = [entry for entry in entries if entry.is_local]
            if local:
                self._track_keepalive(local)
                try:
                    await self._route(local)
                except Exception:
                    # A routing source (a router module) or the store failed:
                    # keep the position and route these entries again later.
                    logger.exception("routing presence failed; retrying in %d ms", ROUTE_RETRY_MS)
                    await self._clock.sleep_ms(ROUTE_RETRY_MS)
                    continue
            self._position = following
            self._positions_moved.set()

    async def _route(self, entries: list[StreamEntry]) -> None:
        by_user: dict[UserId, list[StreamEntry]] = {}
        for entry in entries:
            by_user.setdefault(entry.user_id, []).append(entry)
        routes = await self._routing.destinations_for(list(by_user))
        for destination, user_ids in routes.items():
            if not self.owns(destination):
                continue
            target = await self._destination(destination)
            owed_any = False
            for user_id in user_ids:
                for entry in by_user.get(user_id, ()):
                    if entry.stream_id > target.acked_position:
                        target.queue.owe(entry.state, entry.stream_id)
                        owed_any = True
            if owed_any:
                self._wake(target)

    async def _destination(self, name: ServerName) -> _Destination:
        found = self._destinations.get(name)
        if found is not None:
            return found
        stored = await self._store.get_position(self.destination_position_name(name))
        # The await let others in: one of them may have created it meanwhile.
        found = self._destinations.get(name)
        if found is not None:
            return found
        created = _Destination(name, DestinationQueue(self._granularity_ms), stored, stored)
        self._destinations[name] = created
        return created

    def _destination_known(self, name: ServerName) -> _Destination:
        """The destination's state, created with no stored position if new (forced sends)."""
        found = self._destinations.get(name)
        if found is None:
            found = _Destination(name, DestinationQueue(self._granularity_ms), 0, 0)
            self._destinations[name] = found
        return found

    def _is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name)

    # -- one destination ------------------------------------------------------

    def _wake(self, target: _Destination) -> None:
        if target.running or self._tg is None:
            return
        target.running = True
        linger: _Linger | None = None
        if target.retry_at is None:
            now = self._clock.now_ms()
            linger = self._linger
            if linger is None or now - linger.opened_at > LINGER_JOIN_MS:
                linger = self._linger = _Linger(now, anyio.Event())
                linger.owned = True  # this destination's task keeps its time
        self._tg.start_soon(self._run_destination, target, linger, name=f"outbound {target.name}")

    async def _run_destination(self, target: _Destination, linger: _Linger | None) -> None:
        """Send until ``target`` owes nothing (then end: ``_wake`` starts it again)."""
        try:
            if linger is not None:
                await self._wait_linger(linger)
            while True:
                if target.retry_at is not None:
                    await self._clock.sleep_until(target.retry_at)
                    target.retry_at = None
                batch = target.queue.take(self._settings.max_pushes_per_transaction)
                if batch.suppressed:
                    self._metrics.pushes_suppressed.inc(batch.suppressed)
                if not batch.users:
                    if target.queue.idle:
                        self._note_acked(target)
                        return
                    continue
                await self._send(target, batch.users)
        finally:
            target.running = False

    async def _wait_linger(self, linger: _Linger) -> None:
        if linger.owned:
            linger.owned = False
            try:
                await self._clock.sleep_ms(self._settings.linger_ms)
            finally:
                if self._linger is linger:
                    self._linger = None
                linger.over.set()  # every destination that joined goes now, together
        else:
            await linger.over.wait()

    async def _send(self, target: _Destination, users: tuple[UserPresence, ...]) -> None:
        destination = target.name
        txn_id = "?"
        started = self._clock.monotonic()
        try:
            txn_id = await self._next_txn_id(target)
            body = self._bodies.body(self._clock.now_ms(), users)
            path = f"{target.txn_path}{target.txn_counter}"
            answer = await self._client.put_json(destination, path, body, timeouts=self._timeouts)
            if not isinstance(answer.get("pdus"), dict):
                raise DestinationError(
                    destination, f"200 is not a transaction answer: {str(answer)[:_SHOWN_CHARS]}"
                )
        except (UpstreamError, StoreError, TimeoutError) as exc:
            self._failed(target, txn_id, len(users), exc)
            return
        elapsed = self._clock.monotonic() - started
        target.queue.acknowledged()
        target.failures = 0
        self._metrics.transactions_sent.inc()
        self._metrics.pushes_sent.inc(len(users))
        self._metrics.send_seconds.observe(elapsed)
        self._note_acked(target)
        logger.debug(
            "sent txn %s to %s: %d pushes in %.1f ms",
            txn_id,
            destination,
            len(users),
            elapsed * 1000,
        )

    def _failed(self, target: _Destination, txn_id: str, pushes: int, exc: Exception) -> None:
        target.queue.failed()
        target.failures += 1
        status = exc.status if isinstance(exc, DestinationError) else None
        retry_after = exc.retry_after_ms if isinstance(exc, DestinationError) else None
        delay = retry_delay_ms(target.failures, self._settings, self._rng, retry_after)
        target.retry_at = self._clock.now_ms() + delay
        self._metrics.pushes_failed.inc(pushes)
        reason = str(exc) or type(exc).__name__
        if status in REJECTED_STATUSES:
            self._metrics.transactions_rejected.inc()
            logger.warning(
                "txn %s to %s rejected (HTTP %s): %s; retry in %d ms",
                txn_id,
                target.name,
                status,
                reason[:_SHOWN_CHARS],
                delay,
            )
        else:
            self._metrics.transactions_failed.inc()
            logger.info(
                "txn %s to %s failed (%d in a row): %s; retry in %d ms",
                txn_id,
                target.name,
                target.failures,
                reason[:_SHOWN_CHARS],
                delay,
            )

    async def _next_txn_id(self, target: _Destination) -> str:
        """The next txn id; ``target.txn_path`` + ``target.txn_counter`` is its path."""
        if target.txn_epoch is None:
            target.txn_epoch = await self._store.next_txn_id(target.name)
            stem = f"{self._settings.txn_id_prefix}{target.txn_epoch}_"
            # The counter is digits: quoting the stem once quotes every id.
            target.txn_path = f"/_matrix/federation/v1/send/{quote(stem, safe='')}"
        target.txn_counter += 1
        return f"{self._settings.txn_id_prefix}{target.txn_epoch}_{target.txn_counter}"

    def _note_acked(self, target: _Destination) -> None:
        oldest = target.queue.oldest_unacked()
        acked = self._position if oldest is None else oldest - 1
        if acked > target.acked_position:
            target.acked_position = acked
            self._positions_moved.set()

    # -- positions ------------------------------------------------------------

    def low_watermark(self) -> int:
        """Every change at or below this was acknowledged wherever it was routed."""
        low = self._position
        for target in self._destinations.values():
            oldest = target.queue.oldest_unacked()
            if oldest is not None and oldest - 1 < low:
                low = oldest - 1
        return low

    async def flush_positions(self) -> None:
        """Persist destinations' positions that moved, then the sender's own."""
        for target in list(self._destinations.values()):
            if target.queue.idle and not target.running:
                self._note_acked(target)
            acked = target.acked_position
            if acked > target.stored_position:
                await self._store.set_position(self.destination_position_name(target.name), acked)
                target.stored_position = max(target.stored_position, acked)
        low = self.low_watermark()
        if low > self._stored_position:
            await self._store.set_position(self.position_name, low)
            self._stored_position = low

    async def _flush_positions_periodically(self) -> None:
        """At most one flush per ``POSITION_FLUSH_MS``, and only after a position moved."""
        while True:
            with anyio.move_on_after(STREAM_WAIT_S):
                await self._positions_moved.wait()
            if not self._positions_moved.is_set():
                continue
            self._positions_moved = anyio.Event()
            await self._clock.sleep_ms(POSITION_FLUSH_MS)
            try:
                await self.flush_positions()
            except StoreError as exc:
                logger.warning("could not store outbound positions: %s", exc)

    # -- keep-alive -----------------------------------------------------------

    async def _seed_keepalive(self) -> None:
        """Track the present local users the store holds (once, at start)."""
        now = self._clock.now_ms()
        position = 0
        while True:
            entries, following = await self._stream.since(position, READ_BATCH)
            for entry in entries:
                if entry.is_local:
                    present = entry.state.state is not PresenceState.OFFLINE
                    self._keepalive.track(entry.user_id, present, now)
            if following == position or not entries:
                return
            position = following

    def _track_keepalive(self, entries: Iterable[StreamEntry]) -> None:
        """Changes read from the stream, about to be sent: re-sends follow them."""
        now = self._clock.now_ms()
        for entry in entries:
            if entry.state.state is PresenceState.OFFLINE:
                self._keepalive.track(entry.user_id, False, now)
            else:
                self._keepalive.sent(entry.user_id, now)
        earliest = self._keepalive.earliest()
        if (
            self._keepalive_scope is not None
            and earliest is not None
            and (self._keepalive_until is None or earliest < self._keepalive_until)
        ):
            self._keepalive_scope.cancel()

    async def _run_keepalive(self) -> None:
        interval = self._keepalive.interval_ms
        while True:
            earliest = self._keepalive.earliest()
            deadline = earliest if earliest is not None else self._clock.now_ms() + interval
            with anyio.CancelScope() as scope:
                self._keepalive_scope, self._keepalive_until = scope, deadline
                await self._clock.sleep_until(deadline)
            self._keepalive_scope = self._keepalive_until = None
            if scope.cancelled_caught:
                continue
            due = self._keepalive.due(self._clock.now_ms())
            try:
                await self._send_keepalives(due)
            except Exception:
                # One missed re-send; the next interval sends again.
                logger.exception("keep-alive routing failed for %d users", len(due))

    async def _send_keepalives(self, user_ids: list[UserId]) -> None:
        if not user_ids:
            return
        now = self._clock.now_ms()
        states: dict[UserId, UserPresence] = {}
        for user_id in user_ids:
            state = await self._current(user_id)
            if state is None or state.state is PresenceState.OFFLINE:
                self._keepalive.track(user_id, False, now)
            else:
                states[user_id] = state
        if not states:
            return
        routes: Mapping[ServerName, Collection[UserId]] = await self._routing.destinations_for(
            list(states)
        )
        for destination, routed in routes.items():
            if not self.owns(destination):
                continue
            target = await self._destination(destination)
            for user_id in routed:
                state = states.get(user_id)
                if state is not None:
                    target.queue.owe(state, None, forced=True)
            self._wake(target)
