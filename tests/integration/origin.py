"""A test origin: a remote homeserver with its own key and key server.

Serves ``GET /_matrix/key/v2/server`` over real TLS (``tls_peer``) under the
server name ``localhost:<port>``, and signs ``/send`` requests to the worker
under test exactly as a homeserver does (X-Matrix over canonical JSON).
Switches let a test make it misbehave: publish an already-expired key, stop
answering key requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from signedjson.types import SigningKey

from federation_presence.clock import SystemClock
from federation_presence.federation.signing_keys import (
    build_server_keys_response,
    generate_signing_key,
)
from federation_presence.federation.xmatrix import authorization_header
from tests.integration.tls_peer import TlsCertificates, serve_tls

DAY_MS = 24 * 3_600_000


@dataclass
class TestOrigin:
    __test__ = False  # not a pytest class

    signing_key: SigningKey
    server_name: str = ""
    key_valid_for_ms: int = DAY_MS
    key_requests: int = 0
    answering: bool = True
    clock: SystemClock = field(default_factory=SystemClock)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/_matrix/key/v2/server" and self.answering:
            self.key_requests += 1
            status = 200
            body = orjson.dumps(
                build_server_keys_response(
                    self.server_name,
                    self.signing_key,
                    self.clock.now_ms(),
                    self.key_valid_for_ms,
                    {},
                )
            )
        else:
            status, body = 404, b'{"errcode":"M_UNRECOGNIZED","error":"no"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def transaction(self, *edus: object, pdus: object = ()) -> dict[str, Any]:
        return {
            "origin": self.server_name,
            "origin_server_ts": self.clock.now_ms(),
            "pdus": list(pdus),  # type: ignore[call-overload]
            "edus": list(edus),
        }

    def authorization(
        self,
        txn_id: str,
        body: object,
        *,
        destination: str,
        signing_key: SigningKey | None = None,
    ) -> str:
        return authorization_header(
            signing_key or self.signing_key,
            "PUT",
            f"/_matrix/federation/v1/send/{txn_id}",
            self.server_name,
            destination,
            body,
        )


def presence_edu(*pushes: object) -> dict[str, Any]:
    return {"edu_type": "m.presence", "content": {"push": list(pushes)}}


@contextlib.asynccontextmanager
async def running_origin(certificates: TlsCertificates) -> AsyncIterator[TestOrigin]:
    origin = TestOrigin(generate_signing_key())
    async with serve_tls(origin, certificates) as peer:
        origin.server_name = f"localhost:{peer.port}"
        yield origin
