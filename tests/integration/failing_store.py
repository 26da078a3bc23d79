"""``FailingOnce``: the real SQLite store, whose next ``apply`` can be made to fail.

A fake, not a mock: one ``apply`` fails the way a database outage does, with
``StoreError``; everything else is the real store.
"""

from __future__ import annotations

from federation_presence.errors import StoreError
from federation_presence.presence.model import Outcome
from federation_presence.store.base import InboundTxn
from federation_presence.store.sqlite import SqliteStore


class FailingOnce(SqliteStore):
    """A real store whose next ``apply`` fails once when ``fail_next`` is set."""

    fail_next = False

    async def apply(self, outcome: Outcome, txn: InboundTxn | None = None) -> int:
        if self.fail_next:
            self.fail_next = False
            raise StoreError("simulated outage")
        return await super().apply(outcome, txn)
