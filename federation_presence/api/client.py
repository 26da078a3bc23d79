"""Client-server handlers (the presence subset): ``/versions`` and presence status.

``PUT /_matrix/client/v3/presence/{userId}/status`` sets the requesting
device's presence (``presence``: ``online``, ``unavailable``, ``offline``,
``busy`` or ``org.matrix.msc3026.busy``) and, when the body carries the key,
the user's ``status_msg`` (null clears it). Only for oneself: another user is
403 ``M_FORBIDDEN``. Answered once durable.

``GET`` of the same path reads a local or remote user's combined presence, if
the requester may see it (``PresenceRouting.can_see``: itself, a shared room,
or the router), else 403 ``M_FORBIDDEN`` as Synapse answers; a user never
heard of is 404 ``M_NOT_FOUND``. The ``admin_token`` may read anyone (an
operator's read, used by tests and tools); it cannot PUT or sync.

Tokens and their errors are ``auth.TokenAuth``'s. ``busy`` is given to
clients under its unstable name ``org.matrix.msc3026.busy``, as the
``unstable_features`` flag we advertise promises (MSC3026).
"""

from __future__ import annotations

from federation_presence.api.app import Request, Response, Router, json_response
from federation_presence.auth import Requester, TokenAuth, request_token
from federation_presence.clock import Clock
from federation_presence.errors import PeerError
from federation_presence.ids import UserId, parse_user_id
from federation_presence.keeper import PresenceKeeper
from federation_presence.presence.inputs import SetPresence
from federation_presence.presence.states import PresenceState, parse_presence
from federation_presence.presence.wire import presence_content
from federation_presence.routing.presence_routing import PresenceRouting

SPEC_VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
                 "v1.11"]  # fmt: skip
UNSTABLE_FEATURES = {"org.matrix.msc3026.busy_presence": True}


def path_user_id(request: Request) -> UserId:
    parsed = parse_user_id(request.path_param)
    if parsed is None:
        raise PeerError(400, "M_INVALID_PARAM", "not a user ID")
    return parsed[0]


def checked_status_msg(value: object, max_length: int) -> str | None:
    """A client's ``status_msg``: a string (or null) we can store, else 400."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PeerError(400, "M_BAD_JSON", "status_msg must be a string or null")
    if len(value) > max_length:
        raise PeerError(400, "M_INVALID_PARAM", f"status_msg longer than {max_length}")
    if "\x00" in value:
        raise PeerError(400, "M_INVALID_PARAM", "status_msg must not contain U+0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PeerError(400, "M_BAD_JSON", "status_msg is not valid Unicode") from exc
    return value


def checked_presence(value: object) -> PresenceState:
    state = parse_presence(value)
    if state is None:
        raise PeerError(
            400,
            "M_INVALID_PARAM",
            "presence must be one of online, unavailable, offline, busy",
        )
    return state


def add_client_routes(
    router: Router,
    keeper: PresenceKeeper,
    auth: TokenAuth,
    routing: PresenceRouting,
    clock: Clock,
    *,
    max_status_msg_length: int,
) -> None:
    async def versions(request: Request) -> Response:
        return json_response(
            200, {"versions": SPEC_VERSIONS, "unstable_features": UNSTABLE_FEATURES}
        )

    async def get_presence(request: Request) -> Response:
        token = request_token(request.header("authorization"), request.query)
        target = path_user_id(request)
        if token is None or not auth.is_admin(token):
            requester = await auth.requester(token)
            if not await routing.can_see(requester.user_id, target):
                raise PeerError(403, "M_FORBIDDEN", "You are not allowed to see their presence.")
        user = await keeper.get(target)
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

    async def put_presence(request: Request) -> Response:
        requester: Requester = await auth.requester(
            request_token(request.header("authorization"), request.query)
        )
        target = path_user_id(request)
        if target != requester.user_id:
            raise PeerError(403, "M_FORBIDDEN", "You cannot set presence state of another user.")
        body = request.json_object()
        if "presence" not in body:
            raise PeerError(400, "M_MISSING_PARAM", "presence is required")
        state = checked_presence(body["presence"])
        status_msg_set = "status_msg" in body
        status_msg = checked_status_msg(body.get("status_msg"), max_status_msg_length)
        await keeper.apply_local(
            SetPresence(requester.user_id, requester.device_id, state, status_msg, status_msg_set)
        )
        return json_response(200, {})

    router.add("GET", "/_matrix/client/versions", versions)
    router.add("GET", "/_matrix/client/v3/presence/{userId}/status", get_presence)
    router.add("PUT", "/_matrix/client/v3/presence/{userId}/status", put_presence)
