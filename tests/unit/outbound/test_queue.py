"""One destination's queue: latest state per user, one in flight, suppression per destination."""

from __future__ import annotations

from federation_presence.ids import UserId
from federation_presence.outbound.queue import DestinationQueue
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import PresenceState

GRANULARITY_MS = 60_000
NOW = 1_700_000_000_000
ALICE, BOB = UserId("@alice:here"), UserId("@bob:here")
ONLINE, OFFLINE = PresenceState.ONLINE, PresenceState.OFFLINE


def state(
    user_id: UserId = ALICE,
    presence: PresenceState = ONLINE,
    *,
    last_active_ts: int = NOW,
    currently_active: bool = True,
    status_msg: str | None = None,
) -> UserPresence:
    return UserPresence(user_id, presence, last_active_ts, status_msg, currently_active)


def test_many_updates_of_one_user_are_owed_once_with_the_latest_state() -> None:
    queue = DestinationQueue(GRANULARITY_MS)
    for i in range(1_000):
        queue.owe(state(status_msg=f"v{i}"), stream_id=i + 1)
    assert queue.depth == 1
    batch = queue.take(100)
    assert [u.status_msg for u in batch.users] == ["v999"]
    assert queue.oldest_unacked() == 1


def test_take_respects_the_limit_and_only_one_transaction_is_in_flight() -> None:
    queue = DestinationQueue(GRANULARITY_MS)
    for i in range(5):
        queue.owe(state(UserId(f"@u{i}:here")), stream_id=i + 1)
    first = queue.take(3)
    assert [u.user_id for u in first.users] == ["@u0:here", "@u1:here", "@u2:here"]
    assert queue.in_flight
    assert queue.depth == 2
    queue.acknowledged()
    assert [u.user_id for u in queue.take(3).users] == ["@u3:here", "@u4:here"]


def test_an_unchanged_bump_while_currently_active_is_suppressed_for_this_destination() -> None:
    queue = DestinationQueue(GRANULARITY_MS)
    queue.owe(state(), stream_id=1)
    queue.take(10)
    queue.acknowledged()
    queue.owe(state(last_active_ts=NOW + 5_000), stream_id=2)
    batch = queue.take(10)
    assert batch.users == ()
    assert batch.suppressed == 1
    assert queue.idle
    assert queue.oldest_unacked() is None


def test_suppression_compares_with_what_this_destination_was_sent_not_the_last_change() -> None:
    queue = DestinationQueue(GRANULARITY_MS)
    queue.owe(state(currently_active=False), stream_id=1)
    queue.take(10)
    queue.acknowledged()
    # Small steps each below the granularity, but together past it: news here.
    queue.owe(state(currently_active=False, last_active_ts=NOW + 61_000), stream_id=2)
    assert len(queue.take(10).users) == 1


def test_a_forced_entry_is_sent_even_when_unchanged() -> None:
    queue = DestinationQueue(GRANULARITY_MS)
    queue.owe(state(), stream_id=1)
    queue.take(10)
    queue.acknowledged()
    queue.owe(state(), None, forced=True)
    assert len(queue.take(10).users) == 1
    assert queue.oldest_unacked() is None  # a keep-alive is not a stream change


def test_a_failed_transaction_is_owed_again_and_a_newer_state_wins() -> None:
    queue = DestinationQueue(GRANULARITY_MS)
    queue.owe(state(status_msg="old"), stream_id=1)
    queue.owe(state(BOB), stream_id=2)
    queue.take(10)
    queue.owe(state(status_msg="new"), stream_id=3)
    queue.failed()
    assert queue.oldest_unacked() == 1
    batch = queue.take(10)
    assert sorted((u.user_id, u.status_msg) for u in batch.users) == [
        (ALICE, "new"),
        (BOB, None),
    ]


def test_an_offline_user_is_forgotten_once_sent_and_a_never_active_one_is_not_news() -> None:
    queue = DestinationQueue(GRANULARITY_MS)
    queue.owe(state(), stream_id=1)
    queue.take(10)
    queue.acknowledged()
    queue.owe(state(presence=OFFLINE, currently_active=False), stream_id=2)
    assert len(queue.take(10).users) == 1
    queue.acknowledged()
    assert queue.last_sent(ALICE) is None
    queue.owe(UserPresence(BOB), stream_id=3)
    assert queue.take(10).suppressed == 1
