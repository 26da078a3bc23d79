"""Presence router modules that misbehave, for the worker to survive."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio


class RaisingRouter:
    """Raises from every method."""

    calls = 0

    def __init__(self, config: Any, module_api: Any) -> None:
        self.config = config

    @staticmethod
    def parse_config(config_dict: dict[str, Any]) -> dict[str, Any]:
        return config_dict

    async def get_users_for_states(self, state_updates: Iterable[Any]) -> dict[str, set[Any]]:
        RaisingRouter.calls += 1
        raise RuntimeError("router bug")

    async def get_interested_users(self, user_id: str) -> set[str]:
        RaisingRouter.calls += 1
        raise RuntimeError("router bug")


class HangingRouter:
    """Never answers; ``entered`` is set once a call is hanging."""

    entered: anyio.Event | None = None

    def __init__(self, config: Any, module_api: Any) -> None:
        self.config = config

    @staticmethod
    def parse_config(config_dict: dict[str, Any]) -> dict[str, Any]:
        return config_dict

    async def _hang(self) -> None:
        if HangingRouter.entered is not None:
            HangingRouter.entered.set()
        await anyio.sleep_forever()

    async def get_users_for_states(self, state_updates: Iterable[Any]) -> dict[str, set[Any]]:
        await self._hang()
        return {}

    async def get_interested_users(self, user_id: str) -> set[str]:
        await self._hang()
        return set()
