"""The composition root: builds the parts from a ``Config`` and runs them.

``running_worker`` owns the root task group: the timer loop and one uvicorn
server per listener are its children, started with ``tg.start`` so that the
worker is ready (ports bound, state restored) when the context is entered.
Leaving the context cancels the group; each server shuts down shielded with
its own time limit, and the store flushes and closes last.

``run`` is the blocking entry point of ``federation-presence run``: the same
context, held until SIGINT or SIGTERM.

Every listening socket is bound first, before the store is opened: an address
in use is a ``ConfigError`` naming ``listeners[i].port`` (one line, exit 2),
not uvicorn's ``sys.exit`` inside a task. Each listener serves with
``TimedHttpProtocol`` (httptools, with header and body time limits).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import uvicorn
from anyio.abc import TaskStatus

from federation_presence.api.app import REFUSAL_LINES_PER_WINDOW, App, Router
from federation_presence.api.federation import ServerKeyResponse, add_federation_routes
from federation_presence.api.http_protocol import timed_protocol
from federation_presence.api.ops import add_ops_routes
from federation_presence.api.request_log import ThrottledLog, ThrottlingFilter
from federation_presence.api.tee import HomeserverForwarder, add_tee_route
from federation_presence.clock import Clock, SystemClock
from federation_presence.config import Config, ListenerConfig
from federation_presence.errors import ConfigError, StoreError
from federation_presence.federation.client import FederationClient
from federation_presence.federation.inbound import InboundLimits, InboundTransactions
from federation_presence.federation.ip_policy import IpPolicy
from federation_presence.federation.keyring import Keyring
from federation_presence.federation.origin_policy import OriginPolicy, OriginRateLimiter
from federation_presence.federation.outbound_http import OutboundHttp
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
LISTEN_BACKLOG = 2048


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
    # What each port serves, in the order of ``ports``: "http" or "https".
    schemes: list[str] = field(default_factory=list)
    stream: PresenceStream | None = None
    sender: OutboundSender | None = None
    local_users: LocalUsers | None = None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the worker owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_listeners(config: Config) -> list[tuple[ListenerConfig, socket.socket]]:
    """A listening socket per listener address; ``ConfigError`` if one cannot be bound."""
    bound: list[tuple[ListenerConfig, socket.socket]] = []
    try:
        for index, listener in enumerate(config.listeners):
            for host in listener.bind_addresses:
                try:
                    sock = _listening_socket(host, listener.port)
                except OSError as exc:
                    where = f"[{host}]" if ":" in host else host
                    raise ConfigError(
                        f"listeners[{index}].port",
                        f"cannot listen on {where}:{listener.port}: {_reason(exc)}",
                        config.source,
                    ) from None
                bound.append((listener, sock))
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return bound


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``, as asyncio's ``create_server`` makes one.

    The protocol is given as ``IPPROTO_TCP`` on purpose: asyncio sets
    ``TCP_NODELAY`` only on sockets that say so, and without it every answer
    written in two parts (headers, body) waits ~40 ms for a delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def _serve_listener(
    app: App,
    listener: ListenerConfig,
    sock: socket.socket,
    metrics: Metrics,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    config = uvicorn.Config(
        app,
        http=timed_protocol(
            header_timeout_s=listener.header_timeout_ms / 1000,
            body_timeout_s=listener.body_timeout_ms / 1000,
            metrics=metrics,
        ),
        ws="none",
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
    await server.startup(sockets=[sock])
    port: int = sock.getsockname()[1]
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
    forwarder: HomeserverForwarder | None = None,
) -> Router:
    router = Router()
    if "federation" in resources:
        add_federation_routes(router, inbound, keys)
        if forwarder is not None:
            add_tee_route(router, inbound, forwarder)
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
    request_log = ThrottledLog(
        logging.getLogger("federation_presence.api.app"),
        clock,
        lines_per_window=REFUSAL_LINES_PER_WINDOW,
    )
    store = open_store(config.database, txn_retention_ms=config.federation.txn_retention_ms)
    sockets = bind_listeners(config)
    ip_policy = IpPolicy(config.federation.ip_range_blacklist, config.federation.ip_range_whitelist)
    async with _listening(sockets, request_log), _running_store(store):
        async with (
            OutboundHttp(
                verify_certificates=config.federation.verify_certificates,
                ca_bundle=config.federation.ca_bundle,
                transport=transport,
                ip_policy=ip_policy,
            ) as http,
            ServerResolver(clock, http=http) as resolver,
            FederationClient(
                server_name,
                signing_key,
                resolver,
                clock,
                timeout_ms=config.federation.request_timeout_ms,
                http=http,
            ) as client,
            # Local users' side: the delegated whoami checks (auth.py).
            httpx.AsyncClient(transport=transport, verify=_whoami_verify(config)) as client_http,
            _beside_forwarder(config) as forwarder,
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
                fetch_timeout_ms=config.federation.key_fetch_timeout_ms,
                fetch_concurrency=config.federation.key_fetch_concurrency,
                contended_fetch_timeout_ms=config.federation.key_fetch_contended_timeout_ms,
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
                await tg.start(request_log.run_flush)
                apps: dict[int, App] = {}
                for listener, sock in sockets:
                    app = apps.get(id(listener))
                    if app is None:
                        app = apps[id(listener)] = App(
                            build_router(
                                config,
                                inbound,
                                keys,
                                keeper,
                                metrics,
                                clock,
                                listener.resources,
                                local_users,
                                forwarder,
                            ),
                            max_body_bytes=config.federation.max_request_body_bytes,
                            metrics=metrics,
                            request_log=request_log,
                        )
                    port = await tg.start(_serve_listener, app, listener, sock, metrics)
                    worker.ports.append(port)
                    worker.schemes.append("https" if listener.tls_certificate_path else "http")
                try:
                    yield worker
                finally:
                    # Long-polls answer now, while the store is open.
                    local_users.wakeups.close()
                    tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _beside_forwarder(config: Config) -> AsyncIterator[HomeserverForwarder | None]:
    """The ``/send`` tee's client to the homeserver, when running beside one."""
    if config.beside is None:
        yield None
        return
    ca_bundle = config.beside.ca_bundle
    async with HomeserverForwarder(
        config.beside.homeserver_url,
        timeout_ms=config.beside.forward_timeout_ms,
        ca_bundle=str(ca_bundle) if ca_bundle is not None else None,
    ) as forwarder:
        yield forwarder


@contextlib.asynccontextmanager
async def _running_store(store: Store) -> AsyncIterator[None]:
    """``store.run`` as the child of a task group that outlives every other part.

    The servers shut down first (shielded, in-flight requests finish and
    write); then this group is cancelled and the store writes what is queued
    and closes (``Store.run``). An error of the body leaves as itself, not
    wrapped in an ``ExceptionGroup``, so ``run`` can still report a port in
    use or a TLS mistake in one line; so does a ``StoreError`` the store
    stops on by itself (``SqliteStore.run``: its thread died), which stops
    the worker (exit 1, one line) rather than leave it answering 503.
    """
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            try:
                yield
            except Exception as exc:
                failure = exc
            finally:
                tg.cancel_scope.cancel()
    except ExceptionGroup as group:
        # the store stopped on its own (its thread died): the worker stops with it
        stopped, rest = group.split(StoreError)
        if rest is None and stopped is not None:
            raise stopped.exceptions[0] from None
        raise
    if failure is not None:
        raise failure


@contextlib.asynccontextmanager
async def _listening(
    sockets: list[tuple[ListenerConfig, socket.socket]], request_log: ThrottledLog
) -> AsyncIterator[None]:
    """Own the bound listener sockets and uvicorn's log throttle until the worker stops."""
    # uvicorn warns once per malformed request: a flood must not fill the disk.
    uvicorn_filter = ThrottlingFilter(request_log, "uvicorn")
    logging.getLogger("uvicorn.error").addFilter(uvicorn_filter)
    try:
        yield
    finally:
        logging.getLogger("uvicorn.error").removeFilter(uvicorn_filter)
        _close_all(sockets)


def _reason(exc: OSError) -> str:
    """The OS's (or the resolver's) words for ``exc``."""
    return exc.strerror or str(exc)


def _close_all(sockets: list[tuple[ListenerConfig, socket.socket]]) -> None:
    for _, sock in sockets:
        sock.close()


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
                for port, scheme in zip(worker.ports, worker.schemes, strict=True):
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
