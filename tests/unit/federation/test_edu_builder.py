"""Outbound m.presence EDUs: schema-complete pushes, split at the per-EDU limit, and
the encoded builder held to the reference ``canonicaljson``."""

from __future__ import annotations

import orjson
import pytest
from canonicaljson import encode_canonical_json
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.federation.edu import (
    MAX_SAFE_INT,
    PushEncodings,
    TransactionBodies,
    encode_push,
    parse_transaction,
    presence_edus,
    transaction_body,
    transaction_bytes,
)
from federation_presence.federation.xmatrix import CanonicalJson
from federation_presence.ids import ServerName, UserId
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import PresenceState
from federation_presence.presence.wire import federation_push

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


# -- the encoded builder: the same transaction as canonical bytes --------------

USERS = st.builds(
    UserPresence,
    user_id=st.from_regex(r"@[a-z0-9._=/-]{1,20}:here\.example", fullmatch=True).map(UserId),
    state=st.sampled_from(PresenceState),
    last_active_ts=st.integers(0, NOW + 10_000),
    status_msg=st.none() | st.text(max_size=40),
    currently_active=st.booleans(),
)


@given(
    users=st.lists(USERS, max_size=12),
    now=st.integers(0, MAX_SAFE_INT),
    pushes_per_edu=st.integers(1, 5),
)
def test_transaction_bytes_equal_the_reference_canonicaljson_of_the_dict(
    users: list[UserPresence], now: int, pushes_per_edu: int
) -> None:
    encodings = PushEncodings()
    encoded = transaction_bytes(HERE, now, [encodings.get(u) for u in users], pushes_per_edu)
    reference = transaction_body(HERE, now, presence_edus(users, now, pushes_per_edu))
    assert isinstance(encoded, CanonicalJson)
    assert encoded.data == encode_canonical_json(reference)


def test_one_encoding_serves_any_send_time_and_a_new_state_replaces_it() -> None:
    encodings = PushEncodings()
    user = UserPresence(UserId("@a:here.example"), PresenceState.ONLINE, NOW - 5_000, None, True)
    first = encodings.get(user)
    assert encodings.get(user) is first
    for now in (NOW, NOW + 3, NOW + 60_000):
        body = orjson.loads(transaction_bytes(HERE, now, [first]).data)
        assert body["edus"][0]["content"]["push"] == [federation_push(user, now)]
    newer = UserPresence(user.user_id, PresenceState.UNAVAILABLE, NOW - 5_000)
    assert encodings.get(newer).state is newer
    assert len(encodings) == 1
    # Offline: encoded, not kept (memory is bounded by present users).
    gone = UserPresence(user.user_id, PresenceState.OFFLINE, NOW - 5_000)
    assert encodings.get(gone).state is gone
    assert len(encodings) == 0


def test_the_encoded_builder_keeps_the_limits() -> None:
    push = encode_push(UserPresence(UserId("@a:here.example")))
    with pytest.raises(ValueError, match="too many EDUs"):
        transaction_bytes(HERE, NOW, [push] * 101, pushes_per_edu=1)
    assert len(orjson.loads(transaction_bytes(HERE, NOW, [push] * 100, 1).data)["edus"]) == 100
    with pytest.raises(ValueError, match="safe integer"):
        transaction_bytes(HERE, MAX_SAFE_INT + 1, [push])
    with pytest.raises(ValueError, match="safe integer"):
        encode_push(UserPresence(UserId("@a:here.example"), last_active_ts=-1))
    with pytest.raises(ValueError, match="canonical"):
        encode_push(UserPresence(UserId("@a:here.example"), status_msg="\ud800"))


def test_the_same_states_at_the_same_ms_share_one_body_and_anything_else_is_rebuilt() -> None:
    bodies = TransactionBodies(HERE, pushes_per_edu=2)
    alice = UserPresence(UserId("@a:here.example"), PresenceState.ONLINE, NOW - 5_000, "hi", True)
    bob = UserPresence(UserId("@b:here.example"), PresenceState.UNAVAILABLE, NOW - 9_000)
    users = (alice, bob)
    first = bodies.body(NOW, users)
    encodings = PushEncodings()
    assert first.data == transaction_bytes(HERE, NOW, [encodings.get(u) for u in users], 2).data
    assert bodies.body(NOW, [alice, bob]) is first  # same objects, same ms: reused
    later = bodies.body(NOW + 1, users)  # another ms: last_active_ago moved
    assert later is not first
    assert orjson.loads(later.data)["origin_server_ts"] == NOW + 1
    equal_not_same = UserPresence(alice.user_id, PresenceState.ONLINE, NOW - 5_000, "hi", True)
    assert bodies.body(NOW + 1, (equal_not_same, bob)) is not later
    assert bodies.body(NOW + 1, (bob, equal_not_same)).data != later.data  # order counts
    assert (
        bodies.body(NOW + 1, (bob,)).data
        == transaction_bytes(HERE, NOW + 1, [encode_push(bob)], 2).data
    )
