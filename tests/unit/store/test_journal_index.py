"""The journal index gives its memory back once a burst is folded."""

from __future__ import annotations

import sys

from federation_presence.store.journal import JournalIndex, JournalLimits, encode_entry


def test_folding_a_burst_of_distinct_users_rebuilds_the_index_at_its_new_size() -> None:
    index = JournalIndex()
    rows = [(f"@u{i}:x", "offline", 0, None, False, 0, 0, i + 1) for i in range(50_000)]
    payload = encode_entry(rows, [])
    index.record(1, rows, [])
    index.record(2, rows[:10], [])
    grown = sys.getsizeof(index._user_seq)

    limits = JournalLimits(fold_changes=50_000, fold_writes=50_000)
    last = index.chunk(limits)
    assert last == 1
    plan = index.plan(last, [(1, payload)])
    index.forget(plan)

    assert index.live_rows == 10
    assert sys.getsizeof(index._user_seq) < grown / 100
    assert index.oldest_seq() == 2
    assert index.newest_entry_of(["@u3:x", "@u20000:x"]) == 2
    assert index.newest_entry_of(["@nobody:x"]) is None


def test_record_names_the_users_new_to_the_journal() -> None:
    index = JournalIndex()
    row = ("offline", 0, None, False, 0, 0, 0)
    assert index.record(1, [("@a:x", *row), ("@b:x", *row)], []) == ["@a:x", "@b:x"]
    assert index.record(2, [("@b:x", *row), ("@c:x", *row)], []) == ["@c:x"]
    assert index.record(3, [("@a:x", *row)], []) == []
