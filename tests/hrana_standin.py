"""A STAND-IN for sqld / Turso: just enough of the Hrana protocol, backed by sqlite3.

The remote store is tested on a real sqld (:mod:`tests.sqld`, installed by
``scripts/test``): the store conformance suite, the auth token, a lost server, the seed
flow and the durability tests. :class:`HranaStandin` remains only for what a real server
cannot be made to do on cue, for libsql-client (and thus
:class:`hub.infra.store.remote.RemoteStore`): hold every answer back a random while
(``reply_jitter``: answers to concurrent requests arrive out of commit order), answer
``SQLITE_BUSY`` once a lock has been waited for ``lock_timeout`` (sqld waits instead),
and count the requests that reach it (:attr:`HranaStandin.requests`: round trips). It
is a test double, not a database server: one ``sqlite3`` connection, no replication,
no JWT verification beyond "is it exactly this string", no TLS.

It serves, on one port (``ws://127.0.0.1:PORT`` and ``http://127.0.0.1:PORT``):

- **Hrana 2 over WebSocket** (subprotocol ``hrana2``), through the ``websockets``
  asyncio server: ``hello`` (with ``jwt``), ``open_stream``, ``close_stream``,
  ``execute``, ``batch`` (step conditions ``ok``, ``error``, ``not``, ``and``, ``or``),
  ``sequence``, ``store_sql`` and ``close_sql``. Requests of one stream run in order;
  different streams run concurrently.
- **Hrana over HTTP** (what libsql-client 0.3.1 speaks for ``http://``): ``POST
  /v1/execute`` and ``POST /v1/batch``, each request standing alone.

The front door is a tiny asyncio HTTP server: plain requests are answered there;
WebSocket upgrades are piped byte for byte to the ``websockets`` server listening on
a second, private loopback port (``websockets`` refuses requests with a body, so it
cannot answer the ``POST`` itself).

Like sqld's single writer, every statement runs on the one connection, one at a time.
A stream that leaves a transaction open (``BEGIN`` over ``execute``) owns the
connection until it commits, rolls back or closes; other streams and HTTP requests
wait for it (up to :attr:`HranaStandin.lock_timeout`, then ``SQLITE_BUSY``). An HTTP
request never leaves a transaction open. With ``reply_jitter``, each answer is held
back a random while after its statements ran, as a network would: answers to
concurrent requests then arrive out of commit order.

SQLite errors come back as Hrana errors (``message`` = SQLite's message, ``code`` =
its extended code name such as ``SQLITE_CONSTRAINT_UNIQUE``), so libsql-client raises
``LibsqlError``. With ``auth_token`` set, a ``hello`` with another ``jwt`` gets
``hello_error`` and the socket is closed, and an HTTP request without ``Authorization:
Bearer <token>`` gets 401.

The server runs on its own event loop in a thread; use it as a context manager::

    with HranaStandin(auth_token="s3cret") as db:
        client = libsql_client.create_client(db.ws_url, auth_token="s3cret")

:attr:`HranaStandin.requests` counts what arrived (``"ws:batch"``, ``"http:batch"``,
``"ws:open_stream"``, ``"http:execute"`` ...: one per request, accepted or not), so
tests can count round trips.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import random
import sqlite3
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

__all__ = ["HranaError", "HranaStandin"]

JSON = dict[str, Any]

MAX_HEAD_BYTES = 64 << 10  # request line + headers
MAX_BODY_BYTES = 16 << 20  # one HTTP request body
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large"}  # fmt: skip


class HranaError(Exception):
    """An error reported to the client as a Hrana ``Error`` object."""

    def __init__(self, message: str, code: str = "HRANA_PROTO_ERROR") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def proto(self) -> JSON:
        return {"message": self.message, "code": self.code}


# -- values ------------------------------------------------------------------------


def decode_value(value: JSON) -> Any:
    """A Hrana value -> the Python value sqlite3 binds."""
    kind = value.get("type")
    if kind == "null":
        return None
    if kind == "integer":
        return int(value["value"])
    if kind == "float":
        return float(value["value"])
    if kind == "text":
        return str(value["value"])
    if kind == "blob":
        return base64.b64decode(value["base64"] + "=" * (-len(value["base64"]) % 4))
    raise HranaError(f"unknown value type {kind!r}")


def encode_value(value: Any) -> JSON:
    """A value sqlite3 returned -> a Hrana value."""
    if value is None:
        return {"type": "null"}
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, str):
        return {"type": "text", "value": value}
    if isinstance(value, bytes):
        return {"type": "blob", "base64": base64.b64encode(value).decode()}
    raise HranaError(f"cannot encode {type(value).__name__}")


def _sqlite_error(exc: sqlite3.Error) -> HranaError:
    return HranaError(str(exc), getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR")


def _split_sql(text: str) -> list[str]:
    """Split a ``sequence`` into statements (on ``;`` that end a complete statement)."""
    out: list[str] = []
    buf = ""
    for part in text.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                out.append(buf)
            buf = ""
    if buf.strip(" \t\r\n;"):
        out.append(buf)
    return out


# -- the database --------------------------------------------------------------------


class _Database:
    """One sqlite3 connection and the lock that makes it a single writer."""

    def __init__(self, path: str, lock_timeout: float) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.lock_timeout = lock_timeout
        self._owner: object | None = None  # the stream holding an open transaction
        self._changed = asyncio.Condition()

    async def acquire(self, who: object) -> None:
        """Wait until no other stream holds an open transaction."""
        async with self._changed:
            try:
                async with asyncio.timeout(self.lock_timeout):
                    await self._changed.wait_for(lambda: self._owner in (None, who))
            except TimeoutError:
                raise HranaError("database is locked", "SQLITE_BUSY") from None

    async def release(self, who: object, *, rollback: bool = False) -> None:
        """After a request of ``who`` (which held or never got the lock): keep the lock
        while its transaction is open; with ``rollback``, end that transaction first."""
        if self._owner not in (None, who):
            return  # ``who`` never got the lock: the open transaction is another's
        if rollback and self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        async with self._changed:
            self._owner = who if self.conn.in_transaction else None
            self._changed.notify_all()

    def execute(self, stmt: JSON, stored: dict[int, str]) -> JSON:
        """Run one Hrana ``Stmt``; return its ``StmtResult``."""
        if "sql" in stmt and stmt["sql"] is not None:
            sql = str(stmt["sql"])
        elif "sql_id" in stmt and stmt["sql_id"] in stored:
            sql = stored[stmt["sql_id"]]
        else:
            raise HranaError("statement has neither a known sql_id nor sql")
        args = [decode_value(v) for v in stmt.get("args") or []]
        named = {
            str(a["name"]).lstrip(":@$"): decode_value(a["value"])
            for a in stmt.get("named_args") or []
        }
        if args and named:
            raise HranaError("the stand-in cannot mix positional and named arguments")
        before = self.conn.total_changes
        try:
            cur = self.conn.execute(sql, named or args)
            rows = cur.fetchall()
            description = cur.description or ()
            cur.close()
            rowid = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from None
        return {
            "cols": [{"name": d[0], "decltype": None} for d in description],
            "rows": [[encode_value(v) for v in row] for row in rows]
            if stmt.get("want_rows", True)
            else [],
            "affected_row_count": self.conn.total_changes - before,
            "last_insert_rowid": str(rowid),
        }

    def batch(self, batch: JSON, stored: dict[int, str]) -> JSON:
        """Run a Hrana ``Batch``; return its ``BatchResult``."""
        results: list[JSON | None] = []
        errors: list[JSON | None] = []

        def holds(cond: JSON) -> bool:
            kind = cond.get("type")
            if kind in ("ok", "error"):
                step = int(cond["step"])
                if not 0 <= step < len(results):
                    raise HranaError(f"condition refers to step {step}, not run yet")
                return (results if kind == "ok" else errors)[step] is not None
            if kind == "not":
                return not holds(cond["cond"])
            if kind == "and":
                return all(holds(c) for c in cond["conds"])
            if kind == "or":
                return any(holds(c) for c in cond["conds"])
            raise HranaError(f"unknown batch condition {kind!r}")

        for step in batch.get("steps", []):
            cond = step.get("condition")
            if cond is not None and not holds(cond):
                results.append(None)
                errors.append(None)
                continue
            try:
                results.append(self.execute(step["stmt"], stored))
                errors.append(None)
            except HranaError as exc:
                results.append(None)
                errors.append(exc.proto())
        return {"step_results": results, "step_errors": errors}

    def sequence(self, request: JSON, stored: dict[int, str]) -> None:
        if request.get("sql") is not None:
            text = str(request["sql"])
        elif request.get("sql_id") in stored:
            text = stored[request["sql_id"]]
        else:
            raise HranaError("sequence has neither a known sql_id nor sql")
        for sql in _split_sql(text):
            self.execute({"sql": sql, "want_rows": False}, stored)


# -- Hrana over WebSocket ----------------------------------------------------------------


class _Stream:
    """One Hrana stream: its requests run in order, in their own task."""

    def __init__(self, session: _Session, stream_id: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self.queue: asyncio.Queue[tuple[int, JSON] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        db = self.session.db
        try:
            while (item := await self.queue.get()) is not None:
                request_id, request = item
                kind = request["type"]
                if kind == "close_stream":
                    await db.release(self, rollback=True)
                    await self.session.reply(request_id, {"type": "close_stream"})
                    return
                try:
                    await db.acquire(self)
                    try:
                        response = self._handle(request)
                    finally:
                        await db.release(self)
                except HranaError as exc:
                    await self.session.fail(request_id, exc)
                else:
                    await self.session.standin._jitter()
                    await self.session.reply(request_id, response)
        finally:
            await db.release(self, rollback=True)

    def _handle(self, request: JSON) -> JSON:
        db, stored = self.session.db, self.session.stored
        kind = request["type"]
        if kind == "execute":
            return {"type": "execute", "result": db.execute(request["stmt"], stored)}
        if kind == "batch":
            return {"type": "batch", "result": db.batch(request["batch"], stored)}
        if kind == "sequence":
            db.sequence(request, stored)
            return {"type": "sequence"}
        raise HranaError(f"unsupported request {kind!r}")


class _Session:
    """One WebSocket connection (a Hrana "connection")."""

    def __init__(self, standin: HranaStandin, ws: ServerConnection) -> None:
        self.standin = standin
        self.db = standin._db
        self.ws = ws
        self.streams: dict[int, _Stream] = {}
        self.stored: dict[int, str] = {}
        self.authenticated = False

    async def send(self, msg: JSON) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(msg))

    async def reply(self, request_id: int, response: JSON) -> None:
        await self.send({"type": "response_ok", "request_id": request_id, "response": response})

    async def fail(self, request_id: int, exc: HranaError) -> None:
        await self.send({"type": "response_error", "request_id": request_id, "error": exc.proto()})

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                if not isinstance(raw, str):
                    await self.ws.close(3003, "only text messages are accepted")
                    return
                msg = json.loads(raw)
                if msg.get("type") == "hello":
                    self.standin._count("ws:hello")
                    if not self.standin._token_ok(msg.get("jwt")):
                        await self.send(
                            {
                                "type": "hello_error",
                                "error": {
                                    "message": "Authentication failed: the token is not valid",
                                    "code": "AUTH_JWT_INVALID",
                                },
                            }
                        )
                        await self.ws.close(3004, "authentication failed")
                        return
                    await self.send({"type": "hello_ok"})
                    self.authenticated = True
                elif msg.get("type") == "request" and self.authenticated:
                    await self._request(int(msg["request_id"]), msg["request"])
                else:
                    await self.ws.close(3003, "expected hello first, then requests")
                    return
        except ConnectionClosed:  # the client (or stop()) dropped the connection
            return
        finally:
            for stream in self.streams.values():
                stream.task.cancel()
            for stream in list(self.streams.values()):
                with contextlib.suppress(asyncio.CancelledError):
                    await stream.task
            self.streams.clear()

    async def _request(self, request_id: int, request: JSON) -> None:
        kind = request.get("type")
        self.standin._count(f"ws:{kind}")
        if kind == "open_stream":
            sid = int(request["stream_id"])
            if sid in self.streams:
                await self.fail(request_id, HranaError(f"stream {sid} is already open"))
                return
            self.streams[sid] = _Stream(self, sid)
            await self.reply(request_id, {"type": "open_stream"})
        elif kind in ("close_stream", "execute", "batch", "sequence"):
            sid = int(request["stream_id"])
            stream = self.streams.get(sid)
            if stream is None:
                await self.fail(request_id, HranaError(f"stream {sid} is not open"))
                return
            if kind == "close_stream":
                del self.streams[sid]
                stream.queue.put_nowait((request_id, request))
                stream.queue.put_nowait(None)
            else:
                stream.queue.put_nowait((request_id, request))
        elif kind == "store_sql":
            self.stored[int(request["sql_id"])] = str(request["sql"])
            await self.reply(request_id, {"type": "store_sql"})
        elif kind == "close_sql":
            self.stored.pop(int(request["sql_id"]), None)
            await self.reply(request_id, {"type": "close_sql"})
        else:
            await self.fail(request_id, HranaError(f"unsupported request {kind!r}"))


# -- the server ------------------------------------------------------------------------


class HranaStandin:
    """A Hrana server (WebSocket and HTTP) on ``127.0.0.1``, run in a thread."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        auth_token: str | None = None,
        port: int = 0,
        lock_timeout: float = 5.0,
        reply_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.path = str(path)
        self.auth_token = auth_token
        self.lock_timeout = lock_timeout
        self.reply_jitter = reply_jitter
        self._random = random.Random(seed)
        self.port = port
        self.requests: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._db: _Database
        self._ws_server: Server
        self._ws_port = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start serving; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the stand-in is already running")
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, name="hrana-standin", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("the Hrana stand-in failed to start") from self._error

    def stop(self) -> None:
        """Close every connection and the database. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(10)

    def __enter__(self) -> HranaStandin:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def counts(self) -> dict[str, int]:
        """A snapshot of :attr:`requests`."""
        with self._counts_lock:
            return dict(self.requests)

    def _count(self, kind: str) -> None:
        with self._counts_lock:
            self.requests[kind] += 1

    async def _jitter(self) -> None:
        """Hold an answer back for up to ``reply_jitter`` seconds (after the statements
        ran), so that answers to concurrent requests come back out of commit order."""
        if self.reply_jitter > 0:
            await asyncio.sleep(self._random.uniform(0, self.reply_jitter))

    def _token_ok(self, token: object) -> bool:
        return self.auth_token is None or token == self.auth_token

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._db = _Database(self.path, self.lock_timeout)
        try:
            async with serve(
                self._ws_handler,
                "127.0.0.1",
                0,
                subprotocols=[Subprotocol("hrana2")],
                ping_interval=None,
                max_size=MAX_BODY_BYTES,
            ) as ws_server:
                self._ws_server = ws_server
                self._ws_port = ws_server.sockets[0].getsockname()[1]
                front = await asyncio.start_server(self._front, "127.0.0.1", self.port)
                self.port = front.sockets[0].getsockname()[1]
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    front.close()
                    for task in list(self._tasks):
                        task.cancel()
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                    await front.wait_closed()
        finally:
            self._db.conn.close()

    # -- the front door: HTTP, or a pipe to the WebSocket server ----------------------

    async def _front(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The work runs in a task of our own, which stop() cancels: on Python 3.11,
        # cancelling the task asyncio.start_server made logs an error.
        task = asyncio.create_task(self._connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.wait({task})

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                if headers.get("upgrade", "").lower() == "websocket":
                    await self._pipe_to_ws(head, reader, writer)
                    return
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY_BYTES:
                    await self._respond(writer, 413, {"message": "body too large"}, close=True)
                    return
                body = await reader.readexactly(length) if length else b""
                status, payload = await self._http(method, target, headers, body)
                await self._jitter()
                keep = headers.get("connection", "").lower() != "close"
                await self._respond(writer, status, payload, close=not keep)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, payload: JSON, *, close: bool
    ) -> None:
        body = json.dumps(payload).encode()
        reason = REASONS.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _http(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, JSON]:
        path = target.split("?", 1)[0]
        if path not in ("/v1/execute", "/v1/batch"):
            self._count("http:other")
            return 404, {"message": f"no route for {path}", "code": "NOT_FOUND"}
        self._count("http:" + path.rsplit("/", 1)[1])
        if method != "POST":
            return 405, {"message": "use POST", "code": "METHOD_NOT_ALLOWED"}
        auth = headers.get("authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        if not self._token_ok(token):
            return 401, {"message": "Authentication failed: the token is not valid",
                         "code": "AUTH_JWT_INVALID"}  # fmt: skip
        try:
            request = json.loads(body)
        except ValueError:
            return 400, {"message": "body is not JSON", "code": "HRANA_PROTO_ERROR"}
        who = object()  # an HTTP request is a stream of its own, closed at once
        try:
            await self._db.acquire(who)
            try:
                if path == "/v1/execute":
                    result = {"result": self._db.execute(request["stmt"], {})}
                else:
                    result = {"result": self._db.batch(request["batch"], {})}
            finally:
                await self._db.release(who, rollback=True)
        except HranaError as exc:
            return 400, exc.proto()
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {"message": f"bad request: {exc!r}", "code": "HRANA_PROTO_ERROR"}
        return 200, result

    async def _pipe_to_ws(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Hand a WebSocket upgrade to the ``websockets`` server, byte for byte."""
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._ws_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            if dst.can_write_eof():
                with contextlib.suppress(OSError):
                    dst.write_eof()

        try:
            up_writer.write(head)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pump(reader, up_writer))
                tg.create_task(pump(up_reader, writer))
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()

    async def _ws_handler(self, ws: ServerConnection) -> None:
        # Not tracked: closing the front door's pipes ends these connections, and
        # the ``websockets`` server waits for its handlers when it closes.
        await _Session(self, ws).run()
