"""What every streams store shares: the schema, the SQL, the result types and the
:class:`Store` interface."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hub.errors import Conflict, Forbidden
from hub.events import TENANT_ID_RE, Event, NewEvent, Opcode

__all__ = [
    "JOIN",
    "LEAVE",
    "MIGRATE_EVENTS",
    "MIGRATE_MEMBERS",
    "SCHEMA",
    "SELECT_EVENTS_DDL",
    "SELECT_LEFT",
    "SELECT_MEMBERS_DDL",
    "AppendResult",
    "CommitListener",
    "NotFirstEvent",
    "Store",
    "StreamArchived",
    "StreamChanged",
    "StreamInfo",
    "find_streams_sql",
    "ids_scoped",
    "member_streams",
    "member_streams_sql",
    "members_ended",
    "members_named",
    "spans_kept",
]

# Event ids are unique within their stream, not across streams (docs/protocol.md §3): a
# client-chosen id that another stream holds is no answer of that stream's, so writing one
# tells the writer nothing about streams it cannot read.
_EVENTS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        id TEXT NOT NULL,
        streamId TEXT NOT NULL,
        opcode INTEGER NOT NULL,
        nodeId TEXT,
        pointId TEXT,
        delta REAL NOT NULL DEFAULT 0,
        payload TEXT NOT NULL,
        ts TEXT NOT NULL,
        seq INTEGER NOT NULL,
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        UNIQUE (streamId, id),
        UNIQUE (streamId, seq)
    )"""
_BY_OPCODE = "CREATE INDEX IF NOT EXISTS events_by_opcode ON events (opcode, streamId)"
# One row per span of membership: from the event that made the tenant a member (a stream's
# ORDER_CREATE, a TASK_ASSIGN) until the TASK_UNASSIGN that ended it (NULL: a member now).
# A driver assigned again later has a second row; at most one row per tenant is open.
_MEMBERS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        streamId TEXT NOT NULL,
        tenant TEXT NOT NULL,
        fromSeq INTEGER NOT NULL,
        fromPos INTEGER NOT NULL,
        untilSeq INTEGER,
        untilPos INTEGER,
        PRIMARY KEY (streamId, tenant, fromSeq)
    ) WITHOUT ROWID"""
_BY_TENANT = "CREATE INDEX IF NOT EXISTS members_by_tenant ON members (tenant, streamId)"

SCHEMA: tuple[str, ...] = (
    _EVENTS_TABLE.format(name="events"),
    """CREATE TABLE IF NOT EXISTS streams (
        streamId TEXT PRIMARY KEY,
        lastSeq INTEGER NOT NULL,
        archived INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    _MEMBERS_TABLE.format(name="members"),
    _BY_TENANT,
    _BY_OPCODE,
)

# A streams DB made before ids were scoped to their stream has ``id TEXT NOT NULL UNIQUE``.
# SQLite cannot drop that constraint, so the table is rebuilt in one transaction (run after
# SCHEMA): same rows, same ``pos``, and the AUTOINCREMENT counter carried over so that a
# ``pos`` is never reused (not even that of an archived, deleted event).
SELECT_EVENTS_DDL = "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'"
_COLUMNS = "id, streamId, opcode, nodeId, pointId, delta, payload, ts, seq, pos"
MIGRATE_EVENTS: tuple[str, ...] = (
    _EVENTS_TABLE.format(name="events_scoped").replace(" IF NOT EXISTS", ""),
    f"INSERT INTO events_scoped ({_COLUMNS}) SELECT {_COLUMNS} FROM events",
    "DELETE FROM sqlite_sequence WHERE name = 'events_scoped'",
    "INSERT INTO sqlite_sequence (name, seq)"
    " SELECT 'events_scoped', seq FROM sqlite_sequence WHERE name = 'events'",
    "DROP TABLE events",
    "ALTER TABLE events_scoped RENAME TO events",  # renames its sqlite_sequence row too
    _BY_OPCODE,
)


# A streams DB made before memberships could end has one ``members`` row per (stream,
# tenant) and no ``untilSeq``: rebuilt the same way, every row an open span.
SELECT_MEMBERS_DDL = "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'members'"
MIGRATE_MEMBERS: tuple[str, ...] = (
    _MEMBERS_TABLE.format(name="members_spans").replace(" IF NOT EXISTS", ""),
    "INSERT INTO members_spans (streamId, tenant, fromSeq, fromPos)"
    " SELECT streamId, tenant, fromSeq, fromPos FROM members",
    "DROP TABLE members",
    "ALTER TABLE members_spans RENAME TO members",
    _BY_TENANT,
)


def spans_kept(members_ddl: str | None) -> bool:
    """Whether the ``members`` table's DDL (None: no table) keeps spans of membership."""
    return members_ddl is None or "untilSeq" in members_ddl


def ids_scoped(events_ddl: str | None) -> bool:
    """Whether the ``events`` table's DDL (None: no table) scopes ids to their stream."""
    return events_ddl is None or "UNIQUE(streamId,id)" in "".join(events_ddl.split())


EVENT_COLUMNS = "id, streamId, seq, pos, opcode, nodeId, pointId, delta, payload, ts"

SELECT_STREAM = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE streamId = ? AND seq > ? ORDER BY seq LIMIT ?"
)
SELECT_ALL = f"SELECT {EVENT_COLUMNS} FROM events WHERE pos > ? ORDER BY pos LIMIT ?"
SELECT_INBOX = (
    "SELECT e.id, e.streamId, e.seq, e.pos, e.opcode, e.nodeId, e.pointId, e.delta,"
    " e.payload, e.ts FROM members m JOIN events e"
    " ON e.streamId = m.streamId AND e.seq >= m.fromSeq"
    " AND (m.untilSeq IS NULL OR e.seq <= m.untilSeq)"
    " WHERE m.tenant = ? AND e.pos > ? ORDER BY e.pos LIMIT ?"
)
SELECT_STREAM_ROW = "SELECT lastSeq, archived FROM streams WHERE streamId = ?"
SELECT_MEMBERS = "SELECT tenant, fromPos FROM members WHERE streamId = ? AND untilSeq IS NULL"
# A tenant joins (args: stream, tenant, seq, pos, stream, tenant) unless a member already;
# leaves (args: seq, pos, stream, tenant) when a member.
JOIN = (
    "INSERT INTO members (streamId, tenant, fromSeq, fromPos) SELECT ?, ?, ?, ?"
    " WHERE NOT EXISTS (SELECT 1 FROM members WHERE streamId = ? AND tenant = ?"
    " AND untilSeq IS NULL)"
)
LEAVE = (
    "UPDATE members SET untilSeq = ?, untilPos = ? WHERE streamId = ? AND tenant = ?"
    " AND untilSeq IS NULL"
)
# The spans an append ended (args: the stream, its lastSeq before the append).
SELECT_LEFT = (
    "SELECT tenant, fromPos, untilPos FROM members WHERE streamId = ? AND untilSeq > ?"
    " ORDER BY untilPos"
)


def select_stored(count: int) -> str:
    """The stored events of one stream among ``count`` ids (args: the stream, the ids)."""
    marks = ",".join("?" * count)
    return f"SELECT {EVENT_COLUMNS} FROM events WHERE streamId = ? AND id IN ({marks})"


def select_opcodes(among: Sequence[int]) -> str:
    """Which of the opcodes ``among`` a stream holds, each with its last ``seq`` (by
    ``events_by_opcode``)."""
    marks = ",".join("?" * len(among))
    return (f"SELECT opcode, MAX(seq) FROM events WHERE streamId = ? AND opcode IN ({marks})"
            " GROUP BY opcode")  # fmt: skip


def _opcode_tests(having: int | None, lacking: int | Sequence[int] | None,
                  where: list[str], args: list[Any]) -> None:  # fmt: skip
    """Add the tests of stream ``s`` having an event of opcode ``having`` and none of
    ``lacking`` (each skipped when None) to ``where`` and ``args``."""
    if having is not None:
        where.append(
            "EXISTS (SELECT 1 FROM events e WHERE e.streamId = s.streamId AND e.opcode = ?)"
        )
        args.append(int(having))
    for opcode in (lacking,) if isinstance(lacking, int) else lacking or ():
        where.append(
            "NOT EXISTS (SELECT 1 FROM events e WHERE e.streamId = s.streamId AND e.opcode = ?)"
        )
        args.append(int(opcode))


def find_streams_sql(
    having: int | None, lacking: int | Sequence[int] | None, member: str | None, limit: int
) -> tuple[str, list[Any]]:
    """The query behind :meth:`Store.find_streams` (shared by the implementations).

    It starts from the narrowest index it has: the member's rows of ``members`` (by
    ``members_by_tenant``), else the events of opcode ``having`` (by ``events_by_opcode``;
    archived streams have no events left), and only without either from every stream.
    The GPS asks it once per driver per second, so it must not scan every open stream.
    """
    where = ["s.archived = 0"]
    args: list[Any] = []
    if member is not None:
        # CROSS JOIN: SQLite keeps the left table as the outer loop.
        source = "members m CROSS JOIN streams s ON s.streamId = m.streamId"
        where.insert(0, "m.tenant = ? AND m.untilSeq IS NULL")
        args.append(member)
    elif having is not None:
        source = "streams s"
        where.append("s.streamId IN (SELECT e.streamId FROM events e WHERE e.opcode = ?)")
        args.append(int(having))
        having = None  # tested by the IN above
    else:
        source = "streams s"
    _opcode_tests(having, lacking, where, args)
    sql = (
        f"SELECT s.streamId FROM {source} WHERE " + " AND ".join(where)
        + " ORDER BY (SELECT MIN(pos) FROM events e WHERE e.streamId = s.streamId) LIMIT ?"
    )  # fmt: skip
    args.append(int(limit))
    return sql, args


MAX_MEMBERS = 500  # members asked of at once (SQLite's bound parameters, with room)


def member_streams_sql(
    having: int | None, lacking: int | Sequence[int] | None, members: Sequence[str]
) -> tuple[str, list[Any]]:
    """The query behind :meth:`Store.streams_of_members`: :func:`find_streams_sql` for
    several members at once, each row ``(member, streamId)``, oldest first per member."""
    if not 0 < len(members) <= MAX_MEMBERS:
        raise ValueError(f"1 to {MAX_MEMBERS} members, not {len(members)}")
    where = [f"m.tenant IN ({', '.join('?' * len(members))}) AND m.untilSeq IS NULL",
             "s.archived = 0"]  # fmt: skip
    args: list[Any] = list(members)
    _opcode_tests(having, lacking, where, args)
    sql = (
        "SELECT m.tenant, s.streamId FROM members m CROSS JOIN streams s"
        " ON s.streamId = m.streamId WHERE " + " AND ".join(where)
        + " ORDER BY m.tenant, (SELECT MIN(pos) FROM events e WHERE e.streamId = s.streamId)"
    )  # fmt: skip
    return sql, args


def member_streams(rows: Iterable[Sequence[Any]], members: Sequence[str],
                   limit: int) -> dict[str, list[str]]:  # fmt: skip
    """The rows of :func:`member_streams_sql` as each member's first ``limit`` streams
    (every member a key, with ``[]`` for none)."""
    out: dict[str, list[str]] = {m: [] for m in members}
    for member, stream_id in rows:
        got = out.get(str(member))
        if got is not None and len(got) < limit and str(stream_id) not in got:
            got.append(str(stream_id))
    return out


class StreamArchived(Conflict):
    """An append to a stream that has been archived."""


class NotFirstEvent(Forbidden):
    """An append that must open its stream (a customer's ORDER_CREATE) found it non-empty."""


class StreamChanged(Conflict):
    """An append that expected the stream at a ``seq`` found other events appended since
    (the caller reads the stream again and decides anew)."""

    def __init__(self, message: str = "the stream changed meanwhile") -> None:
        super().__init__(message, code="changed")


def row_to_event(row: Sequence[Any]) -> Event:
    """Build an :class:`Event` from a row in ``EVENT_COLUMNS`` order."""
    return Event(
        id=row[0],
        stream_id=row[1],
        seq=int(row[2]),
        pos=int(row[3]),
        opcode=int(row[4]),
        node_id=row[5],
        point_id=row[6],
        delta=float(row[7]),
        payload=row[8],
        ts=row[9],
    )


def members_named(event: NewEvent | Event) -> list[str]:
    """Tenants an event makes members of its stream (docs/protocol.md §2)."""
    if event.opcode == Opcode.ORDER_CREATE:
        keys: tuple[str, ...] = ("customer", "restaurant")
    elif event.opcode == Opcode.TASK_ASSIGN:
        keys = ("driver",)
    else:
        return []
    payload = event.payload_obj
    out: list[str] = []
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and TENANT_ID_RE.match(value) and value not in out:
            out.append(value)
    return out


def members_ended(event: NewEvent | Event) -> list[str]:
    """Tenants whose membership of the stream an event ends: a TASK_UNASSIGN's driver
    (docs/protocol.md §6)."""
    if event.opcode != Opcode.TASK_UNASSIGN:
        return []
    value = event.payload_obj.get("driver")
    return [value] if isinstance(value, str) and TENANT_ID_RE.match(value) else []


def check_retry(existing: Event, new: NewEvent, stream_id: str) -> None:
    """Raise :class:`Conflict` unless ``new`` repeats ``existing`` exactly.

    ``existing`` is always of ``stream_id`` (ids are unique within a stream only: an id
    held by another stream is not looked at, so its answer cannot tell that stream exists).
    """
    if existing.stream_id != stream_id or not existing.same_content(new):
        raise Conflict(f"event {new.id!r} already exists with other content")


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the hub needs to know of a stream to authorize access to it."""

    stream_id: str
    last_seq: int
    archived: bool
    members: dict[str, int] = field(default_factory=dict)  # tenant -> pos it joined at


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The outcome of one append: the stored events, in order, and which are new."""

    stream_id: str
    events: list[Event]  # one per event asked for, in request order
    new: list[Event]  # those this call committed (empty for a pure retry)
    members: dict[str, int]  # the stream's members after the append -> joined at pos
    # (tenant, joined at pos, left at pos) of each membership the append's events ended
    left: tuple[tuple[str, int, int], ...] = ()


class CommitListener(Protocol):
    """Who hears of every commit of a :class:`Store` (the node, which fans them out)."""

    def committed(self, result: AppendResult) -> None:
        """An append committed new events. Called on the event loop, in commit order,
        before the appending caller is answered (so fan-out never depends on the caller
        still being there); must not block. An exception is logged, not raised."""


class Store(Protocol):
    """The streams DB. Every method is safe to call concurrently."""

    async def open(self, listener: CommitListener | None = None) -> None:
        """Connect and create the schema if needed; from now on tell ``listener`` of
        every append that commits new events (see :class:`CommitListener`)."""

    async def close(self) -> None:
        """Stop telling the listener, finish pending work and release every
        connection. Idempotent."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        first: bool = False,
        expected: int | None = None,
    ) -> AppendResult:
        """Commit ``events`` to the end of ``stream_id``, all or nothing.

        Answers only after the commit. Events whose ``id`` is already stored with the
        same content are returned as stored (nothing written); other content raises
        :class:`Conflict`. With ``first=True`` the new events must open the stream
        (else :class:`NotFirstEvent`); with ``expected`` the stream's last ``seq`` must
        still be ``expected`` (else :class:`StreamChanged`): a decision taken on what
        the stream held is committed only if nothing was appended since, on any instance.
        """

    async def read_stream(self, stream_id: str, since: int, limit: int) -> list[Event]:
        """Events of ``stream_id`` with ``seq > since``, in order, at most ``limit``."""

    async def read_inbox(self, tenant: str | None, since: int, limit: int) -> list[Event]:
        """Events with ``pos > since`` of the streams ``tenant`` is a member of, from
        the event that made it one until the one that ended it (a span each time it
        was a member); every stream when ``tenant`` is None."""

    async def stream_info(self, stream_id: str) -> StreamInfo | None:
        """The stream's last ``seq`` and members; None if it never existed."""

    async def stream_opcodes(self, stream_id: str, among: Sequence[int]) -> dict[int, int]:
        """Which of the opcodes ``among`` the stream's stored events have, each with the
        ``seq`` of its last one."""

    async def delete_stream(self, stream_id: str) -> int:
        """Delete a stream's events (after archiving); its ``seq`` counter stays."""

    async def find_streams(
        self,
        *,
        having: int | None = None,
        lacking: int | Sequence[int] | None = None,
        member: str | None = None,
        limit: int = 1000,
    ) -> list[str]:
        """Ids of unarchived streams with an event of opcode ``having``, none of opcode
        ``lacking`` (one opcode or several), and ``member`` among their members (each test
        skipped when None), oldest first."""

    async def streams_of_members(
        self,
        members: Sequence[str],
        *,
        having: int | None = None,
        lacking: int | Sequence[int] | None = None,
        limit: int = 1000,
    ) -> dict[str, list[str]]:
        """:meth:`find_streams` for each of ``members`` (1 to :data:`MAX_MEMBERS`) in one
        query: each member's streams, oldest first (``[]`` for none)."""

    async def ping(self) -> None:
        """Raise if the database does not answer."""
