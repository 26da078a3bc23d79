"""uvicorn's httptools protocol with time limits on reading a request.

What this module owns: closing connections whose request does not arrive in
time. uvicorn bounds only the idle time between requests (keep-alive); a
client that connects and sends half a header, or a header and then a body at
one byte a minute, holds a connection (and, for the body, a request task)
forever. ``TimedHttpProtocol`` adds two timers per connection:

* the **header timer** runs from the connection's start, and from the first
  byte of each further request, until the request's headers are complete;
* the **body timer** runs from the end of the headers until the end of the
  body (a request without a body ends at once).

When one fires, the connection is closed (no answer: there is no request to
answer yet, or its sender is too slow to read one); a request task waiting for
the body sees ``http.disconnect``. Each firing is counted in
``federation_presence_http_timeouts{phase}``.

Between requests, uvicorn's own keep-alive timer bounds an idle connection.
(uvicorn arms it when a response completes and cancels it on every byte
received; a body still arriving after its response would leave no timer,
which is why ``App`` answers a refused request only after draining its body,
or closes the connection.)

Why the loop's ``call_later`` and not ``Clock``: these are transport-level
callbacks, exactly like uvicorn's own keep-alive timer, and must not cost a
task per connection. They bound resources; no decision of the worker depends
on them, so tests do not need to fake their time.

A TLS handshake is bounded by asyncio's ``ssl_handshake_timeout`` (60 s); the
protocol is created when it has completed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from federation_presence.metrics import Metrics

__all__ = ["HeadWithBody", "TimedHttpProtocol", "timed_protocol"]


class TimedHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose requests must arrive within set times."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    metrics: Metrics | None = None

    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("header", self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm("header", self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._arm("body", self.body_timeout_s)
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before and cycle.transport is self.transport:
            cycle.transport = HeadWithBody(self.transport)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, phase: str, delay_s: float) -> None:
        self._disarm()
        self._request_timer = self.loop.call_later(delay_s, self._expired, phase)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _expired(self, phase: str) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        if self.metrics is not None:
            self.metrics.http_timeouts.labels(phase).inc()
        self.transport.close()


class HeadWithBody(asyncio.Transport):
    """The transport one response is written through: its head goes out with its body.

    uvicorn writes a response's status line and headers when the app sends
    ``http.response.start`` and the body at ``http.response.body``: two
    ``send`` syscalls, TLS records and TCP segments for every answer, where
    one would do (the worker's answers are one body each). This holds a
    response head back until the next write or ``close``, and writes the two
    as one. (Measured, BENCHMARKS.md, issue 18: uvicorn's ``send`` held 13.8 %
    of a 1-push ``/send``'s GIL samples before, 10.2 % with this; the
    throughput did not move beyond noise.) Anything else (``100 Continue``,
    which a client waits for before it sends the body) goes out at once,
    after whatever was held. Only what uvicorn's request cycle calls is
    provided.
    """

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._held = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if not held and bytes(data[:9]) == b"HTTP/1.1 " and bytes(data[9:12]) != b"100":
            self._held = bytes(data)
            return
        if held:
            self._held = b""
            data = held + bytes(data)
        self._transport.write(data)

    def close(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            self._transport.write(held)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def abort(self) -> None:
        self._held = b""
        self._transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


def timed_protocol(
    *, header_timeout_s: float, body_timeout_s: float, metrics: Metrics | None
) -> type[TimedHttpProtocol]:
    """A protocol class with these limits, for ``uvicorn.Config(http=...)``."""
    attributes: dict[str, Any] = {
        "header_timeout_s": header_timeout_s,
        "body_timeout_s": body_timeout_s,
        "metrics": metrics,
    }
    return type("ConfiguredTimedHttpProtocol", (TimedHttpProtocol,), attributes)
