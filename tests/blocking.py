"""The blocking-call detector the event-loop tests run under (``blockbuster``).

While a test runs, ``blocking_calls_refused()`` makes any blocking call made
on the event loop's thread from this package's code raise
``blockbuster.BlockingError``: file and socket I/O, ``time.sleep``, sqlite3,
lock waits. Calls from the tests' own helpers are not checked (they fake
other programs: a second SQLite connection, a key file written by hand).
Threads are never checked: blocking there is the point (the SQLite store's
thread, ``anyio.to_thread``).

``ALLOWED`` lists the deliberate blocking calls on the loop, each with why:
every blocking function may block under the named function (a frame of that
file and function on the stack).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from blockbuster import BlockBuster, blockbuster_ctx

# (file, function on the stack): why it may block the loop
ALLOWED: dict[tuple[str, str], str] = {
    (
        "federation_presence/federation/signing_keys.py",
        "load_or_generate_signing_key",
    ): "once at startup, before any listener opens: nothing else waits on the loop yet",
    (
        "asyncpg/connect_utils.py",
        "_parse_connect_dsn_and_args",
    ): "asyncpg stats and reads ~/.pgpass on each new connection; connections are made"
    " at open and on reconnect, never per request",
}


@contextmanager
def blocking_calls_refused() -> Iterator[BlockBuster]:
    with blockbuster_ctx("federation_presence") as detector:
        for function in detector.functions.values():
            for filename, caller in ALLOWED:
                function.can_block_in(filename, caller)
        yield detector
