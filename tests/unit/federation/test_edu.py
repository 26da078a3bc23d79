"""The transaction/EDU parser: envelope faults reject, push faults drop."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.errors import PeerError
from federation_presence.federation.edu import (
    DROP_BAD_CURRENTLY_ACTIVE,
    DROP_BAD_EDU,
    DROP_BAD_LAST_ACTIVE_AGO,
    DROP_BAD_PRESENCE,
    DROP_BAD_PRESENCE_CONTENT,
    DROP_BAD_STATUS_MSG,
    DROP_BAD_USER_ID,
    DROP_FOREIGN_USER,
    DROP_NOT_OBJECT,
    ParsedTransaction,
    parse_push,
    parse_transaction,
)
from federation_presence.ids import ServerName
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.states import PresenceState

ORIGIN = ServerName("remote.example:8448")
GOOD_PUSH = {
    "user_id": "@alice:remote.example:8448",
    "presence": "online",
    "last_active_ago": 5000,
    "currently_active": True,
    "status_msg": "Making cupcakes",
}


def transaction(*edus: object, pdus: object = (), origin: object = ORIGIN) -> dict[str, Any]:
    return {"origin": origin, "origin_server_ts": 1, "pdus": list(pdus), "edus": list(edus)}


def presence_edu(*pushes: object) -> dict[str, Any]:
    return {"edu_type": "m.presence", "content": {"push": list(pushes)}}


def parse(body: object) -> ParsedTransaction:
    return parse_transaction(body, ORIGIN, max_status_msg_length=100)


def test_the_spec_example_push_is_accepted() -> None:
    parsed = parse(transaction(presence_edu(GOOD_PUSH)))
    assert parsed.pushes == (
        RemotePush(
            origin=ORIGIN,
            user_id="@alice:remote.example:8448",  # type: ignore[arg-type]
            state=PresenceState.ONLINE,
            last_active_ago=5000,
            currently_active=True,
            status_msg="Making cupcakes",
        ),
    )
    assert parsed.dropped == {}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"presence": "dancing"}, DROP_BAD_PRESENCE),
        ({"presence": None}, DROP_BAD_PRESENCE),
        ({"presence": "ONLINE"}, DROP_BAD_PRESENCE),
        ({"last_active_ago": -1}, DROP_BAD_LAST_ACTIVE_AGO),
        ({"last_active_ago": 1.5}, DROP_BAD_LAST_ACTIVE_AGO),
        ({"last_active_ago": True}, DROP_BAD_LAST_ACTIVE_AGO),
        ({"last_active_ago": "5"}, DROP_BAD_LAST_ACTIVE_AGO),
        ({"last_active_ago": 2**53}, DROP_BAD_LAST_ACTIVE_AGO),
        ({"currently_active": "yes"}, DROP_BAD_CURRENTLY_ACTIVE),
        ({"currently_active": 1}, DROP_BAD_CURRENTLY_ACTIVE),
        ({"status_msg": 7}, DROP_BAD_STATUS_MSG),
        ({"status_msg": "x" * 101}, DROP_BAD_STATUS_MSG),
        ({"status_msg": "nul\x00here"}, DROP_BAD_STATUS_MSG),
        ({"user_id": "@bob:elsewhere.example"}, DROP_FOREIGN_USER),
        ({"user_id": "@bob:remote.example"}, DROP_FOREIGN_USER),
        ({"user_id": "bob:remote.example:8448"}, DROP_BAD_USER_ID),
        ({"user_id": "@:remote.example:8448"}, DROP_BAD_USER_ID),
        ({"user_id": "@a b:remote.example:8448"}, DROP_BAD_USER_ID),
        ({"user_id": ":remote.example:8448"}, DROP_BAD_USER_ID),
        ({"user_id": "remote.example:8448"}, DROP_BAD_USER_ID),
        ({"user_id": 12}, DROP_BAD_USER_ID),
        ({"user_id": "@" + "a" * 300 + ":remote.example:8448"}, DROP_BAD_USER_ID),
    ],
)
def test_a_bad_push_is_dropped_and_the_others_apply(change: dict[str, object], reason: str) -> None:
    bad = {**GOOD_PUSH, **change}
    parsed = parse(transaction(presence_edu(bad, GOOD_PUSH)))
    assert parsed.dropped == {reason: 1}
    assert [p.user_id for p in parsed.pushes] == ["@alice:remote.example:8448"]


@pytest.mark.parametrize("missing", ["user_id", "presence", "last_active_ago"])
def test_a_push_missing_a_required_key_is_dropped(missing: str) -> None:
    bad = {k: v for k, v in GOOD_PUSH.items() if k != missing}
    assert isinstance(parse_push(bad, ORIGIN, 100), str)


def test_optional_keys_default_to_inactive_and_no_status() -> None:
    push = parse_push(
        {"user_id": "@a:remote.example:8448", "presence": "unavailable", "last_active_ago": 0},
        ORIGIN,
        100,
    )
    assert isinstance(push, RemotePush)
    assert push.currently_active is False
    assert push.status_msg is None


@pytest.mark.parametrize("wire", ["busy", "org.matrix.msc3026.busy"])
def test_busy_is_accepted_under_both_names(wire: str) -> None:
    push = parse_push({**GOOD_PUSH, "presence": wire}, ORIGIN, 100)
    assert isinstance(push, RemotePush)
    assert push.state is PresenceState.BUSY


def test_a_null_status_msg_is_no_status() -> None:
    push = parse_push({**GOOD_PUSH, "status_msg": None}, ORIGIN, 100)
    assert isinstance(push, RemotePush)
    assert push.status_msg is None


def test_malformed_edus_are_dropped_and_counted() -> None:
    parsed = parse(
        transaction(
            "not an edu",
            {"edu_type": 5, "content": {}},
            {"edu_type": "m.presence", "content": []},
            {"edu_type": "m.presence", "content": {"push": "nope"}},
            presence_edu("not a push", GOOD_PUSH),
        )
    )
    assert parsed.dropped == {DROP_BAD_EDU: 3, DROP_BAD_PRESENCE_CONTENT: 1, DROP_NOT_OBJECT: 1}
    assert len(parsed.pushes) == 1


def test_other_edu_types_are_counted_not_processed() -> None:
    parsed = parse(
        transaction(
            {"edu_type": "m.typing", "content": {"room_id": "!r:x", "typing": True}},
            {"edu_type": "m.receipt", "content": {}},
            {"edu_type": "m.typing", "content": {}},
            {"edu_type": "org.example.custom", "content": {}},
            {"edu_type": "x" * 1000, "content": {}},
        )
    )
    assert parsed.other_edus == {"m.typing": 2, "m.receipt": 1, "other": 2}
    assert parsed.pushes == ()


def test_pdus_are_counted_and_ignored() -> None:
    parsed = parse(transaction(pdus=[{"type": "m.room.message"}] * 3))
    assert parsed.pdu_count == 3


@pytest.mark.parametrize(
    ("body", "status", "errcode"),
    [
        ([], 400, "M_BAD_JSON"),
        ("txn", 400, "M_BAD_JSON"),
        ({"pdus": []}, 400, "M_BAD_JSON"),
        (transaction(origin=5), 400, "M_BAD_JSON"),
        (transaction(origin="other.example"), 403, "M_FORBIDDEN"),
        ({**transaction(), "pdus": {}}, 400, "M_BAD_JSON"),
        ({**transaction(), "edus": "x"}, 400, "M_BAD_JSON"),
        (transaction(pdus=[{}] * 51), 400, "M_BAD_JSON"),
        (transaction(*[presence_edu()] * 101), 400, "M_BAD_JSON"),
    ],
)
def test_envelope_faults_reject_the_transaction(body: object, status: int, errcode: str) -> None:
    with pytest.raises(PeerError) as caught:
        parse(body)
    assert (caught.value.status, caught.value.errcode) == (status, errcode)


def test_the_limits_themselves_are_allowed() -> None:
    parsed = parse(transaction(*[presence_edu(GOOD_PUSH)] * 100, pdus=[{}] * 50))
    assert parsed.pdu_count == 50
    assert len(parsed.pushes) == 100


def test_missing_pdus_and_edus_mean_none() -> None:
    parsed = parse({"origin": ORIGIN, "origin_server_ts": 1})
    assert (parsed.pdu_count, parsed.pushes) == (0, ())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)
PUSHISH = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.sampled_from(["@a:remote.example:8448", "@b:other", "x", ""]) | JSON,
        "presence": st.sampled_from(["online", "offline", "unavailable", "busy", "dancing"]) | JSON,
        "last_active_ago": st.integers(min_value=-(2**60), max_value=2**60) | JSON,
        "currently_active": JSON,
        "status_msg": st.text(max_size=120) | JSON,
    },
)


@given(body=JSON | st.builds(transaction, st.lists(JSON | st.builds(presence_edu, PUSHISH))))
def test_any_json_gives_a_decision_never_a_crash(body: object) -> None:
    try:
        parsed = parse(body)
    except PeerError as error:
        status = error.status
    else:
        status = 200
    assert status in {200, 400, 403}
    if status != 200:
        return
    for push in parsed.pushes:
        assert isinstance(push.state, PresenceState)
        assert push.last_active_ago >= 0
        assert isinstance(push.currently_active, bool)
        assert push.status_msg is None or len(push.status_msg) <= 100
        assert push.user_id.endswith(":" + ORIGIN)


@given(pushes=st.lists(PUSHISH, max_size=20))
def test_every_push_is_either_accepted_or_counted(pushes: list[dict[str, object]]) -> None:
    parsed = parse(transaction(presence_edu(*pushes)))
    assert len(parsed.pushes) + sum(parsed.dropped.values()) == len(pushes)
