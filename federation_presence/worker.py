"""The composition root: builds the parts from a ``Config`` and runs them.

``running_worker`` owns the root task group: the timer loop and one uvicorn
server per listener are its children, started with ``tg.start`` so that the
worker is ready (ports bound, state restored) when the context is entered.
Leaving the context cancels the group; each server shuts down shielded with
its own time limit, and the store flushes and closes last.

``run`` is the blocking entry point of ``federation-presence run``: the same
context, held until SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import signal
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import uvicorn
from anyio.abc import TaskStatus

from federation_presence.api.app import App, Router
from federation_presence.api.federation import ServerKeyResponse, add_federation_routes
from federation_presence.api.ops import add_ops_routes
from federation_presence.clock import Clock, SystemClock
from federation_presence.config import Config, ListenerConfig
from federation_presence.federation.client import FederationClient
from federation_presence.federation.inbound import InboundLimits, InboundTransactions
from federation_presence.federation.ip_policy import IpPolicy
from federation_presence.federation.keyring import Keyring
from federation_presence.federation.origin_policy import OriginPolicy, OriginRateLimiter
from federation_presence.federation.resolver import ServerResolver
from federation_presence.federation.signing_keys import load_or_generate_signing_key
from federation_presence.ids import ServerName
from federation_presence.keeper import PresenceKeeper
from federation_presence.local_users import LocalUsers, add_local_user_routes, build_local_users
from federation_presence.metrics import Metrics
from federation_presence.outbound.metrics import SenderMetrics
from federation_presence.outbound.routing import DestinationSource
from federation_presence.outbound.sender import OutboundSender
from federation_presence.presence.machine import PresenceMachine
from federation_presence.store import open_store
from federation_presence.store.base import Store
from federation_presence.stream import PresenceStream

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0


@dataclass
class RunningWorker:
    """What a started worker exposes (to the CLI and to tests)."""

    config: Config
    server_name: ServerName
    store: Store
    keeper: PresenceKeeper
    inbound: InboundTransactions
    metrics: Metrics
    ports: list[int] = field(default_factory=list)
    stream: PresenceStream | None = None
    sender: OutboundSender | None = None
    local_users: LocalUsers | None = None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the worker owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_listener(
    app: App,
    listener: ListenerConfig,
    host: str,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=listener.port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        # Origins are authenticated by X-Matrix, not by address: no need to
        # trust (or parse) X-Forwarded-* headers on every request.
        proxy_headers=False,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
        ssl_certfile=str(listener.tls_certificate_path) if listener.tls_certificate_path else None,
        ssl_keyfile=str(listener.tls_private_key_path) if listener.tls_private_key_path else None,
    )
    server = _Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    if server.should_exit:
        raise OSError(f"could not listen on {host}:{listener.port}")
    port: int = server.servers[0].sockets[0].getsockname()[1]
    task_status.started(port)
    try:
        await server.main_loop()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE_S):
            await server.shutdown()


def build_router(
    config: Config,
    inbound: InboundTransactions,
    keys: ServerKeyResponse,
    keeper: PresenceKeeper,
    metrics: Metrics,
    clock: Clock,
    resources: frozenset[str],
    local_users: LocalUsers,
) -> Router:
    router = Router()
    if "federation" in resources:
        add_federation_routes(router, inbound, keys)
    add_local_user_routes(router, config, local_users, keeper, clock, resources)
    if "ops" in resources:
        add_ops_routes(router, metrics)
    return router


@contextlib.asynccontextmanager
async def running_worker(
    config: Config,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    destinations: DestinationSource | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[RunningWorker]:
    """Start every part of a worker; yield once it is serving.

    ``destinations``: who gets local users' presence (the routing seam; none
    by default). ``rng``: the sender's jitter and keep-alive phases.
    """
    clock = clock or SystemClock()
    server_name = ServerName(config.server_name)
    signing_key = load_or_generate_signing_key(config.signing_key_path)
    metrics = Metrics()
    ip_policy = IpPolicy(config.federation.ip_range_blacklist, config.federation.ip_range_whitelist)
    store = open_store(config.database)
    await store.open()
    try:
        async with (
            ServerResolver(
                clock,
                verify_certificates=config.federation.verify_certificates,
                ca_bundle=config.federation.ca_bundle,
                transport=transport,
                ip_policy=ip_policy,
            ) as resolver,
            FederationClient(
                server_name,
                signing_key,
                resolver,
                clock,
                verify_certificates=config.federation.verify_certificates,
                ca_bundle=config.federation.ca_bundle,
                timeout_ms=config.federation.request_timeout_ms,
                transport=transport,
                ip_policy=ip_policy,
            ) as client,
            # Local users' side: the delegated whoami checks (auth.py).
            httpx.AsyncClient(transport=transport, verify=_whoami_verify(config)) as client_http,
        ):
            keyring = Keyring(
                fetcher=client,
                cache=store,
                clock=clock,
                own_server_name=server_name,
                trusted_key_servers=[
                    (t.server_name, dict(t.verify_keys))
                    for t in config.federation.trusted_key_servers
                ],
            )
            machine = PresenceMachine(server_name, config.presence)
            stream = PresenceStream(store, machine.is_local)
            await stream.open()
            keeper = PresenceKeeper(machine, store, clock, metrics, stream=stream)
            await keeper.restore()
            inbound = InboundTransactions(
                server_name=server_name,
                keyring=keyring,
                keeper=keeper,
                store=store,
                clock=clock,
                policy=OriginPolicy(
                    config.federation.allow_origins, config.federation.deny_origins
                ),
                rate_limiter=OriginRateLimiter(
                    config.federation.rate_limit_per_second, config.federation.rate_limit_burst
                ),
                metrics=metrics,
                limits=InboundLimits(
                    max_status_msg_length=config.federation.max_status_msg_length,
                    txn_retention_ms=config.federation.txn_retention_ms,
                ),
            )
            keys = ServerKeyResponse(
                server_name, signing_key, clock, config.key_valid_for_ms, config.old_signing_keys
            )
            local_users = await build_local_users(config, store, keeper, stream, clock, client_http)
            worker = RunningWorker(config, server_name, store, keeper, inbound, metrics)
            worker.local_users = local_users
            worker.stream = stream
            if config.federation_sender.enabled:
                worker.sender = OutboundSender(
                    server_name=server_name,
                    stream=stream,
                    store=store,
                    client=client,
                    destinations=destinations if destinations is not None else local_users.routing,
                    current=keeper.get,
                    clock=clock,
                    settings=config.federation_sender,
                    presence=config.presence,
                    rng=rng if rng is not None else random.Random(),
                    metrics=SenderMetrics(metrics.registry),
                )
                # The router's send_local_online_presence_to, for remote users.
                local_users.resend.send_current_presence = worker.sender.send_current_presence
            async with anyio.create_task_group() as tg:
                await tg.start(keeper.run_timers)
                await tg.start(local_users.wakeups.run)
                if worker.sender is not None:
                    await tg.start(worker.sender.run)
                await tg.start(inbound.run_txn_pruning)
                for listener in config.listeners:
                    app = App(
                        build_router(
                            config,
                            inbound,
                            keys,
                            keeper,
                            metrics,
                            clock,
                            listener.resources,
                            local_users,
                        ),
                        max_body_bytes=config.federation.max_request_body_bytes,
                    )
                    for host in listener.bind_addresses:
                        worker.ports.append(await tg.start(_serve_listener, app, listener, host))
                try:
                    yield worker
                finally:
                    # Long-polls answer now, while the store is open.
                    local_users.wakeups.close()
                    tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


# Garbage-collector policy of the serving process (not of tests). The worker
# holds every known user's state in memory (long-lived, acyclic objects) and
# allocates thousands of short-lived objects per transaction; CPython's default
# thresholds (700, 10, 10) then rescan the whole heap often. Measured with
# bench/bench_ingest.py (1 EDU x 50 pushes, 64 origins, one core): default
# 598 txn/s, gc disabled 969 txn/s, these thresholds 1,148 txn/s. Garbage
# cycles are still collected, just in larger, rarer passes.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Freeze what startup allocated and collect the rest less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(config: Config) -> int:
    """Serve until SIGINT/SIGTERM; the exit code of ``federation-presence run``."""

    async def serve_until_signalled() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with running_worker(config) as worker:
                tune_gc()
                scheme = "https" if _any_tls(config) else "http"
                for port in worker.ports:
                    logger.info(
                        "federation-presence for %s serving %s on port %d",
                        worker.server_name,
                        scheme,
                        port,
                    )
                async for signum in signals:
                    logger.info("received %s, shutting down", signal.Signals(signum).name)
                    break

    try:
        anyio.run(serve_until_signalled, backend="asyncio", backend_options={"use_uvloop": True})
    except ssl.SSLError as exc:
        logger.error("TLS setup failed: %s", exc)
        return 1
    except OSError as exc:
        logger.error("could not start: %s", exc)
        return 1
    return 0


def _whoami_verify(config: Config) -> ssl.SSLContext | bool:
    """TLS verification of delegated-auth calls: as for federation (``ca_bundle`` added)."""
    if not config.federation.verify_certificates:
        return False
    if config.federation.ca_bundle is None:
        return True
    return ssl.create_default_context(cafile=str(config.federation.ca_bundle))


def _any_tls(config: Config) -> bool:
    return any(listener.tls_certificate_path for listener in config.listeners)
