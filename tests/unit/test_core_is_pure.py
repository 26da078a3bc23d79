"""The presence core imports no I/O: checked in a fresh interpreter."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import federation_presence.presence

FORBIDDEN = (
    "anyio",
    "asyncio",
    "httpx",
    "httpcore",
    "sqlite3",
    "_sqlite3",
    "asyncpg",
    "psycopg",
    "socket",
    "_socket",
    "ssl",
    "selectors",
    "uvicorn",
    "federation_presence.store",
    "federation_presence.clock",
    "federation_presence.federation",
    "federation_presence.api",
)


def core_modules() -> list[str]:
    package = federation_presence.presence
    return [
        f"{package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.ispkg
    ]


def test_the_core_has_the_modules_it_is_made_of() -> None:
    names = {name.rsplit(".", 1)[1] for name in core_modules()}
    expected = {"states", "model", "inputs", "aggregate", "transitions", "notify", "timers"}
    assert expected | {"remote", "machine"} <= names


def test_importing_the_whole_core_imports_no_io_module() -> None:
    program = (
        "import importlib, json, sys\n"
        f"for name in {core_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert "federation_presence.presence.machine" in loaded
    offending = sorted(
        name for name in loaded for bad in FORBIDDEN if name == bad or name.startswith(bad + ".")
    )
    assert offending == []


# The other pure modules (STYLE.md, seam 1): each may import the presence
# core and its own pure siblings, never I/O. ``socket``/``selectors`` are not
# checked here: signedjson reads its version through importlib.metadata,
# whose email parser imports ``socket`` without using it.
NOT_CHECKED_FOR_SHELL_SIDE = {"socket", "_socket", "selectors"}
PURE_SHELL_SIDE = {
    # edu builds bodies typed xmatrix.CanonicalJson: a pure sibling.
    "federation_presence.federation.edu": (
        "federation_presence.federation.edu",
        "federation_presence.federation.xmatrix",
    ),
    "federation_presence.federation.xmatrix": ("federation_presence.federation.xmatrix",),
    "federation_presence.federation.origin_policy": (
        "federation_presence.federation.origin_policy",
    ),
    "federation_presence.federation.ip_policy": ("federation_presence.federation.ip_policy",),
    **{
        f"federation_presence.outbound.{name}": ("federation_presence.outbound",)
        for name in ("queue", "backoff", "sharding", "keepalive", "settings")
    },
}


def test_the_pure_federation_modules_import_no_io_module() -> None:
    for module, allowed in PURE_SHELL_SIDE.items():
        program = (
            "import importlib, json, sys\n"
            f"importlib.import_module({module!r})\n"
            "print(json.dumps(sorted(sys.modules)))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
        )
        loaded = set(json.loads(result.stdout)) - {"federation_presence.federation", *allowed}
        offending = sorted(
            name
            for name in loaded
            for bad in set(FORBIDDEN) - NOT_CHECKED_FOR_SHELL_SIDE
            if name == bad or name.startswith(bad + ".")
        )
        assert offending == [], module


# The store's value types and pure modules: importing them (and so the
# ``federation_presence.store`` package itself) loads no database driver and
# no event loop; ``open_store`` imports the backend it is asked for.
PURE_STORE_MODULES = (
    "federation_presence.store",
    "federation_presence.store.base",
    "federation_presence.store.batch",
    "federation_presence.store.txn_filter",
    "federation_presence.store.journal",
    "federation_presence.store.schema",
)
STORE_FORBIDDEN = tuple(
    name
    for name in FORBIDDEN
    if name not in NOT_CHECKED_FOR_SHELL_SIDE and name != "federation_presence.store"
)


def test_the_pure_store_modules_import_no_io_module() -> None:
    for module in PURE_STORE_MODULES:
        program = (
            "import importlib, json, sys\n"
            f"importlib.import_module({module!r})\n"
            "print(json.dumps(sorted(sys.modules)))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
        )
        loaded = set(json.loads(result.stdout))
        assert module in loaded
        offending = sorted(
            name
            for name in loaded
            for bad in (
                *STORE_FORBIDDEN,
                "federation_presence.store.sqlite",
                "federation_presence.store.postgres",
            )
            if name == bad or name.startswith(bad + ".")
        )
        assert offending == [], module


def test_open_store_imports_only_the_backend_it_is_asked_for() -> None:
    program = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from federation_presence.config import DatabaseConfig\n"
        "from federation_presence.store import open_store\n"
        "open_store(DatabaseConfig(path=Path('unused.db')))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert "federation_presence.store.sqlite" in loaded
    assert "sqlite3" in loaded
    assert "asyncpg" not in loaded
    assert "federation_presence.store.postgres" not in loaded
