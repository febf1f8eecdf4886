"""The remote streams store: the same log in a libSQL server (sqld, Turso).

:class:`RemoteStore` implements :class:`hub.store.Store` through libsql-client (the
``turso`` extra) for ``HUB_STREAMS_DB`` URLs ``libsql://`` and ``wss://``/``ws://``
(Hrana over a WebSocket) or ``https://``/``http://`` (Hrana over HTTP). Same schema
and same semantics as :class:`hub.store_file.FileStore`; it differs in how it
gets them, because every statement costs a network round trip:

- **One round trip per append** in the common case. The whole append is one
  ``client.batch`` (libsql-client wraps it in ``BEGIN``/``COMMIT``, and runs
  ``ROLLBACK`` if any statement fails): bump the stream's ``lastSeq`` (an upsert, so
  the transaction takes the write lock with its first statement), insert each event
  with its ``seq`` computed in SQL from that row (``INSERT ... SELECT ... RETURNING
  seq, pos``), add the memberships it confers (``INSERT OR IGNORE ... SELECT ... FROM
  events WHERE id = ?``, i.e. from the naming event's ``seq`` and ``pos``), and
  select the stream's members. The database serializes writers, so ``seq`` stays gap
  free however many hub instances append at once; no interactive transaction is
  needed, which is what makes the HTTP transport usable at all.
- **Retries are found by the database.** An event id that is already stored fails
  the batch on ``UNIQUE (id)``, and nothing is written. Only then does the store
  read the stored rows (a second round trip): other content raises
  :class:`~hub.errors.Conflict`; the same content is returned as stored; the events
  not yet stored are appended by running the batch again with just them.
- **"Must open the stream" is checked in the same batch.** With ``first=True`` the
  batch ends with ``UPDATE streams SET lastSeq = NULL WHERE streamId = ? AND lastSeq
  <> n``, which breaks the ``NOT NULL`` constraint (and so rolls the batch back)
  exactly when the stream had events before. It runs after the inserts, so a retried
  first event is recognized as a retry, not refused.

Every database or network failure is reported as :class:`~hub.errors.Unavailable`
(503, retry), and so is a request that takes longer than :data:`REQUEST_TIMEOUT_S`:
an append that timed out may have committed, which is why clients retry with the
same event ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp
import libsql_client

from hub.errors import Unavailable, Unprocessable
from hub.events import Event, NewEvent
from hub.store import (
    EVENT_COLUMNS,
    SCHEMA,
    SELECT_ALL,
    SELECT_INBOX,
    SELECT_MEMBERS,
    SELECT_STREAM,
    SELECT_STREAM_ROW,
    AppendResult,
    NotFirstEvent,
    StreamInfo,
    check_retry,
    members_named,
    row_to_event,
)

__all__ = ["REMOTE_SCHEMES", "REQUEST_TIMEOUT_S", "RemoteStore"]

# Limits (see README "Limits").
REQUEST_TIMEOUT_S = 10.0  # one request to the database, connecting included

REMOTE_SCHEMES = frozenset({"libsql", "wss", "ws", "https", "http"})

# -- the append batch --------------------------------------------------------------
# Statement 0 bumps lastSeq by n (the number of new events); event i of n (1-based)
# then takes seq = lastSeq - (n - i).

BUMP_SEQ = (
    "INSERT INTO streams (streamId, lastSeq) VALUES (?, ?)"
    " ON CONFLICT (streamId) DO UPDATE SET lastSeq = lastSeq + excluded.lastSeq"
)
INSERT_EVENT = (
    "INSERT INTO events (id, streamId, opcode, nodeId, pointId, delta, payload, ts, seq)"
    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, lastSeq - ? FROM streams WHERE streamId = ?"
    " RETURNING seq, pos"
)
INSERT_MEMBER = (
    "INSERT OR IGNORE INTO members (streamId, tenant, fromSeq, fromPos)"
    " SELECT streamId, ?, seq, pos FROM events WHERE id = ?"
)
# Fails (NOT NULL) when lastSeq was not 0 before this batch added n to it.
CHECK_FIRST = "UPDATE streams SET lastSeq = NULL WHERE streamId = ? AND lastSeq <> ?"

# How the failures of the batch read in SQLite's messages (sqld may prefix them).
DUPLICATE_ID = "UNIQUE constraint failed: events.id"
NOT_FIRST = "NOT NULL constraint failed: streams.lastSeq"

Stmt = tuple[str, list[Any]]


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _unavailable(exc: BaseException) -> Unavailable:
    """The hub's view of a database or network failure."""
    if isinstance(exc, libsql_client.LibsqlError) and (
        str(exc.code).startswith("AUTH") or "401" in str(exc.explanation)
    ):
        return Unavailable(
            f"the streams DB refused the auth token (HUB_DB_AUTH_TOKEN): {_describe(exc)}"
        )
    if isinstance(exc, TimeoutError):
        return Unavailable(f"the streams DB did not answer within {REQUEST_TIMEOUT_S:g} s")
    return Unavailable(f"the streams DB failed: {_describe(exc)}")


# What a failing request to the database raises (besides LibsqlError): connection
# refused or reset, a proxy answering something that is not Hrana, a timeout.
_DB_ERRORS: tuple[type[BaseException], ...] = (
    libsql_client.LibsqlError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    ValueError,
    KeyError,
)


class RemoteStore:
    """The streams store in a libSQL server (see the module docstring)."""

    def __init__(self, url: str, *, auth_token: str | None = None) -> None:
        scheme = url.split(":", 1)[0].lower()
        if scheme not in REMOTE_SCHEMES:
            # libsql-client's own file: mode runs sqlite3 on the event loop.
            raise ValueError(f"RemoteStore needs a libsql:, ws(s): or http(s): URL, not {url!r}")
        self.url = url
        self._auth_token = auth_token
        self._client: Any = None  # libsql_client.Client once open
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self._closed:
            raise Unavailable("the streams store is closed")
        if self._client is not None:
            return
        try:
            self._client = libsql_client.create_client(self.url, auth_token=self._auth_token)
        except libsql_client.LibsqlError as exc:  # a malformed URL
            raise ValueError(f"bad streams DB URL {self.url!r}: {exc}") from None
        try:
            await self._batch([(ddl, []) for ddl in SCHEMA])
        except BaseException:
            client, self._client = self._client, None
            await _close_client(client)
            raise

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await _close_client(client)

    # -- requests ------------------------------------------------------------------

    def _live(self) -> Any:
        if self._closed or self._client is None:
            raise Unavailable("the streams store is closed")
        return self._client

    async def _raw_batch(self, stmts: Sequence[Stmt]) -> list[Any]:
        """One transaction in one round trip; database errors raised as they are."""
        client = self._live()
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            result: list[Any] = await client.batch(list(stmts))
        return result

    async def _batch(self, stmts: Sequence[Stmt]) -> list[Any]:
        try:
            return await self._raw_batch(stmts)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def _execute(self, sql: str, args: list[Any]) -> Any:
        client = self._live()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await client.execute(sql, args)
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from exc

    # -- writes --------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], *, first: bool = False
    ) -> AppendResult:
        events = list(events)
        ids = [e.id for e in events]
        if len(set(ids)) != len(ids):
            raise Unprocessable("duplicate event id in batch")
        stored: dict[str, Event] = {}
        # Each failed attempt finds at least one more stored id, so this ends.
        for _ in range(len(events) + 2):
            fresh = [e for e in events if e.id not in stored]
            if not fresh:
                members = await self._members(stream_id)
                return AppendResult(stream_id, [stored[i] for i in ids], [], members)
            try:
                results = await self._raw_batch(_append_batch(stream_id, fresh, first))
            except libsql_client.LibsqlError as exc:
                message = str(exc.explanation)
                if NOT_FIRST in message:
                    raise NotFirstEvent(
                        "ORDER_CREATE must be the first event of a new stream"
                    ) from None
                if DUPLICATE_ID not in message:
                    raise _unavailable(exc) from exc
            except _DB_ERRORS as exc:
                raise _unavailable(exc) from exc
            else:
                committed = _committed(stream_id, fresh, results)
                members = {str(r[0]): int(r[1]) for r in results[-1].rows}
                new = [committed[e.id] for e in fresh]
                events_out = [stored.get(i) or committed[i] for i in ids]
                return AppendResult(stream_id, events_out, new, members)
            # Some ids are stored already: retries, or conflicts.
            stored = await self._stored(ids)
            for e in events:
                if e.id in stored:
                    check_retry(stored[e.id], e, stream_id)
        raise Unavailable("the streams DB kept refusing the append; retry")

    async def _stored(self, ids: list[str]) -> dict[str, Event]:
        marks = ",".join("?" * len(ids))
        rs = await self._execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE id IN ({marks})", list(ids)
        )
        return {ev.id: ev for ev in map(row_to_event, rs.rows)}

    async def _members(self, stream_id: str) -> dict[str, int]:
        rs = await self._execute(SELECT_MEMBERS, [stream_id])
        return {str(r[0]): int(r[1]) for r in rs.rows}

    async def delete_stream(self, stream_id: str) -> int:
        results = await self._batch(
            [
                ("DELETE FROM events WHERE streamId = ?", [stream_id]),
                ("UPDATE streams SET archived = 1 WHERE streamId = ?", [stream_id]),
            ]
        )
        return int(results[0].rows_affected)

    # -- reads ---------------------------------------------------------------------

    async def read_stream(self, stream_id: str, since: int, limit: int) -> list[Event]:
        rs = await self._execute(SELECT_STREAM, [stream_id, since, limit])
        return [row_to_event(r) for r in rs.rows]

    async def read_inbox(self, tenant: str | None, since: int, limit: int) -> list[Event]:
        if tenant is None:
            rs = await self._execute(SELECT_ALL, [since, limit])
        else:
            rs = await self._execute(SELECT_INBOX, [tenant, since, limit])
        return [row_to_event(r) for r in rs.rows]

    async def stream_info(self, stream_id: str) -> StreamInfo | None:
        # One transaction, so last_seq and members are from the same moment.
        row_rs, members_rs = await self._batch(
            [(SELECT_STREAM_ROW, [stream_id]), (SELECT_MEMBERS, [stream_id])]
        )
        if not row_rs.rows:
            return None
        row = row_rs.rows[0]
        members = {str(r[0]): int(r[1]) for r in members_rs.rows}
        return StreamInfo(stream_id, int(row[0]), bool(row[1]), members)

    async def ping(self) -> None:
        await self._execute("SELECT 1", [])


def _append_batch(stream_id: str, fresh: list[NewEvent], first: bool) -> list[Stmt]:
    """The statements of one append (see the module docstring)."""
    n = len(fresh)
    stmts: list[Stmt] = [(BUMP_SEQ, [stream_id, n])]
    for i, e in enumerate(fresh, 1):
        stmts.append(
            (
                INSERT_EVENT,
                [e.id, stream_id, e.opcode, e.node_id, e.point_id, e.delta, e.payload, e.ts,
                 n - i, stream_id],
            )
        )  # fmt: skip
        stmts.extend((INSERT_MEMBER, [tenant, e.id]) for tenant in members_named(e))
    if first:
        stmts.append((CHECK_FIRST, [stream_id, n]))
    stmts.append((SELECT_MEMBERS, [stream_id]))
    return stmts


def _committed(stream_id: str, fresh: list[NewEvent], results: list[Any]) -> dict[str, Event]:
    """The events of a committed append batch, from its ``RETURNING seq, pos`` rows."""
    out: dict[str, Event] = {}
    index = 1  # results[0] is BUMP_SEQ
    for e in fresh:
        rows = results[index].rows
        if len(rows) != 1:
            raise Unavailable(f"the streams DB did not return the row of event {e.id!r}")
        seq, pos = int(rows[0][0]), int(rows[0][1])
        out[e.id] = Event(
            e.id, stream_id, seq, pos, e.opcode, e.node_id, e.point_id, e.delta, e.payload, e.ts
        )
        index += 1 + len(members_named(e))
    return out


async def _close_client(client: Any) -> None:
    """Close a libsql-client client; a connection that is already broken is fine."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await client.close()
    except _DB_ERRORS:
        pass
