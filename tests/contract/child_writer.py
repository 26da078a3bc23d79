"""A program that applies, says so, then waits to be killed (``kill -9`` tests).

``python child_writer.py BACKEND LOCATION COUNT``: opens the store (BACKEND
``sqlite`` with LOCATION a file path, or ``postgres`` with LOCATION a schema),
applies COUNT notified outcomes concurrently, each with an inbound txn, and
once every ``apply`` has returned prints ``durable <stream id>``. Then it
blocks on stdin without closing the store: the test kills it there.
"""

from __future__ import annotations

import asyncio
import os
import sys

from federation_presence.store.postgres import PostgresStore
from federation_presence.store.sqlite import SqliteStore
from tests.contract.samples import inbound_txn, notified, user

POSTGRES_DSN = os.environ.get("FP_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def main(backend: str, location: str, count: int) -> None:
    store = (
        SqliteStore(location)
        if backend == "sqlite"
        else PostgresStore(POSTGRES_DSN, schema=location)
    )
    await store.open()
    results = await asyncio.gather(
        *(
            store.apply(notified(user(f"@u{n}:killed.example")), inbound_txn("remote", f"t{n}"))
            for n in range(count)
        )
    )
    print(f"durable {max(results)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
