"""``open_store`` and the migration files: choosing and preparing a database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from federation_presence.config import parse_config
from federation_presence.errors import ConfigError
from federation_presence.store import open_store
from federation_presence.store.base import DEFAULT_APPLY_TIMEOUT_S
from federation_presence.store.postgres import PostgresStore, redact_dsn
from federation_presence.store.schema import load_migrations
from federation_presence.store.sqlite import SqliteStore
from federation_presence.store.txn_filter import DEFAULT_CAPACITY
from tests.contract.conftest import Database


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    path: Path = Path("presence.db")
    dsn: str | None = None
    synchronous: str = "full"
    apply_timeout_ms: int = 10_000
    txn_filter_capacity: int = 10_000_000
    cp_min: int | None = None
    cp_max: int | None = None


def test_sqlite3_config_gives_a_sqlite_store_with_its_synchronous_mode() -> None:
    store = open_store(DatabaseConfig("sqlite3", Path("/tmp/x.db"), synchronous="normal"))
    assert isinstance(store, SqliteStore)
    assert store.path == Path("/tmp/x.db")
    assert store.synchronous == "normal"


@pytest.mark.parametrize(
    ("cp_min", "cp_max", "bounds"),
    [
        (None, None, (1, 4)),
        (2, 10, (2, 10)),
        (None, 10, (1, 10)),
        (6, None, (6, 6)),  # a cp_min alone raises the default size to it
    ],
)
def test_synapse_pool_bounds_size_the_postgres_read_pool(
    cp_min: int | None, cp_max: int | None, bounds: tuple[int, int]
) -> None:
    store = open_store(
        DatabaseConfig("postgres", dsn="postgresql://u@db/presence", cp_min=cp_min, cp_max=cp_max)
    )
    assert isinstance(store, PostgresStore)
    assert (store.pool_min, store.pool_size) == bounds


def test_postgres_config_gives_a_postgres_store_on_its_dsn() -> None:
    store = open_store(DatabaseConfig("postgres", dsn="postgresql://u@db/presence"))
    assert isinstance(store, PostgresStore)
    assert store.dsn == "postgresql://u@db/presence"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (DatabaseConfig("postgres"), "database.dsn"),
        (DatabaseConfig("mysql"), "database.name"),
        (DatabaseConfig("sqlite3", synchronous="off"), "database.synchronous"),
    ],
)
def test_a_config_that_names_no_usable_database_is_a_config_error(
    config: DatabaseConfig, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(config)
    assert caught.value.key == key


def test_the_database_store_keys_reach_either_store() -> None:
    for section in (
        {"name": "sqlite3", "apply_timeout": "2s", "txn_filter_capacity": 0},
        {
            "name": "postgres",
            "args": {"dsn": "postgresql://u@db/presence"},
            "apply_timeout": 2000,
            "txn_filter_capacity": 0,
        },
    ):
        config = parse_config({"database": section}, None)
        store = open_store(config.database, txn_retention_ms=3_600_000)
        assert store.apply_timeout_s == 2.0  # type: ignore[attr-defined]
        assert store.txn_filter_capacity == 0  # type: ignore[attr-defined]
        assert store.txn_retention_ms == 3_600_000  # type: ignore[attr-defined]


def test_the_store_key_defaults_are_the_stores_own() -> None:
    store = open_store(parse_config({}, None).database)
    assert isinstance(store, SqliteStore)
    assert store.apply_timeout_s == DEFAULT_APPLY_TIMEOUT_S
    assert store.txn_filter_capacity == DEFAULT_CAPACITY


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"apply_timeout": 0}, "database.apply_timeout"),
        ({"apply_timeout": "soon"}, "database.apply_timeout"),
        ({"txn_filter_capacity": -1}, "database.txn_filter_capacity"),
        ({"txn_filter_capacity": "many"}, "database.txn_filter_capacity"),
    ],
)
def test_a_bad_store_key_is_a_config_error_naming_it(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"database": section}, None)
    assert caught.value.key == key


def _tables(sql: str) -> list[str]:
    return sorted(re.findall(r"CREATE TABLE (\w+)", sql))


def test_both_dialects_have_the_same_migrations_and_tables() -> None:
    sqlite = load_migrations("sqlite")
    postgres = load_migrations("postgres")
    versions = [m.version for m in sqlite]
    assert versions == [m.version for m in postgres] == list(range(1, len(sqlite) + 1))
    for lite, pg in zip(sqlite, postgres, strict=True):
        assert _tables(lite.sql) == _tables(pg.sql)


def test_error_messages_never_show_the_database_password() -> None:
    assert redact_dsn("postgresql://fp:s3cret@db:5432/presence") == (
        "postgresql://fp:***@db:5432/presence"
    )
    assert redact_dsn("postgresql://fp@db/presence") == "postgresql://fp@db/presence"


async def test_the_postgres_read_pool_opens_with_its_bounds(postgres_database: Database) -> None:
    store = await postgres_database.opened_store(pool_min=2, pool_size=3)
    assert isinstance(store, PostgresStore)
    pool = store._pool  # what asyncpg made of the bounds
    assert (pool.get_min_size(), pool.get_max_size()) == (2, 3)
    assert pool.get_size() >= 2  # the minimum is connected at open


def test_a_pool_minimum_above_its_size_is_refused() -> None:
    with pytest.raises(ValueError, match="pool_min"):
        PostgresStore("postgresql://u@db/presence", pool_min=5, pool_size=4)
