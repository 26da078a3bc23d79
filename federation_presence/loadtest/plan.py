"""What a load run sends (pure): transactions of signed presence EDUs.

A ``LoadShape`` says how many EDUs per transaction and pushes per EDU. The
plan builds, for one synthetic origin, the exact bytes of each HTTP request
(``PUT /send/{txnId}`` with its X-Matrix header), so that the sending loop
does no JSON and no signing while it is being timed. Users are
``@u{n}:{origin}``; presence cycles through the states so that every push is
a real change for the receiver.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from signedjson.types import SigningKey

from federation_presence.federation.xmatrix import authorization_header

STATES = ("online", "unavailable", "online", "offline")


@dataclass(frozen=True, slots=True)
class LoadShape:
    edus_per_txn: int = 1
    pushes_per_edu: int = 50
    users_per_origin: int = 1_000

    @property
    def pushes_per_txn(self) -> int:
        return self.edus_per_txn * self.pushes_per_edu


def transaction_body(origin: str, shape: LoadShape, sequence: int, now: int) -> dict[str, object]:
    """The ``sequence``-th transaction of ``origin``: distinct users, cycling states."""
    edus = []
    first = sequence * shape.pushes_per_txn
    for e in range(shape.edus_per_txn):
        pushes = []
        for p in range(shape.pushes_per_edu):
            n = first + e * shape.pushes_per_edu + p
            pushes.append(
                {
                    "user_id": f"@u{n % shape.users_per_origin}:{origin}",
                    "presence": STATES[(n // shape.users_per_origin) % len(STATES)],
                    "last_active_ago": n % 60_000,
                    "currently_active": n % 2 == 0,
                }
            )
        edus.append({"edu_type": "m.presence", "content": {"push": pushes}})
    return {"origin": origin, "origin_server_ts": now, "pdus": [], "edus": edus}


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
