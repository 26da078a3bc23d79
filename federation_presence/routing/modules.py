"""Presence router modules: loading one, and calling it safely.

A router module is a class with Synapse's presence router interface
(``parse_config(dict)`` static, ``__init__(config, module_api)``, ``async
get_users_for_states(states) -> {user_id: set(state)}``, ``async
get_interested_users(user_id) -> set | ALL_USERS``), named by dotted path in
the config (``presence_router.module``). ``load_router`` imports and builds it
at startup; any failure there is a ``ConfigError`` naming the key, so a worker
never starts with a router it cannot use.

``GuardedRouter`` is the only caller of the module afterwards. A module is
third-party code: each call runs under a time limit measured on the worker's
``Clock`` (``router_timeout``), and a call that raises, returns something
malformed or runs out of time is logged and counts as "no extra routing"
(rooms still route). So a broken router degrades routing and never takes the
worker down nor blocks ``/send``: nothing on the ingest path awaits it
(``/sync`` wakeups and the sender do, under this limit). A module that blocks
the event loop without awaiting cannot be cut short by anything in-process;
that is documented, not handled.

``get_interested_users`` answers are cached per user for
``INTEREST_CACHE_TTL_MS`` (bounded, oldest out): ``/sync`` and visibility
checks ask it on every request.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from federation_presence.clock import Clock
from federation_presence.config import DEFAULT_ROUTER_TIMEOUT_MS, PresenceRouterConfig
from federation_presence.errors import ConfigError
from federation_presence.ids import UserId, parse_user_id
from federation_presence.presence.model import UserPresence
from federation_presence.routing.synapse_compat import ModuleApi, PresenceRouter, UserPresenceState

logger = logging.getLogger(__name__)

ROUTER_TIMEOUT_MS = DEFAULT_ROUTER_TIMEOUT_MS  # `presence_router.timeout` unless configured
INTEREST_CACHE_TTL_MS = 60_000
INTEREST_CACHE_ENTRIES = 100_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Interest:
    """Whom a user is interested in beyond shared rooms: everyone, or ``users``."""

    all_users: bool
    users: frozenset[UserId]


NO_INTEREST = Interest(False, frozenset())
ALL_INTEREST = Interest(True, frozenset())


def router_class(
    config: PresenceRouterConfig, source: str | None = None
) -> tuple[type[Any], object]:
    """Import ``config.module`` (``package.module.Class``) and parse its config:
    the class and its parsed config, or a ``ConfigError`` naming the key.

    What ``check-config`` checks, without building the router (that needs the
    running worker's module API).
    """
    key = "presence_router.module"
    module_name, _, class_name = config.module.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(key, f"cannot import {module_name!r}: {exc!r}", source) from exc
    found = getattr(module, class_name, None)
    if not isinstance(found, type):
        raise ConfigError(key, f"{module_name!r} has no class {class_name!r}", source)
    cls: Any = found  # a module's class: its methods are checked below
    for method in ("parse_config", "get_users_for_states", "get_interested_users"):
        if not callable(getattr(cls, method, None)):
            raise ConfigError(key, f"{config.module} has no method {method}", source)
    try:
        parsed = cls.parse_config(dict(config.config))
    except Exception as exc:
        problem = f"the router refused it: {exc!r}"
        raise ConfigError("presence_router.config", problem, source) from exc
    return cls, parsed


def load_router(
    config: PresenceRouterConfig, module_api: ModuleApi, source: str | None = None
) -> object:
    """Import ``config.module``, parse its config, build it."""
    cls, parsed = router_class(config, source)
    try:
        router: object = cls(parsed, module_api)
    except Exception as exc:
        problem = f"the router refused it: {exc!r}"
        raise ConfigError("presence_router.config", problem, source) from exc
    return router


class GuardedRouter:
    """Calls a router module under a time limit; failures are logged, never raised."""

    def __init__(self, module: Any, clock: Clock, *, timeout_ms: int = ROUTER_TIMEOUT_MS) -> None:
        self._module = module
        self._clock = clock
        self._timeout_ms = timeout_ms
        self._interest: OrderedDict[UserId, tuple[Interest, int]] = OrderedDict()
        self.failures = 0

    async def users_for_states(self, states: Sequence[UserPresence]) -> dict[UserId, set[UserId]]:
        """``{recipient: {user whose state it gets}}`` as the module routes ``states``."""
        if not states:
            return {}
        by_value = {UserPresenceState.of(state): state.user_id for state in states}
        answer = await self._call(
            "get_users_for_states", lambda: self._module.get_users_for_states(list(by_value))
        )
        if answer is None:
            return {}
        if not isinstance(answer, Mapping):
            return self._malformed("get_users_for_states", answer, {})
        routed: dict[UserId, set[UserId]] = {}
        for recipient, values in answer.items():
            parsed = parse_user_id(recipient) if isinstance(recipient, str) else None
            if parsed is None:
                return self._malformed("get_users_for_states", answer, {})
            try:
                users = {by_value[value] for value in values if value in by_value}
            except TypeError:
                return self._malformed("get_users_for_states", answer, {})
            if users:
                routed[parsed[0]] = users
        return routed

    async def interested_users(self, user_id: UserId) -> Interest:
        """Whom the module says ``user_id`` is interested in (cached)."""
        now = self._clock.now_ms()
        cached = self._interest.get(user_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        answer = await self._call(
            "get_interested_users", lambda: self._module.get_interested_users(user_id)
        )
        interest = self._interest_from(answer)
        if answer is not None:
            # Only a real answer is cached: a failed call is asked again.
            self._interest[user_id] = (interest, self._clock.now_ms() + INTEREST_CACHE_TTL_MS)
            self._interest.move_to_end(user_id)
            while len(self._interest) > INTEREST_CACHE_ENTRIES:
                self._interest.popitem(last=False)
        return interest

    def _interest_from(self, answer: object) -> Interest:
        if answer is None:
            return NO_INTEREST
        if isinstance(answer, str) and answer == PresenceRouter.ALL_USERS:
            return ALL_INTEREST
        if not isinstance(answer, set | frozenset | list | tuple):
            return self._malformed("get_interested_users", answer, NO_INTEREST)
        users = frozenset(
            parsed[0]
            for user in answer
            if isinstance(user, str) and (parsed := parse_user_id(user)) is not None
        )
        return Interest(False, users)

    async def _call(self, name: str, call: Callable[[], Any]) -> Any:
        result: Any = None
        done = False
        try:
            async with anyio.create_task_group() as tg:

                async def watchdog() -> None:
                    await self._clock.sleep_ms(self._timeout_ms)
                    tg.cancel_scope.cancel()

                tg.start_soon(watchdog)
                try:
                    result = call()
                    if inspect.isawaitable(result):
                        result = await result
                    done = True
                finally:
                    tg.cancel_scope.cancel()
        except Exception:
            self.failures += 1
            logger.exception("presence router %s raised; routing by rooms only", name)
            return None
        if not done:
            self.failures += 1
            logger.error(
                "presence router %s took longer than %d ms; routing by rooms only",
                name,
                self._timeout_ms,
            )
            return None
        return result

    def _malformed(self, name: str, answer: object, default: T) -> T:
        self.failures += 1
        logger.error("presence router %s returned a malformed answer: %.200r", name, answer)
        return default
