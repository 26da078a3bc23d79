"""The ``/send`` wire of ``m.presence``: parsing what comes in, building what goes out (pure).

What this module owns: the wire rules of a transaction envelope and of the
``m.presence`` EDU. It never raises anything but ``PeerError`` and never
returns anything but validated values, whatever JSON it is given.

Two levels of fault, on purpose:

* An envelope fault (the body is not an object, ``origin`` is missing or is
  not the authenticated origin, ``pdus``/``edus`` are not arrays, more than
  50 PDUs or 100 EDUs) rejects the whole transaction with a 4xx: the sender
  made a transaction the spec forbids.
* A fault inside one EDU or one push (a malformed EDU, a push with an unknown
  ``presence``, a negative ``last_active_ago``, a user of another server...)
  drops only that item and counts it under a reason; the rest applies. This is
  the difference from Synapse, which answers 500 to the whole transaction for
  one bad push, so that its sender retries it forever.

Unknown presence values are rejected (dropped), never mapped or stored.

Outbound, two builders of the same bytes: ``presence_edus`` +
``transaction_body`` give the transaction as a dict (the reference, and what
tests read); ``encode_push`` + ``transaction_bytes`` give it as canonical JSON
bytes joined from pieces, which is what the sender sends. A push's pieces do
not depend on the send time (``last_active_ago`` is written between them at
``now``), so each user's state is encoded once and shared by every
destination (``PushEncodings``); a destination's own cost is the join, and
not even that when it sends the same states in the same ms as the
destination before it (``TransactionBodies``). A test holds the bytes equal
to the reference ``canonicaljson`` of the dict.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from federation_presence.errors import PeerError
from federation_presence.federation.xmatrix import CanonicalJson
from federation_presence.ids import (
    LOCALPART_RE,
    MAX_USER_ID_LENGTH,
    ServerName,
    UserId,
    parse_user_id,
)
from federation_presence.presence.inputs import RemotePush
from federation_presence.presence.model import UserPresence
from federation_presence.presence.states import (
    PresenceState,
    parse_presence,
    to_federation_wire,
)
from federation_presence.presence.wire import federation_push

MAX_PDUS_PER_TXN = 50
MAX_EDUS_PER_TXN = 100
MAX_SAFE_INT = 2**53 - 1
PRESENCE_EDU = "m.presence"
KNOWN_EDU_TYPES = frozenset(
    {
        "m.typing",
        "m.receipt",
        "m.device_list_update",
        "m.direct_to_device",
        "m.signing_key_update",
    }
)

# Drop reasons: label values of the ``dropped pushes`` metric.
DROP_NOT_OBJECT = "push_not_object"
DROP_BAD_USER_ID = "bad_user_id"
DROP_FOREIGN_USER = "user_not_on_origin"
DROP_BAD_PRESENCE = "bad_presence"
DROP_BAD_LAST_ACTIVE_AGO = "bad_last_active_ago"
DROP_BAD_CURRENTLY_ACTIVE = "bad_currently_active"
DROP_BAD_STATUS_MSG = "bad_status_msg"
DROP_BAD_EDU = "malformed_edu"
DROP_BAD_PRESENCE_CONTENT = "malformed_presence_content"


@dataclass(frozen=True, slots=True)
class ParsedTransaction:
    """A transaction reduced to what this worker acts on.

    ``dropped`` counts dropped pushes and EDUs by reason; ``other_edus`` counts
    EDUs of types this worker acknowledges but does not process.
    """

    origin: ServerName
    pdu_count: int
    pushes: tuple[RemotePush, ...]
    dropped: Mapping[str, int] = field(default_factory=dict)
    other_edus: Mapping[str, int] = field(default_factory=dict)


def _bad(message: str) -> PeerError:
    return PeerError(400, "M_BAD_JSON", message)


def parse_transaction(
    body: object, auth_origin: ServerName, *, max_status_msg_length: int
) -> ParsedTransaction:
    """Validate ``body`` (parsed JSON) sent by the authenticated ``auth_origin``."""
    if not isinstance(body, dict):
        raise _bad("transaction body must be a JSON object")
    origin = body.get("origin")
    if not isinstance(origin, str):
        raise _bad("transaction 'origin' must be a string")
    if origin != auth_origin:
        raise PeerError(
            403,
            "M_FORBIDDEN",
            f"transaction origin {origin!r} is not the authenticated origin {auth_origin!r}",
        )
    pdus = body.get("pdus", [])
    if not isinstance(pdus, list):
        raise _bad("transaction 'pdus' must be an array")
    if len(pdus) > MAX_PDUS_PER_TXN:
        raise _bad(f"too many PDUs: {len(pdus)} > {MAX_PDUS_PER_TXN}")
    edus = body.get("edus", [])
    if not isinstance(edus, list):
        raise _bad("transaction 'edus' must be an array")
    if len(edus) > MAX_EDUS_PER_TXN:
        raise _bad(f"too many EDUs: {len(edus)} > {MAX_EDUS_PER_TXN}")

    # Plain dicts, not Counters: this runs once per transaction (~1 µs saved).
    pushes: list[RemotePush] = []
    dropped: dict[str, int] = {}
    other_edus: dict[str, int] = {}
    for edu in edus:
        if type(edu) is not dict:
            dropped[DROP_BAD_EDU] = dropped.get(DROP_BAD_EDU, 0) + 1
            continue
        edu_type = edu.get("edu_type")
        content = edu.get("content")
        if type(edu_type) is not str or type(content) is not dict:
            dropped[DROP_BAD_EDU] = dropped.get(DROP_BAD_EDU, 0) + 1
            continue
        if edu_type != PRESENCE_EDU:
            # A metric label per EDU type: only the spec's types get their
            # own, so remote servers cannot grow the label set without bound.
            label = edu_type if edu_type in KNOWN_EDU_TYPES else "other"
            other_edus[label] = other_edus.get(label, 0) + 1
            continue
        push_list = content.get("push")
        if type(push_list) is not list:
            dropped[DROP_BAD_PRESENCE_CONTENT] = dropped.get(DROP_BAD_PRESENCE_CONTENT, 0) + 1
            continue
        for raw in push_list:
            push_or_reason = parse_push(raw, auth_origin, max_status_msg_length)
            if isinstance(push_or_reason, RemotePush):
                pushes.append(push_or_reason)
            else:
                dropped[push_or_reason] = dropped.get(push_or_reason, 0) + 1
    return ParsedTransaction(auth_origin, len(pdus), tuple(pushes), dropped, other_edus)


def parse_push(raw: object, origin: ServerName, max_status_msg_length: int) -> RemotePush | str:
    """One ``push`` entry as a ``RemotePush``, or the reason it is dropped."""
    if type(raw) is not dict:
        return DROP_NOT_OBJECT
    user_id = raw.get("user_id")
    if type(user_id) is not str:
        return DROP_BAD_USER_ID
    # Fast path: "@localpart:origin" where the localpart has no ':' is exactly
    # a valid user ID on ``origin`` (origin is a validated server name).
    suffix_length = len(origin) + 1
    if not (
        suffix_length + 1 < len(user_id) <= MAX_USER_ID_LENGTH
        and user_id[0] == "@"
        and user_id[-suffix_length] == ":"
        and user_id.endswith(origin)
        and LOCALPART_RE.fullmatch(user_id, 1, len(user_id) - suffix_length)
    ):
        parsed = parse_user_id(user_id)
        return DROP_BAD_USER_ID if parsed is None or parsed[1] == origin else DROP_FOREIGN_USER
    state = parse_presence(raw.get("presence"))
    if state is None:
        return DROP_BAD_PRESENCE
    last_active_ago = raw.get("last_active_ago")
    # bool is an int subclass in Python; JSON true is not a number.
    if type(last_active_ago) is not int or not 0 <= last_active_ago <= MAX_SAFE_INT:
        return DROP_BAD_LAST_ACTIVE_AGO
    currently_active = raw.get("currently_active", False)
    if type(currently_active) is not bool:
        return DROP_BAD_CURRENTLY_ACTIVE
    status_msg = raw.get("status_msg")
    if status_msg is not None and (
        type(status_msg) is not str
        or len(status_msg) > max_status_msg_length
        # U+0000 cannot be stored as PostgreSQL text; refusing it here keeps
        # one bad push from failing the whole group commit it would join.
        or "\x00" in status_msg
    ):
        return DROP_BAD_STATUS_MSG
    # Positional: keywords cost a dataclass __init__ 0.34 µs more, per push.
    return RemotePush(origin, UserId(user_id), state, last_active_ago, currently_active, status_msg)


# -- outbound: building what we send ------------------------------------------

MAX_PUSHES_PER_EDU = 50
"""Our own limit per outbound ``m.presence`` EDU (Synapse's receivers take any)."""


def presence_edus(
    users: Sequence[UserPresence], now: int, pushes_per_edu: int = MAX_PUSHES_PER_EDU
) -> list[dict[str, Any]]:
    """``m.presence`` EDUs carrying ``users`` in order, ``pushes_per_edu`` each at most.

    Every push is schema-complete (``presence.wire.federation_push``).
    """
    if pushes_per_edu < 1:
        raise ValueError("pushes_per_edu must be positive")
    return [
        {
            "edu_type": PRESENCE_EDU,
            "content": {
                "push": [
                    federation_push(user, now) for user in users[start : start + pushes_per_edu]
                ]
            },
        }
        for start in range(0, len(users), pushes_per_edu)
    ]


def transaction_body(origin: str, now: int, edus: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``/send`` transaction of EDUs only (at most ``MAX_EDUS_PER_TXN``)."""
    if len(edus) > MAX_EDUS_PER_TXN:
        raise ValueError(f"too many EDUs for one transaction: {len(edus)}")
    return {"origin": origin, "origin_server_ts": now, "pdus": [], "edus": list(edus)}


# -- outbound, encoded once: canonical bytes joined from pieces -----------------


@dataclass(frozen=True, slots=True)
class EncodedPush:
    """One user's push as canonical JSON, less ``last_active_ago``.

    The push at ``now`` is ``head + str(max(now - last_active_ts, 0)) + tail``:
    the members in canonical (sorted) order are ``currently_active``,
    ``last_active_ago``, ``presence``, ``status_msg`` (when set), ``user_id``,
    as ``presence.wire.federation_push`` makes them.
    """

    state: UserPresence
    head: bytes
    tail: bytes


_HEAD_ACTIVE = b'{"currently_active":true,"last_active_ago":'
_HEAD_INACTIVE = b'{"currently_active":false,"last_active_ago":'


def encode_push(user: UserPresence) -> EncodedPush:
    """``user``'s push in pieces (``ValueError`` if its timestamp is not a safe integer)."""
    if not 0 <= user.last_active_ts <= MAX_SAFE_INT:
        raise ValueError(f"last_active_ts {user.last_active_ts} is not a safe integer")
    dumps = orjson.dumps
    try:
        tail = b',"presence":' + dumps(to_federation_wire(user.state))
        if user.status_msg is not None:
            tail += b',"status_msg":' + dumps(user.status_msg)
        tail += b',"user_id":' + dumps(user.user_id) + b"}"
    except TypeError as exc:  # a lone surrogate
        raise ValueError(f"push of {user.user_id!r} is not canonical JSON: {exc}") from None
    return EncodedPush(user, _HEAD_ACTIVE if user.currently_active else _HEAD_INACTIVE, tail)


class PushEncodings:
    """The encoded push of each present user's latest state, shared by all destinations.

    One entry per user (the state it was made from is kept and compared); a
    new state of the user replaces it. Offline states are encoded each time
    and not kept (their entry is dropped), so memory is bounded by the
    present users, as the sender's other per-user state is.
    """

    def __init__(self) -> None:
        self._by_user: dict[UserId, EncodedPush] = {}

    def __len__(self) -> int:
        return len(self._by_user)

    def get(self, user: UserPresence) -> EncodedPush:
        found = self._by_user.get(user.user_id)
        if found is not None and (found.state is user or found.state == user):
            return found
        encoded = encode_push(user)
        if user.state is PresenceState.OFFLINE:
            self._by_user.pop(user.user_id, None)
        else:
            self._by_user[user.user_id] = encoded
        return encoded


_EDU_START = b'{"content":{"push":['
_EDU_END = b']},"edu_type":"' + PRESENCE_EDU.encode() + b'"}'


def transaction_bytes(
    origin: str,
    now: int,
    pushes: Sequence[EncodedPush],
    pushes_per_edu: int = MAX_PUSHES_PER_EDU,
) -> CanonicalJson:
    """The canonical JSON of ``transaction_body(origin, now, presence_edus(...))``.

    Built by joining pieces: no dict, no encoder over the whole body.
    """
    if pushes_per_edu < 1:
        raise ValueError("pushes_per_edu must be positive")
    if not 0 <= now <= MAX_SAFE_INT:
        raise ValueError(f"now {now} is not a safe integer")
    if -(-len(pushes) // pushes_per_edu) > MAX_EDUS_PER_TXN:
        raise ValueError(f"too many EDUs for one transaction: {len(pushes)} pushes")
    try:
        origin_json = orjson.dumps(origin)
    except TypeError as exc:
        raise ValueError(f"origin {origin!r} is not canonical JSON: {exc}") from None
    parts: list[bytes] = [b'{"edus":[']
    append = parts.append
    for start in range(0, len(pushes), pushes_per_edu):
        if start:
            append(b",")
        append(_EDU_START)
        append(
            b",".join(
                [
                    b"%s%d%s" % (p.head, max(now - p.state.last_active_ts, 0), p.tail)
                    for p in pushes[start : start + pushes_per_edu]
                ]
            )
        )
        append(_EDU_END)
    append(b'],"origin":%s,"origin_server_ts":%d,"pdus":[]}' % (origin_json, now))
    return CanonicalJson(b"".join(parts))


class TransactionBodies:
    """Transaction bodies from ``origin``, built with one ``PushEncodings``.

    ``body(now, users)`` equals ``transaction_bytes(origin, now, [encodings
    of users], pushes_per_edu)``. When ``now`` and the very same state
    objects (``is``, in the same order) as the previous call are given, the
    previous body is returned again: a change fanned out to many
    destinations is the same objects in each of their batches, and most of
    them send within the same ms, so their bodies (which depend on nothing
    else) are built once. Only the last body is kept.
    """

    def __init__(self, origin: str, pushes_per_edu: int = MAX_PUSHES_PER_EDU) -> None:
        self.origin = origin
        self.pushes_per_edu = pushes_per_edu
        self.encodings = PushEncodings()
        self._last: tuple[int, Sequence[UserPresence], CanonicalJson] | None = None

    def body(self, now: int, users: Sequence[UserPresence]) -> CanonicalJson:
        last = self._last
        if (
            last is not None
            and last[0] == now
            and len(last[1]) == len(users)
            and all(map(operator.is_, last[1], users))
        ):
            return last[2]
        get = self.encodings.get
        built = transaction_bytes(
            self.origin, now, [get(user) for user in users], self.pushes_per_edu
        )
        self._last = (now, tuple(users), built)
        return built
