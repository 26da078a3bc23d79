"""The hot-path values are not frozen (see model.py); nothing may mutate them.

Every value handed to the machine or returned by it is recorded with a copy
of its fields at that moment; after a whole random run, each must still
equal its copy. A mutation anywhere in the core breaks this.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings

from federation_presence.presence.machine import PresenceMachine
from federation_presence.presence.model import Outcome, StateChange
from tests.unit.presence.test_machine_properties import Step, Wait, _steps
from tests.unit.presence.timeline import OURS, SETTINGS, T0


def _record(seen: list[tuple[object, tuple[object, ...]]], value: object) -> None:
    seen.append((value, dataclasses.astuple(value)))  # type: ignore[call-overload]


def _record_outcome(seen: list[tuple[object, tuple[object, ...]]], outcome: Outcome) -> None:
    for change in outcome.changes:
        _record(seen, change)
        _record(seen, change.state)
    for device in outcome.devices:
        _record(seen, device)
    for user in outcome.federation_pings:
        _record(seen, user)


@settings(max_examples=100, deadline=None)
@given(steps=_steps)
def test_no_value_given_to_or_returned_by_the_machine_changes_later(steps: list[Step]) -> None:
    machine = PresenceMachine(OURS, SETTINGS)
    seen: list[tuple[object, tuple[object, ...]]] = []
    now = T0
    for step in steps:
        if isinstance(step, Wait):
            now += step.ms
            _record_outcome(seen, machine.tick(now))
        elif isinstance(step, list):
            for push in step:
                _record(seen, push)
            _record_outcome(seen, machine.handle_remote(step, now))
        else:
            _record_outcome(seen, machine.handle(step, now))
        # What the machine holds now must not change behind the caller's back either.
        for user_id in {v.state.user_id for v, _ in seen if isinstance(v, StateChange)}:
            current = machine.get(user_id)
            if current is not None:
                _record(seen, current)
    for value, fields in seen:
        assert dataclasses.astuple(value) == fields, value  # type: ignore[call-overload]
