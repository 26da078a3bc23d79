"""X-Matrix header grammar, signed request bytes and our outbound header."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from canonicaljson import encode_canonical_json
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import VerifyKey
from signedjson.key import decode_signing_key_base64, generate_signing_key
from signedjson.sign import sign_json
from unpaddedbase64 import decode_base64, encode_base64

from federation_presence.errors import PeerError
from federation_presence.federation.xmatrix import (
    MAX_SAFE_INTEGER,
    CanonicalJson,
    XMatrixAuth,
    authorization_header,
    canonical_json_bytes,
    parse_authorization,
    signed_request_bytes,
)

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "signing.json").read_text("utf-8"))
SIG = "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
KEY = "ed25519:a_1"


def auth(origin: str = "origin.example", destination: str | None = "us.example") -> XMatrixAuth:
    return XMatrixAuth(origin, destination, KEY, SIG)  # type: ignore[arg-type]


ACCEPTED = [
    pytest.param(
        f'X-Matrix origin="origin.example",destination="us.example",key="{KEY}",sig="{SIG}"',
        auth(),
        id="what-we-send",
    ),
    pytest.param(
        f"X-Matrix origin=origin.example,destination=us.example,key={KEY},sig={SIG}",
        auth(),
        id="bare-values-with-colon",
    ),
    pytest.param(
        f"X-Matrix origin=origin.example:8448,key={KEY},sig={SIG}",
        auth("origin.example:8448", None),
        id="bare-host-port-no-destination",
    ),
    pytest.param(
        f'X-Matrix origin="or\\igin.example",destination="us.\\example",key="ed25519\\:a_1",'
        f'sig="{SIG}"',
        auth(),
        id="backslash-escapes",
    ),
    pytest.param(
        f'X-Matrix   origin="origin.example" ,\tdestination="us.example"\t, key="{KEY}" ,'
        f'sig="{SIG}"',
        auth(),
        id="spaces-and-tabs",
    ),
    pytest.param(
        f'X-Matrix sig="{SIG}",key="{KEY}",destination="us.example",origin="origin.example"',
        auth(),
        id="any-order",
    ),
    pytest.param(
        f'x-MATRIX ORIGIN="origin.example",Destination="us.example",KEY="{KEY}",Sig="{SIG}"',
        auth(),
        id="case-insensitive-scheme-and-names",
    ),
    pytest.param(
        f'X-Matrix foo=bar,origin="origin.example",baz="q,u\\"o=te",key="{KEY}",sig="{SIG}",z=1',
        auth("origin.example", None),
        id="unknown-params-ignored",
    ),
    pytest.param(
        f'X-Matrix origin="origin.example",key="{KEY}",signature="{SIG}"',
        auth("origin.example", None),
        id="signature-alias",
    ),
    pytest.param(
        f'X-Matrix ,origin="origin.example",,key="{KEY}", ,sig="{SIG}",',
        auth("origin.example", None),
        id="empty-list-elements",
    ),
    pytest.param(
        f'X-Matrix origin = "origin.example",key= "{KEY}",sig ="{SIG}"',
        auth("origin.example", None),
        id="whitespace-around-equals",
    ),
    pytest.param(
        f'X-Matrix origin="[::1]:8448",key="{KEY}",sig="{SIG}=="',
        XMatrixAuth("[::1]:8448", None, KEY, SIG + "=="),  # type: ignore[arg-type]
        id="ipv6-origin-padded-sig",
    ),
]


@pytest.mark.parametrize(("header", "expected"), ACCEPTED)
def test_accepted_header_variants_parse_to_the_same_credentials(
    header: str, expected: XMatrixAuth
) -> None:
    assert parse_authorization([header]) == expected


def test_the_x_matrix_value_is_picked_among_several_authorization_values() -> None:
    header = f'X-Matrix origin="origin.example",key="{KEY}",sig="{SIG}"'
    assert parse_authorization(["Bearer abc", header]).origin == "origin.example"


def test_the_first_of_two_x_matrix_values_is_used() -> None:
    first = f'X-Matrix origin="a.example",key="{KEY}",sig="{SIG}"'
    second = f'X-Matrix origin="b.example",key="{KEY}",sig="{SIG}"'
    assert parse_authorization([first, second]).origin == "a.example"


GOOD = f'key="{KEY}",sig="{SIG}"'
REFUSED = [
    pytest.param([], "Missing Authorization headers", id="no-header"),
    pytest.param(["Bearer abc"], "Missing Authorization headers", id="other-scheme"),
    pytest.param(
        [f"X-Matrixy origin=a,{GOOD}"], "Missing Authorization headers", id="longer-scheme"
    ),
    pytest.param(["X-Matrix"], "missing origin", id="no-params"),
    pytest.param([f"X-Matrix {GOOD}"], "missing origin", id="missing-origin"),
    pytest.param([f'X-Matrix origin="a",sig="{SIG}"'], "missing key", id="missing-key"),
    pytest.param([f'X-Matrix origin="a",key="{KEY}"'], "missing sig", id="missing-sig"),
    pytest.param([f'X-Matrix origin="a",origin="b",{GOOD}'], "duplicate", id="duplicate-origin"),
    pytest.param([f'X-Matrix origin="a",ORIGIN="a",{GOOD}'], "duplicate", id="duplicate-any-case"),
    pytest.param(
        [f'X-Matrix origin="a",{GOOD},signature="{SIG}"'], "both sig and signature", id="sig-twice"
    ),
    pytest.param([f'X-Matrix origin="not a server!",{GOOD}'], "not a server name", id="bad-origin"),
    pytest.param([f'X-Matrix origin="",{GOOD}'], "not a server name", id="empty-origin"),
    pytest.param([f'X-Matrix origin="a:99999",{GOOD}'], "not a server name", id="bad-port"),
    pytest.param(
        [f'X-Matrix origin="a",destination="b/c",{GOOD}'], "not a server name", id="bad-destination"
    ),
    pytest.param(
        [f'X-Matrix origin="a",key="rsa:1",sig="{SIG}"'], "unknown key", id="other-algorithm"
    ),
    pytest.param([f'X-Matrix origin="a",key="ed25519:",sig="{SIG}"'], "not a key ID", id="no-ver"),
    pytest.param([f'X-Matrix origin="a",key="ed25519:a-b",sig="{SIG}"'], "not a key ID", id="ver"),
    pytest.param([f'X-Matrix origin="a",key="ed25519",sig="{SIG}"'], "not a key ID", id="no-colon"),
    pytest.param([f'X-Matrix origin="a",key="{KEY}",sig="abc"'], "sig is not", id="short-sig"),
    pytest.param(
        [f'X-Matrix origin="a",key="{KEY}",sig="{SIG[:-1]}!"'], "sig is not", id="sig-bad-char"
    ),
    pytest.param([f'X-Matrix origin="a,{GOOD}'], "expected ','", id="quote-swallows-rest"),
    pytest.param(['X-Matrix origin="a'], "unterminated", id="unterminated-quote"),
    pytest.param(['X-Matrix origin="a\\'], "unterminated", id="trailing-backslash"),
    pytest.param(["X-Matrix origin"], "has no value", id="name-only"),
    pytest.param(["X-Matrix origin="], "empty value", id="empty-bare-value"),
    pytest.param(["X-Matrix =a"], "expected a parameter name", id="no-name"),
    pytest.param(['X-Matrix "origin"="a"'], "expected a parameter name", id="quoted-name"),
    pytest.param([f'X-Matrix origin="a"key="{KEY}"'], "expected ','", id="no-comma"),
    pytest.param(["X-Matrix origin=a b"], "expected ','", id="space-in-bare-value"),
    pytest.param(["X-Matrix " + "x=y," * 3000], "too long", id="too-long"),
]


@pytest.mark.parametrize(("values", "problem"), REFUSED)
def test_malformed_or_missing_credentials_are_refused_with_401(
    values: list[str], problem: str
) -> None:
    with pytest.raises(PeerError) as caught:
        parse_authorization(values)
    assert (caught.value.status, caught.value.errcode) == (401, "M_UNAUTHORIZED")
    assert problem in caught.value.message


def parsed_or_refused(values: list[str]) -> XMatrixAuth | PeerError:
    """What ``parse_authorization`` gives: any other exception escapes (and fails the test)."""
    try:
        return parse_authorization(values)
    except PeerError as error:
        return error


@given(st.lists(st.text(max_size=300), max_size=3))
def test_any_header_text_parses_or_is_refused_with_401(values: list[str]) -> None:
    result = parsed_or_refused(values)
    if isinstance(result, PeerError):
        assert (result.status, result.errcode) == (401, "M_UNAUTHORIZED")
    else:
        assert isinstance(result, XMatrixAuth)


def _param(name: str, value: str, quoted: bool) -> str:
    if quoted:
        return name + '="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name}={value}"


def _params(names: list[str], values: list[str]) -> st.SearchStrategy[str]:
    return st.builds(_param, st.sampled_from(names), st.sampled_from(values), st.booleans())


GOOD_ORIGINS = ["a.example", "b.example:8448", "[::1]"]
_REQUIRED = st.tuples(
    _params(["origin", "ORIGIN"], [*GOOD_ORIGINS, "bad host", 'q"t']),
    _params(["key", "Key"], ["ed25519:1", "rsa:1", "ed25519:a b"]),
    _params(["sig", "signature"], [SIG, SIG + "==", "b\\s"]),
)
_EXTRAS = st.lists(
    _params(["x", "origin", "destination", ""], ["a.example", "", "y,z"]), max_size=2
)
_SEPARATORS = st.lists(st.sampled_from([",", " , ", "\t,", ",,", "", " ", '"']), min_size=5)


@given(_REQUIRED, _EXTRAS, _SEPARATORS, st.randoms(use_true_random=False))
def test_near_valid_headers_parse_or_are_refused_with_401(
    required: tuple[str, str, str], extras: list[str], separators: list[str], order: Any
) -> None:
    params = [*required, *extras]
    order.shuffle(params)
    tail = "".join(p + sep for p, sep in zip(params, separators, strict=False))
    result = parsed_or_refused(["X-Matrix " + tail])
    if isinstance(result, PeerError):
        assert (result.status, result.errcode) == (401, "M_UNAUTHORIZED")
    else:
        assert result.origin in GOOD_ORIGINS
        assert result.key_id == "ed25519:1"
        assert result.signature in (SIG, SIG + "==")


def test_our_header_has_the_form_the_spec_asks_senders_to_use() -> None:
    key = generate_signing_key("a_1")
    header = authorization_header(key, "GET", "/x", "origin.example", "us.example:8448", None)
    assert re.fullmatch(
        r'X-Matrix origin="origin\.example",destination="us\.example:8448",'
        r'key="ed25519:a_1",sig="[A-Za-z0-9+/]{86}"',
        header,
    )


@pytest.mark.parametrize("vector", VECTORS["x_matrix_requests"], ids=["put", "get"])
def test_our_signature_matches_the_reference_signedjson_vector(vector: dict[str, Any]) -> None:
    key = decode_signing_key_base64("ed25519", "1", VECTORS["signing_key_seed"])
    request = vector["request"]
    header = authorization_header(
        key,
        request["method"],
        request["uri"],
        request["origin"],
        request["destination"],
        request.get("content"),
    )
    assert parse_authorization([header]).signature == vector["signature"]


@given(
    method=st.sampled_from(["GET", "PUT", "POST"]),
    uri=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
    content=st.none()
    | st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
            | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=4,
    ),
)
def test_signed_then_parsed_then_verified_roundtrips(
    method: str, uri: str, content: dict[str, Any] | None
) -> None:
    key = decode_signing_key_base64("ed25519", "1", VECTORS["signing_key_seed"])
    header = authorization_header(key, method, "/" + uri, "origin.example", "us.example", content)
    parsed = parse_authorization([header])
    assert parsed.destination is not None
    message = signed_request_bytes(method, "/" + uri, parsed.origin, parsed.destination, content)
    VerifyKey(bytes(key.verify_key)).verify(message, decode_base64(parsed.signature))


def test_signed_bytes_match_signedjson_canonical_form() -> None:
    key = decode_signing_key_base64("ed25519", "1", VECTORS["signing_key_seed"])
    request = {"method": "PUT", "uri": "/a?b=c", "origin": "o", "destination": "d", "content": {}}
    expected = sign_json(dict(request), "o", key)["signatures"]["o"]["ed25519:1"]
    message = signed_request_bytes("PUT", "/a?b=c", "o", "d", {})
    assert encode_base64(key.sign(message).signature) == expected


def test_signed_bytes_omit_absent_destination_and_body() -> None:
    assert signed_request_bytes("GET", "/x", "o", None, None) == (
        b'{"method":"GET","origin":"o","uri":"/x"}'
    )


def test_signed_bytes_keep_an_empty_body_and_write_non_ascii_raw() -> None:
    assert (
        signed_request_bytes("PUT", "/x", "o", "d", {"é": "ü\n"})
        == (
            '{"content":{"é":"ü\\n"},"destination":"d","method":"PUT","origin":"o","uri":"/x"}'
        ).encode()
    )
    assert b'"content":{}' in signed_request_bytes("PUT", "/x", "o", "d", {})


@pytest.mark.parametrize(
    "content",
    [
        pytest.param({"a": 1.5}, id="float"),
        pytest.param({"a": [1.0]}, id="integral-float"),
        pytest.param({"a": MAX_SAFE_INTEGER + 1}, id="too-big"),
        pytest.param({"a": {"b": -MAX_SAFE_INTEGER - 1}}, id="too-small"),
        pytest.param({"a": "\ud800"}, id="lone-surrogate"),
        pytest.param({1: "a"}, id="non-string-key"),
        pytest.param({"a": {1, 2}}, id="set"),
        pytest.param({"a": float("nan")}, id="nan"),
        pytest.param({"a": 2**64}, id="beyond-64-bits"),
        pytest.param({"a": ("x", 0.5)}, id="float-in-tuple"),
        pytest.param({"a": object()}, id="not-json"),
    ],
)
def test_content_that_cannot_be_canonical_json_is_bad_json(content: object) -> None:
    with pytest.raises(PeerError) as caught:
        signed_request_bytes("PUT", "/x", "o", "d", content)
    assert (caught.value.status, caught.value.errcode) == (400, "M_BAD_JSON")


def test_integers_at_the_safe_limits_are_canonical() -> None:
    assert canonical_json_bytes([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, True, None]) == (
        b"[9007199254740991,-9007199254740991,true,null]"
    )


CANONICAL_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@given(CANONICAL_VALUES)
def test_canonical_bytes_equal_the_reference_canonicaljson(value: object) -> None:
    assert canonical_json_bytes(value) == encode_canonical_json(value)


def test_keys_sort_by_code_point_across_planes_and_escapes_match_the_reference() -> None:
    value = {key: key for key in ["\uffff", "\U00010000", "\ue000", "a", "\x7f", "é", "\x00"]}
    value["controls"] = "".join(chr(c) for c in range(0x20)) + '"\\/'
    assert canonical_json_bytes(value) == encode_canonical_json(value)


def _holds_a_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_holds_a_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_a_float(v) for v in value)
    return False


# Strings that read like numbers (':' and ',' included): a refusal must come
# from a float value, never from text that looks like one.
NUMBERISH_TEXT = st.text(alphabet="0123456789.eE-:,[ null", max_size=12)
VALUES_WITH_FLOATS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(max_size=5)
    | NUMBERISH_TEXT
    | st.floats(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=3) | NUMBERISH_TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(VALUES_WITH_FLOATS)
def test_a_value_is_refused_exactly_when_it_holds_a_float(value: object) -> None:
    if _holds_a_float(value):
        with pytest.raises(ValueError, match="float"):
            canonical_json_bytes(value)
    else:
        assert canonical_json_bytes(value) == encode_canonical_json(value)


def test_a_self_referencing_object_is_refused_not_looped_over() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="not JSON"):
        canonical_json_bytes(loop)


def test_our_header_refuses_a_bad_server_name() -> None:
    key = generate_signing_key("a_1")
    with pytest.raises(ValueError, match="destination"):
        authorization_header(key, "GET", "/x", "origin.example", 'us"example', None)


def test_the_module_is_pure_it_imports_no_io_module() -> None:
    probe = (
        "import sys, federation_presence.federation.xmatrix\n"
        "io = ('anyio', 'httpx', 'sqlite3', 'asyncpg', 'psycopg', 'federation_presence.store')\n"
        "print(sorted(m for m in sys.modules if m.startswith(io)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"


@given(
    content=st.dictionaries(st.text(), CANONICAL_VALUES, max_size=4),
    uri=st.text(min_size=1).map(lambda s: "/" + s),
    destination=st.none() | st.text(min_size=1),
)
def test_a_canonical_body_is_spliced_into_the_same_signed_bytes(
    content: dict[str, object], uri: str, destination: str | None
) -> None:
    spliced = CanonicalJson(canonical_json_bytes(content))
    assert signed_request_bytes("PUT", uri, "o.example", destination, spliced) == (
        signed_request_bytes("PUT", uri, "o.example", destination, content)
    )
