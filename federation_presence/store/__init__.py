"""The worker's durable state: one ``Store`` protocol, two databases.

``open_store(config.database)`` picks the implementation: ``sqlite3`` (the
embedded default, ``SqliteStore``) or ``postgres`` (``PostgresStore``, needs
the ``postgres`` extra, imported only when asked for). The returned store is
not open yet: the caller awaits ``open()`` and, at shutdown, ``close()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from federation_presence.errors import ConfigError
from federation_presence.store.base import (
    InboundTxn,
    ServerKeyRecord,
    Store,
    StoreStats,
    StreamRow,
)
from federation_presence.store.sqlite import SqliteStore

__all__ = [
    "DatabaseSettings",
    "InboundTxn",
    "ServerKeyRecord",
    "SqliteStore",
    "Store",
    "StoreStats",
    "StreamRow",
    "open_store",
]


class DatabaseSettings(Protocol):
    """What ``open_store`` reads of the config's ``database`` section."""

    @property
    def name(self) -> str: ...  # "sqlite3" | "postgres"

    @property
    def path(self) -> Path: ...

    @property
    def dsn(self) -> str | None: ...

    @property
    def synchronous(self) -> str: ...  # "full" | "normal"


def open_store(database: DatabaseSettings) -> Store:
    """The store ``database`` describes (not yet opened); ``ConfigError`` if it cannot be."""
    if database.name == "sqlite3":
        if database.synchronous == "full":
            return SqliteStore(database.path, synchronous="full")
        if database.synchronous == "normal":
            return SqliteStore(database.path, synchronous="normal")
        raise ConfigError(
            "database.synchronous", f"must be 'full' or 'normal', not {database.synchronous!r}"
        )
    if database.name == "postgres":
        if not database.dsn:
            raise ConfigError("database.dsn", "is required when database.name is 'postgres'")
        try:
            from federation_presence.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                "database.name",
                "'postgres' needs asyncpg: pip install 'federation-presence[postgres]'",
            ) from exc
        return PostgresStore(database.dsn)
    raise ConfigError("database.name", f"must be 'sqlite3' or 'postgres', not {database.name!r}")
