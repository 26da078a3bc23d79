"""A SQLite store whose thread dies of a bug stops, and says so, instead of hanging.

Without this, every caller waited out its deadline and every later call did
the same: a worker answering 503 forever, with nothing to restart it. The
deadline here is an hour, so only the failure itself can answer the callers
in time (pytest-timeout ends a test that hangs).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus

from federation_presence.errors import StoreError
from federation_presence.store.sqlite import SqliteStore
from federation_presence.store.sqlite_writer import SqliteWriter
from federation_presence.worker import _running_store
from tests.contract.samples import notified, user

AN_HOUR_S = 3600.0


async def test_every_caller_gets_the_failure_and_run_raises_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def a_bug(*_: object) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(SqliteWriter, "run_writes", a_bug)
    store = SqliteStore(tmp_path / "dies.db", idle_fold_delay_s=None, apply_timeout_s=AN_HOUR_S)
    failures: list[BaseException] = []

    async def apply_twice() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            for outcome in (notified(user("@a:x")), notified(user("@b:x"))):
                try:
                    await store.apply(outcome)
                except StoreError as exc:
                    failures.append(exc)

    with pytest.raises(ExceptionGroup) as raised:
        await apply_twice()

    assert [str(f) for f in failures] == [
        "the store thread failed: a bug in the writer"
    ] * 2
    (stopped,) = raised.value.exceptions
    assert isinstance(stopped, StoreError)


class _DyingStore:
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        raise StoreError("the store thread failed: RuntimeError: a bug")


async def test_the_worker_stops_with_its_store_in_one_line() -> None:
    with pytest.raises(StoreError, match="the store thread failed"):
        async with _running_store(_DyingStore()):  # type: ignore[arg-type]
            await anyio.sleep_forever()
