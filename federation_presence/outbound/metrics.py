"""The sender's Prometheus metrics, registered in the worker's registry.

Outcomes of a transaction: ``sent`` (a 200 with a transaction answer),
``failed`` (unreachable, timed out, 5xx, 429, garbage answer: retried after
backoff) and ``rejected`` (400, 401, 403, 413: the destination says the
request itself is wrong; logged with its answer, retried after backoff too).
Pushes: ``sent``, ``failed`` (in a failed transaction: owed again) and
``suppressed`` (owed, but the destination already had it by the notify rule).
Gauges are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SENT, FAILED, REJECTED, SUPPRESSED = "sent", "failed", "rejected", "suppressed"


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.transactions = Counter(
            "federation_presence_outbound_transactions",
            "Outbound /send transactions by outcome",
            ["outcome"],
            registry=registry,
        )
        self.pushes = Counter(
            "federation_presence_outbound_pushes",
            "Outbound m.presence pushes by outcome",
            ["outcome"],
            registry=registry,
        )
        self.send_seconds = Histogram(
            "federation_presence_outbound_send_seconds",
            "Time from sending a transaction until its answer (delivered ones)",
            registry=registry,
        )
        self.destinations_in_backoff = Gauge(
            "federation_presence_outbound_destinations_in_backoff",
            "Destinations waiting for their retry timer",
            registry=registry,
        )
        self.queued_pushes = Gauge(
            "federation_presence_outbound_queued_pushes",
            "Users owed to destinations and not in flight (summed over destinations)",
            registry=registry,
        )
        self.destinations = Gauge(
            "federation_presence_outbound_destinations",
            "Destinations this sender holds state for",
            registry=registry,
        )
        self.transactions_sent = self.transactions.labels(SENT)
        self.transactions_failed = self.transactions.labels(FAILED)
        self.transactions_rejected = self.transactions.labels(REJECTED)
        self.pushes_sent = self.pushes.labels(SENT)
        self.pushes_failed = self.pushes.labels(FAILED)
        self.pushes_suppressed = self.pushes.labels(SUPPRESSED)

    def read_gauges_from(
        self,
        in_backoff: Callable[[], int],
        queued: Callable[[], int],
        destinations: Callable[[], int],
    ) -> None:
        self.destinations_in_backoff.set_function(in_backoff)
        self.queued_pushes.set_function(queued)
        self.destinations.set_function(destinations)
