"""The load plan (pure): every push a real change in every run, warm and cold users, the mix."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from federation_presence.loadtest.plan import (
    LoadShape,
    parse_mix,
    priming_bodies,
    transaction_body,
)
from federation_presence.loadtest.runner import retry_after_ms

ORIGIN = "127.0.0.1:9000"


def _pushes(body: dict[str, object]) -> list[dict[str, Any]]:
    edus: list[dict[str, Any]] = body["edus"]  # type: ignore[assignment]
    return [push for edu in edus for push in edu["content"]["push"]]


def _run(shape: LoadShape, tag: str, transactions: int) -> list[dict[str, Any]]:
    return [
        push
        for i in range(transactions)
        for push in _pushes(transaction_body(ORIGIN, shape, i, 0, tag))
    ]


def test_a_second_run_changes_every_warm_user_it_touches() -> None:
    shape = LoadShape(2, 5, users_per_origin=10)
    held = {push["user_id"]: push for push in _run(shape, "runA", 3)}  # what the target holds
    second = _run(shape, "runB", 3)
    assert {push["user_id"] for push in second} == set(held)  # the same warm users
    for push in second:
        assert push != held[push["user_id"]]
        assert push["status_msg"] != held[push["user_id"]]["status_msg"]


def test_within_a_run_each_push_differs_from_the_users_previous_one() -> None:
    last: dict[str, dict[str, Any]] = {}
    for push in _run(LoadShape(1, 7, users_per_origin=5), "r", 10):
        previous = last.get(push["user_id"])
        assert previous is None or (previous["presence"], previous["status_msg"]) != (
            push["presence"],
            push["status_msg"],
        )
        last[push["user_id"]] = push


def test_cold_users_are_never_repeated_and_never_the_warm_ones() -> None:
    cold = _run(LoadShape(3, 4, users_per_origin=2, users="cold"), "t1", 5)
    names = [push["user_id"] for push in cold]
    assert len(set(names)) == len(names) == 60
    assert all(name.startswith("@ct1.") and name.endswith(f":{ORIGIN}") for name in names)
    other_run = {p["user_id"] for p in _run(LoadShape(3, 4, 2, "cold"), "t2", 5)}
    assert not other_run & set(names)


def test_priming_touches_every_warm_user_once() -> None:
    shape = LoadShape(1, 1, users_per_origin=250)
    users = [p["user_id"] for body in priming_bodies(ORIGIN, shape, 0, "x") for p in _pushes(body)]
    assert sorted(users) == sorted(f"@u{n}:{ORIGIN}" for n in range(250))


def test_the_mix_sets_which_states_appear_and_how_often() -> None:
    mix = parse_mix("online=2,unavailable=1,offline=1")
    assert sorted(mix) == ["offline", "online", "online", "unavailable"]
    assert all(a != b for a, b in itertools.pairwise(mix))
    shape = LoadShape(1, 10, users_per_origin=1, mix=parse_mix("busy=1,online=1"))
    assert {p["presence"] for p in _run(shape, "m", 1)} == {"busy", "online"}


@pytest.mark.parametrize("text", ["", "sleepy=1", "online=101", "online=x"])
def test_a_bad_mix_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the CLI shows whatever the message is
        parse_mix(text)


@pytest.mark.parametrize(
    ("body", "wait"),
    [
        (b'{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":250}', 250),
        (b'{"errcode":"M_LIMIT_EXCEEDED"}', 1_000),
        (b"not json", 1_000),
        (b'{"retry_after_ms":-5}', 1_000),
        (b'{"retry_after_ms":true}', 1_000),
    ],
)
def test_retry_after_ms_is_read_from_a_429_body(body: bytes, wait: int) -> None:
    assert retry_after_ms(body) == wait
