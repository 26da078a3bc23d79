"""Request size and time limits, over real HTTPS to a real worker.

What must hold: the default body limit admits the largest transaction a
conformant sender builds (50 PDUs and 100 EDUs of up to 64 KiB each); a body
over the limit gets a 413 JSON that the client actually reads, whether it
announced its length or streamed chunks; a client that never finishes its
headers, or its body, is disconnected within the listener's bound.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from anyio.abc import ByteStream

from federation_presence.config import Config, FederationConfig
from federation_presence.worker import RunningWorker, running_worker
from tests.integration.conftest import WORKER_NAME, worker_client, worker_config
from tests.integration.origin import TestOrigin, presence_edu
from tests.integration.tls_peer import TlsCertificates

SEND = "/_matrix/federation/v1/send"
SMALL_LIMIT = 64 * 1024
PDU_LIMIT = 65_536


def _pdu(index: int, size: int) -> dict[str, Any]:
    """A PDU-shaped event whose canonical JSON is ``size`` bytes (the worker ignores PDUs)."""
    event: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!room:example.org",
        "sender": "@someone:example.org",
        "origin_server_ts": 1_700_000_000_000 + index,
        "content": {"msgtype": "m.text", "body": ""},
    }
    padding = size - len(orjson.dumps(event, option=orjson.OPT_SORT_KEYS))
    event["content"]["body"] = "x" * padding
    assert len(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)) == size
    return event


def _typing_edu(index: int, size: int) -> dict[str, Any]:
    edu: dict[str, Any] = {
        "edu_type": "m.typing",
        "content": {"room_id": f"!r{index}:example.org", "user_id": "@u:example.org", "pad": ""},
    }
    edu["content"]["pad"] = "y" * (size - len(orjson.dumps(edu)))
    return edu


async def _put(
    http: httpx.AsyncClient, origin: TestOrigin, txn_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await http.put(
        f"{SEND}/{txn_id}",
        content=orjson.dumps(body),
        headers={"Authorization": origin.authorization(txn_id, body, destination=WORKER_NAME)},
    )


def _small_limit(config: Config, **listener: object) -> Config:
    return dataclasses.replace(
        config,
        federation=dataclasses.replace(config.federation, max_request_body_bytes=SMALL_LIMIT),
        listeners=(dataclasses.replace(config.listeners[0], **listener),),  # type: ignore[arg-type]
    )


@pytest.fixture
async def small_worker(config: Config, origin: TestOrigin) -> AsyncIterator[RunningWorker]:
    async with running_worker(_small_limit(config)) as running:
        yield running


def _assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["errcode"] == "M_TOO_LARGE"
    assert response.headers["connection"] == "close"


def test_the_default_limit_admits_the_largest_conformant_transaction() -> None:
    largest = 50 * PDU_LIMIT + 100 * PDU_LIMIT + 4096  # PDUs, EDUs, a generous envelope
    assert FederationConfig().max_request_body_bytes >= largest


async def test_a_valid_transaction_over_1_mib_is_accepted(
    http: httpx.AsyncClient, origin: TestOrigin
) -> None:
    alice = origin.user("alice")
    pushes = presence_edu({"user_id": alice, "presence": "online", "last_active_ago": 10})
    edus = [pushes, *(_typing_edu(i, 16_000) for i in range(99))]
    body = origin.transaction(*edus, pdus=[_pdu(i, PDU_LIMIT) for i in range(50)])
    assert len(orjson.dumps(body)) > 4 * 1_048_576

    response = await _put(http, origin, "big1", body)

    assert response.status_code == 200, response.text
    assert response.json() == {"pdus": {}}


async def test_an_announced_oversized_body_gets_a_readable_413(
    small_worker: RunningWorker, certificates: TlsCertificates
) -> None:
    # A raw client that writes the whole body before reading, as many do
    # (httpx would also read an answer after a failed write, hiding a reset).
    body = b"z" * (SMALL_LIMIT * 19 // 10)
    stream = await _connect(small_worker, certificates)
    async with stream:
        await stream.send(_put_head("over1", len(body)))
        with anyio.fail_after(10):
            for start in range(0, len(body), 4096):
                await stream.send(body[start : start + 4096])
            received = await _read_until_closed(stream)
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()
    assert orjson.loads(answer)["errcode"] == "M_TOO_LARGE"


async def test_a_streamed_oversized_body_gets_a_readable_413(
    small_worker: RunningWorker, certificates: TlsCertificates
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3 * SMALL_LIMIT // 8192):
            yield b" " * 8192

    async with worker_client(small_worker, certificates) as http:
        response = await http.put(f"{SEND}/over2", content=chunks())
        assert "content-length" not in response.request.headers
        _assert_413(response)


def _put_head(txn_id: str, content_length: int, *headers: str) -> bytes:
    """A raw ``PUT /send/{txn_id}`` request head (no X-Matrix header)."""
    lines = [f"PUT {SEND}/{txn_id} HTTP/1.1", "Host: localhost", *headers]
    lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _connect(worker: RunningWorker, certificates: TlsCertificates) -> ByteStream:
    context = ssl.create_default_context(cafile=str(certificates.ca_path))
    return await anyio.connect_tcp(
        "localhost", worker.ports[0], tls=True, ssl_context=context, tls_standard_compatible=False
    )


async def _read_until_closed(stream: ByteStream) -> bytes:
    received = b""
    while True:
        try:
            received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return received


async def test_an_expect_100_continue_sender_gets_its_413_before_sending(
    small_worker: RunningWorker, certificates: TlsCertificates
) -> None:
    stream = await _connect(small_worker, certificates)
    async with stream:
        await stream.send(_put_head("over3", 100 * SMALL_LIMIT, "Expect: 100-continue"))
        with anyio.fail_after(10):
            received = await _read_until_closed(stream)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in head
    assert orjson.loads(body)["errcode"] == "M_TOO_LARGE"


async def test_100_continue_reaches_a_waiting_sender_and_its_answer_follows(
    worker: RunningWorker, certificates: TlsCertificates
) -> None:
    # The response head is held back to leave with its body (HeadWithBody);
    # a 100 Continue must not be, or this sender would wait for it forever.
    body = b'{"origin": "nobody.example", "pdus": [], "edus": []}'
    stream = await _connect(worker, certificates)
    async with stream:
        await stream.send(
            _put_head("continue", len(body), "Expect: 100-continue", "Connection: close")
        )
        with anyio.fail_after(10):
            interim = await stream.receive()
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        await stream.send(body)
        with anyio.fail_after(10):
            received = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
            received += await _read_until_closed(stream)
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")  # no X-Matrix header
    assert orjson.loads(answer)["errcode"] == "M_UNAUTHORIZED"


@pytest.mark.slow  # wall time: the listener's timers; bound 0.3 s, tolerance 10 s
@pytest.mark.parametrize(
    ("sent", "phase"),
    [
        (b"", "header"),
        (b"PUT /_matrix/federation/v1/send/t HTTP/1.1\r\nHost: localh", "header"),
        (b"PUT /_matrix/federation/v1/send/t HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", "body"),
    ],
)
async def test_a_client_that_stops_mid_request_is_disconnected(
    config: Config, origin: TestOrigin, certificates: TlsCertificates, sent: bytes, phase: str
) -> None:
    limited = _small_limit(config, header_timeout_ms=300, body_timeout_ms=300)
    async with running_worker(limited) as worker:
        stream = await _connect(worker, certificates)
        async with stream:
            if sent:
                await stream.send(sent)
            with anyio.fail_after(10):
                assert await _read_until_closed(stream) == b""
        timeouts = worker.metrics.registry.get_sample_value(
            "federation_presence_http_timeouts_total", {"phase": phase}
        )
        assert timeouts == 1


async def test_a_refused_request_with_a_body_leaves_the_connection_usable(
    http: httpx.AsyncClient,
) -> None:
    response = await http.put("/_matrix/nothing/here", content=b"x" * 50_000)
    assert response.status_code == 404
    assert "connection" not in response.headers
    assert (await http.get("/health")).status_code == 200


def test_the_worker_config_fixture_keeps_the_default_limit(tmp_path: Path) -> None:
    # worker_config is shared: the >1 MiB test above relies on it using the default.
    certificates = TlsCertificates.issue(tmp_path)
    assert (
        worker_config(tmp_path, certificates).federation.max_request_body_bytes
        == FederationConfig().max_request_body_bytes
    )
