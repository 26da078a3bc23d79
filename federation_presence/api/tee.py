"""The ``/send`` tee: the worker in front of a homeserver's federation ``/send``.

Beside a homeserver (``beside.homeserver_url``), the reverse proxy routes
``PUT /_matrix/federation/v1/send/{txnId}`` to the worker instead of to the
homeserver. A transaction carries PDUs and EDUs of every kind; the worker
wants only its ``m.presence`` EDUs, and must lose none of the rest. So the
tee does both:

1. the worker handles the transaction as it always does (X-Matrix verified
   with the origin's key, dedup by ``(origin, txnId)``, presence pushes made
   durable);
2. then the **original request** (method, raw request target, the
   ``Authorization`` headers, the body bytes as received) is forwarded to the
   homeserver, which verifies and processes the whole transaction itself;
3. the origin gets the homeserver's answer (status and body): the homeserver
   owns the transaction and its ``{"pdus": {...}}`` result.

Order and failures: presence is applied first, so a worker that cannot store
(503) or is over an origin's rate limit (429) answers that at once, without
forwarding; the origin retries the whole transaction, which the homeserver
dedups by txnId as the worker does. A transaction the worker refuses for
good (bad signature, bad JSON: a 4xx ``PeerError``) is still forwarded: the
homeserver decides about its own part and its answer is the one returned.
If the homeserver cannot be reached or does not answer within
``forward_timeout``, the answer is 502 ``M_UNKNOWN`` and the origin retries
later (presence already applied is deduplicated then).

The homeserver's answer is read up to ``MAX_ANSWER_BYTES``; the forwarded
request goes to an operator-configured internal address, so the federation
IP-range blocklist does not apply to it.
"""

from __future__ import annotations

import logging
import ssl
from types import TracebackType
from typing import Self

import httpx

from federation_presence.api.app import Request, Response, Router, error_response
from federation_presence.errors import PeerError
from federation_presence.federation.inbound import InboundTransactions

logger = logging.getLogger(__name__)

SEND_PATH = "/_matrix/federation/v1/send/{txnId}"
# A /send answer is {"pdus": {event_id: {} or {"error": ...}}} for at most 50
# PDUs: far below this.
MAX_ANSWER_BYTES = 1_048_576
_FORWARDED_HEADERS = ("authorization", "content-type")


class HomeserverForwarder:
    """Sends a request, unchanged, to the homeserver and returns its answer."""

    def __init__(
        self,
        homeserver_url: str,
        *,
        timeout_ms: int,
        ca_bundle: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_bundle is not None:
            verify = ssl.create_default_context(cafile=ca_bundle)
        self._client = httpx.AsyncClient(
            base_url=homeserver_url.rstrip("/"),
            timeout=timeout_ms / 1000,
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )
        self._timeout_ms = timeout_ms

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def forward(self, request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers if k in _FORWARDED_HEADERS]
        outgoing = self._client.build_request(
            request.method, request.uri, headers=headers, content=request.body
        )
        # The raw request target, exactly as signed (httpx would re-encode a path).
        outgoing.url = outgoing.url.copy_with(raw_path=request.uri.encode("ascii"))
        try:
            answer = await self._client.send(outgoing, stream=True)
            try:
                body = await _read_bounded(answer)
            finally:
                await answer.aclose()
        except (httpx.HTTPError, _AnswerTooLarge) as exc:
            logger.warning("forwarding %s to the homeserver failed: %s", request.path, exc)
            return error_response(
                PeerError(502, "M_UNKNOWN", f"the homeserver did not answer: {type(exc).__name__}")
            )
        content_type = answer.headers.get("content-type", "application/json")
        return Response(answer.status_code, body, ((b"content-type", content_type.encode()),))


class _AnswerTooLarge(Exception):
    pass


async def _read_bounded(answer: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _AnswerTooLarge(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def add_tee_route(
    router: Router, inbound: InboundTransactions, forwarder: HomeserverForwarder
) -> None:
    """Serve ``/send`` as a tee (replaces the plain ``/send`` route)."""

    async def send_transaction(request: Request) -> Response:
        try:
            await inbound.receive(
                txn_id=request.path_param,
                method=request.method,
                uri=request.uri,
                authorization=request.header_values("authorization"),
                body=request.body,
            )
        except PeerError as error:
            if error.status in (429, 503):
                raise  # transient here: the origin retries the whole transaction
            logger.info("tee: worker refused %s (%s); forwarding anyway", request.path, error)
        return await forwarder.forward(request)

    router.add("PUT", SEND_PATH, send_transaction)
