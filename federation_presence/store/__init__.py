"""The worker's durable state: one ``Store`` protocol, two databases.

``open_store(config.database)`` picks the implementation: ``sqlite3`` (the
embedded default, ``SqliteStore``) or ``postgres`` (``PostgresStore``, needs
the ``postgres`` extra). The returned store is not open yet: its owner runs
``store.run`` as a child of a task group (``tg.start(store.run)``), or a
short-lived user awaits ``open()`` and ``close()`` (``SqliteStore`` only:
``PostgresStore`` writes from the task ``run`` is).

Nothing here imports a database driver: ``open_store`` imports the backend it
was asked for, so the value types (``store.base``, ``store.batch``) and the
pure modules (``store.txn_filter``, ``store.journal``) load without
``sqlite3``, ``asyncpg`` or ``asyncio`` (``tests/unit/test_core_is_pure.py``).
``SqliteStore`` stays importable from here, lazily, for old callers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from federation_presence.errors import ConfigError
from federation_presence.store.base import (
    DEFAULT_APPLY_TIMEOUT_S,
    InboundTxn,
    ServerKeyRecord,
    Store,
    StoreStats,
    StreamRow,
)
from federation_presence.store.txn_filter import DEFAULT_CAPACITY as DEFAULT_TXN_FILTER_CAPACITY

if TYPE_CHECKING:
    from federation_presence.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_APPLY_TIMEOUT_MS",
    "DEFAULT_TXN_FILTER_CAPACITY",
    "DatabaseSettings",
    "InboundTxn",
    "ServerKeyRecord",
    "SqliteStore",
    "Store",
    "StoreStats",
    "StreamRow",
    "open_store",
]

DEFAULT_APPLY_TIMEOUT_MS = int(DEFAULT_APPLY_TIMEOUT_S * 1000)


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

    @property
    def apply_timeout_ms(self) -> int: ...

    @property
    def txn_filter_capacity(self) -> int: ...  # 0: no txn filter

    @property
    def cp_min(self) -> int | None: ...  # PostgreSQL pool bounds (Synapse's keys)

    @property
    def cp_max(self) -> int | None: ...


def open_store(database: DatabaseSettings, *, txn_retention_ms: int | None = None) -> Store:
    """The store ``database`` describes (not yet opened); ``ConfigError`` if it cannot be.

    ``txn_retention_ms`` is how long ``/send`` answers are kept (the txn
    filter's generations follow it); None keeps the stores' default.
    """
    options: dict[str, Any] = {
        "apply_timeout_s": database.apply_timeout_ms / 1000,
        "txn_filter_capacity": database.txn_filter_capacity,
    }
    if txn_retention_ms is not None:
        options["txn_retention_ms"] = txn_retention_ms
    if database.name == "sqlite3":
        from federation_presence.store.sqlite import SqliteStore

        if database.synchronous == "full":
            return SqliteStore(database.path, synchronous="full", **options)
        if database.synchronous == "normal":
            return SqliteStore(database.path, synchronous="normal", **options)
        raise ConfigError(
            "database.synchronous", f"must be 'full' or 'normal', not {database.synchronous!r}"
        )
    if database.name == "postgres":
        if not database.dsn:
            raise ConfigError("database.dsn", "is required when database.name is 'postgres'")
        try:
            from federation_presence.store.postgres import DEFAULT_POOL_SIZE, PostgresStore
        except ImportError as exc:
            raise ConfigError(
                "database.name",
                "'postgres' needs asyncpg: pip install 'federation-presence[postgres]'",
            ) from exc
        # Synapse's pool bounds size the read pool (writes have a connection
        # of their own); a cp_min alone raises the default size to it.
        if database.cp_max is not None:
            options["pool_size"] = database.cp_max
        if database.cp_min is not None:
            options["pool_min"] = database.cp_min
            options.setdefault("pool_size", max(database.cp_min, DEFAULT_POOL_SIZE))
        return PostgresStore(database.dsn, **options)
    raise ConfigError("database.name", f"must be 'sqlite3' or 'postgres', not {database.name!r}")


def __getattr__(name: str) -> object:
    """``SqliteStore`` on first use (importing it loads ``sqlite3``)."""
    if name == "SqliteStore":
        from federation_presence.store.sqlite import SqliteStore

        return SqliteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
