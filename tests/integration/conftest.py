"""Fixtures for integration tests: a real worker and test origins on loopback.

The worker runs in-process (``running_worker``) with a real SQLite file, a
real uvicorn listener over TLS on 127.0.0.1 (port chosen by the OS) and the
real federation client; test origins are real TLS key servers. Nothing is
mocked: a test talks HTTPS to the worker, the worker talks HTTPS to the
origin's key server.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from federation_presence.config import (
    Config,
    DatabaseConfig,
    FederationConfig,
    ListenerConfig,
)
from federation_presence.federation.ip_policy import LOOPBACK_RANGES
from federation_presence.worker import RunningWorker, running_worker
from tests.blocking import blocking_calls_refused
from tests.integration.origin import TestOrigin, running_origin
from tests.integration.tls_peer import TlsCertificates

WORKER_NAME = "fp.test"
ADMIN_TOKEN = "admin-secret"


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[None]:
    """Every test here runs under the blocking-call detector (``tests/blocking.py``)."""
    with blocking_calls_refused():
        yield


@pytest.fixture
def certificates(tmp_path: Path) -> TlsCertificates:
    return TlsCertificates.issue(tmp_path)


def worker_config(tmp_path: Path, certificates: TlsCertificates, **federation: object) -> Config:
    return Config(
        server_name=WORKER_NAME,
        signing_key_path=tmp_path / "keys" / "signing.key",
        listeners=(
            ListenerConfig(
                port=0,
                tls_certificate_path=certificates.cert_path,
                tls_private_key_path=certificates.key_path,
            ),
        ),
        database=DatabaseConfig(path=tmp_path / "worker.db"),
        federation=dataclasses.replace(
            # Test origins live on loopback, which the default ip_range_blacklist refuses.
            FederationConfig(ca_bundle=certificates.ca_path, ip_range_whitelist=LOOPBACK_RANGES),
            **federation,  # type: ignore[arg-type]
        ),
        admin_token=ADMIN_TOKEN,
    )


@pytest.fixture
def config(tmp_path: Path, certificates: TlsCertificates) -> Config:
    return worker_config(tmp_path, certificates)


@pytest.fixture
async def origin(certificates: TlsCertificates) -> AsyncIterator[TestOrigin]:
    async with running_origin(certificates) as running:
        yield running


@pytest.fixture
async def worker(config: Config, origin: TestOrigin) -> AsyncIterator[RunningWorker]:
    # Depends on ``origin`` so that the worker (and its client's keep-alive
    # connections to the origin) stops first, as a real peer outlives us.
    async with running_worker(config) as running:
        yield running


def worker_client(worker: RunningWorker, certificates: TlsCertificates) -> httpx.AsyncClient:
    """An HTTPS client to the worker's first listener, trusting the test CA."""
    context = ssl.create_default_context(cafile=str(certificates.ca_path))
    return httpx.AsyncClient(
        base_url=f"https://localhost:{worker.ports[0]}", verify=context, timeout=30
    )


@pytest.fixture
async def http(
    worker: RunningWorker, certificates: TlsCertificates
) -> AsyncIterator[httpx.AsyncClient]:
    async with worker_client(worker, certificates) as client:
        yield client
