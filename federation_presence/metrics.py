"""Prometheus metrics of one worker, in a registry of its own.

A registry per ``Metrics`` instance (not prometheus_client's global one) so
that several workers in one test process do not share counters. Hot paths
increment once per transaction (``inc(n)``), never once per push.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.transactions = Counter(
            "federation_presence_inbound_transactions",
            "Inbound /send transactions by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.pushes_accepted = Counter(
            "federation_presence_inbound_pushes_accepted",
            "m.presence pushes validated and stored",
            registry=self.registry,
        )
        self.pushes_dropped = Counter(
            "federation_presence_inbound_pushes_dropped",
            "m.presence pushes or EDUs dropped, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.other_edus = Counter(
            "federation_presence_inbound_other_edus",
            "EDUs of types this worker acknowledges without processing",
            ["edu_type"],
            registry=self.registry,
        )
        self.pdus_ignored = Counter(
            "federation_presence_inbound_pdus_ignored",
            "PDUs received in /send (not this worker's business)",
            registry=self.registry,
        )
        self.rejections = Counter(
            "federation_presence_inbound_rejections",
            "Inbound requests refused, by errcode",
            ["errcode"],
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "federation_presence_store_apply_seconds",
            "Time from handing an outcome to the store until it is durable",
            registry=self.registry,
        )
        self.known_users = Gauge(
            "federation_presence_known_users",
            "Users whose combined presence this worker holds",
            registry=self.registry,
        )

        self.http_refusals = Counter(
            "federation_presence_http_refusals",
            "HTTP requests answered with an error (4xx/5xx), by status and errcode",
            ["status", "errcode"],
            registry=self.registry,
        )
        self.http_timeouts = Counter(
            "federation_presence_http_timeouts",
            "Connections closed because headers or body did not arrive in time, by phase",
            ["phase"],
            registry=self.registry,
        )
        self.store_failures = Counter(
            "federation_presence_store_failures",
            "Requests answered 503 because the store failed, by exception class",
            ["error"],
            registry=self.registry,
        )

        # Children resolved once: ``labels()`` is a dict lookup under a lock.
        self.transactions_applied = self.transactions.labels("applied")
        self.transactions_repeated = self.transactions.labels("repeat")

    def render(self) -> bytes:
        return generate_latest(self.registry)
