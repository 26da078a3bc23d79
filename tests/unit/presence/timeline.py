"""A presence machine driven through time the way the shell drives it.

``Timeline`` owns a ``PresenceMachine``, the current ``now`` and what the
shell would have persisted (``PersistedRows``, the store's ``apply`` reduced
to dicts). ``advance(ms)`` sleeps the way the shell does: tick at each
``next_deadline_ms`` until the target time.
"""

from __future__ import annotations

from federation_presence.ids import DeviceId, ServerName, UserId
from federation_presence.presence.inputs import LocalInput, RemotePush
from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import (
    DevicePresence,
    Outcome,
    PresenceSettings,
    UserPresence,
)
from federation_presence.presence.states import PresenceState

OURS = ServerName("ours.example")
THEIRS = ServerName("theirs.example")
T0 = 1_700_000_000_000
SETTINGS = PresenceSettings()

ALICE = UserId("@alice:ours.example")
BOB = UserId("@bob:ours.example")
REMOTE_CAROL = UserId("@carol:theirs.example")
PHONE = DeviceId("PHONE")
LAPTOP = DeviceId("LAPTOP")


class PersistedRows:
    """What ``store.apply`` would have made durable, reduced to two dicts."""

    def __init__(self) -> None:
        self.users: dict[UserId, UserPresence] = {}
        self.devices: dict[tuple[UserId, DeviceId], DevicePresence] = {}

    def apply(self, outcome: Outcome) -> None:
        for change in outcome.changes:
            self.users[change.state.user_id] = change.state
        for device in outcome.devices:
            self.devices[(device.user_id, device.device_id)] = device


class Timeline:
    """A machine, a clock that moves only forward, and the persisted rows."""

    def __init__(self, settings: PresenceSettings = SETTINGS, start: int = T0) -> None:
        self.machine = PresenceMachine(OURS, settings)
        self.now = start
        self.rows = PersistedRows()
        self.outcomes: list[Outcome] = []

    def _record(self, outcome: Outcome) -> Outcome:
        self.rows.apply(outcome)
        self.outcomes.append(outcome)
        return outcome

    def do(self, *events: LocalInput) -> Outcome:
        """Handle the events at the current time; return the last outcome."""
        outcome = Outcome()
        for event in events:
            outcome = self._record(self.machine.handle(event, self.now))
        return outcome

    def push(self, *pushes: RemotePush) -> Outcome:
        return self._record(self.machine.handle_remote(pushes, self.now))

    def advance(self, ms: int) -> list[Outcome]:
        """Move time by ``ms``, ticking at every deadline on the way (as the shell)."""
        target = self.now + ms
        fired: list[Outcome] = []
        deadline = self.machine.next_deadline_ms
        while deadline is not None and deadline <= target:
            self.now = max(self.now, deadline)
            fired.append(self._record(self.machine.tick(self.now)))
            deadline = self.machine.next_deadline_ms
        self.now = target
        return fired

    def state(self, user_id: UserId) -> PresenceState:
        user = self.machine.get(user_id)
        assert user is not None, f"{user_id} unknown"
        return user.state

    def user(self, user_id: UserId) -> UserPresence:
        user = self.machine.get(user_id)
        assert user is not None, f"{user_id} unknown"
        return user

    def device_state(self, user_id: UserId, device_id: DeviceId) -> PresenceState:
        for device in self.machine.devices(user_id):
            if device.device_id == device_id:
                return device.state
        return PresenceState.OFFLINE
