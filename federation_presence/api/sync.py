"""Presence-only ``GET /_matrix/client/v3/sync``: a long-poll on the presence stream.

Parameters (client-server ``sync.yaml``): ``since`` (a ``next_batch`` we
gave, ``p<stream id>``), ``timeout`` (ms to wait for something new; capped at
``MAX_TIMEOUT_MS``), ``set_presence`` (``online`` — the default —,
``unavailable``, ``offline``; ``busy`` is accepted too) and ``full_state``.
Anything else malformed is 400 ``M_INVALID_PARAM``.

Each call is its device's heartbeat (DESIGN.md's transitions): a
``SyncStarted`` is applied (durably) before it reads and a ``SyncEnded``
after, shielded from cancellation, so a device is "syncing" exactly while a
request is in flight and the sync timeout counts from its end.

Without ``since`` (or with ``full_state=true``, or more than ``MAX_BEHIND``
stream positions behind, or after the router asked for it with
``send_local_online_presence_to``) the answer is the current presence of
everyone the caller is interested in: themselves, their room
mates and the router's interest. With ``since`` it is the stream rows after
it that the caller may see (``PresenceRouting.visible``); if there are none
and ``timeout`` > 0 the request registers a ``Waiter`` and sleeps on its
event until a change concerning the caller (``SyncWakeups``) or the timeout
(the worker's ``Clock``), then reads again. The event is renewed before each
read, so a change landing between the read and the wait is not missed.

Answer: ``next_batch``, ``presence.events`` (``m.presence`` events with
``sender``), and the empty sections clients expect.
"""

from __future__ import annotations

from typing import Any

import anyio

from federation_presence.api.app import (
    Request,
    Response,
    Router,
    ends_on_disconnect,
    json_response,
)
from federation_presence.auth import TokenAuth, request_token
from federation_presence.clock import Clock
from federation_presence.errors import PeerError
from federation_presence.ids import UserId
from federation_presence.keeper import PresenceKeeper
from federation_presence.presence.inputs import SyncEnded, SyncStarted
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import PresenceState, parse_presence
from federation_presence.presence.wire import presence_content
from federation_presence.routing.modules import Interest
from federation_presence.routing.presence_routing import PresenceRouting
from federation_presence.routing.resend import OnlinePresenceResend
from federation_presence.routing.wakeups import SyncWakeups
from federation_presence.stream import PresenceStream

MAX_TIMEOUT_MS = 5 * 60_000
STREAM_PAGE = 500
MAX_EVENTS = 1_000
# A caller further behind than this gets current state instead of the changes
# it missed (as Synapse does): reading them would cost the worker O(missed).
MAX_BEHIND = 1_000


def parse_since(value: str | None) -> int | None:
    if value is None:
        return None
    digits = value[1:] if value.startswith("p") else ""
    if not digits.isdigit() or len(digits) > 18:
        raise PeerError(400, "M_INVALID_PARAM", "since is not a token this server gave")
    return int(digits)


def parse_timeout(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit() or len(value) > 12:
        raise PeerError(400, "M_INVALID_PARAM", "timeout must be a non-negative integer")
    return min(int(value), MAX_TIMEOUT_MS)


def parse_set_presence(value: str | None) -> PresenceState | None:
    if value is None:
        return None
    state = parse_presence(value)
    if state is None:
        raise PeerError(
            400, "M_INVALID_PARAM", "set_presence must be online, unavailable or offline"
        )
    return state


def parse_bool(value: str | None, name: str) -> bool:
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise PeerError(400, "M_INVALID_PARAM", f"{name} must be true or false")


async def wait_until(clock: Clock, event: anyio.Event, deadline_ms: int) -> None:
    """Return when ``event`` is set or the clock reaches ``deadline_ms``."""
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep_until(deadline_ms)
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        await event.wait()
        tg.cancel_scope.cancel()


class PresenceSync:
    """The reads behind ``/sync`` (separate from HTTP parsing, for the bench and tests)."""

    def __init__(
        self,
        keeper: PresenceKeeper,
        stream: PresenceStream,
        routing: PresenceRouting,
        wakeups: SyncWakeups,
        resend: OnlinePresenceResend,
        clock: Clock,
    ) -> None:
        self._keeper = keeper
        self._stream = stream
        self._routing = routing
        self._wakeups = wakeups
        self._resend = resend
        self._clock = clock

    async def current(self, user_id: UserId, interest: Interest) -> list[UserPresence]:
        """Current presence of everyone ``user_id`` is interested in (at most MAX_EVENTS)."""
        if interest.all_users:
            entries, _ = await self._stream.since(0, MAX_EVENTS)
            candidates: set[UserId] = {entry.user_id for entry in entries}
        else:
            candidates = set(interest.users)
        candidates.add(user_id)
        candidates.update(self._routing.room_mates(user_id))
        found: list[UserPresence] = []
        for candidate in sorted(candidates):
            state = await self._keeper.get(candidate)
            if state is not None:
                found.append(state)
                if len(found) >= MAX_EVENTS:
                    break
        return found

    async def since(
        self, user_id: UserId, interest: Interest, after: int
    ) -> tuple[list[UserPresence], int]:
        """Visible changes after ``after`` and the position they bring the caller to."""
        shown: list[UserPresence] = []
        position = after
        while len(shown) < MAX_EVENTS:
            entries, next_position = await self._stream.since(position, STREAM_PAGE)
            if entries:
                # One user may be on the window several times: the latest wins.
                latest = {entry.user_id: entry.state for entry in entries}
                shown.extend(await self._routing.visible(user_id, interest, list(latest.values())))
            if next_position == position:
                break
            position = next_position
            if len(entries) < STREAM_PAGE:
                break
        return shown, position

    async def poll(
        self, user_id: UserId, since: int | None, timeout_ms: int, full_state: bool
    ) -> tuple[list[UserPresence], int]:
        interest = await self._routing.interest(user_id)
        position = self._stream.current_id
        if (
            since is None
            or full_state
            or position - since > MAX_BEHIND
            or self._resend.take_full(user_id)
        ):
            return await self.current(user_id, interest), max(position, since or 0)
        deadline = self._clock.now_ms() + timeout_ms
        with self._wakeups.waiting(user_id, interest) as waiter:
            while True:
                waiter.event = anyio.Event()
                states, position = await self.since(user_id, interest, since)
                if states or self._wakeups.is_closed() or self._clock.now_ms() >= deadline:
                    return states, position
                since = position
                await wait_until(self._clock, waiter.event, deadline)
                if self._wakeups.is_closed():
                    return [], position
                if self._resend.take_full(user_id):
                    position = max(self._stream.current_id, since)
                    return await self.current(user_id, interest), position


def sync_body(states: list[UserPresence], position: int, now: int) -> dict[str, Any]:
    events = []
    for s in states:
        content = presence_content(s.state, s.last_active_ts, s.currently_active, s.status_msg, now)
        if content["status_msg"] is None:
            # The m.presence event schema has status_msg as an optional string (not null).
            del content["status_msg"]
        events.append({"type": "m.presence", "sender": s.user_id, "content": content})
    return {
        "next_batch": f"p{position}",
        "presence": {"events": events},
        "account_data": {"events": []},
        "to_device": {"events": []},
        "rooms": {"join": {}, "invite": {}, "leave": {}},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
    }


def add_sync_routes(
    router: Router, auth: TokenAuth, keeper: PresenceKeeper, sync: PresenceSync, clock: Clock
) -> None:
    async def handle_sync(request: Request) -> Response:
        requester = await auth.requester(
            request_token(request.header("authorization"), request.query)
        )
        query = request.query
        since = parse_since(query.get("since"))
        timeout_ms = parse_timeout(query.get("timeout"))
        set_presence = parse_set_presence(query.get("set_presence"))
        full_state = parse_bool(query.get("full_state"), "full_state")
        user_id, device_id = requester.user_id, requester.device_id
        await keeper.apply_local(SyncStarted(user_id, device_id, set_presence))
        try:
            states, position = await sync.poll(user_id, since, timeout_ms, full_state)
        finally:
            with anyio.CancelScope(shield=True):
                await keeper.apply_local(SyncEnded(user_id, device_id, set_presence))
        return json_response(200, sync_body(states, position, clock.now_ms()))

    # A long-poll whose client left ends at once (its device stops syncing)
    # instead of waiting out its timeout (up to 5 min) for nobody.
    router.add("GET", "/_matrix/client/v3/sync", ends_on_disconnect(handle_sync))
