"""Fixtures of the Store contract suite: one suite, every database.

``store_backend`` is parametrised the way anyio parametrises ``anyio_backend``:
every test that asks for ``store`` (or ``database``) runs once on SQLite (a
file under ``tmp_path``) and once on PostgreSQL (a fresh schema in the
``test`` database, dropped afterwards, so runs of several engineers can share
the server). PostgreSQL unreachable is a failure with a clear message, never
a skip.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from federation_presence.store.postgres import PostgresStore
from federation_presence.store.sqlite import SqliteStore

POSTGRES_DSN = os.environ.get("FP_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

AnyStore = SqliteStore | PostgresStore


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True, slots=True)
class Database:
    """Where a test's stores live; ``store()`` gives a new store on it."""

    backend: str
    path: Path | None = None
    schema: str | None = None

    def store(self, *, txn_filter_capacity: int | None = None) -> AnyStore:
        """A new store on this database (``txn_filter_capacity``: None keeps the default)."""
        options = (
            {} if txn_filter_capacity is None else {"txn_filter_capacity": txn_filter_capacity}
        )
        if self.path is not None:
            return SqliteStore(self.path, **options)
        return PostgresStore(POSTGRES_DSN, schema=self.schema, **options)

    async def opened_store(self, *, txn_filter_capacity: int | None = None) -> AnyStore:
        store = self.store(txn_filter_capacity=txn_filter_capacity)
        await store.open()
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
        yield Database("sqlite", path=tmp_path / "presence.db")
        return
    schema = f"fp_contract_{uuid.uuid4().hex[:16]}"
    admin = await _postgres_connection()
    try:
        yield Database("postgres", schema=schema)
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
