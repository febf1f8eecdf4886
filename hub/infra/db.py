"""A small SQL database handle for the tenant and public DBs, embedded or remote.

:class:`Database` runs single statements and atomic batches, the two operations the
seed's steps use, and counts every row inserted or updated into
``hub_db_writes_total{target=...}``. ``file:`` URLs open one SQLite connection (WAL,
busy timeout) whose statements run on a small shared thread pool, one at a time per
database, so the event loop never waits on disk; remote libSQL URLs go through
libsql-client (the ``turso`` extra), where a batch is one round trip.

A remote tenant DB on a server that creates databases on demand (sqld's namespaces,
:mod:`hub.infra.namespaces`) is created by the first statement that would change a row; until
then a statement that changes nothing (a read, an UPDATE that finds no row) answers what an
empty database answers, computed on an empty in-memory one (:func:`empty_run`), and creates
nothing.

A batch is all or nothing. A statement can make its batch fail on purpose with
:func:`guard` (``SELECT CASE WHEN changes() = 1 THEN 1 ELSE json('...') END``), which is
how a conditional UPDATE ("only if enough stock") aborts the whole batch on both kinds.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hub.errors import Unavailable
from hub.infra.hrana import TokenRefused, check_token
from hub.infra.store.file import connect, path_from_url

__all__ = [
    "Database",
    "DatabaseError",
    "FileDatabase",
    "GuardFailed",
    "Namespace",
    "RemoteDatabase",
    "Result",
    "Stmt",
    "WriteCounter",
    "WriteHealth",
    "empty_run",
    "execute_each",
    "guard",
    "open_database",
]

T = TypeVar("T")
Stmt = tuple[str, Sequence[Any]]
WriteCounter = Callable[[int], None]

_WRITE = re.compile(r"^\s*(INSERT|UPDATE|REPLACE)\b", re.IGNORECASE)
_GUARD_TAG = "hub-guard:"
TOKEN_CHECK_S = 5.0  # the Hrana hello of a remote database's first connection


# A schema statement that adds a column to a table made before it: run on a database
# that has the column already, it fails with "duplicate column name", which is no error.
ADD_COLUMN = re.compile(r"^\s*ALTER TABLE \w+ ADD COLUMN", re.IGNORECASE)


def column_there(ddl: str, error: str) -> bool:
    """Whether ``ddl`` failed only because its column is there already."""
    return bool(ADD_COLUMN.match(ddl)) and "duplicate column name" in error


def guard(name: str, rows: int = 1) -> Stmt:
    """A statement that aborts its batch unless the previous one changed ``rows`` rows."""
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise ValueError(name)
    return (f"SELECT CASE WHEN changes() = {int(rows)} THEN 1 ELSE json('{_GUARD_TAG}{name}') END",
            ())  # fmt: skip


class WriteHealth:
    """Whether a database has been failing: the last failure not yet followed by a success
    and younger than :attr:`window` seconds. A failure that no request follows expires, so
    a hub taken out of rotation for it is tried again (half-open), never left out for good.
    """

    window = 10.0

    def __init__(self) -> None:
        self._failed_at: float | None = None
        self.error = ""  # the last failure, for the log (/healthz shows only "failing")

    def failed(self, error: str) -> None:
        self._failed_at = time.monotonic()
        self.error = error

    def succeeded(self) -> None:
        self._failed_at = None

    def state(self) -> str:
        failed = self._failed_at
        if failed is None or time.monotonic() - failed > self.window:
            return "ok"
        return "failing"


class DatabaseError(Unavailable):
    """The database failed or refused a statement (503 unless handled)."""


class GuardFailed(DatabaseError):
    """A :func:`guard` aborted the batch; ``name`` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(f"condition {name!r} not met", code="condition_failed")
        self.name = name


def _guard_name(message: str, stmts: Sequence[Stmt]) -> str | None:
    if "malformed JSON" not in message:
        return None
    for sql, _ in stmts:
        m = re.search(rf"json\('{_GUARD_TAG}([a-z0-9_-]+)'\)", sql)
        if m:
            return m.group(1)  # SQLite does not say which guard; batches hold one kind
    return None


@dataclass(frozen=True, slots=True)
class Result:
    rows: list[tuple[Any, ...]]
    rowcount: int


class Namespace(Protocol):
    """A remote database that exists once created (a tenant's namespace on sqld)."""

    async def exists(self) -> bool:
        """Whether it exists (asking creates nothing)."""

    async def create(self) -> None:
        """Create it; one that exists already is no error."""


class Database(Protocol):
    async def execute(self, sql: str, args: Sequence[Any] = (), *, durable: bool = True) -> Result:
        """Run one statement (autocommit). ``durable=False``: a statement whose change may be
        lost to a power cut (not to a crash of the process): an embedded database commits it
        without waiting for its fsync (the next durable commit carries it to the disk); a
        remote one as the server commits everything."""

    async def batch(self, stmts: Sequence[Stmt]) -> list[Result]:
        """Run statements in one transaction; all or nothing."""

    async def close(self) -> None:
        """Release the connection. Idempotent."""


def empty_run(schema: Sequence[str], stmts: Sequence[Stmt]) -> tuple[list[Result], bool]:
    """What ``stmts`` answer (as a batch) on an empty database made by ``schema``, and
    whether they changed it; the database is in memory and gone afterwards. Guards and
    errors are raised as a real database raises them."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for ddl in schema:
            try:
                conn.execute(ddl)
            except sqlite3.OperationalError as exc:
                if not column_there(ddl, str(exc)):
                    raise DatabaseError(f"schema: {exc}") from None
        before = conn.total_changes
        out = []
        try:
            conn.execute("BEGIN")
            for sql, args in stmts:
                cur = conn.execute(sql, tuple(args))
                rows = cur.fetchall()
                out.append(Result(rows, cur.rowcount if cur.rowcount > 0 else 0))
        except sqlite3.Error as exc:
            name = _guard_name(str(exc), stmts)
            if name is not None:
                raise GuardFailed(name) from None
            raise DatabaseError(f"remote database: {exc}") from None
        return out, conn.total_changes > before
    finally:
        conn.close()


def _count_writes(stmts: Sequence[Stmt], results: Sequence[Result]) -> int:
    return sum(r.rowcount for (sql, _), r in zip(stmts, results, strict=True) if _WRITE.match(sql))


class FileDatabase:
    """An embedded SQLite database; statements run on ``pool``, one at a time."""

    def __init__(self, url: str, pool: ThreadPoolExecutor, *, schema: Sequence[str],
                 on_write: WriteCounter | None = None,
                 health: WriteHealth | None = None) -> None:  # fmt: skip
        self.path = path_from_url(url)
        self._health = health
        self._pool = pool
        self._schema = schema
        self._on_write = on_write
        self._conn: sqlite3.Connection | None = None
        self._durable = True  # the connection's synchronous setting: FULL (True) or NORMAL
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self.path)
            try:
                conn.execute("BEGIN IMMEDIATE")
                for ddl in self._schema:
                    try:
                        conn.execute(ddl)
                    except sqlite3.OperationalError as exc:
                        if not column_there(ddl, str(exc)):
                            raise
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        """Forget a connection in an unknown state (the caller holds the lock)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._durable = True

    def _run(self, stmts: Sequence[Stmt], atomic: bool, durable: bool = True) -> list[Result]:
        with self._lock:
            try:
                # Opening can fail too (a full disk, a missing directory): same answer.
                conn = self._connection()
            except (sqlite3.Error, OSError) as exc:
                raise DatabaseError(f"{self.path.name}: {exc}") from None
            try:
                if durable is not self._durable:
                    # WAL with synchronous=NORMAL commits without an fsync; a later FULL
                    # commit's fsync of the log carries this one too.
                    conn.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
                    self._durable = durable
                if atomic:
                    conn.execute("BEGIN IMMEDIATE")
                out = []
                for sql, args in stmts:
                    cur = conn.execute(sql, tuple(args))
                    rows = cur.fetchall()
                    out.append(Result(rows, cur.rowcount if cur.rowcount > 0 else 0))
                if atomic:
                    conn.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                if atomic and conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # the disk may refuse even that: start afresh
                        self._drop()
                name = _guard_name(str(exc), stmts)
                if name is not None:
                    raise GuardFailed(name) from None
                raise DatabaseError(f"{self.path.name}: {exc}") from None

    async def _submit(self, stmts: Sequence[Stmt], atomic: bool,
                      durable: bool = True) -> list[Result]:  # fmt: skip
        loop = asyncio.get_running_loop()
        results = await _watched(
            self._health, loop.run_in_executor(self._pool, self._run, stmts, atomic, durable)
        )
        self._counted(stmts, results)
        return results

    def _counted(self, stmts: Sequence[Stmt], results: Sequence[Result]) -> None:
        if self._on_write is not None:
            n = _count_writes(stmts, results)
            if n:
                self._on_write(n)

    def _run_one(self, stmt: Stmt, durable: bool) -> Result | Exception:
        """:meth:`_run` of one statement in a worker thread, its error returned."""
        try:
            return self._run([stmt], False, durable)[0]
        except Exception as exc:
            return exc

    def _settle(self, stmt: Stmt, outcome: Result | Exception) -> Exception | None:
        """Back on the loop: count the write, tell the health; the error, if any."""
        if isinstance(outcome, Exception):
            if self._health is not None and isinstance(outcome, DatabaseError) \
                    and not isinstance(outcome, GuardFailed):  # fmt: skip
                self._health.failed(str(outcome))
            return outcome
        if self._health is not None:
            self._health.succeeded()
        self._counted([stmt], [outcome])
        return None

    async def execute(self, sql: str, args: Sequence[Any] = (), *, durable: bool = True) -> Result:
        return (await self._submit([(sql, args)], False, durable))[0]

    async def batch(self, stmts: Sequence[Stmt]) -> list[Result]:
        return await self._submit(stmts, True)

    def close_sync(self) -> None:
        """Close the connection; a later statement opens it again."""
        with self._lock:
            self._drop()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.close_sync)


class RemoteDatabase:
    """A remote libSQL database through libsql-client; a batch is one round trip."""

    def __init__(self, url: str, *, auth_token: str | None, schema: Sequence[str],
                 on_write: WriteCounter | None = None, health: WriteHealth | None = None,
                 namespace: Namespace | None = None) -> None:  # fmt: skip
        import importlib.util

        if importlib.util.find_spec("libsql_client") is None:  # pragma: no cover
            raise RuntimeError("remote libSQL URLs need the 'turso' extra")
        self._url = url
        self._health = health
        self._auth_token = auth_token
        self._client: Any = None
        self._schema = schema
        self._on_write = on_write
        self._ready: asyncio.Lock | None = None
        self._created = False
        self._namespace = namespace  # None: the database exists (or is not ours to make)

    async def _ensure_schema(self) -> None:
        if self._created:
            return
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if not self._created:
                added = [ddl for ddl in self._schema if ADD_COLUMN.match(ddl)]
                await self._call([(ddl, ()) for ddl in self._schema if ddl not in added])
                for ddl in added:  # each alone: the one that finds its column is no error
                    try:
                        await self._call([(ddl, ())])
                    except DatabaseError as exc:
                        if not column_there(ddl, str(exc)):
                            raise
                self._created = True

    async def _call(self, stmts: Sequence[Stmt]) -> list[Result]:
        import libsql_client

        if self._client is None:
            try:
                await check_token(self._url, self._auth_token, timeout=TOKEN_CHECK_S)
            except TokenRefused as exc:
                raise DatabaseError(
                    f"remote database refused the auth token (HUB_DB_AUTH_TOKEN): {exc}"
                ) from None
            self._client = libsql_client.create_client(self._url, auth_token=self._auth_token)
        try:
            if len(stmts) == 1:
                rs = [await self._client.execute(stmts[0][0], list(stmts[0][1]))]
            else:
                rs = await self._client.batch([libsql_client.Statement(s, list(a))
                                               for s, a in stmts])  # fmt: skip
        except libsql_client.LibsqlError as exc:
            name = _guard_name(str(exc), stmts)
            if name is not None:
                raise GuardFailed(name) from None
            if str(exc.code).startswith("AUTH") or "401" in str(exc.explanation):
                raise DatabaseError(
                    "remote database refused the auth token (HUB_DB_AUTH_TOKEN)"
                ) from None
            raise DatabaseError(f"remote database: {exc}") from None
        except (TimeoutError, OSError) as exc:
            raise DatabaseError(f"remote database unreachable: {exc}") from None
        return [Result([tuple(r) for r in res.rows], int(res.rows_affected or 0)) for res in rs]

    async def execute(self, sql: str, args: Sequence[Any] = (), *, durable: bool = True) -> Result:
        return (await self.batch([(sql, args)]))[0]  # the server decides its durability

    async def _first_use(self, stmts: Sequence[Stmt]) -> list[Result] | None:
        """Before the first statement of a database made on demand: None once it exists,
        its schema applied (created now if ``stmts`` change it); else, when it does not
        exist, what an empty database answers ``stmts``.

        The database itself is tried first, so a tenant that exists costs no admin call
        (after a restart, every tenant's first statement would otherwise make one). When
        that fails (sqld does not say why in a way libsql-client passes on: a WebSocket
        closed with 1011, an HTTP 404), statements that change an empty database create
        the namespace (one that is there is no error), and others ask whether it exists.
        """
        namespace = self._namespace
        assert namespace is not None
        try:
            await self._ensure_schema()
        except DatabaseError as exc:
            refused: DatabaseError | None = None
            try:
                empty, changed = empty_run(self._schema, stmts)
            except DatabaseError as answer:  # a guard, say: the answer if there is no DB
                empty, changed, refused = [], False, answer
            try:
                if changed:
                    await namespace.create()
                missing = not changed and not await namespace.exists()
            except DatabaseError as admin:
                raise DatabaseError(f"{exc.message}; {admin.message}") from None
            if missing:  # nothing created: a read never makes a database
                if refused is not None:
                    raise refused from None
                return empty
            # There now: created here or by another instance since the first try, or there
            # all along and failing (then it fails again, and that error stands).
            await self._ensure_schema()
        self._namespace = None
        return None

    async def batch(self, stmts: Sequence[Stmt]) -> list[Result]:
        if self._namespace is not None:
            empty = await _watched(self._health, self._first_use(stmts))
            if empty is not None:
                return empty
        else:
            await _watched(self._health, self._ensure_schema())
        results = await _watched(self._health, self._call(stmts))
        if self._on_write is not None:
            n = _count_writes(stmts, results)
            if n:
                self._on_write(n)
        return results

    async def close(self) -> None:
        """Close the client; a later statement opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


async def execute_each(pool: ThreadPoolExecutor, work: Sequence[tuple[Database, Stmt]], *,
                       durable: bool = True) -> list[BaseException | None]:  # fmt: skip
    """Run one statement in each of several databases, each its own transaction, and say
    how each went (None, or its error), in order.

    The embedded ones run in one job on ``pool``, one after the other: one hop to a
    thread for all of them, where :meth:`Database.execute` makes one each (the GPS writes
    a position into each driver's own DB once a second). The remote ones run concurrently.
    """
    outcomes: list[BaseException | None] = [None] * len(work)
    files = [(i, db, stmt) for i, (db, stmt) in enumerate(work) if isinstance(db, FileDatabase)]
    others = [(i, db, stmt) for i, (db, stmt) in enumerate(work)
              if not isinstance(db, FileDatabase)]  # fmt: skip

    def run_files() -> list[Result | Exception]:
        return [db._run_one(stmt, durable) for _, db, stmt in files]

    async def run_others() -> list[Any]:
        runs = (db.execute(stmt[0], stmt[1], durable=durable) for _, db, stmt in others)
        return await asyncio.gather(*runs, return_exceptions=True)

    loop = asyncio.get_running_loop()
    ran, remote = await asyncio.gather(
        loop.run_in_executor(pool, run_files) if files else asyncio.sleep(0, []),
        run_others(),
    )
    for (i, db, stmt), outcome in zip(files, ran, strict=True):
        outcomes[i] = db._settle(stmt, outcome)
    for (i, _, _), result in zip(others, remote, strict=True):
        outcomes[i] = result if isinstance(result, BaseException) else None
    return outcomes


async def _watched(health: WriteHealth | None, work: Awaitable[T]) -> T:
    """``work``'s result, telling ``health`` whether the database failed (a guard that
    refused a batch is an answer, not a failure)."""
    if health is None:
        return await work
    try:
        result = await work
    except GuardFailed:
        health.succeeded()
        raise
    except DatabaseError as exc:
        health.failed(str(exc))
        raise
    health.succeeded()
    return result


def open_database(url: str, *, pool: ThreadPoolExecutor, schema: Sequence[str],
                  auth_token: str | None = None, on_write: WriteCounter | None = None,
                  health: WriteHealth | None = None,
                  namespace: Namespace | None = None) -> Database:  # fmt: skip
    """The database at ``url`` (``file:`` or a remote libSQL URL). ``namespace``: a remote
    database created on demand by its first change (see the module docstring)."""
    if url.startswith("file:"):
        return FileDatabase(url, pool, schema=schema, on_write=on_write, health=health)
    return RemoteDatabase(url, auth_token=auth_token, schema=schema, on_write=on_write,
                          health=health, namespace=namespace)  # fmt: skip
