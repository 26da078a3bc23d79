"""Transactions of one origin apply one at a time, in arrival order."""

from __future__ import annotations

import anyio
from anyio import wait_all_tasks_blocked

from federation_presence.federation.inbound import _OriginLocks


async def test_a_second_transaction_of_an_origin_waits_for_the_first() -> None:
    locks = _OriginLocks()
    order: list[str] = []
    release_first = anyio.Event()

    async def first() -> None:
        async with locks.hold("a.example"):
            order.append("first in")
            await release_first.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("a.example"):
            order.append("second in")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await wait_all_tasks_blocked()
        tg.start_soon(second)
        await wait_all_tasks_blocked()
        assert order == ["first in"]
        release_first.set()
    assert order == ["first in", "first out", "second in"]


async def test_other_origins_do_not_wait() -> None:
    locks = _OriginLocks()
    async with locks.hold("a.example"), locks.hold("b.example"):
        pass


async def test_the_lock_table_stays_bounded_and_keeps_held_locks() -> None:
    locks = _OriginLocks(max_origins=10)
    async with locks.hold("held.example"):
        for i in range(100):
            async with locks.hold(f"o{i}.example"):
                pass
        assert len(locks._locks) <= 10
        assert "held.example" in locks._locks


async def test_the_lock_table_follows_the_origins_in_flight_not_every_origin_seen() -> None:
    locks = _OriginLocks()
    async with locks.hold("held.example"):
        for i in range(10_000):
            async with locks.hold(f"o{i}.example"):
                pass
            assert len(locks) <= _OriginLocks.SWEEP_FLOOR
        assert "held.example" in locks._locks
