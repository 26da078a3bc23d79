"""The floor target of ``bench_ingest.py``: the barest handler that does the work.

Issue 18 states the ingest target as a share of "the floor that a bare
handler (HTTP + parse + one ed25519 verify + batched SQLite upsert) reached
on this machine". This is that handler, as its own process, so that the
floor is measured in the same run, on the same core and with the same CPU
accounting as the worker:

* plain HTTP/1.1 with keep-alive on 127.0.0.1: an asyncio ``Protocol`` on
  uvloop with the ``httptools`` parser (what uvicorn itself runs on), no
  ASGI, no routing table, no task per request unless an origin's key must
  first be fetched;
* ``PUT /_matrix/federation/v1/send/{txnId}``: the X-Matrix header parsed
  (``xmatrix.parse_authorization``), the body ``orjson.loads``-ed, ONE
  ed25519 verify over ``xmatrix.signed_request_bytes`` (the canonical JSON
  of method, uri, origin, destination and content) with the origin's key,
  then every push of every ``m.presence`` EDU turned into a row of the
  worker's ``user_presence`` table (created by the worker's own first
  SQLite migration, ``0001_init.sqlite.sql``, stream-id index included),
  each row with the next stream id; answered ``200 {"pdus":{}}`` only after
  the commit that holds its rows;
* one writer thread, one SQLite connection: every request waiting when the
  previous commit ended goes into the next one (one ``executemany`` upsert,
  one COMMIT). WAL, ``synchronous=FULL`` and the worker's ``cache_size``;
* an origin's key is fetched over HTTPS (``--ca-file``: the load client's
  test CA) the first time the origin is seen, one fetch shared by the
  requests that wait for it, and kept for the life of the process;
* ``GET /_matrix/key/v2/server`` (our own self-signed key response: the
  load client learns our server name from it) and ``GET
  /_matrix/federation/v1/version``; anything else is 404.

What it deliberately does not do, being a floor: no validation beyond what
keeps it from failing (a push without a string ``user_id`` and ``presence``
is skipped, other fields of the wrong type take a default), no txn dedup, no
presence logic (no state machine, no notify, no stream readers), no rate
limits or request time limits, no check of the key response's own signature
(TLS with the test CA vouches for it), no server discovery (an origin is an
IP literal or ``host:port``, as the load client's are), no periodic WAL
checkpoint of its own (SQLite's automatic one), nothing printed per request.

    python bench/floor_target.py --port PORT --db PATH --ca-file CA.pem

Once listening it prints one line, ``floor: <server name> on
http://127.0.0.1:<port>`` (``--port 0``: a port the OS picked). It stops on
SIGTERM or SIGINT, closing its connections and finishing the commit in
progress, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import queue
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import httptools
import httpx
import orjson
import uvloop
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from unpaddedbase64 import decode_base64

from federation_presence.clock import SystemClock
from federation_presence.errors import PeerError
from federation_presence.federation.signing_keys import (
    build_server_keys_response,
    generate_signing_key,
)
from federation_presence.federation.xmatrix import (
    XMatrixAuth,
    parse_authorization,
    signed_request_bytes,
)
from federation_presence.store.schema import load_migrations

SERVER_NAME = "floor.test"
KEY_VALIDITY_MS = 24 * 3_600_000
KEY_FETCH_TIMEOUT_S = 10.0
SEND_PREFIX = b"/_matrix/federation/v1/send/"
KEY_PATH = b"/_matrix/key/v2/server"
VERSION_PATH = b"/_matrix/federation/v1/version"

# The worker's page cache (store/sqlite_writer.py, _TUNING_PRAGMAS).
CACHE_SIZE_PRAGMA = "PRAGMA cache_size=-65536"
UPSERT = (
    "INSERT INTO user_presence (user_id, state, last_active_ts, status_msg, currently_active,"
    " last_federation_update_ts, last_user_sync_ts, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
    " last_active_ts = excluded.last_active_ts, status_msg = excluded.status_msg,"
    " currently_active = excluded.currently_active,"
    " last_federation_update_ts = excluded.last_federation_update_ts,"
    " last_user_sync_ts = excluded.last_user_sync_ts, stream_id = excluded.stream_id"
)

# (user_id, state, last_active_ts, status_msg, currently_active,
#  last_federation_update_ts, last_user_sync_ts, stream_id)
Row = tuple[str, str, int, str | None, int, int, int, int]
Done = Callable[[bool], None]
Batch = list[tuple[list[Row], Done]]


def http_response(status: int, reason: str, body: bytes, *, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{connection}\r\n"
    )
    return head.encode("ascii") + body


def error_response(status: int, errcode: str, message: str) -> bytes:
    reasons = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 500: "Server Error"}
    reason = reasons.get(status, "Error")
    return http_response(status, reason, orjson.dumps({"errcode": errcode, "error": message}))


SEND_OK = http_response(200, "OK", b'{"pdus":{}}')
NOT_FOUND = error_response(404, "M_UNRECOGNIZED", "Unrecognized request")
STORE_FAILED = error_response(500, "M_UNKNOWN", "the write failed")
BAD_REQUEST_CLOSE = http_response(
    400, "Bad Request", b'{"errcode":"M_UNKNOWN","error":"bad HTTP"}', close=True
)


# -- the writer thread -----------------------------------------------------------


def open_database(path: Path) -> sqlite3.Connection:
    """The floor's connection: WAL, ``synchronous=FULL``, the worker's page cache and table."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    if str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower() != "wal":
        raise sqlite3.OperationalError("SQLite refused WAL mode")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(CACHE_SIZE_PRAGMA)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'user_presence'").fetchone() is None:
        # the worker's own first migration: its user_presence table and stream-id index
        conn.executescript(load_migrations("sqlite")[0].sql)
    return conn


class GroupWriter:
    """One connection on its own thread; one commit per batch of waiting requests.

    ``submit`` queues a request's rows with the callback that answers it; the
    thread takes everything queued, writes it in one transaction and hands
    the whole batch back to the event loop in one ``call_soon_threadsafe``.
    Rows are written in submission order, so stream ids (drawn on the loop
    in that order) increase in commit order.
    """

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._path = path
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[list[Row], Done] | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._max_stream_id = 0
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="floor-writer", daemon=True)

    def start(self) -> int:
        """Open the database on the thread; the highest stream id already stored."""
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise SystemExit(f"{self._path}: {self._failure}")
        return self._max_stream_id

    def submit(self, rows: list[Row], done: Done) -> None:
        self._queue.put((rows, done))

    def stop(self) -> None:
        """Write what is queued, then close the connection and end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _serve(self) -> None:
        try:
            conn = open_database(self._path)
            self._max_stream_id = conn.execute(
                "SELECT COALESCE(MAX(stream_id), 0) FROM user_presence"
            ).fetchone()[0]
        except sqlite3.Error as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stopping = False
        try:
            while not stopping:
                item = get()
                if item is None:
                    break
                batch: Batch = [item]
                while True:
                    try:
                        item = get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                ok = self._commit(conn, batch)
                self._loop.call_soon_threadsafe(_settle, batch, ok)
        finally:
            conn.close()

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: Batch) -> bool:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(UPSERT, itertools.chain.from_iterable(r for r, _ in batch))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception:  # the batch is answered 500; the thread goes on
            return False
        return True


def _settle(batch: Batch, ok: bool) -> None:
    for _, done in batch:
        done(ok)


# -- origins' keys ---------------------------------------------------------------


class OriginKeys:
    """Origins' verify keys: fetched once per origin (one fetch shared), kept forever.

    A failed fetch is not kept: the next request from that origin tries again.
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._keys: dict[str, dict[str, VerifyKey]] = {}
        self._fetching: dict[str, asyncio.Task[dict[str, VerifyKey]]] = {}

    def cached(self, origin: str) -> Mapping[str, VerifyKey] | None:
        return self._keys.get(origin)

    async def get(self, origin: str) -> Mapping[str, VerifyKey]:
        keys = self._keys.get(origin)
        if keys is not None:
            return keys
        task = self._fetching.get(origin)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(origin))
            self._fetching[origin] = task
            task.add_done_callback(lambda _: self._fetching.pop(origin, None))
        return await task

    async def _fetch(self, origin: str) -> dict[str, VerifyKey]:
        response = await self._client.get(f"https://{origin}/_matrix/key/v2/server")
        response.raise_for_status()
        document = orjson.loads(response.content)
        keys = {
            key_id: VerifyKey(decode_base64(entry["key"]))
            for key_id, entry in document["verify_keys"].items()
        }
        self._keys[origin] = keys
        return keys


# -- the handler -----------------------------------------------------------------


class Answer:
    """One request's place in its connection's answer order."""

    __slots__ = ("connection", "data", "keep_alive")

    def __init__(self, connection: FloorProtocol, keep_alive: bool) -> None:
        self.connection = connection
        self.keep_alive = keep_alive
        self.data: bytes | None = None

    def send(self, data: bytes) -> None:
        self.data = data
        self.connection.flush()

    def stored(self, ok: bool) -> None:
        self.send(SEND_OK if ok else STORE_FAILED)


class Floor:
    """What a request gets: the two GETs, or a verified, stored /send."""

    def __init__(
        self, server_name: str, keys: OriginKeys, writer: GroupWriter, first_stream_id: int
    ) -> None:
        self.server_name = server_name
        self._keys = keys
        self._writer = writer
        self._stream_ids = itertools.count(first_stream_id).__next__
        self._clock = SystemClock()
        self._tasks: set[asyncio.Task[None]] = set()
        signing_key = generate_signing_key()
        key_body = build_server_keys_response(
            server_name, signing_key, self._clock.now_ms(), KEY_VALIDITY_MS, {}
        )
        version = {"server": {"name": "federation-presence-floor", "version": "0"}}
        self._gets = {
            KEY_PATH: http_response(200, "OK", orjson.dumps(key_body)),
            VERSION_PATH: http_response(200, "OK", orjson.dumps(version)),
        }

    def handle(
        self, method: bytes, url: bytes, auth: list[str], body: bytes, answer: Answer
    ) -> None:
        if method == b"PUT" and url.startswith(SEND_PREFIX):
            self._send(url, auth, body, answer)
        elif method == b"GET":
            answer.send(self._gets.get(url, NOT_FOUND))
        else:
            answer.send(NOT_FOUND)

    def _send(self, url: bytes, auth: list[str], body: bytes, answer: Answer) -> None:
        try:
            credentials = parse_authorization(auth)
            content = orjson.loads(body)
            if not isinstance(content, dict):
                raise PeerError(400, "M_BAD_JSON", "transaction body must be a JSON object")
            signed = signed_request_bytes(
                "PUT", url.decode(), credentials.origin, self.server_name, content
            )
        except PeerError as exc:
            answer.send(error_response(exc.status, exc.errcode, exc.message))
            return
        except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
            answer.send(error_response(400, "M_NOT_JSON", str(exc)))
            return
        keys = self._keys.cached(credentials.origin)
        if keys is not None:
            self._verified(keys, credentials, signed, content, answer)
            return
        task = asyncio.get_running_loop().create_task(
            self._after_fetch(credentials, signed, content, answer)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_fetch(
        self, credentials: XMatrixAuth, signed: bytes, content: dict[str, Any], answer: Answer
    ) -> None:
        origin = credentials.origin
        try:
            keys = await self._keys.get(origin)
        except Exception as exc:  # unreachable, not TLS, not a key response: all alike here
            message = f"no key for {origin}: {type(exc).__name__}: {exc}"
            answer.send(error_response(401, "M_UNAUTHORIZED", message))
            return
        self._verified(keys, credentials, signed, content, answer)

    def _verified(
        self,
        keys: Mapping[str, VerifyKey],
        credentials: XMatrixAuth,
        signed: bytes,
        content: dict[str, Any],
        answer: Answer,
    ) -> None:
        verify_key = keys.get(credentials.key_id)
        try:
            if verify_key is None:
                raise ValueError(f"unknown key {credentials.key_id}")
            verify_key.verify(signed, decode_base64(credentials.signature))
        except (CryptoError, ValueError) as exc:
            answer.send(error_response(401, "M_UNAUTHORIZED", f"signature: {exc}"))
            return
        rows = list(presence_rows(content, self._clock.now_ms(), self._stream_ids))
        if rows:
            self._writer.submit(rows, answer.stored)
        else:
            answer.send(SEND_OK)


def presence_rows(
    content: dict[str, Any], now: int, next_stream_id: Callable[[], int]
) -> Iterator[Row]:
    """A ``user_presence`` row per push of every ``m.presence`` EDU, in order."""
    edus = content.get("edus")
    if type(edus) is not list:
        return
    for edu in edus:
        if type(edu) is not dict or edu.get("edu_type") != "m.presence":
            continue
        edu_content = edu.get("content")
        pushes = edu_content.get("push") if type(edu_content) is dict else None
        if type(pushes) is not list:
            continue
        for push in pushes:
            if type(push) is not dict:
                continue
            user_id, state = push.get("user_id"), push.get("presence")
            if type(user_id) is not str or type(state) is not str:
                continue
            ago = push.get("last_active_ago")
            last_active_ts = now - ago if type(ago) is int else now
            status_msg = push.get("status_msg")
            yield (
                user_id,
                state,
                last_active_ts if last_active_ts > 0 else 0,
                status_msg if type(status_msg) is str else None,
                1 if push.get("currently_active") is True else 0,
                now,
                0,
                next_stream_id(),
            )


# -- HTTP ------------------------------------------------------------------------


class FloorProtocol(asyncio.Protocol):
    """One connection: httptools callbacks in, answers out in request order."""

    def __init__(self, floor: Floor, connections: set[FloorProtocol]) -> None:
        self._floor = floor
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.WriteTransport | None = None
        self._pending: deque[Answer] = deque()
        self._url = b""
        self._auth: list[str] = []
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they write alike.
        self._transport = cast(asyncio.WriteTransport, transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(BAD_REQUEST_CLOSE)
                self._transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._auth = []
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self._auth.append(value.decode("latin-1"))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = Answer(self, self._parser.should_keep_alive())
        self._pending.append(answer)
        method = self._parser.get_method()
        self._floor.handle(method, self._url, self._auth, b"".join(self._body), answer)

    def flush(self) -> None:
        """Write the answers that are ready, in request order."""
        pending = self._pending
        while pending and pending[0].data is not None:
            answer = pending.popleft()
            transport = self._transport
            if transport is None:
                pending.clear()  # the client went away: nobody to answer
                return
            transport.write(cast(bytes, answer.data))
            if not answer.keep_alive:
                transport.close()
                pending.clear()
                return


# -- the process -----------------------------------------------------------------


async def serve(port: int, db: Path, ca_file: Path, server_name: str) -> None:
    """Serve until SIGTERM or SIGINT; then close connections and the writer."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    writer = GroupWriter(db, loop)
    first_stream_id = writer.start() + 1
    context = ssl.create_default_context(cafile=str(ca_file))
    connections: set[FloorProtocol] = set()
    async with httpx.AsyncClient(
        verify=context, timeout=KEY_FETCH_TIMEOUT_S, trust_env=False
    ) as client:
        floor = Floor(server_name, OriginKeys(client), writer, first_stream_id)
        server = await loop.create_server(
            lambda: FloorProtocol(floor, connections), "127.0.0.1", port, backlog=1024
        )
        bound = server.sockets[0].getsockname()[1]
        print(f"floor: {server_name} on http://127.0.0.1:{bound}", flush=True)
        try:
            await stopping.wait()
        finally:
            server.close()
            for connection in list(connections):
                connection.close()
            await loop.run_in_executor(None, writer.stop)


def start_floor(port: int, db: Path, ca_file: Path, core: str) -> subprocess.Popen[bytes]:
    """This script as its own process, pinned to ``core`` (``bench_ingest``'s use).

    Its output is the caller's: one line once it listens, then nothing unless it fails.
    """
    command = [
        sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--db", str(db),
        "--ca-file", str(ca_file),
    ]  # fmt: skip
    if shutil.which("taskset") and core:
        command = ["taskset", "-c", core, *command]
    return subprocess.Popen(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--ca-file", type=Path, required=True, help="the origins' CA")
    parser.add_argument("--server-name", default=SERVER_NAME)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port, args.db, args.ca_file, args.server_name))


if __name__ == "__main__":
    main()
