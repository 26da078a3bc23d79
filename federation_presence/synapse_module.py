"""A Synapse module that hands a homeserver's local presence to the worker beside it.

Runs **inside Synapse**, not in the worker: put this package on Synapse's
path (``pip install --no-deps federation-presence`` into Synapse's venv, or
``PYTHONPATH``) and add to homeserver.yaml::

    presence:
      enabled: untracked          # Synapse stops tracking, sending and ingesting presence
    modules:
      - module: federation_presence.synapse_module.PresenceForwarder
        config:
          worker_url: http://127.0.0.1:8449   # the worker's admin listener
          admin_token: <the worker's admin_token>

Why this shape (found against Synapse 1.163, ``synapse/handlers/presence.py``):
with ``presence.enabled: untracked`` Synapse ignores ``PUT …/presence``,
syncs no longer move anyone's presence, presence EDUs it receives are dropped
(``FederationServer.on_edu``) and it sends none; ``/sync`` still serves what
its presence store holds. No module callback reports presence in that mode,
so this module observes the two signals Synapse still offers a module:

* every authenticated client request of a local user (the account-validity
  callback ``is_user_expired``, which Synapse calls on each such request,
  ``/sync`` included; the module answers "no opinion") → the user is
  syncing: a device heartbeat ``online``;
* every event a local user sends (third-party-rules ``on_new_event``) → a
  pro-active event (``active: true``).

Explicit presence (``PUT /_matrix/client/v3/presence/{userId}/status`` with a
status message) does not pass through Synapse at all: the reverse proxy
routes it to the worker (see README, "Running beside Synapse").

Once a second (``flush_interval_ms``) the module posts what it saw to the
worker's bridge API, ``POST /_presence/admin/v1/heartbeats``, one entry per
user. Memory is bounded by the users active within one interval (a dict
keyed by user); when the worker cannot be reached the entries stay and are
merged with the next interval's (never more than one per user), and at most
``MAX_HEARTBEATS`` go in one request.

What Synapse does not tell a module: which device made the request and the
``set_presence`` parameter of a sync. Every request counts as the device
``device_id`` (default ``synapse``) syncing ``online``; a client syncing with
``set_presence=unavailable`` shows online until it stops syncing.

This file imports nothing outside the standard library: Synapse's venv has
none of the worker's dependencies, and the package's ``__init__`` imports
nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

HEARTBEATS_PATH = "/_presence/admin/v1/heartbeats"
MAX_HEARTBEATS = 10_000  # the worker's per-request limit
DEFAULT_FLUSH_INTERVAL_MS = 1_000
DEFAULT_DEVICE_ID = "synapse"


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    worker_url: str
    admin_token: str
    flush_interval_ms: int = DEFAULT_FLUSH_INTERVAL_MS
    device_id: str = DEFAULT_DEVICE_ID


class PresenceForwarder:
    """Synapse module: local users' activity → the worker's heartbeat API."""

    def __init__(self, config: ForwarderConfig, api: Any) -> None:
        self._config = config
        self._api = api
        # user_id -> pro-active (True wins over a plain request within an interval)
        self._pending: dict[str, bool] = {}
        self._url = config.worker_url.rstrip("/") + HEARTBEATS_PATH
        api.register_account_validity_callbacks(is_user_expired=self._on_request)
        api.register_third_party_rules_callbacks(on_new_event=self._on_new_event)
        api.looping_background_call(
            self.flush, config.flush_interval_ms, desc="federation_presence_forward"
        )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> ForwarderConfig:
        url = config.get("worker_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError("worker_url must be the worker's http(s):// URL")
        token = config.get("admin_token")
        if not isinstance(token, str) or not token:
            raise ValueError("admin_token must be the worker's admin_token")
        interval = config.get("flush_interval_ms", DEFAULT_FLUSH_INTERVAL_MS)
        if not isinstance(interval, int) or isinstance(interval, bool) or interval <= 0:
            raise ValueError("flush_interval_ms must be a positive integer")
        device_id = config.get("device_id", DEFAULT_DEVICE_ID)
        if not isinstance(device_id, str) or not device_id:
            raise ValueError("device_id must be a non-empty string")
        return ForwarderConfig(url, token, interval, device_id)

    def saw(self, user_id: str, active: bool) -> None:
        """Record one sign of life of a local user until the next flush."""
        self._pending[user_id] = self._pending.get(user_id, False) or active

    async def _on_request(self, user_id: str) -> bool | None:
        if self._api.is_mine(user_id):
            self.saw(user_id, active=False)
        return None  # no opinion on account validity

    async def _on_new_event(self, event: Any, state_events: Any) -> None:
        sender = getattr(event, "sender", None)
        if isinstance(sender, str) and self._api.is_mine(sender):
            self.saw(sender, active=True)

    def take_batch(self) -> list[dict[str, object]]:
        """Up to ``MAX_HEARTBEATS`` pending heartbeats, removed from the pending set."""
        batch: list[dict[str, object]] = []
        for user_id in list(self._pending)[:MAX_HEARTBEATS]:
            active = self._pending.pop(user_id)
            batch.append(
                {
                    "user_id": user_id,
                    "device_id": self._config.device_id,
                    "presence": "online",
                    "active": active,
                }
            )
        return batch

    def put_back(self, batch: list[dict[str, object]]) -> None:
        """A batch the worker did not take: merged into what is pending."""
        for entry in batch:
            self.saw(str(entry["user_id"]), bool(entry["active"]))

    async def flush(self) -> None:
        batch = self.take_batch()
        if not batch:
            return
        try:
            await self._api.http_client.post_json_get_json(
                self._url,
                {"heartbeats": batch},
                headers={"Authorization": [f"Bearer {self._config.admin_token}"]},
            )
        except Exception as exc:  # Synapse's client raises several kinds; all mean "retry"
            logger.warning("presence heartbeats to %s failed, kept for later: %s", self._url, exc)
            self.put_back(batch)
