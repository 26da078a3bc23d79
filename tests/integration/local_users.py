"""A worker with local users on a ``FakeClock``, and an HTTPS client per token."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup

from federation_presence.clock import SystemClock
from federation_presence.config import AccessTokenConfig
from federation_presence.worker import RunningWorker, running_worker
from tests.fakes import FakeClock, wait_all_tasks_blocked
from tests.integration.conftest import ADMIN_TOKEN, WORKER_NAME, worker_client, worker_config
from tests.integration.tls_peer import TlsCertificates

ALICE = f"@alice:{WORKER_NAME}"
BOB = f"@bob:{WORKER_NAME}"
CAROL = f"@carol:{WORKER_NAME}"
GOBBLER = f"@gobbler:{WORKER_NAME}"

TOKENS = (
    AccessTokenConfig("alice-a", ALICE, "A"),
    AccessTokenConfig("alice-b", ALICE, "B"),
    AccessTokenConfig("bob", BOB, "BOB1"),
    AccessTokenConfig("carol", CAROL, "CAROL1"),
    AccessTokenConfig("gobbler", GOBBLER, "G1"),
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)


@dataclasses.dataclass
class LocalWorker:
    worker: RunningWorker
    http: httpx.AsyncClient
    clock: FakeClock

    async def put_status(self, token: str, user_id: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.put(
            f"/_matrix/client/v3/presence/{user_id}/status", json=body, headers=bearer(token)
        )

    async def get_status(self, token: str, user_id: str) -> httpx.Response:
        return await self.http.get(
            f"/_matrix/client/v3/presence/{user_id}/status", headers=bearer(token)
        )

    async def state_of(self, user_id: str) -> str:
        response = await self.http.get(
            f"/_matrix/client/v3/presence/{user_id}/status", headers=ADMIN
        )
        assert response.status_code == 200, response.text
        return str(response.json()["presence"])

    async def sync(self, token: str, **params: str) -> httpx.Response:
        return await self.http.get("/_matrix/client/v3/sync", params=params, headers=bearer(token))

    async def set_room(self, room_id: str, members: list[str]) -> None:
        response = await self.http.put(
            f"/_presence/admin/v1/rooms/{room_id}", json={"members": members}, headers=ADMIN
        )
        assert response.status_code == 200, response.text

    async def waiting(self, count: int) -> None:
        """Return once ``count`` /sync long-polls are registered and waiting."""
        wakeups = self.worker.local_users.wakeups  # type: ignore[union-attr]
        with anyio.fail_after(10):
            while wakeups.waiting_count < count:
                await wait_all_tasks_blocked()


@contextlib.asynccontextmanager
async def local_worker(
    tmp_path: Path, certificates: TlsCertificates, **changes: Any
) -> AsyncIterator[LocalWorker]:
    config = dataclasses.replace(
        worker_config(tmp_path, certificates), access_tokens=TOKENS, **changes
    )
    clock = FakeClock(start_ms=SystemClock().now_ms())
    async with (
        running_worker(config, clock=clock) as worker,
        worker_client(worker, certificates) as http,
    ):
        yield LocalWorker(worker, http, clock)


@dataclasses.dataclass
class Pending:
    """A request running in the background (a long-poll); its answer once it came."""

    answered: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    response: httpx.Response | None = None

    async def answer(self) -> httpx.Response:
        """The response, waiting for it at most 10 s."""
        with anyio.fail_after(10):
            await self.answered.wait()
        assert self.response is not None
        return self.response


def in_background(tg: TaskGroup, request: Callable[[], Awaitable[httpx.Response]]) -> Pending:
    """Start ``request()`` in ``tg``; its answer arrives in the returned ``Pending``."""
    pending = Pending()

    async def run() -> None:
        pending.response = await request()
        pending.answered.set()

    tg.start_soon(run)
    return pending
