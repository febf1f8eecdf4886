"""Tenant databases and the public discovery DB (the seed's ``nodes`` and ``points``).

Every tenant (a customer, a restaurant, a driver) has its own database at the URL
template ``HUB_TENANT_DB`` (``{tenant}`` replaced by the tenant id, which is checked
against docs/protocol.md §2's pattern first so it never escapes the data dir). The public DB
(``HUB_PUBLIC_DB``, "Turso cloud" in the seed) lists drivers for discovery, with a
``workspaceId`` column naming the tenant each row belongs to.

On a remote server that makes databases on demand (sqld with ``--enable-namespaces``,
``HUB_TENANT_ADMIN_URL`` set: :mod:`hub.infra.namespaces`), a tenant's database is its
namespace, named by the first label of the template's host
(``ws://{tenant}.db.internal:8080``), and is created by the first statement that would
change it: ``POST /api/tenants``, ``hub seed``, a customer's first order. Until then
reading it answers as an empty database and creates nothing, so :meth:`Tenants.exists`
keeps its promise (naming a tenant that does not exist never creates it). A tenant whose
namespace would be sqld's ``default`` or one of the hub's other databases on that server
is refused (400 ``invalid_tenant_id``).

Columns beyond the seed's, each kept on the row it guards so it costs no extra write:
``points.applied`` (tenant DBs: the last orders whose stock was taken from this point,
so a retried step never deducts twice), ``points.seenAt`` (tenant DBs: when a driver's
position last arrived, written with it, so a silent driver is found on any instance and
after a restart) and ``points.claim`` (public DB: the order a driver was claimed for, so a
retried assignment finds its driver).

Open tenant DBs are kept in an LRU of ``max_open`` (``HUB_TENANT_MAX_OPEN``): every
driver's GPS lands in its own DB once a second, and closing a WAL database checkpoints
it while reopening one runs its schema again, so the cap must exceed the drivers
pinging at once. An open ``file:`` DB holds three file descriptors (the DB, its -wal
and -shm), so :class:`Tenants` raises the process's soft ``RLIMIT_NOFILE`` to the hard
limit and keeps the cap within half of it (the rest is for sockets).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.config import check_tenant_admin
from hub.errors import BadRequest
from hub.events import check_tenant_id
from hub.infra.db import Database, Stmt, WriteCounter, WriteHealth, execute_each, open_database
from hub.infra.namespaces import Namespaces, namespace_of
from hub.infra.store.file import path_from_url
from hub.metrics import Metrics

__all__ = ["PUBLIC_SCHEMA", "TENANT_SCHEMA", "Tenants", "open_cap", "raise_fd_limit"]

log = logging.getLogger("hub.tenants")

TENANT_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS nodes (
        id TEXT PRIMARY KEY,
        parentId TEXT,
        nodeType TEXT NOT NULL,
        title TEXT,
        createdAt TEXT,
        payload TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS points (
        id TEXT PRIMARY KEY,
        nodeId TEXT,
        qty REAL,
        price REAL,
        currency TEXT,
        availability TEXT,
        lat REAL,
        lng REAL,
        openNow INTEGER,
        applied TEXT,
        seenAt TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS points_by_node ON points (nodeId)",
    # Tenant DBs made before a driver's last fix time was kept.
    "ALTER TABLE points ADD COLUMN seenAt TEXT",
)

PUBLIC_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS nodes (
        id TEXT NOT NULL,
        workspaceId TEXT NOT NULL,
        parentId TEXT,
        nodeType TEXT NOT NULL,
        title TEXT,
        createdAt TEXT,
        payload TEXT,
        PRIMARY KEY (workspaceId, id)
    )""",
    """CREATE TABLE IF NOT EXISTS points (
        id TEXT NOT NULL,
        workspaceId TEXT NOT NULL,
        nodeId TEXT,
        qty REAL,
        price REAL,
        currency TEXT,
        availability TEXT,
        lat REAL,
        lng REAL,
        openNow INTEGER,
        claim TEXT,
        PRIMARY KEY (workspaceId, id)
    )""",
    "CREATE INDEX IF NOT EXISTS points_by_claim ON points (claim)",
)

DEFAULT_MAX_OPEN = 4096  # tenant databases kept open at once (least recently used closed first)
MIN_OPEN = 16  # kept open whatever the file-descriptor limit
FDS_PER_DB = 3  # an open WAL database: the file, its -wal and its -shm
FD_SHARE = 2  # tenant DBs get at most 1/FD_SHARE of the descriptors; sockets the rest
POOL_THREADS = 4


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit in force.

    Idempotent. Where the platform has no such limit (or refuses), nothing changes.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    target = hard if hard != inf else 1 << 20  # Linux's default nr_open
    if soft != inf and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # macOS caps the soft limit lower (OPEN_MAX)
            log.warning("could not raise the open-file limit from %d to %d", soft, target)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != inf else 1 << 20


def open_cap(wanted: int, fd_limit: int) -> int:
    """How many tenant DBs to keep open: ``wanted``, within ``1/FD_SHARE`` of ``fd_limit``."""
    return max(MIN_OPEN, min(wanted, fd_limit // FD_SHARE // FDS_PER_DB))


class _Collector(Collector):
    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def collect(self) -> Iterable[Metric]:
        t = self.tenants
        yield GaugeMetricFamily("hub_tenant_dbs_open", "Tenant databases open", len(t._open))
        yield GaugeMetricFamily("hub_tenant_dbs_max_open",
                                "Tenant databases kept open at most (HUB_TENANT_MAX_OPEN,"
                                " within the open-file limit)", t.max_open)  # fmt: skip
        yield CounterMetricFamily("hub_tenant_db_opens",
                                  "Tenant databases opened (again after being closed by the"
                                  " max_open cap)", t.opens)  # fmt: skip


def _max_open(wanted: int | None) -> int:
    """How many tenant DBs to keep open: ``wanted``, less if the open-file limit is too low
    (None: :data:`DEFAULT_MAX_OPEN`, lowered without a warning)."""
    if wanted is not None and wanted < 1:
        raise ValueError("max_open must be at least 1")
    fd_limit = raise_fd_limit()
    cap = open_cap(DEFAULT_MAX_OPEN if wanted is None else wanted, fd_limit)
    if wanted is not None and cap < wanted:
        log.warning("keeping %d tenant DBs open, not %d: the open-file limit is %d and each"
                    " open DB holds %d", cap, wanted, fd_limit, FDS_PER_DB)  # fmt: skip
    return cap


class Tenants:
    """Opens tenant DBs on first use (created if missing) and the public DB.

    ``admin_url`` (``HUB_TENANT_ADMIN_URL``): the admin API that creates a remote tenant
    DB's namespace on demand; ``other_dbs``: the URLs of the hub's other databases (the
    streams DB), whose namespaces no tenant may have.
    """

    def __init__(
        self,
        tenant_url: str,
        public_url: str,
        *,
        auth_token: str | None = None,
        metrics: Metrics | None = None,
        max_open: int | None = None,
        admin_url: str | None = None,
        other_dbs: Iterable[str] = (),
    ) -> None:
        if "{tenant}" not in tenant_url:
            raise ValueError("HUB_TENANT_DB must contain {tenant}")
        self._template = tenant_url
        self.namespaces: Namespaces | None = None
        if admin_url is not None:
            check_tenant_admin(admin_url, tenant_url)
            remote = [u for u in (public_url, *other_dbs) if not u.startswith("file:")]
            self.namespaces = Namespaces(admin_url, reserved=map(namespace_of, remote))
        self.max_open = _max_open(max_open)
        self.opens = 0  # tenant DBs opened, reopenings included
        self._auth_token = auth_token
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="hub-tenant-db")
        self._open: OrderedDict[str, Database] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._tenant_health = WriteHealth()  # every tenant DB together
        self._public_health = WriteHealth()
        self.public = open_database(
            public_url,
            pool=self._pool,
            schema=PUBLIC_SCHEMA,
            auth_token=auth_token,
            on_write=self._counter("public"),
            health=self._public_health,
        )
        self._closed = False
        if metrics is not None:
            metrics.registry.register(_Collector(self))

    def _counter(self, target: str) -> WriteCounter | None:
        metrics = self._metrics
        if metrics is None:
            return None
        child = metrics.db_writes.labels(target)

        def count(n: int) -> None:
            child.inc(n)

        return count

    def health(self) -> dict[str, WriteHealth]:
        """The tenant DBs' and the public DB's recent failures (for ``/healthz``)."""
        return {"tenant_dbs": self._tenant_health, "public_db": self._public_health}

    def exists(self, tenant: str) -> bool:
        """Whether ``tenant`` may have a database already (always true for remote URLs, but
        for a tenant id whose namespace is refused).

        Used before reading another tenant's DB on a client's say-so, so that naming a
        restaurant that does not exist never creates a file. A remote tenant DB made on
        demand is never created by reading it either (see the module docstring).
        """
        check_tenant_id(tenant)
        if tenant in self._open:
            return True
        url = self._template.replace("{tenant}", tenant)
        if not url.startswith("file:"):
            return self.namespaces is None or not self.namespaces.reserved(namespace_of(url))
        return path_from_url(url).exists()

    def tenant(self, tenant: str) -> Database:
        """The database of ``tenant`` (a valid tenant id, else BadRequest)."""
        check_tenant_id(tenant)
        db = self._open.get(tenant)
        if db is not None:
            self._open.move_to_end(tenant)
            return db
        url = self._template.replace("{tenant}", tenant)
        namespace = None
        if self.namespaces is not None:
            name = namespace_of(url)
            if self.namespaces.reserved(name):
                raise BadRequest(f"tenant id {tenant!r} is not available on this server (its"
                                 f" namespace {name!r} is sqld's default or another of the"
                                 " hub's databases)", code="invalid_tenant_id")  # fmt: skip
            namespace = self.namespaces.of(name)
        db = open_database(
            url,
            pool=self._pool,
            schema=TENANT_SCHEMA,
            auth_token=self._auth_token,
            on_write=self._counter("tenant"),
            health=self._tenant_health,
            namespace=namespace,
        )
        self._open[tenant] = db
        self.opens += 1
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)  # reopens by itself if still in use
            task = asyncio.get_running_loop().create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return db

    async def execute_each(self, work: Sequence[tuple[str, Stmt]], *,
                           durable: bool = True) -> list[BaseException | None]:  # fmt: skip
        """One statement in each of several tenants' DBs (:func:`~hub.infra.db.execute_each`:
        the embedded ones in one hop to a thread), each its own transaction; how each went
        (None, or its error), in order."""
        outcomes: list[BaseException | None] = [None] * len(work)
        dbs: list[tuple[int, Database, Stmt]] = []
        for i, (tenant, stmt) in enumerate(work):
            try:
                dbs.append((i, self.tenant(tenant), stmt))
            except Exception as exc:  # an id refused (remote namespaces)
                outcomes[i] = exc
        ran = await execute_each(self._pool, [(db, stmt) for _, db, stmt in dbs], durable=durable)
        for (i, _, _), outcome in zip(dbs, ran, strict=True):
            outcomes[i] = outcome
        return outcomes

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        dbs = [*self._open.values(), self.public]
        self._open.clear()
        await asyncio.gather(*(db.close() for db in dbs), *self._closing, return_exceptions=True)
        if self.namespaces is not None:
            await self.namespaces.close()
        await asyncio.to_thread(self._pool.shutdown, wait=True)
