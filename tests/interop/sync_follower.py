"""Follow a user's ``/sync`` presence (Synapse's or the worker's: the same client-server API).

``SyncFollower.wait_for`` long-polls (the server holds each request until
something new arrives or ``LONG_POLL_MS`` passes: an event wait on the
server's side, not a sleep) and returns the first presence event that
matches, within a deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from federation_presence.clock import SystemClock

LONG_POLL_MS = 2_000
Event = dict[str, Any]


@dataclass
class SyncFollower:
    http: httpx.AsyncClient
    token: str
    # What this client tells the server about itself while it syncs:
    # "offline" leaves its own presence alone (the spec's "not syncing").
    set_presence: str = "offline"
    since: str | None = None
    seen: list[Event] = field(default_factory=list)

    async def poll(self, timeout_ms: int = LONG_POLL_MS) -> list[Event]:
        params = {"timeout": str(timeout_ms), "set_presence": self.set_presence}
        if self.since is not None:
            params["since"] = self.since
        response = await self.http.get(
            "/_matrix/client/v3/sync",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30 + timeout_ms / 1000,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        self.since = body["next_batch"]
        events: list[Event] = body.get("presence", {}).get("events", [])
        self.seen += events
        return events

    async def wait_for(
        self, what: str, matches: Callable[[Event], bool], timeout_s: float = 30.0
    ) -> Event:
        """The first event (already seen or new) for which ``matches`` holds."""
        clock = SystemClock()
        deadline = clock.monotonic() + timeout_s
        for event in self.seen:
            if matches(event):
                return event
        while clock.monotonic() < deadline:
            for event in await self.poll():
                if matches(event):
                    return event
        raise AssertionError(f"no {what} in /sync within {timeout_s:.0f} s; saw {self.seen!r}")


def presence_is(user_id: str, presence: str, status_msg: str | None) -> Callable[[Event], bool]:
    def matches(event: Event) -> bool:
        content = event.get("content", {})
        return (
            event.get("sender") == user_id
            and content.get("presence") == presence
            and content.get("status_msg") == status_msg
        )

    return matches
