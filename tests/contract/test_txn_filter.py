"""The txn dedup filter: never a false negative, bounded, and what the stores do with it.

The first tests are of the pure ``TxnFilter``; the rest run the Store
contract over SQLite and PostgreSQL: a stored transaction always reaches the
database lookup (its first answer wins), across reopen and prune.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from federation_presence.presence.model import Outcome
from federation_presence.store.base import InboundTxn
from federation_presence.store.txn_filter import TxnFilter
from tests.contract.conftest import AnyStore, Database
from tests.contract.samples import NOW_TS, inbound_txn, notified, user

_key = st.tuples(st.sampled_from(["a.example", "b.example", "c"]), st.text(max_size=6))
_add = st.tuples(st.just("add"), _key, st.integers(0, 100))
# a prune whose call is followed, before it commits, by adds (they commit after it)
_prune = st.tuples(
    st.just("prune"),
    st.integers(0, 110),
    st.lists(st.tuples(_key, st.integers(0, 100)), max_size=3),
)
_ops = st.lists(st.one_of(_add, _prune), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=_ops, capacity=st.integers(1, 12), generations=st.integers(2, 4))
def test_a_stored_key_is_never_filtered_out(
    ops: list[tuple[object, ...]], capacity: int, generations: int
) -> None:
    txn_filter = TxnFilter(capacity, generations=generations)
    stored: dict[tuple[str, str], int] = {}  # what the database holds: key -> received_ts

    def add(key: tuple[str, str], ts: int) -> None:
        txn_filter.add(*key, ts)
        stored.setdefault(key, ts)  # ON CONFLICT DO NOTHING: the first one stays

    for op in ops:
        if op[0] == "add":
            _, key, ts = op
            add(key, ts)  # type: ignore[arg-type]
        else:
            _, cutoff, in_flight = op
            emptied = txn_filter.prunable(cutoff)  # type: ignore[arg-type]
            for key, ts in in_flight:  # type: ignore[attr-defined]
                txn_filter.add(*key, ts)
            stored = {k: ts for k, ts in stored.items() if ts >= cutoff}  # type: ignore[operator]
            for key, ts in in_flight:  # type: ignore[attr-defined]
                stored.setdefault(key, ts)
            txn_filter.drop(emptied)
        assert txn_filter.generations_in_use <= generations
        assert all(txn_filter.might_contain(*key) for key in stored)


def test_false_positives_stay_near_the_rate_it_was_sized_for() -> None:
    txn_filter = TxnFilter(20_000)
    for n in range(20_000):
        txn_filter.add(f"origin{n % 97}.example", f"txn{n}", NOW_TS)
    assert all(
        txn_filter.might_contain(f"origin{n % 97}.example", f"txn{n}") for n in range(20_000)
    )
    false_positives = sum(
        txn_filter.might_contain(f"origin{n % 97}.example", f"other{n}") for n in range(20_000)
    )
    assert false_positives / 20_000 < 0.02


def test_memory_stays_bounded_past_capacity_and_nothing_is_forgotten() -> None:
    txn_filter = TxnFilter(1_000, generations=4)
    for n in range(10_000):
        txn_filter.add("a.example", str(n), n)
    assert txn_filter.generations_in_use <= 4
    assert txn_filter.memory_bytes < 2_000
    assert all(txn_filter.might_contain("a.example", str(n)) for n in range(10_000))


def test_surrogates_and_nul_in_a_txn_id_are_keys_like_any_other() -> None:
    txn_filter = TxnFilter(100)
    txn_filter.add("a.example", "t\udcff\x00x", 0)
    assert txn_filter.might_contain("a.example", "t\udcff\x00x")


async def test_an_unknown_txn_is_answered_without_the_database(store: AnyStore) -> None:
    await store.apply(notified(user("@a:x")), inbound_txn("remote", "t1"))
    filtered = store.stats.txn_lookups_filtered
    assert await store.get_txn_response("remote", "t2") is None
    assert await store.get_txn_response("elsewhere", "t1") is None
    assert store.stats.txn_lookups_filtered == filtered + 2
    assert await store.get_txn_response("remote", "t1") == b'{"pdus":{}}'


async def test_a_repeated_txn_keeps_its_first_answer_after_reopen(
    store: AnyStore, database: Database
) -> None:
    await store.apply(notified(user("@a:x")), inbound_txn("remote", "t1"))
    await store.close()
    reopened = await database.opened_store()
    try:
        assert await reopened.get_txn_response("remote", "t1") == b'{"pdus":{}}'
        await reopened.apply(Outcome(), InboundTxn("remote", "t1", b"other", NOW_TS + 1))
        assert await reopened.get_txn_response("remote", "t1") == b'{"pdus":{}}'
        assert await reopened.get_txn_response("remote", "t2") is None
    finally:
        await reopened.close()


async def test_after_a_partial_prune_every_kept_txn_is_still_found(database: Database) -> None:
    """A bounded prune that stops short of the cutoff must not drop a generation."""
    store = await database.opened_store(txn_filter_capacity=4)
    try:
        for n in range(12):
            await store.apply(Outcome(), inbound_txn("remote", f"t{n}", received_ts=100 * n))
        assert await store.prune_txns(1_150, limit=2) == 2
        for n in range(12):
            expected = None if n < 2 else b'{"pdus":{}}'
            assert await store.get_txn_response("remote", f"t{n}") == expected
    finally:
        await store.close()


async def test_after_prune_every_kept_txn_is_still_found(database: Database) -> None:
    """A filter sized for 4 keys: generations seal, merge and get dropped."""
    store = await database.opened_store(txn_filter_capacity=4)
    try:
        for n in range(12):
            await store.apply(Outcome(), inbound_txn("remote", f"t{n}", received_ts=100 * n))
        assert await store.prune_txns(550) == 6
        for n in range(12):
            expected = None if n < 6 else b'{"pdus":{}}'
            assert await store.get_txn_response("remote", f"t{n}") == expected
        await store.apply(Outcome(), inbound_txn("remote", "t0", received_ts=2_000))
        assert await store.get_txn_response("remote", "t0") == b'{"pdus":{}}'
    finally:
        await store.close()
    reopened = await database.opened_store(txn_filter_capacity=4)
    try:
        for n in range(12):
            expected = None if 0 < n < 6 else b'{"pdus":{}}'
            assert await reopened.get_txn_response("remote", f"t{n}") == expected
    finally:
        await reopened.close()
