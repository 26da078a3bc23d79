"""Local users' access tokens: who is asking, as ``(user_id, device_id)``.

Two sources, asked in this order:

* ``ConfiguredTokens``: ``access_tokens`` from the config (the embedded
  default, and bridges). Each user is on our server name (``config.py``
  checks it).
* ``WhoamiTokens``: the delegated mode, for a worker beside a homeserver. A
  token is looked up with the homeserver's ``GET
  /_matrix/client/v3/account/whoami``; a success is cached for ``cache_ttl``.
  Only successes are cached: an unknown token (401) is asked again next time
  (a token issued a second ago must work), and a failure (timeout, refused
  connection, 5xx, a malformed answer) is never taken for an answer. It becomes
  503 ``M_UNKNOWN`` for the request: the client retries, nothing is decided on
  it. Every call has a time limit (``timeout``). The cache is bounded
  (``max_cached_tokens``, oldest first out) and keyed by the token's SHA-256,
  so the process does not keep a table of live tokens in clear.

``TokenAuth`` turns a request's token into a ``Requester`` or the client-server
API's errors: no token → 401 ``M_MISSING_TOKEN``, an unknown one → 401
``M_UNKNOWN_TOKEN``. Tokens come from ``Authorization: Bearer`` or, as the
spec still allows, the ``access_token`` query parameter. The ``admin_token``
is not a user's token: it guards the admin API (``require_admin``) and may
read any user's presence (an operator's read), nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import httpx
import orjson

from federation_presence.clock import Clock
from federation_presence.errors import PeerError
from federation_presence.ids import DeviceId, ServerName, UserId, parse_user_id
from federation_presence.presence.inputs import NO_DEVICE

logger = logging.getLogger(__name__)

WHOAMI_PATH = "/_matrix/client/v3/account/whoami"


@dataclass(frozen=True, slots=True)
class Requester:
    """A local user's device, as its access token names it."""

    user_id: UserId
    device_id: DeviceId


class TokenSource(Protocol):
    async def lookup(self, token: str) -> Requester | None:
        """The token's owner, None if the token is unknown; raises ``PeerError`` (503)
        if it cannot tell."""
        ...


class ConfiguredTokens:
    """``access_tokens`` from the config."""

    def __init__(self, tokens: Mapping[str, Requester]) -> None:
        self._tokens = dict(tokens)

    async def lookup(self, token: str) -> Requester | None:
        return self._tokens.get(token)


class WhoamiTokens:
    """Tokens checked with the homeserver's ``/account/whoami``; successes cached."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        homeserver_url: str,
        server_name: ServerName,
        clock: Clock,
        *,
        cache_ttl_ms: int,
        timeout_ms: int,
        max_cached_tokens: int,
    ) -> None:
        self._http = http
        self._url = homeserver_url.rstrip("/") + WHOAMI_PATH
        self._server_name = server_name
        self._clock = clock
        self._ttl_ms = cache_ttl_ms
        self._timeout_s = timeout_ms / 1000
        self._max = max_cached_tokens
        self._cache: OrderedDict[bytes, tuple[Requester, int]] = OrderedDict()
        self.calls = 0

    async def lookup(self, token: str) -> Requester | None:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock.now_ms()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[1] > now:
                return cached[0]
            del self._cache[key]
        requester = await self._ask(token)
        if requester is not None:
            self._cache[key] = (requester, self._clock.now_ms() + self._ttl_ms)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return requester

    async def _ask(self, token: str) -> Requester | None:
        self.calls += 1
        try:
            with anyio.fail_after(self._timeout_s):
                response = await self._http.get(
                    self._url,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=self._timeout_s,
                )
        except (TimeoutError, httpx.HTTPError) as exc:
            logger.warning("whoami at %s failed: %r", self._url, exc)
            raise _unavailable() from exc
        if response.status_code in (401, 403):
            return None
        if response.status_code != 200:
            logger.warning("whoami at %s answered %d", self._url, response.status_code)
            raise _unavailable()
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise _unavailable() from exc
        user_id = body.get("user_id") if isinstance(body, dict) else None
        parsed = parse_user_id(user_id) if isinstance(user_id, str) else None
        if parsed is None:
            logger.warning("whoami at %s gave no valid user_id", self._url)
            raise _unavailable()
        if parsed[1] != self._server_name:
            logger.warning("whoami named %s, not a user of %s", user_id, self._server_name)
            return None
        device_id = body.get("device_id")
        device = DeviceId(device_id) if isinstance(device_id, str) and device_id else NO_DEVICE
        return Requester(parsed[0], device)


def _unavailable() -> PeerError:
    return PeerError(503, "M_UNKNOWN", "cannot check the access token now; retry later")


def request_token(authorization: str | None, query: Mapping[str, str]) -> str | None:
    """The access token of a request: ``Authorization: Bearer``, else ``?access_token=``."""
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return query.get("access_token") or None


class TokenAuth:
    """Access tokens → ``Requester``; the admin token guards the admin API."""

    def __init__(self, sources: Sequence[TokenSource], admin_token: str | None) -> None:
        self._sources = tuple(sources)
        self._admin_token = admin_token.encode() if admin_token is not None else None

    def is_admin(self, token: str) -> bool:
        return self._admin_token is not None and hmac.compare_digest(
            token.encode(), self._admin_token
        )

    def require_admin(self, token: str | None) -> None:
        if token is None:
            raise PeerError(401, "M_MISSING_TOKEN", "Missing access token")
        if not self.is_admin(token):
            raise PeerError(401, "M_UNKNOWN_TOKEN", "Unknown access token")

    async def requester(self, token: str | None) -> Requester:
        """The token's owner, or 401 (missing / unknown), or 503 (cannot tell)."""
        if token is None:
            raise PeerError(401, "M_MISSING_TOKEN", "Missing access token")
        for source in self._sources:
            found = await source.lookup(token)
            if found is not None:
                return found
        raise PeerError(401, "M_UNKNOWN_TOKEN", "Unknown access token")
