"""Numbered SQL migrations and the plan to bring a database up to date.

Migrations live in ``store/migrations/`` as ``NNNN_name.sql`` (portable SQL)
or ``NNNN_name.<dialect>.sql`` (one file per dialect, ``sqlite`` or
``postgres``; preferred over a portable file of the same number). Numbers
start at 1 and have no gaps. A database records each applied number in
``schema_version``; the stores create that table, read its max, and apply
what ``plan`` returns, each migration in its own transaction together with
its ``schema_version`` row.

A database whose version is above the newest migration this program ships was
written by a newer program: ``plan`` refuses it with ``SchemaTooNewError``
rather than guess what the newer tables mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from federation_presence.errors import SchemaTooNewError, StoreError

Dialect = Literal["sqlite", "postgres"]

SCHEMA_VERSION_DDL = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"
CURRENT_VERSION_SQL = "SELECT COALESCE(MAX(version), 0) FROM schema_version"

_FILE_RE = re.compile(r"(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<dialect>[a-z]+))?\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: Dialect) -> tuple[Migration, ...]:
    """The migrations for ``dialect``, in order, read from the package."""
    folder = resources.files("federation_presence.store").joinpath("migrations")
    chosen: dict[int, tuple[bool, Migration]] = {}
    for entry in folder.iterdir():
        match = _FILE_RE.fullmatch(entry.name)
        if match is None:
            continue
        file_dialect = match.group("dialect")
        if file_dialect is not None and file_dialect != dialect:
            continue
        version = int(match.group("version"))
        specific = file_dialect is not None
        previous = chosen.get(version)
        if previous is not None and previous[0] == specific:
            raise StoreError(f"two migrations numbered {version} for {dialect}")
        if previous is None or specific:
            chosen[version] = (specific, Migration(version, match.group("name"), entry.read_text()))
    migrations = tuple(chosen[v][1] for v in sorted(chosen))
    expected = tuple(range(1, len(migrations) + 1))
    if tuple(m.version for m in migrations) != expected:
        raise StoreError(f"migrations for {dialect} are not numbered 1..n without gaps")
    return migrations


def plan(current: int, migrations: tuple[Migration, ...], where: str) -> tuple[Migration, ...]:
    """The migrations still to apply to a database at version ``current``.

    ``where`` names the database in the error (a path, or a DSN without password).
    """
    known = migrations[-1].version if migrations else 0
    if current > known:
        raise SchemaTooNewError(
            f"the database {where} has schema version {current}, but this "
            f"federation-presence knows versions up to {known}: it was written by a "
            "newer release. Upgrade federation-presence, or point it at another database."
        )
    return tuple(m for m in migrations if m.version > current)
