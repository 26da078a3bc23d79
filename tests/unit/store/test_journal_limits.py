"""How much a size-triggered fold takes: about twice the excess, within bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.store.journal import JournalLimits


def test_a_small_excess_folds_the_least_chunk() -> None:
    limits = JournalLimits(max_changes=500_000, fold_changes=20_000, fold_writes=2_000)

    small = limits.size_fold(excess=50)

    assert (small.fold_changes, small.fold_writes) == (1_000, 1_000)
    assert small.max_changes == limits.max_changes


def test_a_large_excess_folds_twice_it_up_to_a_full_chunk() -> None:
    limits = JournalLimits(max_changes=500_000, fold_changes=20_000, fold_writes=2_000)

    assert limits.size_fold(excess=3_000).fold_changes == 6_000
    assert limits.size_fold(excess=3_000).fold_writes == 2_000
    assert limits.size_fold(excess=1_000_000).fold_changes == 20_000


@given(
    excess=st.integers(0, 10**7),
    fold_changes=st.integers(1, 10**6),
    fold_writes=st.integers(1, 10**6),
    least=st.integers(1, 10**5),
)
def test_a_size_fold_never_exceeds_a_full_chunk_nor_takes_less_than_it_must(
    excess: int, fold_changes: int, fold_writes: int, least: int
) -> None:
    limits = JournalLimits(10, fold_changes, fold_writes, least)

    bounded = limits.size_fold(excess)

    assert bounded.fold_changes == min(fold_changes, max(least, 2 * excess))
    assert bounded.fold_writes == min(fold_writes, max(least, 2 * excess))


def test_limits_refuse_a_zero_least_size_fold() -> None:
    with pytest.raises(ValueError, match="positive"):
        JournalLimits(size_fold_min=0)
