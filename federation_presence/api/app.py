"""The one ASGI application: routing, body limit, errors as Matrix JSON.

What this module owns: turning an ASGI HTTP request into a ``Request`` value,
finding its route, reading its body under a size limit, and turning whatever
the handler returns or raises into a response. Handlers live in the sibling
modules (``federation``, ``client``, ``ops``) and stay thin.

Invariants:

* Every response is a JSON object with ``Content-Type: application/json``
  (``/metrics`` excepted: Prometheus text).
* A ``PeerError`` becomes its status and ``{"errcode", "error"}``; an unknown
  path is 404 ``M_UNRECOGNIZED``, a known path with another method 405
  ``M_UNRECOGNIZED`` (server-server API standards).
* A body larger than the limit is refused with 413 ``M_TOO_LARGE`` and never
  held in memory, whether or not ``Content-Length`` announced it. So that the
  sender reads that 413 (instead of a connection reset while it is still
  sending), up to twice the limit more is read and discarded before the
  answer (``Expect: 100-continue`` senders are answered at once, before they
  send), and the connection is then closed. A 404 or 405 has its body (up to
  the limit) drained the same way; the connection stays open if it all came.
  The time this may take is bounded by the listener's body timeout
  (``http_protocol``).
* Nothing a client sends can make a handler's exception escape: an unexpected
  exception is answered 500 ``M_UNKNOWN`` (a bug, never an input), a
  ``StoreError`` 503 with ``Retry-After``. Both are logged through a
  ``ThrottledLog``: each exception class with its traceback the first time,
  then at most one line per window and a count of the rest, so an outage
  under load is a line every ten seconds, not one per request.
* Every answer of 400 or more is counted in
  ``federation_presence_http_refusals{status, errcode}`` (labels bounded) and
  gets one concise, rate-limited log line: method, path, client, origin and
  txn id of a ``/send``, status, errcode and reason.

Routing is a dict lookup on fixed paths plus a short list of prefix routes
with one trailing path parameter; no framework, because per-request overhead
is the ingest budget (see BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import anyio
import orjson

from federation_presence.api.request_log import ThrottledLog
from federation_presence.clock import SystemClock
from federation_presence.errors import PeerError, StoreError
from federation_presence.metrics import Metrics

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STORE_RETRY_AFTER_S = 5
# Refusal lines per window of ThrottledLog: enough to see what is going on,
# few enough that a flood of bad requests is a handful of lines a minute.
REFUSAL_LINES_PER_WINDOW = 20
MAX_LOGGED_CHARS = 120
_STATUS_LABELS = frozenset({400, 401, 403, 404, 405, 408, 413, 429, 500, 503})
_MAX_ERRCODE_LABELS = 32


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler sees of an HTTP request.

    ``uri`` is the request target exactly as sent (raw path plus ``?query``),
    as X-Matrix signs it; ``path_param`` the percent-decoded trailing segment
    of a prefix route; ``headers`` lower-cased names, values as sent, in order.
    """

    method: str
    path: str
    uri: str
    query: Mapping[str, str]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    path_param: str = ""
    client: str | None = None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or a 400 ``M_NOT_JSON``/``M_BAD_JSON``."""
        return parse_json_object(self.body)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, payload: object) -> Response:
    return Response(status, orjson.dumps(payload))


def error_response(error: PeerError) -> Response:
    return Response(error.status, orjson.dumps(error.to_json()))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Strict JSON: no NaN/Infinity, integers within 64 bits, an object at the top."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PeerError(400, "M_NOT_JSON", f"body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise PeerError(400, "M_BAD_JSON", "body must be a JSON object")
    return value


@dataclass
class Router:
    """Exact paths, and paths with one ``{param}`` segment, each with methods.

    Matching is done on the raw (still percent-encoded) path, so an encoded
    ``/`` inside a parameter stays inside it; the parameter is then decoded.
    """

    exact: dict[str, dict[str, Handler]] = field(default_factory=dict)
    patterns: list[tuple[str, str, dict[str, Handler]]] = field(default_factory=list)

    def add(self, method: str, path: str, handler: Handler) -> None:
        if "{" not in path:
            self.exact.setdefault(path, {})[method] = handler
            return
        prefix = path[: path.index("{")]
        suffix = path[path.index("}") + 1 :]
        for existing_prefix, existing_suffix, methods in self.patterns:
            if (existing_prefix, existing_suffix) == (prefix, suffix):
                methods[method] = handler
                return
        self.patterns.append((prefix, suffix, {method: handler}))
        # Most specific first, so /a/b/{x} wins over /a/{x}.
        self.patterns.sort(key=lambda item: -(len(item[0]) + len(item[1])))

    def find(self, raw_path: str) -> tuple[dict[str, Handler], str] | None:
        methods = self.exact.get(raw_path)
        if methods is not None:
            return methods, ""
        for prefix, suffix, pattern_methods in self.patterns:
            if (
                len(raw_path) > len(prefix) + len(suffix)
                and raw_path.startswith(prefix)
                and raw_path.endswith(suffix)
            ):
                middle = raw_path[len(prefix) : len(raw_path) - len(suffix)]
                if "/" not in middle:
                    return pattern_methods, unquote(middle)
        return None


class App:
    """The ASGI callable served by uvicorn.

    ``metrics`` and ``request_log`` are shared by every listener of a worker;
    without them (a bare ``App`` in a test) refusals are not counted and a
    throttled log of the app's own is used.
    """

    def __init__(
        self,
        router: Router,
        *,
        max_body_bytes: int,
        metrics: Metrics | None = None,
        request_log: ThrottledLog | None = None,
    ) -> None:
        self._router = router
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics
        self._log = request_log or ThrottledLog(
            logger, SystemClock(), lines_per_window=REFUSAL_LINES_PER_WINDOW
        )
        self._traced: set[str] = set()  # exception classes whose traceback was logged
        self._errcodes: set[str] = set()  # errcode labels in use (bounded)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        response, close = await self._respond(scope, receive)
        headers = [*response.headers, (b"content-length", str(len(response.body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _respond(self, scope: Scope, receive: Receive) -> tuple[Response, bool]:
        """The response, and whether the connection must close after it."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path_str = raw_path.decode("latin-1")
        path = raw_path_str
        method: str = scope["method"]
        headers = tuple(
            (key.decode("latin-1").lower(), value.decode("latin-1"))
            for key, value in scope["headers"]
        )
        client = scope.get("client")
        client_host = client[0] if client else None
        found = self._router.find(raw_path_str)
        if found is None:
            error = PeerError(404, "M_UNRECOGNIZED", "Unrecognized request")
            drained = await self._drain(headers, receive, self._max_body_bytes)
            return self._refuse(_unread(method, path, headers, client_host), error), not drained
        methods, path_param = found
        handler = methods.get(method)
        if handler is None:
            error = PeerError(405, "M_UNRECOGNIZED", "Method not allowed")
            drained = await self._drain(headers, receive, self._max_body_bytes)
            return self._refuse(_unread(method, path, headers, client_host), error), not drained
        try:
            body = await self._read_body(headers, receive)
        except PeerError as error:
            if error.status == 413:
                # On Content-Length nothing was read: up to twice the limit is
                # drained; while streaming the limit was read: as much again.
                # Drained or not, the connection closes: its sender overdid it.
                await self._drain(headers, receive, 2 * self._max_body_bytes)
            return self._refuse(_unread(method, path, headers, client_host), error), True
        query_bytes: bytes = scope.get("query_string", b"")
        query_string = query_bytes.decode("latin-1")
        request = Request(
            method=method,
            path=path,
            uri=f"{raw_path_str}?{query_string}" if query_string else raw_path_str,
            query=_parse_query(query_string),
            headers=headers,
            body=body,
            path_param=path_param,
            client=client_host,
        )
        try:
            if getattr(handler, "ends_on_disconnect", False):
                response = await _until_disconnect(handler, request, receive)
            else:
                response = await handler(request)
        except PeerError as error:
            return self._refuse(request, error), False
        except StoreError as exc:
            self._log_failure(request, exc, "store failure")
            if self._metrics is not None:
                self._metrics.store_failures.labels(type(exc).__name__).inc()
            unavailable = PeerError(
                503,
                "M_UNKNOWN",
                "storage unavailable, retry later",
                {"retry_after_ms": STORE_RETRY_AFTER_S * 1000},
            )
            refused = self._refuse(request, unavailable, log=False)
            retry_after = (b"retry-after", str(STORE_RETRY_AFTER_S).encode())
            return Response(refused.status, refused.body, (*refused.headers, retry_after)), False
        except Exception as exc:
            self._log_failure(request, exc, "bug: unexpected exception")
            internal = PeerError(500, "M_UNKNOWN", "internal error")
            return self._refuse(request, internal, log=False), False
        if response.status >= 400:
            self._count(response.status, "")
        return response, False

    async def _read_body(self, headers: tuple[tuple[str, str], ...], receive: Receive) -> bytes:
        limit = self._max_body_bytes
        for key, value in headers:
            if key == "content-length":
                if not value.isdigit():
                    raise PeerError(400, "M_BAD_JSON", "invalid Content-Length")
                if int(value) > limit:
                    raise PeerError(413, "M_TOO_LARGE", f"body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise PeerError(400, "M_UNKNOWN", "client disconnected")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PeerError(413, "M_TOO_LARGE", f"body larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _drain(
        self, headers: tuple[tuple[str, str], ...], receive: Receive, allowance: int
    ) -> bool:
        """Read and discard the rest of a refused request's body, at most ``allowance`` bytes.

        True if the body ended (the connection may be reused). False if it is
        (or is announced) longer, if the client left, or if an ``Expect:
        100-continue`` sender awaits our go-ahead: it is not given, the sender
        reads the refusal before sending, and the connection is closed.
        """
        for key, value in headers:
            if key == "expect" and value.lower() == "100-continue":
                return False
            if key == "content-length" and value.isdigit() and int(value) > allowance:
                return False
        discarded = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            discarded += len(message.get("body", b""))
            if discarded > allowance:
                return False
            if not message.get("more_body", False):
                return True

    def _refuse(self, request: Request, error: PeerError, *, log: bool = True) -> Response:
        """The answer to a refused request: counted, and logged within the budget."""
        self._count(error.status, error.errcode)
        if log:
            level = logging.WARNING if error.status >= 500 else logging.INFO
            if self._log.allow("refused requests", level):
                logger.log(
                    level,
                    "refused %s %s from %s%s: %d %s %s",
                    request.method,
                    _clip(request.path),
                    request.client or "?",
                    _send_details(request),
                    error.status,
                    error.errcode,
                    _clip(error.message),
                )
        return error_response(error)

    def _count(self, status: int, errcode: str) -> None:
        if self._metrics is None:
            return
        if errcode not in self._errcodes:
            if len(self._errcodes) >= _MAX_ERRCODE_LABELS:
                errcode = "other"
            else:
                self._errcodes.add(errcode)
        status_label = str(status) if status in _STATUS_LABELS else "other"
        self._metrics.http_refusals.labels(status_label, errcode or "none").inc()

    def _log_failure(self, request: Request, exc: Exception, what: str) -> None:
        """A failure while answering: traceback once per class, then throttled lines."""
        name = type(exc).__name__
        if not self._log.allow(f"{what}s ({name})", logging.ERROR, lines=1):
            return
        first = name not in self._traced
        self._traced.add(name)
        logger.error(
            "%s answering %s %s: %s: %s%s",
            what,
            request.method,
            _clip(request.path),
            name,
            _clip(str(exc)),
            "" if first else " (traceback logged at its first occurrence)",
            exc_info=exc if first else None,
        )


def ends_on_disconnect(handler: Handler) -> Handler:
    """Mark ``handler`` (a long wait, like a ``/sync`` long-poll) to be cancelled
    when its client disconnects, instead of holding its wait to the end."""
    handler.ends_on_disconnect = True  # type: ignore[attr-defined]
    return handler


async def _until_disconnect(handler: Handler, request: Request, receive: Receive) -> Response:
    """``handler(request)``, cancelled if the client leaves first (then a 400 nobody reads).

    The body was read whole, so the next ``receive`` returns only once the
    client disconnects (or the answer is complete): a second task waits on it.
    Only marked handlers pay for that task; ``/send`` does not.
    """
    answer: list[Response] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            answer.append(await handler(request))
        except Exception as exc:  # raised below as itself, not in an ExceptionGroup
            failed.append(exc)
        tg.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if not answer:
        raise PeerError(400, "M_UNKNOWN", "client disconnected")
    return answer[0]


def _unread(
    method: str, path: str, headers: tuple[tuple[str, str], ...], client: str | None
) -> Request:
    """What a refusal before the handler knows of its request (for the log line)."""
    return Request(method, path, path, {}, headers, b"", client=client)


def _clip(text: str) -> str:
    """``text`` safe for one log line: non-printables escaped, length bounded."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= MAX_LOGGED_CHARS else text[: MAX_LOGGED_CHARS - 3] + "..."


def _send_details(request: Request) -> str:
    """`` (origin O, txn T)`` for a ``/send`` with an X-Matrix origin, else ``""``."""
    if not request.path.startswith(SEND_PATH_PREFIX):
        return ""
    txn_id = unquote(request.path[len(SEND_PATH_PREFIX) :])
    origin = "?"
    for value in request.header_values("authorization"):
        match = _ORIGIN_RE.search(value)
        if match is not None:
            origin = match[1] or match[2]
            break
    return f" (origin {_clip(origin)}, txn {_clip(txn_id)})"


SEND_PATH_PREFIX = "/_matrix/federation/v1/send/"
_ORIGIN_RE = re.compile(r'origin=(?:"([^"]*)"|([^,\s]*))')


def _parse_query(query_string: str) -> dict[str, str]:
    if not query_string:
        return {}
    result: dict[str, str] = {}
    for part in query_string.split("&"):
        key, _, value = part.partition("=")
        result.setdefault(unquote(key.replace("+", " ")), unquote(value.replace("+", " ")))
    return result


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
