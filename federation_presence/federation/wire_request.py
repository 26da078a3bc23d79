"""The ``httpx.Request`` of one signed federation request, built cheaply.

``FederationClient`` sends a hundred requests back to back when the sender
fans a change out, all on one core, and httpx's general-purpose constructors
cost more than the signature does: parsing the URL (~15 µs) and
``httpx.Request(content=...)`` (~12 µs: header normalisation and lookups)
per request. What does not change between two requests to one resolved
destination (the URL's scheme, host and port; the ``Host``, ``User-Agent``,
``Accept-Encoding`` and ``Accept`` headers; the SNI) is made once here, in a
``RequestTarget``, and a request is that plus its path, its body and its
``Authorization``.

Invariants:

* The URL of ``RequestTarget.url(path)`` equals
  ``httpx.URL(scheme="https", host=..., port=..., raw_path=path)`` (the
  public constructor, which ``request_url`` calls). A path made only of
  unreserved characters and upper-case ``%XX`` escapes, in segments that do
  not start with ``.`` (so no dot segments), is exactly what httpx's parser
  would keep, and is put in place of the base URL's path without parsing
  (httpx's ``ParseResult``, a named tuple). Any other path goes through the
  parser. If httpx's URL ever stops having that shape, the fast path turns
  itself off at import (checked against the parser) and every URL is parsed.
  A test holds the two equal over generated paths.
* The request carries the headers ``httpx.Request(content=...)`` would: the
  same names, values and order (the stack's defaults, ``Host``, ``Accept``,
  then ``Content-Type`` and ``Content-Length`` when there is a body; a
  bodiless POST/PUT/PATCH starts with ``Content-Length: 0``), then
  ``Authorization``; its body is already read (``request.content`` works).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from federation_presence.federation.outbound_http import DEFAULT_HEADERS

MAX_TARGETS = 4_096
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Unreserved characters and upper-case escapes; no segment starts with '.'.
_PLAIN_PATH = re.compile(r"(?:/(?:[A-Za-z0-9_~-]|%[0-9A-F]{2})(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})*)+")


def request_url(host: str, port: int, path: str) -> httpx.URL:
    """The URL that connects to ``host:port`` for ``path`` (httpx's parser)."""
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path[:100]!r}")
    return httpx.URL(scheme="https", host=host, port=port, raw_path=path.encode("utf-8"))


def _replaced_path(base: httpx.URL, path: str) -> httpx.URL:
    url = httpx.URL.__new__(httpx.URL)
    url._uri_reference = base._uri_reference._replace(path=path)
    return url


def _fast_path_works() -> bool:
    try:
        base = request_url("a.example", 8448, "/")
        path = "/_matrix/federation/v1/send/a%2Fb_1.2~"
        fast, parsed = _replaced_path(base, path), request_url("a.example", 8448, path)
        return str(fast) == str(parsed) and fast.raw_path == parsed.raw_path and fast == parsed
    except Exception:
        return False


_FAST_PATH = _fast_path_works()


@dataclass(frozen=True, slots=True)
class RequestTarget:
    """What every request to one resolved destination shares."""

    host: str
    port: int
    base_url: httpx.URL
    headers: tuple[tuple[bytes, bytes], ...]  # the stack's defaults, Host, Accept
    sni_hostname: str | None

    def url(self, path: str) -> httpx.URL:
        """The URL for ``path`` (the request target, query included)."""
        if _FAST_PATH and _PLAIN_PATH.fullmatch(path):
            return _replaced_path(self.base_url, path)
        return request_url(self.host, self.port, path)

    def request(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        authorization: str,
        timeout: dict[str, float],
    ) -> httpx.Request:
        """The request, ``Authorization`` (signed over ``url.raw_path``) last."""
        if content is not None:
            headers = [
                *self.headers,
                (b"Content-Type", b"application/json"),
                (b"Content-Length", b"%d" % len(content)),
            ]
        elif method in _BODY_METHODS:
            headers = [(b"Content-Length", b"0"), *self.headers]  # where httpx puts it
        else:
            headers = list(self.headers)
        headers.append((b"Authorization", authorization.encode("ascii")))
        extensions: dict[str, object] = {"timeout": timeout}
        if self.sni_hostname is not None:
            extensions["sni_hostname"] = self.sni_hostname
        request = httpx.Request(
            method,
            url,
            headers=headers,
            stream=httpx.ByteStream(b"" if content is None else content),
            extensions=extensions,
        )
        request.read()
        return request


class RequestTargets:
    """``RequestTarget``s by resolved address and names; at most ``MAX_TARGETS``."""

    def __init__(self, max_targets: int = MAX_TARGETS) -> None:
        self._max = max_targets
        self._targets: dict[tuple[str, int, str, str | None], RequestTarget] = {}

    def get(self, host: str, port: int, host_header: str, sni: str | None) -> RequestTarget:
        key = (host, port, host_header, sni)
        found = self._targets.get(key)
        if found is not None:
            return found
        if len(self._targets) >= self._max:
            self._targets.clear()  # a rebuild costs one URL parse per destination
        named = (*DEFAULT_HEADERS.items(), ("Host", host_header), ("Accept", "application/json"))
        headers = tuple((name.encode("ascii"), value.encode("ascii")) for name, value in named)
        target = RequestTarget(host, port, request_url(host, port, "/"), headers, sni)
        self._targets[key] = target
        return target
