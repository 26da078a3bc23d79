"""The integration (admin) API, under the ``admin_token``: rooms and bridge heartbeats.

* ``PUT /_presence/admin/v1/rooms/{roomId}`` with ``{"members": [user IDs]}``
  sets a room's members (local and remote; an empty list forgets the room);
  ``GET`` reads them back, ``DELETE`` forgets the room (404 if unknown).
  Users sharing a room are interested in each other's presence. Answered
  once stored.
* ``POST /_presence/admin/v1/heartbeats`` with ``{"heartbeats": [{user_id,
  device_id, presence, active, status_msg?}, ...]}`` (at most
  ``MAX_HEARTBEATS``): a bridge drives many users' devices in one request,
  made durable in ONE store write. Each entry is a device heartbeat (a sync
  with ``set_presence=presence``); ``active: true`` adds a pro-active event;
  ``presence: offline`` or a ``status_msg`` key makes it an explicit set, as
  ``PUT .../status`` does (a heartbeat cannot carry "offline": a sync with
  ``set_presence=offline`` changes nothing). The whole batch is validated
  before anything applies: one bad entry is 400 naming its index, and
  nothing of the batch is applied.

Errors are the client-server API's: 401 ``M_MISSING_TOKEN`` /
``M_UNKNOWN_TOKEN`` without the admin token, 400 ``M_BAD_JSON`` /
``M_INVALID_PARAM`` / ``M_MISSING_PARAM`` for bad bodies.
"""

from __future__ import annotations

from typing import Any

from federation_presence.api.app import Request, Response, Router, json_response
from federation_presence.api.client import checked_presence, checked_status_msg
from federation_presence.auth import TokenAuth, request_token
from federation_presence.errors import PeerError
from federation_presence.ids import DeviceId, ServerName, UserId, parse_user_id
from federation_presence.keeper import PresenceKeeper
from federation_presence.presence.inputs import (
    Activity,
    DeviceHeartbeat,
    LocalInput,
    SetPresence,
)
from federation_presence.presence.states import PresenceState
from federation_presence.routing.rooms import RoomDirectory

MAX_ROOM_ID_LENGTH = 255
MAX_ROOM_MEMBERS = 50_000
MAX_HEARTBEATS = 10_000
MAX_DEVICE_ID_LENGTH = 255


def checked_room_id(value: str) -> str:
    if (
        not value.startswith("!")
        or len(value) < 2
        or len(value) > MAX_ROOM_ID_LENGTH
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise PeerError(400, "M_INVALID_PARAM", "not a room ID ('!opaque[:server]')")
    return value


def checked_members(body: dict[str, Any]) -> list[UserId]:
    members = body.get("members")
    if not isinstance(members, list):
        raise PeerError(400, "M_BAD_JSON", "members must be a list of user IDs")
    if len(members) > MAX_ROOM_MEMBERS:
        raise PeerError(400, "M_INVALID_PARAM", f"more than {MAX_ROOM_MEMBERS} members")
    out: list[UserId] = []
    for index, member in enumerate(members):
        parsed = parse_user_id(member) if isinstance(member, str) else None
        if parsed is None or "\x00" in member:
            raise PeerError(400, "M_INVALID_PARAM", f"members[{index}] is not a user ID")
        out.append(parsed[0])
    return out


def heartbeat_inputs(
    item: object, index: int, server_name: ServerName, max_status_msg_length: int
) -> list[LocalInput]:
    """The core inputs one heartbeat entry stands for, or 400 naming ``index``."""
    where = f"heartbeats[{index}]"
    if not isinstance(item, dict):
        raise PeerError(400, "M_BAD_JSON", f"{where} must be an object")
    for key in ("user_id", "device_id", "presence"):
        if key not in item:
            raise PeerError(400, "M_MISSING_PARAM", f"{where}.{key} is required")
    user_id = item["user_id"]
    parsed = parse_user_id(user_id) if isinstance(user_id, str) else None
    if parsed is None or parsed[1] != server_name:
        raise PeerError(400, "M_INVALID_PARAM", f"{where}.user_id is not a user of {server_name}")
    device = item["device_id"]
    if (
        not isinstance(device, str)
        or not device
        or len(device) > MAX_DEVICE_ID_LENGTH
        or "\x00" in device
    ):
        raise PeerError(400, "M_INVALID_PARAM", f"{where}.device_id must be a non-empty string")
    try:
        state = checked_presence(item["presence"])
        status_msg = checked_status_msg(item.get("status_msg"), max_status_msg_length)
    except PeerError as error:
        raise PeerError(error.status, error.errcode, f"{where}: {error.message}") from error
    active = item.get("active", False)
    if not isinstance(active, bool):
        raise PeerError(400, "M_BAD_JSON", f"{where}.active must be true or false")
    user, device_id = parsed[0], DeviceId(device)
    inputs: list[LocalInput] = []
    if "status_msg" in item or state is PresenceState.OFFLINE:
        inputs.append(SetPresence(user, device_id, state, status_msg, "status_msg" in item))
    else:
        inputs.append(DeviceHeartbeat(user, device_id, state))
    if active:
        inputs.append(Activity(user, device_id))
    return inputs


def add_admin_routes(
    router: Router,
    auth: TokenAuth,
    rooms: RoomDirectory,
    keeper: PresenceKeeper,
    server_name: ServerName,
    *,
    max_status_msg_length: int,
) -> None:
    def require_admin(request: Request) -> None:
        auth.require_admin(request_token(request.header("authorization"), request.query))

    async def put_room(request: Request) -> Response:
        require_admin(request)
        room_id = checked_room_id(request.path_param)
        members = checked_members(request.json_object())
        await rooms.set_room(room_id, members)
        return json_response(200, {})

    async def get_room(request: Request) -> Response:
        require_admin(request)
        members = rooms.members(checked_room_id(request.path_param))
        if members is None:
            raise PeerError(404, "M_NOT_FOUND", "unknown room")
        return json_response(200, {"members": sorted(members)})

    async def delete_room(request: Request) -> Response:
        require_admin(request)
        if not await rooms.delete_room(checked_room_id(request.path_param)):
            raise PeerError(404, "M_NOT_FOUND", "unknown room")
        return json_response(200, {})

    async def heartbeats(request: Request) -> Response:
        require_admin(request)
        items = request.json_object().get("heartbeats")
        if not isinstance(items, list):
            raise PeerError(400, "M_BAD_JSON", "heartbeats must be a list")
        if len(items) > MAX_HEARTBEATS:
            raise PeerError(400, "M_INVALID_PARAM", f"more than {MAX_HEARTBEATS} heartbeats")
        inputs: list[LocalInput] = []
        for index, item in enumerate(items):
            inputs.extend(heartbeat_inputs(item, index, server_name, max_status_msg_length))
        if inputs:
            await keeper.apply_local_batch(inputs)
        return json_response(200, {"applied": len(items)})

    path = "/_presence/admin/v1/rooms/{roomId}"
    router.add("PUT", path, put_room)
    router.add("GET", path, get_room)
    router.add("DELETE", path, delete_room)
    router.add("POST", "/_presence/admin/v1/heartbeats", heartbeats)
