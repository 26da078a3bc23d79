"""The read-through filter alone: no false negatives, and few false positives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_presence.store.user_filter import StoredUsers

_ids = st.lists(st.text(min_size=1, max_size=12), max_size=200)


@settings(max_examples=200, deadline=None)
@given(added=_ids, scanned=_ids, asked=_ids, bits_log2=st.integers(6, 12))
def test_a_stored_id_is_never_filtered_out(
    added: list[str], scanned: list[str], asked: list[str], bits_log2: int
) -> None:
    users = StoredUsers(bits_log2)
    users.add(added)
    at_open = StoredUsers(bits_log2)
    at_open.add(scanned)
    users.merge(at_open)

    maybe = users.maybe_stored(added + scanned + asked)

    assert set(added + scanned) <= set(maybe)
    assert set(maybe) <= set(added + scanned + asked)


def test_before_the_scan_is_merged_every_id_may_be_stored() -> None:
    users = StoredUsers(10)
    asked = ["@a:x", "@b:x"]
    assert users.maybe_stored(asked) == asked
    users.merge(StoredUsers(10))
    assert users.maybe_stored(asked) == []


def test_once_off_every_id_may_be_stored() -> None:
    users = StoredUsers(10)
    users.merge(StoredUsers(10))
    users.off = True
    assert users.maybe_stored(["@a:x"]) == ["@a:x"]


def test_few_false_positives_at_the_size_it_is_made_for() -> None:
    users = StoredUsers(20)  # 1 Mbit
    users.add(f"@stored{i}:x" for i in range(50_000))
    users.merge(StoredUsers(20))
    asked = [f"@never{i}:x" for i in range(20_000)]
    # expected ~0.2 % at 50,000 ids in 2**20 bits with 3 probes
    assert len(users.maybe_stored(asked)) < len(asked) // 100


def test_memory_does_not_grow_with_the_ids_added() -> None:
    users = StoredUsers(12)
    before = users.memory_bytes
    users.add(f"@u{i}:x" for i in range(10_000))
    assert users.memory_bytes == before == 2**12 // 8


def test_only_filters_of_one_size_merge() -> None:
    with pytest.raises(ValueError, match="one size"):
        StoredUsers(10).merge(StoredUsers(11))
    with pytest.raises(ValueError, match="bits_log2"):
        StoredUsers(3)
