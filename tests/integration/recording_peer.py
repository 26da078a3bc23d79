"""A recording destination: a homeserver's ``/send`` that checks our signatures.

``RecordingPeer`` is an ASGI app served over real TLS (``tls_peer``) under the
server name ``localhost:<port>``. For every ``PUT /_matrix/federation/v1/send``
it verifies the X-Matrix ``Authorization`` header like a homeserver does:
``destination`` must be its own name, and the signature must verify with the
origin's key, fetched (once) over HTTPS from the origin's key server and
checked to be self-signed. Unverified requests get 401 and are counted in
``auth_failures``.

What it answers is switchable: ``mode`` "ok" (``{"pdus": {}}``), "status"
(``status`` with a Matrix error body), "garbage" (a 200 that is not JSON),
"not_txn" (a 200 JSON object without ``pdus``). With ``hold`` set, each
request waits for ``release`` before answering (a slow or hanging peer).
Every request is recorded in ``attempts``; delivered ones ("ok") also in
``transactions``; ``arrivals`` wakes waiters on each new attempt.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from federation_presence.errors import PeerError
from federation_presence.federation.xmatrix import parse_authorization, signed_request_bytes
from tests.integration.tls_peer import TlsCertificates, serve_tls

SEND_PREFIX = "/_matrix/federation/v1/send/"
HOLD_LIMIT_S = 30.0


@dataclass
class Attempt:
    """One ``/send`` request as received: verified origin, txn id, body, when."""

    txn_id: str
    origin: str
    body: dict[str, Any]
    at_ms: int

    @property
    def pushes(self) -> list[dict[str, Any]]:
        return [
            push
            for edu in self.body.get("edus", [])
            if edu.get("edu_type") == "m.presence"
            for push in edu["content"]["push"]
        ]


@dataclass
class RecordingPeer:
    __test__ = False

    key_server_urls: dict[str, str]
    ca_path: str
    clock: Any
    server_name: str = ""
    mode: str = "ok"
    status: int = 500
    hold: bool = False
    release: anyio.Event = field(default_factory=anyio.Event)
    attempts: list[Attempt] = field(default_factory=list)
    transactions: list[Attempt] = field(default_factory=list)
    auth_failures: list[str] = field(default_factory=list)
    arrivals: anyio.Event = field(default_factory=anyio.Event)
    held: int = 0
    _keys: dict[tuple[str, str], VerifyKey] = field(default_factory=dict)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        if scope["method"] != "PUT" or not path.startswith(SEND_PREFIX):
            await _answer(send, 404, b'{"errcode":"M_UNRECOGNIZED","error":"no"}')
            return
        try:
            content = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _answer(send, 400, b'{"errcode":"M_NOT_JSON","error":"not JSON"}')
            return
        headers = [v.decode() for k, v in scope["headers"] if k == b"authorization"]
        raw_path = scope["raw_path"].decode("ascii")
        problem = await self._verify(headers, raw_path, content)
        if problem is not None:
            self.auth_failures.append(problem)
            await _answer(send, 401, orjson.dumps({"errcode": "M_UNAUTHORIZED", "error": problem}))
            return
        attempt = Attempt(
            path[len(SEND_PREFIX) :],
            content["origin"],
            content,
            self.clock.now_ms(),
        )
        self.attempts.append(attempt)
        arrivals, self.arrivals = self.arrivals, anyio.Event()
        arrivals.set()
        if self.hold:
            self.held += 1
            try:
                with anyio.fail_after(HOLD_LIMIT_S):
                    await self.release.wait()
            finally:
                self.held -= 1
        if self.mode == "ok":
            self.transactions.append(attempt)
            await _answer(send, 200, b'{"pdus":{}}')
        elif self.mode == "garbage":
            await _answer(send, 200, b"<html>hello</html>")
        elif self.mode == "not_txn":
            await _answer(send, 200, b'{"hello":"world"}')
        else:
            await _answer(
                send, self.status, orjson.dumps({"errcode": "M_UNKNOWN", "error": "as told"})
            )

    async def _verify(self, headers: list[str], uri: str, content: object) -> str | None:
        try:
            auth = parse_authorization(headers)
        except PeerError as exc:
            return exc.message
        if auth.destination != self.server_name:
            return f"destination {auth.destination!r} is not {self.server_name!r}"
        key = await self._key(auth.origin, auth.key_id)
        if key is None:
            return f"no key {auth.key_id} for {auth.origin}"
        message = signed_request_bytes("PUT", uri, auth.origin, auth.destination, content)
        try:
            key.verify(message, decode_base64(auth.signature))
        except CryptoError:
            return "bad signature"
        return None

    async def _key(self, origin: str, key_id: str) -> VerifyKey | None:
        cached = self._keys.get((origin, key_id))
        if cached is not None:
            return cached
        url = self.key_server_urls.get(origin)
        if url is None:
            return None
        context = ssl.create_default_context(cafile=self.ca_path)
        async with httpx.AsyncClient(verify=context, timeout=10) as client:
            response = (await client.get(f"{url}/_matrix/key/v2/server")).json()
        if response.get("server_name") != origin:
            return None
        for found_id, entry in response.get("verify_keys", {}).items():
            key = decode_verify_key_bytes(found_id, decode_base64(entry["key"]))
            try:
                verify_signed_json(response, origin, key)
            except SignatureVerifyException:
                return None
            self._keys[(origin, found_id)] = key
        return self._keys.get((origin, key_id))

    async def wait_for_attempts(self, count: int, limit_s: float = 10.0) -> None:
        """Return once ``count`` requests have arrived (fails after ``limit_s``)."""
        with anyio.fail_after(limit_s):
            while len(self.attempts) < count:
                await self.arrivals.wait()


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def running_peer(
    certificates: TlsCertificates, key_server_urls: dict[str, str], clock: Any
) -> AsyncIterator[RecordingPeer]:
    peer = RecordingPeer(key_server_urls, str(certificates.ca_path), clock)
    async with serve_tls(peer, certificates, graceful_shutdown_s=1) as served:
        peer.server_name = f"localhost:{served.port}"
        try:
            yield peer
        finally:
            peer.release.set()  # held requests end before the server does
