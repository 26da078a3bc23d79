"""Outbound m.presence EDUs: schema-complete pushes, split at the per-EDU limit."""

from __future__ import annotations

import pytest

from federation_presence.federation.edu import (
    parse_transaction,
    presence_edus,
    transaction_body,
)
from federation_presence.ids import ServerName, UserId
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import PresenceState

NOW = 1_700_000_000_000
HERE = ServerName("here.example")


def test_every_push_is_schema_complete_also_for_a_never_active_user() -> None:
    users = [
        UserPresence(UserId("@never:here.example")),
        UserPresence(
            UserId("@busy:here.example"), PresenceState.BUSY, NOW - 5_000, "meeting", True
        ),
    ]
    [edu] = presence_edus(users, NOW)
    assert edu["edu_type"] == "m.presence"
    never, busy = edu["content"]["push"]
    assert never == {
        "user_id": "@never:here.example",
        "presence": "offline",
        "last_active_ago": NOW,
        "currently_active": False,
    }
    assert busy == {
        "user_id": "@busy:here.example",
        "presence": "org.matrix.msc3026.busy",
        "last_active_ago": 5_000,
        "currently_active": True,
        "status_msg": "meeting",
    }


def test_pushes_split_into_edus_of_the_limit_and_parse_back() -> None:
    users = [
        UserPresence(UserId(f"@u{i}:here.example"), PresenceState.ONLINE, NOW) for i in range(7)
    ]
    edus = presence_edus(users, NOW, pushes_per_edu=3)
    assert [len(e["content"]["push"]) for e in edus] == [3, 3, 1]
    parsed = parse_transaction(transaction_body(HERE, NOW, edus), HERE, max_status_msg_length=100)
    assert [p.user_id for p in parsed.pushes] == [u.user_id for u in users]
    assert parsed.dropped == {}


def test_a_transaction_never_carries_more_than_100_edus() -> None:
    with pytest.raises(ValueError, match="too many EDUs"):
        transaction_body(HERE, NOW, [{}] * 101)
