"""X-Matrix request authentication: the header and the signed bytes (pure).

What this module owns:

* ``parse_authorization``: the ``Authorization: X-Matrix ...`` grammar of
  RFC 9110 §11.4 as the spec states it, made lenient where deployed servers
  need it (unquoted values holding ``:``; ``signature`` as an alias of
  ``sig``). It returns an ``XMatrixAuth`` or raises ``PeerError(401,
  "M_UNAUTHORIZED")``, whatever string it is given: never another exception.
  A missing X-Matrix header is answered as Synapse answers it (401
  ``M_UNAUTHORIZED`` "Missing Authorization headers"). Synapse answers a
  malformed header with 400; we answer 401, as for every other auth fault.
* ``signed_request_bytes``: the canonical JSON of ``{method, uri, origin,
  destination, content}`` that the signature covers. A ``content`` given as
  ``CanonicalJson`` (bytes already canonical: our own outbound bodies) is
  spliced in as it is, not decoded and encoded again. Canonical means what the
  spec's appendices say, enforced here (``canonical_json_bytes``), not only
  what an encoder emits: integers within ±(2**53-1), no floats, string keys,
  UTF-8. The bytes equal the reference ``canonicaljson``'s.
* ``authorization_header``: the header for our own outbound requests, in the
  form the spec asks senders to use (all four values quoted, no backslashes,
  lower-case names, no whitespace around commas).

Invariants: no I/O, no clock; every ``XMatrixAuth`` returned has a valid
server name as ``origin`` (and ``destination`` when present), an
``ed25519:<[a-zA-Z0-9_]+>`` key ID and a signature that decodes to 64 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from signedjson.types import SigningKey
from unpaddedbase64 import encode_base64

from federation_presence.errors import PeerError
from federation_presence.ids import KEY_VERSION_RE, ServerName, parse_server_name

MAX_SAFE_INTEGER = 2**53 - 1
MAX_AUTHORIZATION_CHARS = 8_192
ED25519_SIGNATURE_BYTES = 64

_SCHEME = "x-matrix"
# RFC 9110 grammar pieces. A bare value is more lenient than a token: anything
# but whitespace, commas and quotes, e.g. the ':' older servers send unquoted.
_TCHARS = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_SCHEME_RE = re.compile(rf"[ \t]*([{_TCHARS}]+)(?:[ \t]+|\Z)")
_PARAM_RE = re.compile(
    rf"[ \t,]*(?P<name>[{_TCHARS}]+)[ \t]*=[ \t]*"
    r'(?:"(?P<quoted>[^"\\]*(?:\\.[^"\\]*)*)"|(?P<bare>[^ \t,"]+))'
    r"[ \t]*(?=,|\Z)",
    re.DOTALL,
)
# Empty list elements and whitespace around commas are allowed (RFC 9110 §5.6.1).
_LIST_END_RE = re.compile(r"[ \t,]*\Z")
_NAME_RE = re.compile(rf"[ \t,]*([{_TCHARS}]*)[ \t]*")
_OWS_RE = re.compile(r"[ \t]*")
_QUOTED_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BARE_RE = re.compile(r'[^ \t,"]+')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# 64 bytes are 86 unpadded base64 characters; padded, 88. Standard or URL-safe
# alphabet: Synapse's decoder accepts both, so we do.
_SIGNATURE_RE = re.compile(r"[A-Za-z0-9+/_-]{86}(?:==)?")


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    """The parsed credentials of one X-Matrix ``Authorization`` header."""

    origin: ServerName
    destination: ServerName | None
    key_id: str
    signature: str


def _unauthorized(problem: str) -> PeerError:
    return PeerError(401, "M_UNAUTHORIZED", problem)


def _shown(value: str, limit: int = 80) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


# The exact form the spec asks senders to use (and Synapse sends): parsed by
# one regex, ~10 µs cheaper than the general grammar below, which still
# decides everything else.
_SENDER_FORM_RE = re.compile(
    r'X-Matrix origin="(?P<origin>[^"\\]*)",destination="(?P<destination>[^"\\]*)",'
    r'key="(?P<key>[^"\\]*)",sig="(?P<sig>[^"\\]*)"'
)


def parse_authorization(values: Sequence[str]) -> XMatrixAuth:
    """The first X-Matrix credentials among a request's ``Authorization`` values."""
    if values:
        sender_form = _SENDER_FORM_RE.fullmatch(values[0])
        if sender_form is not None:
            return _credentials(sender_form.groupdict())
    for value in values:
        scheme = _SCHEME_RE.match(value)
        if scheme is None or scheme.group(1).lower() != _SCHEME:
            continue  # another scheme, or a longer name such as "X-Matrixy"
        if len(value) > MAX_AUTHORIZATION_CHARS:
            raise _unauthorized("X-Matrix Authorization header is too long")
        return _credentials(_auth_params(value, scheme.end()))
    raise _unauthorized("Missing Authorization headers")


def _auth_params(text: str, pos: int) -> dict[str, str]:
    """``name=value`` pairs of the credentials list from ``pos``; names lower-cased."""
    params: dict[str, str] = {}
    while _LIST_END_RE.match(text, pos) is None:
        match = _PARAM_RE.match(text, pos)
        if match is None:
            raise _unauthorized(_diagnosis(text, pos))
        name, quoted, bare = match.group("name", "quoted", "bare")
        name = name.lower()
        if name in params:
            raise _unauthorized(f"X-Matrix: duplicate parameter {_shown(name)}")
        if quoted is None:
            params[name] = bare
        elif "\\" in quoted:
            params[name] = _QUOTED_PAIR_RE.sub(r"\1", quoted)
        else:
            params[name] = quoted
        pos = match.end()
    return params


def _diagnosis(text: str, pos: int) -> str:
    """What is wrong with the parameter at ``pos``, which ``_PARAM_RE`` refused."""
    named = _NAME_RE.match(text, pos)
    assert named is not None  # every part of _NAME_RE may be empty
    name, i = named.group(1), named.end()
    if not name:
        return f"X-Matrix: expected a parameter name at {_shown(text[i:])}"
    if not text.startswith("=", i):
        return f"X-Matrix: parameter {_shown(name)} has no value"
    after_equals = _OWS_RE.match(text, i + 1)
    assert after_equals is not None
    i = after_equals.end()
    if text.startswith('"', i):
        if _QUOTED_RE.match(text, i) is None:
            return "X-Matrix: unterminated quoted string"
    elif _BARE_RE.match(text, i) is None:
        return f"X-Matrix: parameter {_shown(name)} has an empty value"
    return f"X-Matrix: expected ',' after parameter {_shown(name)}"


def _credentials(params: dict[str, str]) -> XMatrixAuth:
    origin_value = params.get("origin")
    if origin_value is None:
        raise _unauthorized("X-Matrix: missing origin")
    origin = parse_server_name(origin_value)
    if origin is None:
        raise _unauthorized(f"X-Matrix: origin {_shown(origin_value)} is not a server name")

    destination: ServerName | None = None
    destination_value = params.get("destination")
    if destination_value is not None:
        destination = parse_server_name(destination_value)
        if destination is None:
            raise _unauthorized(
                f"X-Matrix: destination {_shown(destination_value)} is not a server name"
            )

    key_id = params.get("key")
    if key_id is None:
        raise _unauthorized("X-Matrix: missing key")
    algorithm, colon, version = key_id.partition(":")
    if not colon or not KEY_VERSION_RE.fullmatch(version):
        raise _unauthorized(f"X-Matrix: key {_shown(key_id)} is not a key ID")
    if algorithm != "ed25519":
        raise _unauthorized(f"X-Matrix: unknown key {_shown(key_id)} (only ed25519 is supported)")

    if "sig" in params and "signature" in params:
        raise _unauthorized("X-Matrix: both sig and signature are given")
    signature = params.get("sig", params.get("signature"))
    if signature is None:
        raise _unauthorized("X-Matrix: missing sig")
    if not _SIGNATURE_RE.fullmatch(signature):
        raise _unauthorized("X-Matrix: sig is not a base64 ed25519 signature")
    return XMatrixAuth(origin=origin, destination=destination, key_id=key_id, signature=signature)


@dataclass(frozen=True, slots=True)
class CanonicalJson:
    """``data`` is canonical JSON: made only by an encoder that joins canonical
    pieces and is held to the reference ``canonicaljson`` by a test
    (``edu.transaction_bytes``).

    A request body of this type is sent as it is (``FederationClient``) and
    the X-Matrix signature is made around it by concatenation
    (``signed_request_bytes``): one encoding per body, reused for both. (A
    wrapper, not a ``bytes`` subclass: decoders such as orjson refuse those.)
    """

    data: bytes


def canonical_json_bytes(value: object) -> bytes:
    """``value`` as canonical JSON (spec appendices), or ``ValueError``.

    Encoded by orjson with sorted keys, which gives the same bytes as the
    reference ``canonicaljson`` (a property test holds them equal) about six
    times faster: a full transaction is ~600 KB. orjson refuses non-string
    keys, lone surrogates, nesting deeper than 254 and (``OPT_STRICT_INTEGER``)
    integers beyond ±(2**53-1); floats, which the spec forbids too, it
    writes, so a walk over the value refuses them.
    """
    try:
        # Encode first: the encoder's depth limit stops cycles, so the walk
        # below only ever sees a finite tree.
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise ValueError(f"not JSON: {exc}") from None
    _refuse_floats((value,))
    return encoded


def _refuse_floats(values: Iterable[Any]) -> None:
    """The walk: leaves checked in the loop, containers by recursion (depth <= 254)."""
    for item in values:
        kind = type(item)
        # Exact types first: this loop runs once per value of every request body.
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is dict:
            _refuse_floats(item.values())
        elif kind is list:
            _refuse_floats(item)
        else:
            _check_other(item, _refuse_floats)


def _check_other(item: object, walk: Callable[[Iterable[object]], None]) -> None:
    """The walk's slow path: subclasses, tuples, and what is not canonical JSON.

    Integers (``bool``, ``IntEnum`` and friends included) were range-checked
    by the encoder already.
    """
    if isinstance(item, str | int):
        return
    if isinstance(item, dict):
        walk(item.values())
    elif isinstance(item, list | tuple):
        walk(item)
    elif isinstance(item, float):
        raise ValueError(f"float {item!r} is not allowed in canonical JSON")
    else:
        raise ValueError(f"{type(item).__name__} is not JSON")


def signed_request_bytes(
    method: str,
    uri: str,
    origin: str,
    destination: str | None,
    content: object | None,
) -> bytes:
    """The bytes an X-Matrix signature covers.

    ``uri`` is the request target exactly as sent (path and query); ``content``
    is the parsed body, or None when the request has no body. A body that
    cannot be canonical JSON raises ``PeerError(400, "M_BAD_JSON")``.
    ``content`` as ``CanonicalJson`` is trusted and spliced between the
    other members, which are strings (their encoding is canonical).
    """
    if isinstance(content, CanonicalJson):
        dumps = orjson.dumps
        try:
            return b"".join(
                (
                    b'{"content":',
                    content.data,
                    b"" if destination is None else b',"destination":' + dumps(destination),
                    b',"method":',
                    dumps(method),
                    b',"origin":',
                    dumps(origin),
                    b',"uri":',
                    dumps(uri),
                    b"}",
                )
            )
        except TypeError as exc:  # a lone surrogate in one of the strings
            raise PeerError(400, "M_BAD_JSON", f"request is not canonical JSON: {exc}") from exc
    request: dict[str, object] = {"method": method, "uri": uri, "origin": origin}
    if destination is not None:
        request["destination"] = destination
    if content is not None:
        request["content"] = content
    try:
        return canonical_json_bytes(request)
    except ValueError as exc:
        raise PeerError(400, "M_BAD_JSON", f"body is not canonical JSON: {exc}") from exc


def authorization_header(
    signing_key: SigningKey,
    method: str,
    uri: str,
    origin: str,
    destination: str,
    content: object | None,
) -> str:
    """The ``Authorization`` value for one of our outbound requests."""
    for name, server in (("origin", origin), ("destination", destination)):
        if parse_server_name(server) is None:
            raise ValueError(f"{name} {server!r} is not a server name")
    message = signed_request_bytes(method, uri, origin, destination, content)
    signature = encode_base64(signing_key.sign(message).signature)
    key_id = f"{signing_key.alg}:{signing_key.version}"
    return (
        f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="{signature}"'
    )
