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
_add = st.tuples(st.just("add"), _key, st.integers(0, 200))
# a prune whose call is followed, before it commits, by adds (they commit after it);
# ``reached`` False: a bounded prune that stopped short of the cutoff
_prune = st.tuples(
    st.just("prune"),
    st.integers(0, 220),
    st.lists(st.tuples(_key, st.integers(0, 200)), max_size=3),
    st.booleans(),
)
_ops = st.lists(st.one_of(_add, _prune), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    ops=_ops,
    capacity=st.integers(1, 12),
    generations=st.integers(3, 5),
    retention_ms=st.integers(1, 60),
)
def test_a_stored_key_is_never_filtered_out(
    ops: list[tuple[object, ...]], capacity: int, generations: int, retention_ms: int
) -> None:
    txn_filter = TxnFilter(capacity, generations=generations, retention_ms=retention_ms)
    stored: dict[tuple[str, str], int] = {}  # what the database holds: key -> received_ts

    for op in ops:
        if op[0] == "add":
            _, key, ts = op
            txn_filter.add(*key, ts)  # type: ignore[misc]
            stored.setdefault(key, ts)  # type: ignore[arg-type]  # ON CONFLICT DO NOTHING
        else:
            _, cutoff, in_flight, reached = op
            emptied = txn_filter.prunable(cutoff)  # type: ignore[arg-type]
            for key, ts in in_flight:  # type: ignore[attr-defined]
                txn_filter.add(*key, ts)
            if reached:
                stored = {k: ts for k, ts in stored.items() if ts >= cutoff}  # type: ignore[operator]
            else:  # the oldest one went, the rest stays
                for k in sorted(stored, key=stored.__getitem__)[:1]:
                    if stored[k] < cutoff:  # type: ignore[operator]
                        del stored[k]
            for key, ts in in_flight:  # type: ignore[attr-defined]
                stored.setdefault(key, ts)
            if reached:
                txn_filter.drop(emptied)
        assert txn_filter.generations_in_use <= generations
        assert all(txn_filter.might_contain(*key) for key in stored)


def test_false_positives_stay_near_the_rate_it_was_sized_for() -> None:
    txn_filter = TxnFilter(20_000, retention_ms=1_000)
    for n in range(20_000):
        txn_filter.add(f"origin{n % 97}.example", f"txn{n}", n // 20)
    assert all(
        txn_filter.might_contain(f"origin{n % 97}.example", f"txn{n}") for n in range(20_000)
    )
    false_positives = sum(
        txn_filter.might_contain(f"origin{n % 97}.example", f"other{n}") for n in range(20_000)
    )
    assert false_positives / 20_000 < 0.02


def test_generations_follow_time_slots_not_key_counts() -> None:
    txn_filter = TxnFilter(10, generations=4, retention_ms=200)  # slots of 100 ms
    assert txn_filter.span_ms == 100
    for n in range(1_000):  # a hundred times what it was sized for, all in one slot
        txn_filter.add("a.example", str(n), n % 100)
    assert txn_filter.generations_in_use == 1
    txn_filter.add("a.example", "next slot", 100)
    assert txn_filter.generations_in_use == 2
    assert len(txn_filter.prunable(100)) == 1
    assert len(txn_filter.prunable(10_000)) == 1  # never the current generation
    txn_filter.add("a.example", "third slot", 250)
    assert len(txn_filter.prunable(10_000)) == 2


def _false_positive_rate(txn_filter: TxnFilter, tag: str) -> float:
    probes = 4_000
    hits = sum(txn_filter.might_contain("probe.example", f"{tag}-{n}") for n in range(probes))
    return hits / probes


def _sustain(
    txn_filter: TxnFilter, keys_per_retention: int, retentions: int, start_ms: int
) -> list[float]:
    """Add keys at a steady rate for ``retentions`` retentions, pruning the way the
    worker does (every 1/24 retention, everything older than a retention); the
    false-positive rate at the end of each retention."""
    retention = txn_filter.retention_ms
    step_ms = retention // 100
    per_step = keys_per_retention // 100
    prune_every = retention // 24
    rates: list[float] = []
    now = start_ms
    for _ in range(retentions):
        for _ in range(100):
            for n in range(per_step):
                txn_filter.add("sender.example", f"{now}-{n}", now)
            if now % prune_every < step_ms:
                txn_filter.drop(txn_filter.prunable(now - retention))
            assert txn_filter.generations_in_use <= txn_filter.generations
            now += step_ms
        rates.append(_false_positive_rate(txn_filter, str(now)))
    return rates


def test_false_positives_stay_bounded_under_a_sustained_rate_indefinitely() -> None:
    """At the sized rate the filter stays at its error rate; above it, the rate
    rises once and stays put (nothing accumulates: generations expire by time),
    then falls back one retention after the excess stops."""
    txn_filter = TxnFilter(2_000, retention_ms=2_400)
    memory = txn_filter.memory_bytes
    at_capacity = _sustain(txn_filter, 2_000, 12, start_ms=0)
    assert max(at_capacity) < 0.02
    above = _sustain(txn_filter, 3_000, 12, start_ms=12 * 2_400)
    assert max(above) < 0.2
    assert max(above[-4:]) <= max(above[2:6]) + 0.03  # no drift upwards
    after = _sustain(txn_filter, 1_000, 3, start_ms=24 * 2_400)
    assert after[-1] < 0.01
    assert txn_filter.memory_bytes == memory


def test_memory_stays_bounded_when_prunes_stop_and_nothing_is_forgotten() -> None:
    txn_filter = TxnFilter(1_000, generations=4, retention_ms=1_000)
    for n in range(10_000):  # 20 retentions' worth of slots, never pruned
        txn_filter.add("a.example", str(n), n * 2)
    assert txn_filter.generations_in_use == 4
    assert txn_filter.memory_bytes < 4_000  # ~1,000 keys at 1%: about 1.2 kB a generation
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
