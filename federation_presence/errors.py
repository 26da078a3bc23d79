"""The one exception tree of federation-presence.

Every error the package raises on purpose derives from ``FederationPresenceError``;
foreign exceptions (httpx, sqlite3, asyncpg, nacl, json) are mapped to one of
these at the boundary where they happen (``raise ... from exc``). The names say
whose fault it is:

* ``PeerError``: bad input from a remote server or a client. It carries the
  HTTP status and Matrix ``errcode`` it is answered with.
* ``UpstreamError``: a destination or key server failed us; retry with backoff.
* ``StoreError``: the database failed.
* ``ConfigError``: the configuration is wrong; names the file and key.
"""

from __future__ import annotations


class FederationPresenceError(Exception):
    """Root of every error raised on purpose by this package."""


class PeerError(FederationPresenceError):
    """A remote server or client sent something we refuse.

    Answered as ``{"errcode": errcode, "error": message}`` with ``status``;
    ``extra`` adds fields such as ``retry_after_ms``.
    """

    def __init__(
        self,
        status: int,
        errcode: str,
        message: str,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message
        self.extra = dict(extra or {})

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"errcode": self.errcode, "error": self.message}
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"PeerError({self.status}, {self.errcode!r}, {self.message!r})"


class UpstreamError(FederationPresenceError):
    """A remote server (key server, destination, notary) failed or misbehaved."""


class StoreError(FederationPresenceError):
    """The database failed; the operation did not happen."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer version of this program."""


class ConfigError(FederationPresenceError):
    """A configuration mistake: one readable line naming the file and key."""

    def __init__(self, key: str, problem: str, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}")
