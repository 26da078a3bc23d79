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
* A body larger than the limit is refused with 413 ``M_TOO_LARGE`` before it
  is read whole, whether or not ``Content-Length`` announced it.
* Nothing a client sends can make a handler's exception escape: an unexpected
  exception is logged and answered 500 ``M_UNKNOWN`` (a bug, never an input).

Routing is a dict lookup on fixed paths plus a short list of prefix routes
with one trailing path parameter; no framework, because per-request overhead
is the ingest budget (see BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from federation_presence.errors import PeerError, StoreError

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


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
    """The ASGI callable served by uvicorn."""

    def __init__(self, router: Router, *, max_body_bytes: int) -> None:
        self._router = router
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        response = await self._respond(scope, receive)
        headers = [*response.headers, (b"content-length", str(len(response.body)).encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path_str = raw_path.decode("latin-1")
        path = raw_path_str
        found = self._router.find(raw_path_str)
        if found is None:
            return error_response(PeerError(404, "M_UNRECOGNIZED", "Unrecognized request"))
        methods, path_param = found
        method: str = scope["method"]
        handler = methods.get(method)
        if handler is None:
            return error_response(PeerError(405, "M_UNRECOGNIZED", "Method not allowed"))
        headers = tuple(
            (key.decode("latin-1").lower(), value.decode("latin-1"))
            for key, value in scope["headers"]
        )
        try:
            body = await self._read_body(headers, receive)
        except PeerError as error:
            return error_response(error)
        query_bytes: bytes = scope.get("query_string", b"")
        query_string = query_bytes.decode("latin-1")
        client = scope.get("client")
        request = Request(
            method=method,
            path=path,
            uri=f"{raw_path_str}?{query_string}" if query_string else raw_path_str,
            query=_parse_query(query_string),
            headers=headers,
            body=body,
            path_param=path_param,
            client=client[0] if client else None,
        )
        try:
            return await handler(request)
        except PeerError as error:
            return error_response(error)
        except StoreError:
            logger.exception("store failure answering %s %s", method, path)
            return error_response(PeerError(503, "M_UNKNOWN", "storage unavailable, retry later"))
        except Exception:
            logger.exception("bug: unexpected exception answering %s %s", method, path)
            return error_response(PeerError(500, "M_UNKNOWN", "internal error"))

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
