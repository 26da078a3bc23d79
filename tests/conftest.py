"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """The worker runs on asyncio (uvicorn, asyncpg); tests pin it."""
    return "asyncio"
