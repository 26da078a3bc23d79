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
from federation_presence.presence.model import PresenceSettings
from tests.integration.tls_peer import TlsCertificates

ADMIN_TOKEN = "interop-admin"


def interop_worker_config(
    workdir: Path,
    certificates: TlsCertificates,
    port: int,
    *,
    plain_admin_port: int | None = None,
    **federation: object,
) -> Config:
    listeners = [
        ListenerConfig(
            port=port,
            tls_certificate_path=certificates.cert_path,
            tls_private_key_path=certificates.key_path,
        )
    ]
    if plain_admin_port is not None:
        # Beside a homeserver: its module posts heartbeats over plain HTTP on
        # loopback (Synapse's module HTTP client trusts only the system CAs).
        listeners.append(ListenerConfig(port=plain_admin_port, resources=frozenset({"admin"})))
    return Config(
        server_name=f"localhost:{port}",
        signing_key_path=workdir / "keys" / "signing.key",
        listeners=tuple(listeners),
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
        # Our local users here set presence with PUT and hold no syncing
        # device; at the default 30 s sync timeout a slow first delivery
        # (Synapse still starting, our sender backing off) could find them
        # already timed out to offline. No interop test relies on that timer.
        presence=PresenceSettings(sync_timeout_ms=10 * 60_000),
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


async def put_room(http: httpx.AsyncClient, room_id: str, members: list[str]) -> None:
    """Tell the worker who shares a room (its admin API): who gets whose presence."""
    response = await http.put(
        f"/_presence/admin/v1/rooms/{quote(room_id)}",
        json={"members": members},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.text


async def set_local_presence(
    http: httpx.AsyncClient, token: str, user_id: str, presence: str, status_msg: str | None
) -> None:
    body: dict[str, object] = {"presence": presence}
    if status_msg is not None:
        body["status_msg"] = status_msg
    response = await http.put(
        f"/_matrix/client/v3/presence/{quote(user_id)}/status",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
