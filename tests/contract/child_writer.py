"""A program that applies, says so, then waits to be killed (``kill -9`` tests).

``python child_writer.py BACKEND LOCATION COUNT [journal]``: opens the store
(BACKEND ``sqlite`` with LOCATION a file path, or ``postgres`` with LOCATION a
schema), applies COUNT notified outcomes concurrently, each with an inbound
txn, and once every ``apply`` has returned prints ``durable <stream id>``.
Then it blocks on stdin without closing the store: the test kills it there.
With ``journal`` (SQLite only) the store never folds on its own (no idle or
size folds), so what it applied is still in the journal when it is killed.
"""

from __future__ import annotations

import asyncio
import os
import sys

import anyio

from federation_presence.store.postgres import PostgresStore
from federation_presence.store.sqlite import SqliteStore
from tests.contract.samples import inbound_txn, notified, user

POSTGRES_DSN = os.environ.get("FP_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def main(backend: str, location: str, count: int, journal: bool) -> None:
    store: SqliteStore | PostgresStore
    if backend == "postgres":
        store = PostgresStore(POSTGRES_DSN, schema=location)
    elif journal:
        store = SqliteStore(location, idle_fold_delay_s=None, journal_max_rows=10**9)
    else:
        store = SqliteStore(location)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        results = await asyncio.gather(
            *(
                store.apply(notified(user(f"@u{n}:killed.example")), inbound_txn("remote", f"t{n}"))
                for n in range(count)
            )
        )
        print(f"durable {max(results)}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["journal"]))
