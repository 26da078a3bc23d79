"""The outbound sender's settings (pure values; ``config.py`` builds them)."""

from __future__ import annotations

from dataclasses import dataclass

SECOND_MS = 1_000
HOUR_MS = 3_600 * SECOND_MS


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """How the sender batches, times out, backs off and shards.

    ``instances`` empty: this instance sends to every destination; otherwise
    ``instance_name`` must be one of them and owns the destinations that hash
    to it (``sharding.owner``). ``txn_id_prefix`` starts every transaction id
    we send, so that ours never collide with a homeserver's that shares our
    server name (receivers dedup by origin and txn id).

    Timeouts: ``transaction_timeout_ms`` bounds a whole ``PUT /send``
    (resolution included), ``connect_timeout_ms`` its connect (TCP and TLS),
    ``read_timeout_ms`` each socket read and write; None = the federation
    client's ``request_timeout``.
    """

    enabled: bool = True
    instance_name: str = "main"
    instances: tuple[str, ...] = ()
    linger_ms: int = 20
    pushes_per_edu: int = 50
    edus_per_transaction: int = 100
    transaction_timeout_ms: int = 30 * SECOND_MS
    connect_timeout_ms: int | None = None
    read_timeout_ms: int | None = None
    backoff_initial_ms: int = 10 * SECOND_MS
    backoff_max_ms: int = 4 * HOUR_MS
    backoff_jitter: float = 0.2
    txn_id_prefix: str = "fp"

    @property
    def max_pushes_per_transaction(self) -> int:
        return self.pushes_per_edu * self.edus_per_transaction
