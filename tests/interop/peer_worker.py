"""The worker's side of the interop federation: a config that lets it talk to Synapse.

``interop_worker_config`` is ``tests/integration``'s worker config adjusted for a
real peer: a fixed port (Synapse must know ``localhost:PORT`` before either
starts), the test CA trusted for outbound federation with verification on,
loopback allowed through the IP-range blocklist, the admin token the tests
read presence with.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import httpx

from federation_presence.config import Config, DatabaseConfig, FederationConfig, ListenerConfig
from federation_presence.federation.ip_policy import LOOPBACK_RANGES
from tests.integration.tls_peer import TlsCertificates

ADMIN_TOKEN = "interop-admin"


def interop_worker_config(
    workdir: Path, certificates: TlsCertificates, port: int, **federation: object
) -> Config:
    return Config(
        server_name=f"localhost:{port}",
        signing_key_path=workdir / "keys" / "signing.key",
        listeners=(
            ListenerConfig(
                port=port,
                tls_certificate_path=certificates.cert_path,
                tls_private_key_path=certificates.key_path,
            ),
        ),
        database=DatabaseConfig(path=workdir / "worker.db"),
        federation=replace(
            FederationConfig(
                # Verification stays on; the test CA issued Synapse's certificate.
                verify_certificates=True,
                ca_bundle=certificates.ca_path,
                # Synapse listens on 127.0.0.1, which the default blocklist refuses.
                ip_range_whitelist=LOOPBACK_RANGES,
            ),
            **federation,  # type: ignore[arg-type]
        ),
        admin_token=ADMIN_TOKEN,
    )


@contextlib.asynccontextmanager
async def worker_http(port: int, certificates: TlsCertificates) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context(cafile=str(certificates.ca_path))
    async with httpx.AsyncClient(
        base_url=f"https://localhost:{port}", verify=context, timeout=30
    ) as client:
        yield client


async def worker_presence(http: httpx.AsyncClient, user_id: str) -> httpx.Response:
    return await http.get(
        f"/_matrix/client/v3/presence/{quote(user_id)}/status",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
