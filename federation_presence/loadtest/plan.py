"""What a load run sends (pure): transactions of signed presence EDUs.

A ``LoadShape`` says how many EDUs per transaction and pushes per EDU. The
plan builds, for one synthetic origin, the exact bytes of each HTTP request
(``PUT /send/{txnId}`` with its X-Matrix header), so that the sending loop
does no JSON and no signing while it is being timed.

Every push is a real change for the receiver, in every run, not only the
first: a run has a ``run_tag`` (chosen per run by the caller, e.g. from the
clock), and every push carries a ``status_msg`` made of that tag and the
push's sequence number, which no earlier run can have stored. Users are
either **warm** (``@u{n}:{origin}``, ``n`` cycling over ``users_per_origin``:
the same users every run, known to the target once primed) or **cold**
(``@c{run_tag}.{n}:{origin}``: a user the target has never seen, one per
push). The presence state cycles through ``STATES`` as well, and the
``mix`` (weights per state) picks which states appear.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from signedjson.types import SigningKey

from federation_presence.federation.xmatrix import authorization_header

STATES = ("online", "unavailable", "online", "offline")
DEFAULT_MIX: Mapping[str, int] = {"online": 2, "unavailable": 1, "offline": 1}
USER_KINDS = ("warm", "cold")


@dataclass(frozen=True, slots=True)
class LoadShape:
    edus_per_txn: int = 1
    pushes_per_edu: int = 50
    users_per_origin: int = 1_000
    users: str = "warm"  # "warm" (the same users every run) or "cold" (never seen)
    mix: tuple[str, ...] = field(default=STATES)  # the states cycled, repeated per weight

    @property
    def pushes_per_txn(self) -> int:
        return self.edus_per_txn * self.pushes_per_edu


def parse_mix(text: str) -> tuple[str, ...]:
    """``online=2,unavailable=1,offline=1`` → the cycle of states (``ValueError`` if bad)."""
    cycle: list[str] = []
    for item in text.split(","):
        name, _, weight = item.strip().partition("=")
        if name not in {"online", "unavailable", "offline", "busy"}:
            raise ValueError(f"unknown presence state {name!r}")
        count = int(weight) if weight else 1
        if not 0 <= count <= 100:
            raise ValueError(f"weight of {name} must be 0-100")
        cycle.extend([name] * count)
    if not cycle:
        raise ValueError("the mix has no state")
    return _spread(cycle)


def _spread(cycle: list[str]) -> tuple[str, ...]:
    """Order a weighted cycle so that neighbours differ where the weights allow."""
    remaining = {name: cycle.count(name) for name in dict.fromkeys(cycle)}
    ordered: list[str] = []
    while remaining:
        choices = sorted(remaining, key=lambda n: -remaining[n])
        pick = next((n for n in choices if not ordered or n != ordered[-1]), choices[0])
        ordered.append(pick)
        remaining[pick] -= 1
        if not remaining[pick]:
            del remaining[pick]
    return tuple(ordered)


def user_id(origin: str, shape: LoadShape, n: int, run_tag: str) -> str:
    """The user of the ``n``-th push of a run from ``origin``."""
    if shape.users == "cold":
        return f"@c{run_tag}.{n}:{origin}"
    return f"@u{n % shape.users_per_origin}:{origin}"


def transaction_body(
    origin: str, shape: LoadShape, sequence: int, now: int, run_tag: str = "0"
) -> dict[str, object]:
    """The ``sequence``-th transaction of ``origin`` in the run ``run_tag``."""
    edus = []
    first = sequence * shape.pushes_per_txn
    mix = shape.mix
    for e in range(shape.edus_per_txn):
        pushes = []
        for p in range(shape.pushes_per_edu):
            n = first + e * shape.pushes_per_edu + p
            pushes.append(
                {
                    "user_id": user_id(origin, shape, n, run_tag),
                    "presence": mix[(n // shape.users_per_origin) % len(mix)],
                    "status_msg": f"load {run_tag}.{n}",
                    "last_active_ago": n % 60_000,
                    "currently_active": n % 2 == 0,
                }
            )
        edus.append({"edu_type": "m.presence", "content": {"push": pushes}})
    return {"origin": origin, "origin_server_ts": now, "pdus": [], "edus": edus}


def priming_bodies(
    origin: str, shape: LoadShape, now: int, run_tag: str
) -> list[dict[str, object]]:
    """Transactions that make every warm user of ``origin`` known, each once.

    Up to 100 pushes each: the largest divisor of ``users_per_origin`` that fits.
    """
    users = shape.users_per_origin
    size = max(d for d in range(1, min(100, users) + 1) if users % d == 0)
    primer = LoadShape(1, size, users, "warm", shape.mix)
    return [
        transaction_body(origin, primer, i, now, f"prime{run_tag}") for i in range(users // size)
    ]


def request_bytes(
    *,
    origin: str,
    signing_key: SigningKey,
    destination: str,
    host_header: str,
    txn_id: str,
    body: dict[str, object],
) -> bytes:
    """One complete HTTP/1.1 request, signed, ready to write to a socket."""
    uri = f"/_matrix/federation/v1/send/{txn_id}"
    payload = orjson.dumps(body)
    auth = authorization_header(signing_key, "PUT", uri, origin, destination, body)
    head = (
        f"PUT {uri} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        f"Authorization: {auth}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "\r\n"
    )
    return head.encode() + payload
