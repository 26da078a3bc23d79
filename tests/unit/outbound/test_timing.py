"""Backoff, sharding and keep-alive phases: the sender's pure timing decisions."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.ids import UserId
from federation_presence.outbound.backoff import retry_delay_ms
from federation_presence.outbound.keepalive import KeepAliveSchedule, quiet_after_send_ms
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


QUIET_MS = quiet_after_send_ms(INTERVAL_MS, 30 * MINUTE_MS)


def test_the_quiet_window_is_half_the_slack_before_the_remote_timeout() -> None:
    assert QUIET_MS == 150_000  # 25 min interval, 30 min timeout
    assert quiet_after_send_ms(INTERVAL_MS, INTERVAL_MS) == 0
    with pytest.raises(ValueError, match="quiet_ms"):
        KeepAliveSchedule(INTERVAL_MS, random.Random(1), quiet_ms=INTERVAL_MS)


def test_a_re_send_due_right_after_a_sent_change_waits_for_its_next_phase() -> None:
    now = 1_700_000_000_000 - 1_700_000_000_000 % INTERVAL_MS  # a phase boundary
    alice = UserId("@alice:here")
    schedule = KeepAliveSchedule(INTERVAL_MS, random.Random(3), QUIET_MS)
    schedule.track(alice, True, now)
    first = schedule.earliest()
    assert first is not None
    assert now < first <= now + INTERVAL_MS
    phase = first - now
    # A change sent just before the re-send is due: the re-send moves on.
    sent_at = now + phase - QUIET_MS // 2
    schedule.sent(alice, sent_at)
    assert schedule.due(now + phase) == []
    assert schedule.earliest() == now + phase + INTERVAL_MS
    # A change sent long before the next re-send leaves it where it is.
    schedule.sent(alice, now + phase + 1)
    assert schedule.earliest() == now + phase + INTERVAL_MS


@given(
    seed=st.integers(0, 2**32),
    gaps=st.lists(st.integers(1, 40 * MINUTE_MS), min_size=1, max_size=30),
)
def test_sends_of_a_present_user_are_never_far_apart_nor_a_re_send_right_after_a_change(
    seed: int, gaps: list[int]
) -> None:
    """Changes sent at arbitrary times, re-sends as the schedule says: no
    two sends are more than ``interval + quiet`` apart, and no re-send comes
    within ``quiet`` after a sent change."""
    alice = UserId("@alice:here")
    schedule = KeepAliveSchedule(INTERVAL_MS, random.Random(seed), QUIET_MS)
    now = 1_700_000_000_000
    schedule.sent(alice, now)
    sends: list[tuple[int, str]] = [(now, "change")]
    changes = [now + sum(gaps[: i + 1]) for i in range(len(gaps))]
    horizon = changes[-1] + 2 * INTERVAL_MS
    while True:
        earliest = schedule.earliest()
        assert earliest is not None
        if changes and changes[0] <= earliest:
            at = changes.pop(0)
            schedule.sent(alice, at)
            sends.append((at, "change"))
        elif earliest <= horizon:
            assert schedule.due(earliest) == [alice]
            sends.append((earliest, "re-send"))
        else:
            break
    for (before, kind_before), (after, kind_after) in itertools.pairwise(sends):
        assert after - before <= INTERVAL_MS + QUIET_MS
        if kind_before == "change" and kind_after == "re-send":
            assert after - before > QUIET_MS
