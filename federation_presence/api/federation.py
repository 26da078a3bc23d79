"""Server-server handlers: ``/send``, our key response, ``/version``.

Thin: each handler unpacks the request, calls the shell that owns the work
(``InboundTransactions``) or a pure builder, and packs the answer.

Our key response is built once and reused while it has more than
``max(validity / 2, 1 h + 5 min)`` left: the spec asks notaries to cache for
half the lifetime, and an origin should never serve a response that expires
within the hour. A fresh signature per request would be wasted work.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from federation_presence import __version__
from federation_presence.api.app import Request, Response, Router, json_response
from federation_presence.clock import Clock
from federation_presence.federation.inbound import InboundTransactions
from federation_presence.federation.signing_keys import SigningKey, build_server_keys_response

SERVER_SOFTWARE = "federation-presence"
MIN_REMAINING_VALIDITY_MS = 65 * 60_000


class ServerKeyResponse:
    """The signed ``GET /_matrix/key/v2/server`` body, refreshed at half-life."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        clock: Clock,
        valid_for_ms: int,
        old_keys: Mapping[str, tuple[str, int]],
    ) -> None:
        self._server_name = server_name
        self._signing_key = signing_key
        self._clock = clock
        self._valid_for_ms = valid_for_ms
        self._old_keys = old_keys
        self._body = b""
        self._refresh_at_ts = 0

    def body(self) -> bytes:
        now = self._clock.now_ms()
        if now >= self._refresh_at_ts:
            payload = build_server_keys_response(
                self._server_name, self._signing_key, now, self._valid_for_ms, self._old_keys
            )
            self._body = orjson.dumps(payload)
            keep_at_least_ms = max(self._valid_for_ms // 2, MIN_REMAINING_VALIDITY_MS)
            self._refresh_at_ts = now + max(self._valid_for_ms - keep_at_least_ms, 0)
        return self._body


def add_federation_routes(
    router: Router, inbound: InboundTransactions, keys: ServerKeyResponse
) -> None:
    async def send_transaction(request: Request) -> Response:
        body = await inbound.receive(
            txn_id=request.path_param,
            method=request.method,
            uri=request.uri,
            authorization=request.header_values("authorization"),
            body=request.body,
        )
        return Response(200, body)

    async def server_keys(request: Request) -> Response:
        return Response(200, keys.body())

    async def version(request: Request) -> Response:
        return json_response(200, {"server": {"name": SERVER_SOFTWARE, "version": __version__}})

    router.add("PUT", "/_matrix/federation/v1/send/{txnId}", send_transaction)
    router.add("GET", "/_matrix/key/v2/server", server_keys)
    # Deprecated form with a key id; servers still ask it and get the same answer.
    router.add("GET", "/_matrix/key/v2/server/{keyId}", server_keys)
    router.add("GET", "/_matrix/federation/v1/version", version)
