"""The load client and the probe against small real peers on loopback (TLS).

A slow peer shows that the open loop reports a slow target as latency, not
as a slower client; a recording peer shows what the probe sends.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from federation_presence.clock import SystemClock
from federation_presence.federation.signing_keys import (
    build_server_keys_response,
    generate_signing_key,
)
from federation_presence.loadtest.probe import ProbeOptions, probe
from federation_presence.loadtest.runner import RunResult, send_requests
from tests.integration.tls_peer import TlsCertificates, serve_tls

SLOW_MS = 100
REQUEST = b"PUT /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}"


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Scope]]
Send = Callable[[Scope], Awaitable[None]]


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request 200, each after SLOW_MS."""
    if scope["type"] != "http":
        return
    await receive()
    await SystemClock().sleep_ms(SLOW_MS)
    await _answer(send, 200, b"{}")


async def to_the_slow_peer(
    certificates: TlsCertificates, lanes: list[list[bytes]], duration_s: float, rate: float | None
) -> RunResult:
    """``send_requests`` over ``lanes`` to a peer answering each request after SLOW_MS."""
    async with serve_tls(slow_app, certificates) as peer:
        return await send_requests(
            "localhost",
            peer.port,
            lanes,
            SystemClock(),
            duration_s=duration_s,
            ssl_context=_context(certificates),
            rate=rate,
        )


async def test_open_loop_shows_a_slow_target_as_latency(certificates: TlsCertificates) -> None:
    # One connection, 5 transactions due every 20 ms, a target taking 100 ms each:
    # the 5th is due at 80 ms but cannot be answered before 500 ms.
    result = await to_the_slow_peer(certificates, [[REQUEST] * 5], 30, rate=50.0)
    assert result.ok == 5
    assert max(result.latencies_ms) >= 5 * SLOW_MS - 4 * 20
    # Answers come >= 100 ms apart, dues 20 ms apart: the backlog grows each time.
    assert result.latencies_ms == sorted(result.latencies_ms)


async def test_open_loop_records_how_late_each_transaction_left(
    certificates: TlsCertificates,
) -> None:
    # One lane, 5 transactions due every 20 ms, 100 ms per answer: the 5th
    # leaves after 4 answers (>= 400 ms) though it was due at 80 ms.
    result = await to_the_slow_peer(certificates, [[REQUEST] * 5], 30, rate=50.0)
    assert len(result.send_lag_ms) == 5
    assert result.send_lag_ms == sorted(result.send_lag_ms)
    assert result.send_lag_ms[-1] >= 4 * SLOW_MS - 4 * 20


async def test_open_loop_does_not_wait_for_transactions_due_after_the_end(
    certificates: TlsCertificates,
) -> None:
    # Three lanes at 0.5/s for 0.5 s: only the first transaction is due in the
    # run; the others (due at 2 s and 4 s) are not waited for, so the run does
    # not last until 4 s.
    result = await to_the_slow_peer(certificates, [[REQUEST] * 2] * 3, 0.5, rate=0.5)
    assert result.ok == 1
    assert len(result.send_lag_ms) == 1
    assert result.elapsed_s < 2.0


async def test_closed_loop_counts_latency_from_the_send(certificates: TlsCertificates) -> None:
    result = await to_the_slow_peer(certificates, [[REQUEST] * 3], 30, rate=None)
    assert result.ok == 3
    # Each from its own send (no backlog to carry): all at least the target's time.
    assert min(result.latencies_ms) >= SLOW_MS
    assert result.send_lag_ms == []  # nothing is "due" in a closed loop


def _context(certificates: TlsCertificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates.ca_path))


async def test_the_probe_asks_for_keys_and_version_without_signing(
    certificates: TlsCertificates,
) -> None:
    """A server verifies any X-Matrix header it gets (Synapse: 401 for an unknown signer)."""
    key = generate_signing_key()
    seen: list[tuple[str, bool]] = []
    name = ""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        seen.append((scope["path"], b"authorization" in headers))
        if scope["path"] == "/_matrix/key/v2/server":
            now = SystemClock().now_ms()
            body = orjson.dumps(build_server_keys_response(name, key, now, 3_600_000, {}))
        else:
            body = b'{"server":{"name":"peer","version":"1"}}'
        await _answer(send, 200, body)

    async with serve_tls(app, certificates) as peer:
        name = f"localhost:{peer.port}"
        options = ProbeOptions(server_name=name, ca_bundle=certificates.ca_path)
        steps = await probe(options, SystemClock())
    assert [(s.name, s.ok) for s in steps] == [
        ("resolve", True),
        ("certificate", True),
        ("keys", True),
        ("version", True),
    ]
    assert steps[-1].detail == "peer 1"
    assert seen == [("/_matrix/key/v2/server", False), ("/_matrix/federation/v1/version", False)]
