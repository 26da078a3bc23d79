"""Inbound ``PUT /_matrix/federation/v1/send/{txnId}``: the shell.

The order of checks is the cost order, cheapest first, and every refusal is a
Matrix error with a 4xx status (never a 5xx for any input):

1. ``Authorization`` parses as X-Matrix (401);
2. the origin is allowed by policy (403) — before any key fetch, so a denied
   server costs us nothing;
3. the body is a JSON object (400 ``M_NOT_JSON``/``M_BAD_JSON``), canonical
   encodable (400);
4. ``destination`` is us and the signature verifies with the origin's key
   (401; the keyring checks both, and may fetch the key);
5. the origin is within its rate limit (429 with ``retry_after_ms``);
6. under the origin's lock (transactions of one origin apply in order, and a
   retry waits for the attempt it repeats): a known ``(origin, txnId)`` gets the
   answer it got the first time, changing nothing;
7. the envelope is valid (400/403) and each push is validated on its own
   (bad pushes dropped and counted);
8. the pushes go through the core and the store; the transaction's answer is
   recorded in the same database transaction, and only then is 200 sent.

A refused transaction (4xx) is not recorded: the spec has the sender retry
the same txnId, and a fixed request may then succeed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import orjson
from anyio.abc import TaskStatus

from federation_presence.clock import Clock
from federation_presence.errors import PeerError, StoreError
from federation_presence.federation.edu import ParsedTransaction, parse_transaction
from federation_presence.federation.keyring import Keyring
from federation_presence.federation.origin_policy import OriginPolicy, OriginRateLimiter
from federation_presence.federation.xmatrix import parse_authorization, signed_request_bytes
from federation_presence.ids import ServerName
from federation_presence.keeper import PresenceKeeper
from federation_presence.metrics import Metrics
from federation_presence.store.base import PRUNE_BATCH_ROWS, InboundTxn, Store

logger = logging.getLogger(__name__)

EMPTY_PDUS_RESPONSE = b'{"pdus":{}}'
MAX_TXN_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class InboundLimits:
    max_status_msg_length: int = 1024
    txn_retention_ms: int = 24 * 3_600_000


class _OriginLocks:
    """One lock per origin, kept for reuse; idle locks are dropped as the table grows.

    Creating a lock per request cost ~3% of a 1-push transaction, so locks
    stay in the table; whenever it has doubled since the last sweep (and is
    past ``SWEEP_FLOOR``), every lock nobody holds or waits for is dropped
    and the table rebuilt. So it follows what is live: at most twice the
    locks in use at the last sweep plus the floor, not every origin that
    ever sent; a sweep costs O(1) amortised per new lock. Past
    ``max_origins`` a sweep runs at every new origin.
    """

    SWEEP_FLOOR = 64

    def __init__(self, max_origins: int = 10_000) -> None:
        self._locks: dict[str, anyio.Lock] = {}
        self._max_origins = max_origins
        self._sweep_at = min(self.SWEEP_FLOOR, max_origins)

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, origin: str) -> AsyncIterator[None]:
        lock = self._locks.get(origin)
        if lock is None:
            if len(self._locks) >= self._sweep_at:
                self._drop_idle()
                self._sweep_at = min(max(self.SWEEP_FLOOR, 2 * len(self._locks)), self._max_origins)
            lock = self._locks[origin] = anyio.Lock()
        # Uncontended is the common case (a sender keeps one transaction in
        # flight); anyio's acquire() would yield to the loop even then.
        try:
            lock.acquire_nowait()
        except anyio.WouldBlock:
            await lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _drop_idle(self) -> None:
        self._locks = {
            origin: lock
            for origin, lock in self._locks.items()
            if lock.locked() or lock.statistics().tasks_waiting
        }


class InboundTransactions:
    """Receives ``/send`` transactions for ``server_name``."""

    def __init__(
        self,
        *,
        server_name: ServerName,
        keyring: Keyring,
        keeper: PresenceKeeper,
        store: Store,
        clock: Clock,
        policy: OriginPolicy,
        rate_limiter: OriginRateLimiter,
        metrics: Metrics,
        limits: InboundLimits = InboundLimits(),
    ) -> None:
        self._server_name = server_name
        self._keyring = keyring
        self._keeper = keeper
        self._store = store
        self._clock = clock
        self._policy = policy
        self._rate_limiter = rate_limiter
        self._metrics = metrics
        self._limits = limits
        self._locks = _OriginLocks()
        self._pruned_before_ts = 0
        self._pruned = anyio.Event()

    async def receive(
        self,
        *,
        txn_id: str,
        method: str,
        uri: str,
        authorization: list[str],
        body: bytes,
    ) -> bytes:
        """The 200 body for this transaction, or a ``PeerError``."""
        try:
            return await self._receive(txn_id, method, uri, authorization, body)
        except PeerError as error:
            self._metrics.rejections.labels(error.errcode).inc()
            raise

    async def _receive(
        self, txn_id: str, method: str, uri: str, authorization: list[str], body: bytes
    ) -> bytes:
        auth = parse_authorization(authorization)
        origin = auth.origin
        if not self._policy.allows(origin):
            raise PeerError(403, "M_FORBIDDEN", f"federation from {origin} is not allowed")
        if not txn_id or len(txn_id) > MAX_TXN_ID_LENGTH or not txn_id.isprintable():
            # isprintable(): no NUL or control characters reach the store.
            raise PeerError(400, "M_INVALID_PARAM", "bad transaction id")
        try:
            content = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PeerError(400, "M_NOT_JSON", f"body is not valid JSON: {exc}") from exc
        if not isinstance(content, dict):
            raise PeerError(400, "M_BAD_JSON", "transaction body must be a JSON object")
        signed = signed_request_bytes(method, uri, origin, self._server_name, content)
        await self._keyring.verify_request(auth, signed)
        wait_s = self._rate_limiter.check(origin, self._clock.monotonic())
        if wait_s > 0:
            raise PeerError(
                429,
                "M_LIMIT_EXCEEDED",
                "too many transactions",
                {"retry_after_ms": max(1, int(wait_s * 1000))},
            )
        async with self._locks.hold(origin):
            return await self._apply_once(origin, txn_id, content)

    async def _apply_once(
        self, origin: ServerName, txn_id: str, content: dict[str, object]
    ) -> bytes:
        # The store's negative filter answers a new txnId without a database
        # read; only a (possible) repeat reaches the database.
        answer = await self._store.get_txn_response(origin, txn_id)
        if answer is not None:
            self._metrics.transactions_repeated.inc()
            return answer
        parsed = parse_transaction(
            content, origin, max_status_msg_length=self._limits.max_status_msg_length
        )
        txn = InboundTxn(
            origin=origin,
            txn_id=txn_id,
            response=EMPTY_PDUS_RESPONSE,
            received_ts=self._clock.now_ms(),
        )
        outcome = await self._keeper.apply_remote(parsed.pushes, txn)
        self._count(parsed)
        if outcome.dropped:
            self._metrics.pushes_dropped.labels("own_server_user").inc(len(outcome.dropped))
        return EMPTY_PDUS_RESPONSE

    async def run_txn_pruning(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Forget stored answers older than the retention, periodically (a child task).

        Runs every 1/24 of the retention (at least once a minute apart), so a
        stored answer lives between 1 and 1 1/24 retentions.
        """
        interval_ms = max(self._limits.txn_retention_ms // 24, 60_000)
        task_status.started()
        while True:
            now = self._clock.now_ms()
            try:
                pruned = await self._prune_all(now - self._limits.txn_retention_ms)
            except StoreError:
                logger.exception("pruning old transaction answers failed; will retry")
            else:
                if pruned:
                    logger.info("pruned %d old transaction answers", pruned)
                self._pruned_before_ts = now - self._limits.txn_retention_ms
                event, self._pruned = self._pruned, anyio.Event()
                event.set()
            await self._clock.sleep_until(now + interval_ms)

    async def _prune_all(self, older_than_ts: int) -> int:
        """Prune in bounded batches, each its own short share of a group commit."""
        total = 0
        while True:
            pruned = await self._store.prune_txns(older_than_ts, PRUNE_BATCH_ROWS)
            total += pruned
            if pruned < PRUNE_BATCH_ROWS:
                return total

    async def wait_pruned(self, before_ts: int) -> None:
        """Return once answers received before ``before_ts`` have been pruned."""
        while self._pruned_before_ts < before_ts:
            await self._pruned.wait()

    def _count(self, parsed: ParsedTransaction) -> None:
        metrics = self._metrics
        metrics.transactions_applied.inc()
        if parsed.pushes:
            metrics.pushes_accepted.inc(len(parsed.pushes))
        if parsed.pdu_count:
            metrics.pdus_ignored.inc(parsed.pdu_count)
        for reason, count in parsed.dropped.items():
            metrics.pushes_dropped.labels(reason).inc(count)
        for edu_type, count in parsed.other_edus.items():
            metrics.other_edus.labels(edu_type).inc(count)
