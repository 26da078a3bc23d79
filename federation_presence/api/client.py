"""Client-server handlers (the presence subset): ``/versions`` and presence status.

Access tokens: until local users are served (the local-presence issue), the
only token accepted is the configured ``admin_token``; it may read any user's
presence. A missing token is 401 ``M_MISSING_TOKEN``, a wrong one 401
``M_UNKNOWN_TOKEN``, as the client-server API says.

``busy`` is given to clients under its unstable name
``org.matrix.msc3026.busy``, as the ``unstable_features`` flag we advertise
promises (MSC3026).
"""

from __future__ import annotations

import hmac

from federation_presence.api.app import Request, Response, Router, json_response
from federation_presence.clock import Clock
from federation_presence.errors import PeerError
from federation_presence.ids import UserId, parse_user_id
from federation_presence.keeper import PresenceKeeper
from federation_presence.presence.wire import presence_content

SPEC_VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
                 "v1.11"]  # fmt: skip
UNSTABLE_FEATURES = {"org.matrix.msc3026.busy_presence": True}


def bearer_token(request: Request) -> str | None:
    header = request.header("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ClientAuth:
    def __init__(self, admin_token: str | None) -> None:
        self._admin_token = admin_token

    def require(self, request: Request) -> None:
        token = bearer_token(request)
        if token is None:
            raise PeerError(401, "M_MISSING_TOKEN", "Missing access token")
        if self._admin_token is None or not hmac.compare_digest(
            token.encode(), self._admin_token.encode()
        ):
            raise PeerError(401, "M_UNKNOWN_TOKEN", "Unknown access token")


def add_client_routes(
    router: Router, keeper: PresenceKeeper, auth: ClientAuth, clock: Clock
) -> None:
    async def versions(request: Request) -> Response:
        return json_response(
            200, {"versions": SPEC_VERSIONS, "unstable_features": UNSTABLE_FEATURES}
        )

    async def get_presence(request: Request) -> Response:
        auth.require(request)
        parsed = parse_user_id(request.path_param)
        if parsed is None:
            raise PeerError(400, "M_INVALID_PARAM", "not a user ID")
        user = await keeper.get(UserId(parsed[0]))
        if user is None:
            raise PeerError(404, "M_NOT_FOUND", "no presence known for this user")
        return json_response(
            200,
            presence_content(
                user.state,
                user.last_active_ts,
                user.currently_active,
                user.status_msg,
                clock.now_ms(),
            ),
        )

    router.add("GET", "/_matrix/client/versions", versions)
    router.add("GET", "/_matrix/client/v3/presence/{userId}/status", get_presence)
