"""The notify rule: a table of what is told and what is suppressed."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.presence.model import NotifyReason, UserPresence
from federation_presence.presence.notify import notify_reason
from federation_presence.presence.states import PresenceState
from tests.unit.presence.timeline import ALICE, SETTINGS, T0

GRANULARITY = SETTINGS.last_active_granularity_ms
ON = PresenceState.ONLINE
BASE = UserPresence(ALICE, ON, last_active_ts=T0, status_msg="hi", currently_active=True)

# (change applied to BASE, expected reason)
TABLE: list[tuple[str, dict[str, object], NotifyReason | None]] = [
    ("nothing", {}, None),
    ("presence", {"state": PresenceState.UNAVAILABLE}, NotifyReason.PRESENCE),
    ("presence to busy", {"state": PresenceState.BUSY}, NotifyReason.PRESENCE),
    ("status_msg", {"status_msg": "away"}, NotifyReason.STATUS_MSG),
    ("status_msg cleared", {"status_msg": None}, NotifyReason.STATUS_MSG),
    ("currently_active off", {"currently_active": False}, NotifyReason.CURRENTLY_ACTIVE),
    (
        "last_active bump while currently_active",
        {"last_active_ts": T0 + 10 * GRANULARITY},
        None,
    ),
    (
        "last_active bump within granularity",
        {"last_active_ts": T0 + GRANULARITY},
        None,
    ),
    (
        "last_active bump past granularity when not active",
        {"last_active_ts": T0 + GRANULARITY + 1, "currently_active": False},
        NotifyReason.CURRENTLY_ACTIVE,
    ),
    ("last_active backwards", {"last_active_ts": T0 - 10 * GRANULARITY}, None),
    ("federation bookkeeping", {"last_federation_update_ts": T0, "last_user_sync_ts": T0}, None),
]


@pytest.mark.parametrize(("name", "fields", "reason"), TABLE, ids=[row[0] for row in TABLE])
def test_the_notify_rule_table(
    name: str, fields: dict[str, object], reason: NotifyReason | None
) -> None:
    assert notify_reason(BASE, replace(BASE, **fields), GRANULARITY) is reason  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("moved_ms", "reason"),
    [(GRANULARITY, None), (GRANULARITY + 1, NotifyReason.LAST_ACTIVE)],
)
def test_last_active_is_told_past_the_granularity_when_not_currently_active(
    moved_ms: int, reason: NotifyReason | None
) -> None:
    idle = replace(BASE, state=PresenceState.UNAVAILABLE, currently_active=False)
    assert notify_reason(idle, replace(idle, last_active_ts=T0 + moved_ms), GRANULARITY) is reason


def test_a_first_sight_is_new_user_unless_it_is_the_default() -> None:
    assert notify_reason(None, BASE, GRANULARITY) is NotifyReason.NEW_USER
    assert notify_reason(None, UserPresence(ALICE), GRANULARITY) is None
    bookkeeping = UserPresence(ALICE, last_federation_update_ts=T0, last_user_sync_ts=T0)
    assert notify_reason(None, bookkeeping, GRANULARITY) is None


_users = st.builds(
    UserPresence,
    user_id=st.just(ALICE),
    state=st.sampled_from(PresenceState),
    last_active_ts=st.integers(0, 2 * T0),
    status_msg=st.none() | st.sampled_from(["a", "b"]),
    currently_active=st.booleans(),
    last_federation_update_ts=st.integers(0, 2 * T0),
    last_user_sync_ts=st.integers(0, 2 * T0),
)


@given(prev=_users, new=_users)
def test_a_suppressed_update_never_changes_presence_status_or_currently_active(
    prev: UserPresence, new: UserPresence
) -> None:
    if notify_reason(prev, new, GRANULARITY) is None:
        assert new.state is prev.state
        assert new.status_msg == prev.status_msg
        assert new.currently_active == prev.currently_active


@given(prev=_users, new=_users)
def test_a_bump_while_currently_active_is_never_told_for_its_last_active(
    prev: UserPresence, new: UserPresence
) -> None:
    if new.currently_active:
        assert notify_reason(prev, new, GRANULARITY) is not NotifyReason.LAST_ACTIVE


@given(
    new=_users,
    last_active_ts=st.sampled_from([0, 1, GRANULARITY - 1, GRANULARITY, GRANULARITY + 1]),
)
def test_a_first_sight_is_judged_as_a_change_from_the_default_state(
    new: UserPresence, last_active_ts: int
) -> None:
    # The spelt-out first-sight rule agrees with the rule itself applied to
    # the default state, including at the granularity's edge.
    new = replace(new, last_active_ts=last_active_ts)
    against_default = notify_reason(UserPresence(new.user_id), new, GRANULARITY)
    expected = None if against_default is None else NotifyReason.NEW_USER
    assert notify_reason(None, new, GRANULARITY) is expected
