"""Fixtures of the Store contract suite: one suite, every database.

``store_backend`` is parametrised the way anyio parametrises ``anyio_backend``:
every test that asks for ``store`` (or ``database``) runs once on SQLite (a
file under ``tmp_path``) and once on PostgreSQL (a fresh schema in the
``test`` database, dropped afterwards, so runs of several engineers can share
the server). PostgreSQL unreachable is a failure with a clear message, never
a skip.

Stores run the way the worker runs them: ``store.run`` is a child of a task
group the ``database`` fixture owns (``Database.opened_store``); a test that
does not close a store has it closed when that group is cancelled.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from anyio.abc import TaskGroup

from federation_presence.store.postgres import PostgresStore
from federation_presence.store.sqlite import SqliteStore
from tests.blocking import blocking_calls_refused

POSTGRES_DSN = os.environ.get("FP_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

AnyStore = SqliteStore | PostgresStore


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[None]:
    """Every test here runs under the blocking-call detector (``tests/blocking.py``)."""
    with blocking_calls_refused():
        yield


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True, slots=True)
class Database:
    """Where a test's stores live; ``store()`` gives a new store on it."""

    backend: str
    task_group: TaskGroup
    path: Path | None = None
    schema: str | None = None

    def store(self, **options: Any) -> AnyStore:
        """A new store on this database; ``options`` go to both stores' constructors."""
        if self.path is not None:
            return SqliteStore(self.path, **options)
        return PostgresStore(POSTGRES_DSN, schema=self.schema, **options)

    async def opened_store(self, **options: Any) -> AnyStore:
        """A new store, running as a child of this database's task group."""
        store = self.store(**options)
        await self.task_group.start(store.run)
        return store

    async def execute(self, sql: str) -> None:
        """Run ``sql`` behind the stores' back (to fake another program's writes)."""
        if self.path is not None:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute(sql)
            finally:
                conn.close()
            return
        conn = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": self.schema})
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def write_lock_held(self) -> AsyncIterator[None]:
        """Another connection holds the write lock of every table (SQLite: of
        the file) until the block ends: the stores' writes stall, reads go on."""
        if self.path is not None:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield
                conn.execute("ROLLBACK")
            finally:
                conn.close()
            return
        pg = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": self.schema})
        try:
            async with pg.transaction():
                await pg.execute(
                    "LOCK TABLE user_presence, device_presence, inbound_txns, server_keys,"
                    " stream_positions, destination_txn_ids IN EXCLUSIVE MODE"
                )
                yield
        finally:
            await pg.close()

    def location(self) -> str:
        """The argument ``child_writer.py`` takes to find this database."""
        return str(self.path) if self.path is not None else str(self.schema)


async def _postgres_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_DSN}: {exc!r}. The postgres contract "
            "tests need it (trust auth, user postgres, database test); start it, or set "
            "FP_TEST_POSTGRES_DSN.",
            pytrace=False,
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
async def database(store_backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    if store_backend == "sqlite":
        async with anyio.create_task_group() as tg:
            yield Database("sqlite", tg, path=tmp_path / "presence.db")
            tg.cancel_scope.cancel()
        return
    schema = f"fp_contract_{uuid.uuid4().hex[:16]}"
    admin = await _postgres_connection()
    try:
        async with anyio.create_task_group() as tg:
            yield Database("postgres", tg, schema=schema)
            tg.cancel_scope.cancel()
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def postgres_database() -> AsyncIterator[Database]:
    """A ``Database`` on PostgreSQL only, for what only PostgreSQL can show."""
    schema = f"fp_contract_{uuid.uuid4().hex[:16]}"
    admin = await _postgres_connection()
    try:
        async with anyio.create_task_group() as tg:
            yield Database("postgres", tg, schema=schema)
            tg.cancel_scope.cancel()
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def store(database: Database) -> AsyncIterator[AnyStore]:
    opened = await database.opened_store()
    try:
        yield opened
    finally:
        await opened.close()
