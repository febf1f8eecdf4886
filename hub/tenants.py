"""Tenant databases and the public discovery DB (the seed's ``nodes`` and ``points``).

Every tenant (a customer, a restaurant, a driver) has its own database at the URL
template ``HUB_TENANT_DB`` (``{tenant}`` replaced by the tenant id, which is checked
against CONTRACT §2's pattern first so it never escapes the data dir). The public DB
(``HUB_PUBLIC_DB``, "Turso cloud" in the seed) lists drivers for discovery, with a
``workspaceId`` column naming the tenant each row belongs to.

Columns beyond the seed's, each kept on the row it guards so it costs no extra write:
``points.applied`` (tenant DBs: the last orders whose stock was taken from this point,
so a retried step never deducts twice) and ``points.claim`` (public DB: the order a
driver was claimed for, so a retried assignment finds its driver).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from hub.db import Database, WriteCounter, open_database
from hub.events import check_tenant_id
from hub.metrics import Metrics
from hub.store_file import path_from_url

__all__ = ["PUBLIC_SCHEMA", "TENANT_SCHEMA", "Tenants"]

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
        applied TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS points_by_node ON points (nodeId)",
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

MAX_OPEN = 256  # tenant databases kept open at once (least recently used closed first)
POOL_THREADS = 4


class Tenants:
    """Opens tenant DBs on first use (created if missing) and the public DB."""

    def __init__(
        self,
        tenant_url: str,
        public_url: str,
        *,
        auth_token: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if "{tenant}" not in tenant_url:
            raise ValueError("HUB_TENANT_DB must contain {tenant}")
        self._template = tenant_url
        self._auth_token = auth_token
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="hub-tenant-db")
        self._open: OrderedDict[str, Database] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self.public = open_database(
            public_url,
            pool=self._pool,
            schema=PUBLIC_SCHEMA,
            auth_token=auth_token,
            on_write=self._counter("public"),
        )
        self._closed = False

    def _counter(self, target: str) -> WriteCounter | None:
        metrics = self._metrics
        if metrics is None:
            return None
        child = metrics.db_writes.labels(target)

        def count(n: int) -> None:
            child.inc(n)

        return count

    def exists(self, tenant: str) -> bool:
        """Whether ``tenant`` has a database already (always true for remote URLs).

        Used before reading another tenant's DB on a client's say-so, so that naming a
        restaurant that does not exist never creates a file.
        """
        check_tenant_id(tenant)
        if tenant in self._open:
            return True
        url = self._template.replace("{tenant}", tenant)
        if not url.startswith("file:"):
            return True
        return path_from_url(url).exists()

    def tenant(self, tenant: str) -> Database:
        """The database of ``tenant`` (a valid tenant id, else BadRequest)."""
        check_tenant_id(tenant)
        db = self._open.get(tenant)
        if db is not None:
            self._open.move_to_end(tenant)
            return db
        db = open_database(
            self._template.replace("{tenant}", tenant),
            pool=self._pool,
            schema=TENANT_SCHEMA,
            auth_token=self._auth_token,
            on_write=self._counter("tenant"),
        )
        self._open[tenant] = db
        while len(self._open) > MAX_OPEN:
            _, old = self._open.popitem(last=False)  # reopens by itself if still in use
            task = asyncio.get_running_loop().create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return db

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        dbs = [*self._open.values(), self.public]
        self._open.clear()
        await asyncio.gather(*(db.close() for db in dbs), *self._closing, return_exceptions=True)
        await asyncio.to_thread(self._pool.shutdown, wait=True)
