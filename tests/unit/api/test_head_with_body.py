"""``HeadWithBody``: a response's head leaves in the same write as its body.

The transport under it records its writes (a transport is the one thing
this adapter talks to); the real stack's behaviour with it is covered by
every HTTP test, and the ``100 Continue`` case over real TLS in
``tests/integration/test_request_limits.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from federation_presence.api.http_protocol import HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_a_head_goes_out_with_the_body_in_one_write() -> None:
    under = RecordingTransport()
    transport = HeadWithBody(under)
    transport.write(HEAD)
    assert under.writes == []
    transport.write(b"{}")
    assert under.writes == [HEAD + b"{}"]


def test_the_next_response_is_held_again() -> None:
    under = RecordingTransport()
    transport = HeadWithBody(under)
    for body in (b"{}", b"[]"):
        transport.write(HEAD)
        transport.write(body)
    assert under.writes == [HEAD + b"{}", HEAD + b"[]"]


def test_100_continue_is_not_held() -> None:
    under = RecordingTransport()
    transport = HeadWithBody(under)
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert under.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_a_held_head_is_written_before_the_connection_closes() -> None:
    under = RecordingTransport()
    transport = HeadWithBody(under)
    transport.write(HEAD)
    transport.close()
    assert under.writes == [HEAD]
    assert under.closed
    assert transport.is_closing()


def test_abort_drops_what_was_held_and_the_rest_is_passed_through() -> None:
    under = RecordingTransport()
    transport = HeadWithBody(under)
    transport.write(HEAD)
    transport.abort()
    assert under.writes == []
    assert under.aborted
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
    transport.write(memoryview(b"chunk"))
    assert under.writes == [b"chunk"]
