"""Backoff, sharding and keep-alive phases: the sender's pure timing decisions."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.ids import UserId
from federation_presence.outbound.backoff import retry_delay_ms
from federation_presence.outbound.keepalive import KeepAliveSchedule
from federation_presence.outbound.settings import HOUR_MS, SenderSettings
from federation_presence.outbound.sharding import is_mine, owner

SETTINGS = SenderSettings(backoff_initial_ms=10_000, backoff_max_ms=4 * HOUR_MS, backoff_jitter=0.2)
MINUTE_MS = 60_000
INTERVAL_MS = 25 * MINUTE_MS


def test_backoff_doubles_within_its_jitter_and_stops_at_the_cap() -> None:
    rng = random.Random(7)
    for failures, base in [(1, 10_000), (2, 20_000), (3, 40_000), (8, 1_280_000)]:
        delay = retry_delay_ms(failures, SETTINGS, rng)
        assert 0.8 * base <= delay <= 1.2 * base
    assert retry_delay_ms(40, SETTINGS, rng) <= SETTINGS.backoff_max_ms
    assert retry_delay_ms(10_000, SETTINGS, rng) >= 0.8 * SETTINGS.backoff_max_ms


def test_backoff_honours_a_retry_after_as_a_floor() -> None:
    assert retry_delay_ms(1, SETTINGS, random.Random(1), retry_after_ms=60_000) == 60_000


def test_backoff_jitter_spreads_destinations_that_failed_together() -> None:
    rng = random.Random(3)
    assert len({retry_delay_ms(1, SETTINGS, rng) for _ in range(50)}) > 40


def test_backoff_counts_from_one() -> None:
    with pytest.raises(ValueError, match="failures"):
        retry_delay_ms(0, SETTINGS, random.Random(1))


def test_a_destination_has_one_stable_owner_and_unsharded_means_mine() -> None:
    instances = ("s1", "s2", "s3")
    owners = Counter(owner(f"server{i}.example", instances) for i in range(3_000))
    assert set(owners) == set(instances)
    assert min(owners.values()) > 800  # roughly even
    assert owner("matrix.org", instances) == owner("matrix.org", instances)
    assert is_mine("matrix.org", (), "anything")
    assert sum(is_mine("matrix.org", instances, name) for name in instances) == 1


def synapse_get_instance(key: str, instances: tuple[str, ...]) -> str:
    """Synapse's ``ShardedWorkerHandlingConfig.get_instance``, written out."""
    if len(instances) == 1:
        return instances[0]
    dest_hash = hashlib.sha256(key.encode("utf8")).digest()
    dest_int = int.from_bytes(dest_hash, byteorder="little")
    return instances[dest_int % len(instances)]


def test_the_owner_is_the_one_synapse_picks_for_the_same_instance_list() -> None:
    # Known answers: sha256("matrix.org") read little-endian is 2 mod 3, "example.com" 0.
    assert owner("matrix.org", ("s1", "s2", "s3")) == "s3"
    assert owner("example.com", ("s1", "s2", "s3")) == "s1"


@given(st.text(min_size=1, max_size=60), st.lists(st.text(min_size=1), min_size=1, max_size=7))
def test_the_owner_matches_synapses_formula(destination: str, names: list[str]) -> None:
    instances = tuple(dict.fromkeys(names))
    assert owner(destination, instances) == synapse_get_instance(destination, instances)


def test_keepalives_are_spread_flat_over_the_interval() -> None:
    schedule = KeepAliveSchedule(INTERVAL_MS, random.Random(11))
    now = 1_700_000_000_000
    users = 10_000
    for i in range(users):
        schedule.track(UserId(f"@u{i}:here"), True, now)
    per_minute = Counter[int]()
    for minute in range(1, 26):
        per_minute[minute] = len(schedule.due(now + minute * MINUTE_MS))
    assert sum(per_minute.values()) == users  # each exactly once per interval
    share = users / 25
    assert max(per_minute.values()) <= 2 * share
    # The next interval repeats the same phases.
    assert len(schedule.due(now + 50 * MINUTE_MS)) == users


def test_an_offline_user_is_no_longer_kept_alive_and_memory_stays_bounded() -> None:
    schedule = KeepAliveSchedule(INTERVAL_MS, random.Random(5))
    now = 1_700_000_000_000
    alice = UserId("@alice:here")
    for _ in range(1_000):
        schedule.track(alice, True, now)
        schedule.track(alice, False, now)
    assert len(schedule) == 0
    assert schedule.earliest() is None
    assert len(schedule._heap) <= 64 + 1
    schedule.track(alice, True, now)
    assert schedule.due(now + INTERVAL_MS) == [alice]
