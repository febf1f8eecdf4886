"""The embedded streams store: one SQLite file in WAL mode, never blocking the loop.

Why not libsql-client's own ``file:`` mode: it runs sqlite3 synchronously inside its
coroutines (the loop stalls on every write), opens a connection per statement, never
enables WAL and has a busy timeout of 0.

Here instead:

- **one writer thread** owns one long-lived connection (WAL, ``synchronous=FULL``,
  busy timeout). Appends queue up while a commit is in progress and are committed
  together in the next transaction (**group commit**); each request has its own
  SAVEPOINT, so one failing request does not take its neighbours down. Callers are
  answered only after the commit that holds their events.
- **reader threads**, each with its own connection, serve reads: WAL readers never
  wait behind the writer.
- ``seq`` is read and bumped inside ``BEGIN IMMEDIATE``, so two processes sharing
  one file still get gap-free ``seq``; the busy timeout makes them wait, not fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hub.errors import Busy, HubError, Unavailable
from hub.events import Event, NewEvent
from hub.infra.store.base import (
    JOIN,
    LEAVE,
    MIGRATE_EVENTS,
    MIGRATE_MEMBERS,
    SCHEMA,
    SELECT_ALL,
    SELECT_EVENTS_DDL,
    SELECT_INBOX,
    SELECT_LEFT,
    SELECT_MEMBERS,
    SELECT_MEMBERS_DDL,
    SELECT_STREAM,
    SELECT_STREAM_ROW,
    AppendResult,
    CommitListener,
    NotFirstEvent,
    StreamArchived,
    StreamChanged,
    StreamInfo,
    check_retry,
    find_streams_sql,
    ids_scoped,
    member_streams,
    member_streams_sql,
    members_ended,
    members_named,
    row_to_event,
    select_opcodes,
    select_stored,
    spans_kept,
)

__all__ = ["FileStore", "connect", "path_from_url"]

T = TypeVar("T")
log = logging.getLogger("hub.store")

# Limits (see README "Limits").
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another process's lock
MAX_PENDING = 20_000  # append requests queued before new ones get 503
GROUP_MAX_EVENTS = 4_000  # events committed in one transaction at most
READERS = 2  # reader threads (connections)


def path_from_url(url: str) -> Path:
    """``file:data/x.db``, ``file:///abs/x.db`` -> a path (query string ignored)."""
    rest = url[len("file:") :].split("?", 1)[0]
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ValueError(f"no path in {url!r}")
    return Path(rest)


def connect(path: Path, *, busy_timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, autocommit (explicit BEGIN), with a busy timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    # Switching a new file to WAL needs a lock that SQLite does not wait for: retry.
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"could not switch {path} to WAL (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class _Write:
    """One request to the writer thread, run under its own SAVEPOINT."""

    __slots__ = ("deadline", "future", "result", "weight")

    def __init__(self, future: asyncio.Future[Any], weight: int) -> None:
        self.future = future
        self.weight = weight
        self.result: Any = None
        # However long it queues, a request waits for a lock at most BUSY_TIMEOUT_S.
        self.deadline = time.monotonic() + BUSY_TIMEOUT_S

    def apply(self, conn: sqlite3.Connection) -> Any:
        raise NotImplementedError


class _Job(_Write):
    __slots__ = ("fn",)

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]
    ) -> None:
        super().__init__(future, 1)
        self.fn = fn

    def apply(self, conn: sqlite3.Connection) -> Any:
        return self.fn(conn)


class _Append(_Write):
    __slots__ = ("events", "expected", "first", "stream_id")

    def __init__(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        first: bool,
        future: asyncio.Future[AppendResult],
        expected: int | None = None,
    ) -> None:
        super().__init__(future, len(events))
        self.stream_id = stream_id
        self.events = events
        self.first = first
        self.expected = expected

    def apply(self, conn: sqlite3.Connection) -> AppendResult:
        return _apply(conn, self)


_Read = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


def _settle(batch: list[_Write], listener: CommitListener | None) -> None:
    """Tell the listener, then answer every caller of one group commit (on the event loop)."""
    if listener is not None:
        for req in batch:
            if isinstance(req.result, AppendResult) and req.result.new:
                try:
                    listener.committed(req.result)
                except Exception:
                    log.exception("commit listener failed")
    for req in batch:
        if req.future.done():  # the caller went away; the commit stands
            continue
        if isinstance(req.result, BaseException):
            req.future.set_exception(req.result)
        else:
            req.future.set_result(req.result)


def _apply(conn: sqlite3.Connection, req: _Append) -> AppendResult:
    """Write one append request inside the open transaction."""
    ids = [e.id for e in req.events if not e.fresh_id]  # retries name their ids
    existing = {
        ev.id: ev
        for ev in map(row_to_event, conn.execute(select_stored(len(ids)), [req.stream_id, *ids]))
    } if ids else {}  # fmt: skip
    for new in req.events:
        if new.id in existing:
            check_retry(existing[new.id], new, req.stream_id)
    fresh = [e for e in req.events if e.id not in existing]
    committed: dict[str, Event] = {}
    left: tuple[tuple[str, int, int], ...] = ()
    if fresh:
        row = conn.execute(SELECT_STREAM_ROW, (req.stream_id,)).fetchone()
        seq = was = int(row[0]) if row else 0
        if row and row[1]:
            raise StreamArchived("this stream has been archived", code="archived")
        if req.first and seq != 0:
            raise NotFirstEvent("ORDER_CREATE must be the first event of a new stream")
        if req.expected is not None and seq != req.expected:
            raise StreamChanged()
        for new in fresh:
            seq += 1
            cur = conn.execute(
                "INSERT INTO events (id, streamId, opcode, nodeId, pointId, delta, payload, ts,"
                " seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.id,
                    req.stream_id,
                    new.opcode,
                    new.node_id,
                    new.point_id,
                    new.delta,
                    new.payload,
                    new.ts,
                    seq,
                ),
            )
            pos = cur.lastrowid
            assert pos is not None
            committed[new.id] = Event(
                new.id, req.stream_id, seq, pos, new.opcode, new.node_id, new.point_id,
                new.delta, new.payload, new.ts,
            )  # fmt: skip
            for tenant in members_ended(new):
                conn.execute(LEAVE, (seq, pos, req.stream_id, tenant))
            for tenant in members_named(new):
                conn.execute(JOIN, (req.stream_id, tenant, seq, pos, req.stream_id, tenant))
        conn.execute(
            "INSERT INTO streams (streamId, lastSeq) VALUES (?, ?)"
            " ON CONFLICT (streamId) DO UPDATE SET lastSeq = excluded.lastSeq",
            (req.stream_id, seq),
        )
        left = tuple(
            (t, int(a), int(b)) for t, a, b in conn.execute(SELECT_LEFT, (req.stream_id, was))
        )
    members = {t: int(p) for t, p in conn.execute(SELECT_MEMBERS, (req.stream_id,))}
    events = [existing.get(e.id) or committed[e.id] for e in req.events]
    return AppendResult(req.stream_id, events, list(committed.values()), members, left)


class FileStore:
    """The embedded ``file:`` streams store (see the module docstring)."""

    def __init__(self, url: str, *, readers: int = READERS) -> None:
        self.path = path_from_url(url)
        self._readers = readers
        self._appends: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Read | None] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._stopped: asyncio.Future[None] | None = None
        self.commits = 0  # group commits done (for metrics and tests)
        self._listener: CommitListener | None = None  # told of every commit (see open)

    # -- lifecycle ---------------------------------------------------------------

    async def open(self, listener: CommitListener | None = None) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._create_schema)
        started: list[asyncio.Future[None]] = []
        writer_started = self._loop.create_future()
        started.append(writer_started)
        self._spawn("hub-store-writer", self._writer, writer_started)
        for i in range(self._readers):
            fut = self._loop.create_future()
            started.append(fut)
            self._spawn(f"hub-store-reader-{i}", self._reader, fut)
        await asyncio.gather(*started)

    def _spawn(self, name: str, target: Callable[[asyncio.Future[None]], None],
               started: asyncio.Future[None]) -> None:  # fmt: skip
        t = threading.Thread(target=target, args=(started,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _create_schema(self) -> None:
        conn = connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for ddl in SCHEMA:
                conn.execute(ddl)
            row = conn.execute(SELECT_EVENTS_DDL).fetchone()
            if not ids_scoped(row[0] if row else None):
                log.warning("migrating %s: event ids become unique per stream", self.path)
                for stmt in MIGRATE_EVENTS:
                    conn.execute(stmt)
            row = conn.execute(SELECT_MEMBERS_DDL).fetchone()
            if not spans_kept(row[0] if row else None):
                log.warning("migrating %s: memberships may end (TASK_UNASSIGN)", self.path)
                for stmt in MIGRATE_MEMBERS:
                    conn.execute(stmt)
            conn.execute("COMMIT")
        finally:
            conn.close()

    async def close(self) -> None:
        self._listener = None
        if self._closed:
            return
        self._closed = True
        if not self._threads:
            return
        self._appends.put(None)
        for _ in range(self._readers):
            self._reads.put(None)
        threads = list(self._threads)

        def join() -> None:
            for t in threads:
                t.join()

        await asyncio.to_thread(join)
        self._threads.clear()

    def _call(self, fut: asyncio.Future[Any], value: Any = None,
              exc: BaseException | None = None) -> None:  # fmt: skip
        """Resolve ``fut`` from a store thread."""
        assert self._loop is not None

        def settle() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(settle)

    # -- writes ------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        first: bool = False,
        expected: int | None = None,
    ) -> AppendResult:
        if self._closed or self._loop is None:
            raise Unavailable("the streams store is closed")
        fut: asyncio.Future[AppendResult] = self._loop.create_future()
        request = _Append(stream_id, list(events), first, fut, expected)
        result: AppendResult = await self._submit(request)
        return result

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the writer thread inside a transaction (group-committed)."""
        if self._closed or self._loop is None:
            raise Unavailable("the streams store is closed")
        fut: asyncio.Future[T] = self._loop.create_future()
        result: T = await self._submit(_Job(fn, fut))
        return result

    async def _submit(self, req: _Write) -> Any:
        with self._lock:
            if self._pending >= MAX_PENDING:
                raise Busy("too many writes waiting for the streams DB; retry")
            self._pending += 1
        self._appends.put(req)
        return await req.future

    def _writer(self, started: asyncio.Future[None]) -> None:
        try:
            conn = connect(self.path)
        except Exception as exc:  # pragma: no cover - reported to open()
            self._call(started, None, exc)
            return
        self._call(started)
        try:
            while True:
                first = self._appends.get()
                if first is None:
                    return
                batch = [first]
                count = first.weight
                stop = False
                while count < GROUP_MAX_EVENTS:
                    try:
                        nxt = self._appends.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                    count += nxt.weight
                self._commit(conn, batch)
                with self._lock:
                    self._pending -= len(batch)
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(_settle, batch, self._listener)
                if stop:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, requests: list[_Write]) -> None:
        batch = requests
        while True:
            now = time.monotonic()
            expired = [r for r in batch if r.deadline <= now]
            if expired:  # they waited out their time behind another's lock: answer now
                for req in expired:
                    req.result = Busy("the streams DB stayed locked; retry")
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(_settle, expired, None)
            batch = [r for r in batch if r.deadline > now]
            if not batch:
                return
            # Wait for the lock no longer than the most pressed request may, then again
            # for the others: each request gets its own BUSY_TIMEOUT_S, no more, no less.
            wait_ms = max(1, int((min(r.deadline for r in batch) - now) * 1000))
            try:
                conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    continue
                err = Unavailable(f"the streams DB is failing: {exc}")
            except sqlite3.Error as exc:
                err = Unavailable(f"the streams DB is failing: {exc}")
            for req in batch:
                req.result = err
            return
        try:
            for req in batch:
                conn.execute("SAVEPOINT req")
                try:
                    req.result = req.apply(conn)
                except HubError as exc:
                    conn.execute("ROLLBACK TO req")
                    req.result = exc
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO req")
                    req.result = Unavailable(f"the streams DB refused a write: {exc}")
                except Exception as exc:  # a bug must not kill the writer thread
                    conn.execute("ROLLBACK TO req")
                    req.result = exc
                conn.execute("RELEASE req")
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            err = Unavailable(f"the streams DB failed to commit: {exc}")
            for req in batch:
                req.result = err

    # -- reads -------------------------------------------------------------------

    def _reader(self, started: asyncio.Future[None]) -> None:
        try:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=1")
        except Exception as exc:  # pragma: no cover - reported to open()
            self._call(started, None, exc)
            return
        self._call(started)
        try:
            while True:
                job = self._reads.get()
                if job is None:
                    return
                fn, fut = job
                try:
                    value = fn(conn)
                except sqlite3.Error as exc:
                    self._call(fut, None, Unavailable(f"the streams DB failed a read: {exc}"))
                except BaseException as exc:
                    self._call(fut, None, exc)
                else:
                    self._call(fut, value)
        finally:
            conn.close()

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._loop is None:
            raise Unavailable("the streams store is closed")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._reads.put((fn, fut))
        return await fut

    async def read_stream(self, stream_id: str, since: int, limit: int) -> list[Event]:
        def run(conn: sqlite3.Connection) -> list[Event]:
            return [row_to_event(r) for r in conn.execute(SELECT_STREAM, (stream_id, since, limit))]

        return await self._read(run)

    async def read_inbox(self, tenant: str | None, since: int, limit: int) -> list[Event]:
        def run(conn: sqlite3.Connection) -> list[Event]:
            if tenant is None:
                rows = conn.execute(SELECT_ALL, (since, limit))
            else:
                rows = conn.execute(SELECT_INBOX, (tenant, since, limit))
            return [row_to_event(r) for r in rows]

        return await self._read(run)

    async def stream_info(self, stream_id: str) -> StreamInfo | None:
        def run(conn: sqlite3.Connection) -> StreamInfo | None:
            conn.execute("BEGIN")
            try:
                row = conn.execute(SELECT_STREAM_ROW, (stream_id,)).fetchone()
                if row is None:
                    return None
                members = {t: int(p) for t, p in conn.execute(SELECT_MEMBERS, (stream_id,))}
            finally:
                conn.execute("COMMIT")
            return StreamInfo(stream_id, int(row[0]), bool(row[1]), members)

        return await self._read(run)

    async def stream_opcodes(self, stream_id: str, among: Sequence[int]) -> dict[int, int]:
        def run(conn: sqlite3.Connection) -> dict[int, int]:
            rows = conn.execute(select_opcodes(among), (stream_id, *among))
            return {int(r[0]): int(r[1]) for r in rows}

        return await self._read(run)

    async def delete_stream(self, stream_id: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute("DELETE FROM events WHERE streamId = ?", (stream_id,))
            conn.execute("UPDATE streams SET archived = 1 WHERE streamId = ?", (stream_id,))
            return cur.rowcount

        return await self.write(run)

    async def find_streams(
        self,
        *,
        having: int | None = None,
        lacking: int | Sequence[int] | None = None,
        member: str | None = None,
        limit: int = 1000,
    ) -> list[str]:
        sql, args = find_streams_sql(having, lacking, member, limit)

        def run(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute(sql, args)]

        return await self._read(run)

    async def streams_of_members(
        self,
        members: Sequence[str],
        *,
        having: int | None = None,
        lacking: int | Sequence[int] | None = None,
        limit: int = 1000,
    ) -> dict[str, list[str]]:
        sql, args = member_streams_sql(having, lacking, members)

        def run(conn: sqlite3.Connection) -> dict[str, list[str]]:
            return member_streams(conn.execute(sql, args), members, limit)

        return await self._read(run)

    async def ping(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1").fetchone()

        await self._read(run)
