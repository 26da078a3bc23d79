"""``open_store`` and the migration files: choosing and preparing a database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from federation_presence.errors import ConfigError
from federation_presence.store import open_store
from federation_presence.store.postgres import PostgresStore, redact_dsn
from federation_presence.store.schema import load_migrations
from federation_presence.store.sqlite import SqliteStore


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    path: Path = Path("presence.db")
    dsn: str | None = None
    synchronous: str = "full"


def test_sqlite3_config_gives_a_sqlite_store_with_its_synchronous_mode() -> None:
    store = open_store(DatabaseConfig("sqlite3", Path("/tmp/x.db"), synchronous="normal"))
    assert isinstance(store, SqliteStore)
    assert store.path == Path("/tmp/x.db")
    assert store.synchronous == "normal"


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
