"""The remote streams store: the same log in a libSQL server (sqld, Turso).

:class:`RemoteStore` implements :class:`hub.infra.store.Store` through libsql-client (the
``turso`` extra) for ``HUB_STREAMS_DB`` URLs ``libsql://`` and ``wss://``/``ws://``
(Hrana over a WebSocket) or ``https://``/``http://`` (Hrana over HTTP). Same schema
and same semantics as :class:`hub.infra.store.file.FileStore`; it differs in how it gets
them, because every request costs a network round trip:

- **One round trip per append** in the common case. The whole append is one
  ``client.batch`` (libsql-client wraps it in ``BEGIN``/``COMMIT`` and runs
  ``ROLLBACK`` if any statement fails): bump the stream's ``lastSeq`` (an upsert, so
  the transaction takes the write lock with its first statement), insert each event
  with its ``seq`` computed in SQL from that row (``INSERT ... SELECT ... RETURNING
  seq, pos``), add the memberships it confers (``INSERT OR IGNORE ... SELECT ... FROM
  events WHERE streamId = ? AND id = ?``: from the naming event's ``seq`` and ``pos``),
  and select the stream's members. The database serializes writers, so ``seq`` stays
  gap-free however many hub instances append at once. No interactive transaction is needed, which is
  what makes the HTTP transport usable at all.
- **Retries are found by the database.** An event id already stored in the stream (ids
  are unique per stream) fails the batch on ``UNIQUE (streamId, id)`` and nothing is
  written. Only then does the store read the stream's stored rows (a second round trip):
  other content raises
  :class:`~hub.errors.Conflict`; the same content is returned as stored; the events
  not stored yet are appended by running the batch again with just them.
- **"Not archived" and "must open the stream" are checked in the same batch**, by
  statements that break a ``NOT NULL`` constraint (rolling the batch back) exactly
  when the check fails: ``UPDATE streams SET archived = NULL WHERE streamId = ? AND
  archived <> 0`` (:class:`~hub.infra.store.StreamArchived`) and, with ``first=True``,
  ``UPDATE streams SET lastSeq = NULL WHERE streamId = ? AND lastSeq <> n`` (the
  stream had events before: :class:`~hub.infra.store.NotFirstEvent`), and with
  ``expected`` the same statement against ``expected + n`` (other events were appended
  since: :class:`~hub.infra.store.StreamChanged`). SQLite names the
  column in its message, which tells the two apart. They run after the inserts, so a
  retried event is recognized as a retry first, as in the embedded store.
- **Group commit.** Appends that arrive while the store's batches are in flight wait in a
  queue; the next batch carries all of them (up to :data:`GROUP_MAX` appends,
  :data:`GROUP_MAX_STATEMENTS` statements, :data:`GROUP_MAX_BYTES` of payload) as one
  transaction, one round trip. At most :data:`WRITES_IN_FLIGHT` batches are in flight, so
  with many writers the cost of a round trip is shared by the appends that gathered
  meanwhile: throughput follows the writers, not the latency. A failed check of one append
  (an id stored already, archived, not first, not the expected ``seq``) rolls its whole
  batch back; the batch is then split in halves, each run again (in order), down to the
  append that failed, which gets its own answer as above. (Hrana itself could do better:
  its batches take a condition per step, so each append could roll back to a savepoint of
  its own and the others commit. libsql-client 0.3.1's ``batch`` does not expose them: it
  runs each statement only if the one before succeeded.)
- **The commit listener sees commit order.** Answers to concurrent appends may come back
  in any order (several HTTP connections; streams served concurrently), yet
  the commit listener must see appends in the order they committed (``pos`` order: the
  database has one writer). An answer is held until every append that was in flight
  when it arrived has been answered (any append that committed before it was among
  those), then the held answers are handed on sorted by ``pos``. The caller is
  answered after its append was handed on; the work runs in a task of the store, so
  a caller that goes away does not stop it.

A batch refused with ``SQLITE_BUSY`` (another connection holds the write lock) was
rolled back whole, so it is run again after a short pause (:data:`BUSY_RETRY_S`).
Every other database or network failure is reported as :class:`~hub.errors.Unavailable`
(503, retry), and so is a request that takes longer than :data:`REQUEST_TIMEOUT_S`. An
append that timed out may have committed (it is then not handed to the listener;
stream subscribers see the ``seq`` gap and re-read the log), which is why clients
retry with the same event ids.

A request that times out is not cancelled inside libsql-client: its WebSocket client
(0.3.1) hands a late answer to the future it was cancelled through and logs
``InvalidStateError`` (``Exception in callback _map_future.<locals>.done``). The
connection it waits on is dropped instead (a server that let one request wait that long
is taken for stuck): its requests in flight fail at once, and the next request opens a
new connection. A caller that goes away likewise leaves its request to end by itself.

With ``read_only`` the store is a read replica's (:mod:`hub.infra.store.replica`): it
creates no schema and is only read from.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import libsql_client

from hub.errors import Busy, Unavailable, Unprocessable
from hub.events import Event, NewEvent
from hub.infra.hrana import TokenRefused, check_token
from hub.infra.store.base import (
    MIGRATE_EVENTS,
    MIGRATE_MEMBERS,
    SCHEMA,
    SELECT_ALL,
    SELECT_EVENTS_DDL,
    SELECT_INBOX,
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

__all__ = ["BUSY_RETRY_S", "REMOTE_SCHEMES", "REQUEST_TIMEOUT_S", "RemoteStore"]

log = logging.getLogger("hub.store")

# Limits (see README "Limits").
REQUEST_TIMEOUT_S = 10.0  # one request to the database, connecting included
BUSY_RETRY_S = (0.05, 0.1, 0.2, 0.4, 0.8)  # pauses before running a batch again after SQLITE_BUSY
WRITES_IN_FLIGHT = 4  # append batches one store sends at once
GROUP_MAX = 128  # appends one batch carries at most (group commit)
MAX_PENDING = 20_000  # appends waiting for a batch before new ones get 503 (as the embedded store)
GROUP_MAX_STATEMENTS = 1024  # statements one batch of several appends carries at most
GROUP_MAX_BYTES = 1 << 20  # event payload bytes one batch of several appends carries at most
CLOSE_TIMEOUT_S = 2 * REQUEST_TIMEOUT_S  # close() waits this long for appends in flight

REMOTE_SCHEMES = frozenset({"libsql", "wss", "ws", "https", "http"})

# -- the append batch ----------------------------------------------------------------
# BUMP_SEQ adds n (the number of new events) to lastSeq; event i of n (from 1) then
# takes seq = lastSeq - (n - i).

BUMP_SEQ = (
    "INSERT INTO streams (streamId, lastSeq) VALUES (?, ?)"
    " ON CONFLICT (streamId) DO UPDATE SET lastSeq = lastSeq + excluded.lastSeq"
)
INSERT_EVENT = (
    "INSERT INTO events (id, streamId, opcode, nodeId, pointId, delta, payload, ts, seq)"
    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, lastSeq - ? FROM streams WHERE streamId = ?"
    " RETURNING seq, pos"
)
# A tenant joins from the naming event unless it is a member already (args: tenant,
# stream, event id, tenant); leaves at the event that ends its membership (args: stream,
# event id, stream, tenant).
INSERT_MEMBER = (
    "INSERT INTO members (streamId, tenant, fromSeq, fromPos)"
    " SELECT streamId, ?, seq, pos FROM events WHERE streamId = ? AND id = ?"
    " AND NOT EXISTS (SELECT 1 FROM members m WHERE m.streamId = events.streamId"
    " AND m.tenant = ? AND m.untilSeq IS NULL)"
)
END_MEMBER = (
    "UPDATE members SET (untilSeq, untilPos) = (SELECT seq, pos FROM events"
    " WHERE streamId = ? AND id = ?) WHERE streamId = ? AND tenant = ? AND untilSeq IS NULL"
)
# The memberships the append ended (args: stream, stream, n): lastSeq - n is the stream's
# lastSeq before the append.
SELECT_ENDED = (
    "SELECT tenant, fromPos, untilPos FROM members WHERE streamId = ? AND untilSeq >"
    " (SELECT lastSeq FROM streams WHERE streamId = ?) - ? ORDER BY untilPos"
)
# Each breaks NOT NULL (so the batch rolls back) when its check fails: the stream is
# archived; the stream had events before (lastSeq was not 0 before BUMP_SEQ), or other
# events than expected (lastSeq was not ``expected`` before BUMP_SEQ).
CHECK_OPEN = "UPDATE streams SET archived = NULL WHERE streamId = ? AND archived <> 0"
CHECK_FIRST = "UPDATE streams SET lastSeq = NULL WHERE streamId = ? AND lastSeq <> ?"

# How the expected failures read in SQLite's messages (sqld may prefix them).
DUPLICATE_ID = "UNIQUE constraint failed: events.streamId, events.id"
ARCHIVED = "NOT NULL constraint failed: streams.archived"
NOT_FIRST = "NOT NULL constraint failed: streams.lastSeq"

Stmt = tuple[str, list[Any]]

# What a failing request raises: LibsqlError (the server said no, or the client's
# connection broke), aiohttp errors (refused, reset, not Hrana), OSError, a timeout,
# and ValueError/KeyError from an answer that does not parse.
_DB_ERRORS: tuple[type[BaseException], ...] = (
    libsql_client.LibsqlError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    ValueError,
    KeyError,
)


def _busy(exc: libsql_client.LibsqlError) -> bool:
    """True when SQLite refused for want of the write lock (SQLITE_BUSY, "locked")."""
    return str(exc.code).startswith("SQLITE_BUSY") or "database is locked" in str(exc.explanation)


def _unavailable(exc: BaseException, what: str = "the streams DB",
                 timeout: float = REQUEST_TIMEOUT_S) -> Unavailable:  # fmt: skip
    """The hub's view of a database or network failure (``what``: which database)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, libsql_client.LibsqlError) and (
        str(exc.code).startswith("AUTH") or "401" in str(exc.explanation)
    ):
        return Unavailable(f"{what} refused the auth token (HUB_DB_AUTH_TOKEN): {text}")
    if isinstance(exc, TimeoutError):
        return Unavailable(f"{what} did not answer within {timeout:g} s")
    return Unavailable(f"{what} failed: {text}")


T = TypeVar("T")


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a request nobody waits for any more."""
    if not task.cancelled():
        task.exception()


class RemoteStore:
    """The streams store in a libSQL server (see the module docstring)."""

    def __init__(self, url: str, *, auth_token: str | None = None, read_only: bool = False,
                 timeout: float = REQUEST_TIMEOUT_S) -> None:  # fmt: skip
        scheme = url.split(":", 1)[0].lower()
        if scheme not in REMOTE_SCHEMES:
            # libsql-client's own file: mode would run sqlite3 on the event loop.
            raise ValueError(f"RemoteStore needs a libsql:, ws(s): or http(s): URL, not {url!r}")
        self.url = url
        self.read_only = read_only  # a read replica's: no schema made, never written to
        self.timeout = timeout  # seconds one request may take, connecting included
        self._what = "the streams DB's read replica" if read_only else "the streams DB"
        self._listener: CommitListener | None = None  # told of every commit (see open)
        self._auth_token = auth_token
        self._client: Any = None  # a libsql_client.Client while open
        self._closed = False
        self._tasks: set[asyncio.Task[AppendResult]] = set()
        self._dropping: set[asyncio.Task[None]] = set()  # connections being closed
        self._order = _CommitOrder(self._publish)
        # Appends waiting for a batch (group commit), and the batches in flight: at most
        # WRITES_IN_FLIGHT, since the database has one writer and more only contend for its
        # lock (each Hrana stream is a connection of its own in sqld; 32 of them retrying
        # SQLITE_BUSY were seen to spin sqld for minutes).
        self._queue: deque[_Write] = deque()
        self._sending = 0
        self._senders: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------

    async def open(self, listener: CommitListener | None = None) -> None:
        if self._closed:
            raise Unavailable("the streams store is closed")
        self._listener = listener
        if self._client is not None:
            return
        try:
            await check_token(self.url, self._auth_token, timeout=self.timeout)
        except TokenRefused as exc:
            raise Unavailable(
                f"{self._what} refused the auth token (HUB_DB_AUTH_TOKEN): {exc}"
            ) from None
        try:
            self._client = libsql_client.create_client(self.url, auth_token=self._auth_token)
        except libsql_client.LibsqlError as exc:  # a malformed URL
            raise ValueError(f"bad streams DB URL {self.url!r}: {exc}") from None
        if self.read_only:
            return  # the primary makes the schema; a replica that lacks it yet fails reads
        try:
            await self._batch([(ddl, []) for ddl in SCHEMA])
            ddl = await self._execute(SELECT_EVENTS_DDL, [])
            if not ids_scoped(ddl.rows[0][0] if ddl.rows else None):
                # One transaction; run twice (two instances starting at once) it rebuilds
                # the already scoped table again, to the same rows.
                log.warning("migrating the streams DB: event ids become unique per stream")
                await self._batch([(stmt, []) for stmt in MIGRATE_EVENTS])
            ddl = await self._execute(SELECT_MEMBERS_DDL, [])
            if not spans_kept(ddl.rows[0][0] if ddl.rows else None):
                log.warning("migrating the streams DB: memberships may end (TASK_UNASSIGN)")
                await self._batch([(stmt, []) for stmt in MIGRATE_MEMBERS])
        except BaseException:
            client, self._client = self._client, None
            await _close_client(client)
            raise

    async def close(self) -> None:
        """Refuse new work, let appends in flight finish (or cancel them), disconnect."""
        self._closed = True
        self._listener = None
        tasks = set(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        for sender in self._senders:  # only when their appends were cancelled above
            sender.cancel()
        if self._senders:
            await asyncio.wait(set(self._senders))
        client, self._client = self._client, None
        if client is not None:
            await _close_client(client)
        if self._dropping:
            await asyncio.wait(set(self._dropping))

    def _publish(self, result: AppendResult) -> None:
        listener = self._listener
        if listener is not None:
            try:
                listener.committed(result)
            except Exception:
                log.exception("commit listener failed")

    # -- requests ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._client is None:
            raise Unavailable("the streams store is closed")

    async def _request(self, call: Callable[[Any], Awaitable[T]]) -> T:
        """``call(client)`` within :attr:`timeout`, never cancelled inside libsql-client
        (see the module docstring): past the time-out its connection is dropped and
        :class:`TimeoutError` raised; a caller that goes away leaves it to end."""
        client = self._client
        if client is None:
            raise Unavailable("the streams store is closed")
        task = asyncio.ensure_future(call(client))
        try:
            await asyncio.wait((task,), timeout=self.timeout)
        finally:
            if not task.done():  # timed out, or the caller was cancelled
                task.add_done_callback(_forget)
        if not task.done():
            self._drop(client)
            raise TimeoutError(f"no answer within {self.timeout:g} s")
        return task.result()

    def _drop(self, client: Any) -> None:
        """Close ``client``'s connection (its requests in flight fail at once) and open a
        new one for the next request, unless that happened already."""
        if client is not self._client or self._closed:
            return
        log.warning("%s did not answer within %g s: reconnecting", self._what, self.timeout)
        try:
            self._client = libsql_client.create_client(self.url, auth_token=self._auth_token)
        except libsql_client.LibsqlError:  # cannot happen: the URL was taken at open
            self._client = None
        task = asyncio.create_task(_close_client(client))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _raw_batch(self, stmts: Sequence[Stmt]) -> list[Any]:
        """One transaction in one round trip; failures raised as they come.

        A batch refused because another connection holds the write lock rolled back
        entirely, so it is run again after a pause (see :data:`BUSY_RETRY_S`).
        """
        pauses = iter(BUSY_RETRY_S)
        while True:
            try:
                result: list[Any] = await self._request(lambda c: c.batch(list(stmts)))
                return result
            except libsql_client.LibsqlError as exc:
                pause = next(pauses, None) if _busy(exc) else None
                if pause is None:
                    raise
            await asyncio.sleep(pause)

    async def _batch(self, stmts: Sequence[Stmt]) -> list[Any]:
        try:
            return await self._raw_batch(stmts)
        except _DB_ERRORS as exc:
            raise self._failed(exc) from exc

    async def _execute(self, sql: str, args: list[Any]) -> Any:
        try:
            return await self._request(lambda c: c.execute(sql, args))
        except _DB_ERRORS as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: BaseException) -> Unavailable:
        return _unavailable(exc, self._what, self.timeout)

    # -- writes --------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        first: bool = False,
        expected: int | None = None,
    ) -> AppendResult:
        self._check_open()
        events = list(events)
        if len({e.id for e in events}) != len(events):
            raise Unprocessable("duplicate event id in batch")
        # The store's task, so that a caller going away stops neither the commit nor
        # its hand-over to the listener.
        task = asyncio.create_task(self._append(stream_id, events, first, expected))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[AppendResult]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here when the caller went away

    async def _append(self, stream_id: str, events: list[NewEvent], first: bool,
                      expected: int | None) -> AppendResult:  # fmt: skip
        ids = [e.id for e in events]
        stored: dict[str, Event] = {}
        members: dict[str, int] = {}
        if not ids:  # nothing to write; answer with the members, as the embedded store does
            stored, members = await self._stored(stream_id, ids)
        # Each failed attempt finds one more stored id (at least), so this ends.
        for _ in range(len(events) + 2):
            fresh = [e for e in events if e.id not in stored]
            if not fresh:
                return AppendResult(stream_id, [stored[i] for i in ids], [], members)
            ends = any(members_ended(e) for e in fresh)
            stmts, rows_at = _append_batch(stream_id, fresh, first, expected, ends=ends)
            outcome = _Outcome(stream_id, ids, dict(stored), fresh, rows_at, ends)
            write = _Write(stmts, expected is not None, outcome, sum(len(e.payload) for e in fresh))
            if len(self._queue) >= MAX_PENDING:
                raise Busy("too many writes waiting for the streams DB; retry")
            self._queue.append(write)
            self._pump()
            result, handed_on = await write.done
            if result is not None:
                if handed_on is not None:
                    await handed_on
                return result
            # Some ids are stored already: retries, or conflicts (second round trip).
            stored, members = await self._stored(stream_id, ids)
            for e in events:
                if e.id in stored:
                    check_retry(stored[e.id], e, stream_id)
        raise Busy("the streams DB kept refusing the append; retry")

    # -- group commit --------------------------------------------------------------

    def _pump(self) -> None:
        """Send what waits in the queue, as groups, while fewer than WRITES_IN_FLIGHT
        batches are in flight."""
        queue = self._queue
        while queue and self._sending < WRITES_IN_FLIGHT:
            if queue[0].done.done():  # its append was cancelled (by close) while waiting
                queue.popleft()
                continue
            group = [queue.popleft()]
            statements, size = len(group[0].stmts), group[0].size
            while queue and len(group) < GROUP_MAX:
                nxt = queue[0]
                if nxt.done.done():
                    queue.popleft()
                    continue
                if (statements + len(nxt.stmts) > GROUP_MAX_STATEMENTS
                        or size + nxt.size > GROUP_MAX_BYTES):  # fmt: skip
                    break
                group.append(queue.popleft())
                statements += len(nxt.stmts)
                size += nxt.size
            self._sending += 1
            ticket = self._order.begin()  # in sending order
            task = asyncio.create_task(self._send(group, ticket))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _send(self, group: list[_Write], ticket: int) -> None:
        """Run one group's batch; answer each of its appends, in commit order."""
        outcomes: list[AppendResult | BaseException | None] = []
        try:
            outcomes = await self._run_group(group)
        except asyncio.CancelledError:  # by close(); the appends are told below
            pass
        except Exception as exc:  # the store closed meanwhile, or a defect
            if not isinstance(exc, Unavailable):
                log.exception("an append batch failed")
            outcomes = [exc] * len(group)
        finally:
            self._sending -= 1
            committed = [o for o in outcomes if isinstance(o, AppendResult)]
            handed_on = iter(self._order.end(ticket, committed))
            for w, o in zip(group, outcomes, strict=False):
                handed = next(handed_on) if isinstance(o, AppendResult) else None
                if w.done.done():
                    continue
                if isinstance(o, BaseException):
                    w.done.set_exception(o)
                else:
                    w.done.set_result((o, handed))
            for w in group:  # never left waiting, whatever happened
                if not w.done.done():
                    w.done.set_exception(Unavailable("the streams store is closed"))
            self._pump()

    async def _run_group(self, group: list[_Write]) -> list[AppendResult | BaseException | None]:
        """Each append's outcome: its result, None (an id is stored already), or the error
        to raise. A group whose batch a check of one append rolled back runs again in
        halves, in order."""
        if len(group) == 1:
            return [await self._run_alone(group[0])]
        try:
            results = await self._raw_batch([s for w in group for s in w.stmts])
        except libsql_client.LibsqlError as exc:
            if not _refused(exc):
                return [self._failed(exc) for _ in group]
            half = len(group) // 2
            return await self._run_group(group[:half]) + await self._run_group(group[half:])
        except _DB_ERRORS as exc:
            return [self._failed(exc) for _ in group]
        outcomes: list[AppendResult | BaseException | None] = []
        at = 0
        for w in group:
            outcomes.append(w.outcome.result(results[at:at + len(w.stmts)]))
            at += len(w.stmts)
        return outcomes

    async def _run_alone(self, w: _Write) -> AppendResult | BaseException | None:
        try:
            results = await self._try_append(w.stmts, w.expecting)
        except Exception as exc:  # handed to the append that waits for it
            return exc
        return None if results is None else w.outcome.result(results)

    async def _try_append(self, stmts: list[Stmt], expecting: bool) -> list[Any] | None:
        """Run one append's batch; None when an event id is stored already."""
        try:
            return await self._raw_batch(stmts)
        except libsql_client.LibsqlError as exc:
            message = str(exc.explanation)
            if ARCHIVED in message:
                raise StreamArchived("this stream has been archived", code="archived") from None
            if NOT_FIRST in message and expecting:
                raise StreamChanged() from None
            if NOT_FIRST in message:
                raise NotFirstEvent(
                    "ORDER_CREATE must be the first event of a new stream"
                ) from None
            if DUPLICATE_ID in message:
                return None
            raise self._failed(exc) from exc
        except _DB_ERRORS as exc:
            raise self._failed(exc) from exc

    async def _stored(
        self, stream_id: str, ids: list[str]
    ) -> tuple[dict[str, Event], dict[str, int]]:
        """The stored events among ``ids``, and the stream's members, in one round trip."""
        events_rs, members_rs = await self._batch(
            [
                (select_stored(len(ids)), [stream_id, *ids]),
                (SELECT_MEMBERS, [stream_id]),
            ]
        )
        stored = {ev.id: ev for ev in map(row_to_event, events_rs.rows)}
        return stored, _members(members_rs)

    async def delete_stream(self, stream_id: str) -> int:
        self._check_open()
        deleted, _ = await self._batch(
            [
                ("DELETE FROM events WHERE streamId = ?", [stream_id]),
                ("UPDATE streams SET archived = 1 WHERE streamId = ?", [stream_id]),
            ]
        )
        return int(deleted.rows_affected)

    # -- reads ---------------------------------------------------------------------

    async def read_stream(self, stream_id: str, since: int, limit: int) -> list[Event]:
        self._check_open()
        rs = await self._execute(SELECT_STREAM, [stream_id, since, limit])
        return [row_to_event(r) for r in rs.rows]

    async def read_inbox(self, tenant: str | None, since: int, limit: int) -> list[Event]:
        self._check_open()
        if tenant is None:
            rs = await self._execute(SELECT_ALL, [since, limit])
        else:
            rs = await self._execute(SELECT_INBOX, [tenant, since, limit])
        return [row_to_event(r) for r in rs.rows]

    async def stream_info(self, stream_id: str) -> StreamInfo | None:
        self._check_open()
        # One transaction, so last_seq and members are from the same moment.
        row_rs, members_rs = await self._batch(
            [(SELECT_STREAM_ROW, [stream_id]), (SELECT_MEMBERS, [stream_id])]
        )
        if not row_rs.rows:
            return None
        row = row_rs.rows[0]
        return StreamInfo(stream_id, int(row[0]), bool(row[1]), _members(members_rs))

    async def stream_opcodes(self, stream_id: str, among: Sequence[int]) -> dict[int, int]:
        self._check_open()
        rs = await self._execute(select_opcodes(among), [stream_id, *among])
        return {int(r[0]): int(r[1]) for r in rs.rows}

    async def find_streams(
        self,
        *,
        having: int | None = None,
        lacking: int | Sequence[int] | None = None,
        member: str | None = None,
        limit: int = 1000,
    ) -> list[str]:
        self._check_open()
        sql, args = find_streams_sql(having, lacking, member, limit)
        rs = await self._execute(sql, args)
        return [str(r[0]) for r in rs.rows]

    async def streams_of_members(
        self,
        members: Sequence[str],
        *,
        having: int | None = None,
        lacking: int | Sequence[int] | None = None,
        limit: int = 1000,
    ) -> dict[str, list[str]]:
        self._check_open()
        sql, args = member_streams_sql(having, lacking, members)
        rs = await self._execute(sql, args)
        return member_streams(rs.rows, members, limit)

    async def ping(self) -> None:
        self._check_open()
        await self._execute("SELECT 1", [])


# -- group commit -----------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    """What one append makes of its statements' results."""

    stream_id: str
    ids: list[str]  # the append's event ids, in order
    stored: dict[str, Event]  # those stored before (retries)
    fresh: list[NewEvent]  # those this batch inserts
    rows_at: list[int]  # where each fresh event's INSERT ... RETURNING is
    ends: bool  # some event ends a membership (SELECT_ENDED is among the statements)

    def result(self, results: list[Any]) -> AppendResult | BaseException:
        try:
            new = [
                _committed(self.stream_id, e, results[at])
                for e, at in zip(self.fresh, self.rows_at, strict=True)
            ]
        except Unavailable as exc:
            return exc
        committed = {ev.id: ev for ev in new}
        return AppendResult(
            self.stream_id,
            [self.stored.get(i) or committed[i] for i in self.ids],
            new,
            _members(results[-1]),
            tuple((str(r[0]), int(r[1]), int(r[2])) for r in results[-2].rows)
            if self.ends
            else (),
        )


@dataclass(slots=True)
class _Write:
    """One append waiting in the queue, or in flight in a group."""

    stmts: list[Stmt]
    expecting: bool  # CHECK_FIRST means "not the expected seq" (StreamChanged)
    outcome: _Outcome
    size: int  # payload bytes
    done: asyncio.Future[tuple[AppendResult | None, asyncio.Future[None] | None]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _refused(exc: libsql_client.LibsqlError) -> bool:
    """True when a check of an append rolled its batch back (not a database failure)."""
    message = str(exc.explanation)
    return any(text in message for text in (ARCHIVED, NOT_FIRST, DUPLICATE_ID))


# -- commit order ---------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    result: AppendResult
    after: int  # handed on once every ticket up to this one has ended
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def pos(self) -> int:
        return self.result.new[0].pos


class _CommitOrder:
    """Hands committed appends on in commit (``pos``) order, whatever order answers take.

    Each append batch holds a ticket (taken in sending order) while it is in flight.
    An append that committed before answer A was in flight when A arrived, so A is
    held until every ticket up to the newest one in flight at that moment has ended.
    Once some held answer may go, every held answer with a smaller ``pos`` has arrived
    too: all of them go, sorted by ``pos``.
    """

    def __init__(self, publish: Callable[[AppendResult], None]) -> None:
        self._publish = publish
        self._next = 0
        self._in_flight: set[int] = set()
        self._held: list[_Held] = []

    def begin(self) -> int:
        ticket = self._next
        self._next += 1
        self._in_flight.add(ticket)
        return ticket

    def end(self, ticket: int, results: Sequence[AppendResult]) -> list[asyncio.Future[None]]:
        """The batch of ``ticket`` was answered with ``results`` (the appends it committed);
        returns, for each, a future done once it has been handed on."""
        self._in_flight.discard(ticket)
        after = max(self._in_flight, default=-1)
        futures: list[asyncio.Future[None]] = []
        for result in results:
            held = _Held(result, after)
            futures.append(held.done)
            if result.new:
                self._held.append(held)
            else:
                held.done.set_result(None)
        self._flush()
        return futures

    def _flush(self) -> None:
        if not self._held:
            return
        oldest = min(self._in_flight, default=self._next)
        ready = [h.pos for h in self._held if h.after < oldest]
        if not ready:
            return
        cut = max(ready)
        self._held.sort(key=lambda h: h.pos)
        go = [h for h in self._held if h.pos <= cut]
        self._held = [h for h in self._held if h.pos > cut]
        for h in go:
            self._publish(h.result)
            if not h.done.done():
                h.done.set_result(None)


# -- helpers ------------------------------------------------------------------------


def _append_batch(
    stream_id: str, fresh: list[NewEvent], first: bool, expected: int | None = None,
    *, ends: bool,
) -> tuple[list[Stmt], list[int]]:
    """The statements of one append (see the module docstring), and where each
    event's ``INSERT ... RETURNING`` is among them."""
    n = len(fresh)
    stmts: list[Stmt] = [(BUMP_SEQ, [stream_id, n])]
    rows_at: list[int] = []
    for i, e in enumerate(fresh, 1):
        rows_at.append(len(stmts))
        stmts.append(
            (
                INSERT_EVENT,
                [e.id, stream_id, e.opcode, e.node_id, e.point_id, e.delta, e.payload, e.ts,
                 n - i, stream_id],
            )
        )  # fmt: skip
        stmts.extend((END_MEMBER, [stream_id, e.id, stream_id, tenant])
                     for tenant in members_ended(e))  # fmt: skip
        stmts.extend((INSERT_MEMBER, [tenant, stream_id, e.id, tenant])
                     for tenant in members_named(e))  # fmt: skip
    stmts.append((CHECK_OPEN, [stream_id]))
    if first:
        stmts.append((CHECK_FIRST, [stream_id, n]))
    elif expected is not None:
        stmts.append((CHECK_FIRST, [stream_id, expected + n]))
    if ends:  # some event ends a membership (else none was ended)
        stmts.append((SELECT_ENDED, [stream_id, stream_id, n]))
    stmts.append((SELECT_MEMBERS, [stream_id]))
    return stmts, rows_at


def _committed(stream_id: str, e: NewEvent, inserted: Any) -> Event:
    """The committed event, from its ``INSERT ... RETURNING seq, pos`` result."""
    rows = inserted.rows
    if len(rows) != 1:  # committed, but the answer is not what was asked for
        raise Unavailable(f"the streams DB did not return seq and pos of event {e.id!r}")
    seq, pos = int(rows[0][0]), int(rows[0][1])
    return Event(
        e.id, stream_id, seq, pos, e.opcode, e.node_id, e.point_id, e.delta, e.payload, e.ts
    )


def _members(rs: Any) -> dict[str, int]:
    """``SELECT_MEMBERS`` rows -> tenant -> the ``pos`` it joined at."""
    return {str(r[0]): int(r[1]) for r in rs.rows}


async def _close_client(client: Any) -> None:
    """Close a libsql-client client; one whose connection already broke is fine."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await client.close()
    except _DB_ERRORS:
        pass
