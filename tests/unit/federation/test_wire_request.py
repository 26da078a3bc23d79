"""``wire_request``: the cheap request equals what httpx's own constructors build."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation_presence.federation import wire_request
from federation_presence.federation.outbound_http import DEFAULT_HEADERS
from federation_presence.federation.wire_request import RequestTargets, request_url

TIMEOUT = {"connect": 1.0, "read": 2.0, "write": 2.0, "pool": 1.0}

# Paths as callers build them: mostly plain segments and escapes, sometimes
# what must go through the parser (dots, spaces, queries, lower-case escapes,
# empty segments, non-ASCII).
_PIECES = st.sampled_from(
    ["a", "Z", "0", "_", "-", "~", ".", "..", "%2F", "%2f", "%", " ", "?", "?q=1", "é", "/", "#"]
)
PATHS = st.lists(st.lists(_PIECES, max_size=4).map("".join), min_size=1, max_size=5).map(
    lambda segments: "/" + "/".join(segments)
)
HOSTS = st.sampled_from([("remote.example", 8448), ("::1", 8448), ("127.0.0.1", 443)])


def test_the_fast_path_is_on_with_this_httpx() -> None:
    assert wire_request._FAST_PATH


@given(path=PATHS, where=HOSTS)
def test_a_targets_url_equals_the_parsed_url(path: str, where: tuple[str, int]) -> None:
    host, port = where
    target = RequestTargets().get(host, port, "remote.example", None)
    try:
        expected = request_url(host, port, path)
    except (httpx.InvalidURL, UnicodeError) as exc:  # refused alike either way
        with pytest.raises(type(exc)):
            target.url(path)
        return
    url = target.url(path)
    assert url == expected
    assert str(url) == str(expected)
    assert url.raw_path == expected.raw_path
    assert (url.raw_scheme, url.raw_host, url.port) == (
        expected.raw_scheme,
        expected.raw_host,
        expected.port,
    )


def test_the_send_path_takes_the_fast_path() -> None:
    target = RequestTargets().get("remote.example", 8448, "remote.example", None)
    path = "/_matrix/federation/v1/send/fp1_2"
    assert wire_request._PLAIN_PATH.fullmatch(path)
    assert str(target.url(path)) == "https://remote.example:8448" + path


@pytest.mark.parametrize(
    ("method", "content"),
    [("PUT", b'{"a":1}'), ("POST", b"{}"), ("GET", None), ("PUT", None), ("POST", None)],
)
def test_a_request_carries_what_httpx_request_with_content_would(
    method: str, content: bytes | None
) -> None:
    target = RequestTargets().get("node.example", 8009, "matrix.example", "matrix.example")
    url = target.url("/_matrix/federation/v1/send/1")
    request = target.request(method, url, content, "X-Matrix sig", TIMEOUT)

    headers = {**DEFAULT_HEADERS, "Host": "matrix.example", "Accept": "application/json"}
    if content is not None:
        headers["Content-Type"] = "application/json"
    expected = httpx.Request(method, url, content=content, headers=headers)
    expected.headers["Authorization"] = "X-Matrix sig"

    assert request.headers.raw == expected.headers.raw
    assert request.content == expected.content == (content or b"")
    assert request.extensions == {"timeout": TIMEOUT, "sni_hostname": "matrix.example"}


def test_an_ip_literal_target_has_no_sni() -> None:
    target = RequestTargets().get("::1", 8448, "[::1]:8448", None)
    request = target.request("GET", target.url("/x"), None, "a", TIMEOUT)
    assert "sni_hostname" not in request.extensions
    assert str(request.url) == "https://[::1]:8448/x"


def test_the_table_is_bounded() -> None:
    targets = RequestTargets(max_targets=2)
    first = targets.get("a.example", 8448, "a.example", "a.example")
    targets.get("b.example", 8448, "b.example", "b.example")
    targets.get("c.example", 8448, "c.example", "c.example")
    assert len(targets._targets) <= 2
    again = targets.get("a.example", 8448, "a.example", "a.example")
    assert again == first
