"""Tenant databases created on demand as namespaces of a real sqld (issue 20, point 2).

One ``sqld`` runs with ``--enable-namespaces``, its admin API (``--admin-listen-addr``) and an
admin key (``--admin-auth-key``). Every database of the hub is on it: the streams DB in the
``default`` namespace (``ws://localhost:PORT``: a host without a dot), the public DB in the
namespace ``public`` (``http://public.localhost:PORT``, created here first, as an operator
would), and each tenant's DB in its own namespace (``HUB_TENANT_DB=ws://{tenant}.localhost:PORT``),
which the hub creates through ``HUB_TENANT_ADMIN_URL=http://:KEY@127.0.0.1:ADMIN`` the first
time it writes to it (``hub seed``, ``POST /api/tenants``, a customer's first order), and
never by reading it.

sqld picks a request's namespace from its ``Host`` (the first label), and libsql-client takes
the ``Host`` from the URL and resolves it with the system's resolver, which here does not
resolve ``*.localhost`` (glibc without systemd's nss-myhostname). A deployment has a wildcard
DNS record for that (docs/deploy.md); the processes here get the same answer from
:data:`RESOLVER`, a ``sitecustomize`` that makes aiohttp's resolvers (libsql-client's HTTP
and WebSocket connections) resolve ``*.localhost`` to 127.0.0.1, as RFC 6761 says and
nss-myhostname does. Everything else is as users run it: ``hub seed`` and ``hub serve``
processes, libsql-client, sqld. The assertions read sqld through its own HTTP API with the
``Host`` of the namespace, and its admin API for which namespaces exist.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.domain.seed import load_seed
from hub.errors import BadRequest
from hub.infra.db import DatabaseError, GuardFailed, RemoteDatabase, guard
from hub.infra.namespaces import Namespaces
from hub.infra.tenants import TENANT_SCHEMA, Tenants
from tests.conftest import HubProcess, auth, free_port
from tests.sqld import TIMEOUT_FACTOR, Sqld, _decode, _encode, sqld_binary
from tests.test_cli import check_lines, run_hub
from tests.test_orders import (
    ALI,
    DEST,
    KITCHEN,
    ORDER,
    RAMI,
    TARGETS,
    ZERO,
    Socket,
    check_seed_table,
    diff,
    http,
    place,
    run_seed,
    step,
    stream,
    subscribe,
    until,
    writes,
)

Json = dict[str, Any]
KEY = "admin-key-for-tests"
PLATFORM = auth("ops", "platform")
SEED_TENANTS = ("ali", "bab-hara", "rami")
DRIVER_POINT = "SELECT availability, openNow, lat, lng FROM points WHERE id = 'pt-rami-loc'"

# What makes ``*.localhost`` resolve in the hub's processes (see the module docstring).
RESOLVER = '''\
import socket

import aiohttp.resolver


def _loopback(cls):
    resolve = cls.resolve

    async def patched(self, host, port=0, family=socket.AF_INET):
        if host.lower().rstrip(".").endswith(".localhost"):
            host = "127.0.0.1"
        return await resolve(self, host, port, family)

    cls.resolve = patched


for _name in ("ThreadedResolver", "AsyncResolver"):
    if hasattr(aiohttp.resolver, _name):
        _loopback(getattr(aiohttp.resolver, _name))
'''


class NamespacedSqld(Sqld):
    """:class:`tests.sqld.Sqld` with ``--enable-namespaces``, the admin API on its own
    port and an admin key."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.admin_port = free_port()

    @property
    def ws_url(self) -> str:
        return f"ws://localhost:{self.port}"  # no dot: the default namespace

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.port}"

    def ns_url(self, transport: str, namespace: str) -> str:
        return f"{transport}://{namespace}.localhost:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://:{KEY}@127.0.0.1:{self.admin_port}"

    def _start(self, wait: float) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLD_", "LIBSQL_"))}
        env["RUST_LOG"] = "warn"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(sqld_binary()), "--no-welcome", "--disable-metrics", "--enable-namespaces",
                 "--db-path", str(self.dir / "data.sqld"),
                 "--http-listen-addr", f"127.0.0.1:{self.port}",
                 "--admin-listen-addr", f"127.0.0.1:{self.admin_port}",
                 "--admin-auth-key", KEY],
                cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + wait * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if not self._fixed_port and "in use" in self.log():
                    return False
                raise RuntimeError(f"sqld exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/health", timeout=1) as r:
                    if r.status == 200 and self._admin("GET", "default/config")[0] == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"sqld did not answer /health:\n{self.log()}")

    # -- the admin API and the namespaces' data, as an operator reads them -------------------

    def _admin(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/v1/namespaces/{path}", data, method=method,
            headers={"authorization": f"Basic {KEY}", "content-type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10 * TIMEOUT_FACTOR) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def create_namespace(self, name: str) -> None:
        status, body = self._admin("POST", f"{name}/create", {})
        assert status == 200, (status, body)

    def exists(self, name: str) -> bool:
        status, body = self._admin("GET", f"{name}/config")
        assert status in (200, 404), (status, body)
        return status == 200

    def namespaces(self) -> set[str]:
        """Every namespace on disk (sqld keeps one directory per namespace)."""
        return {p.name for p in (self.dir / "data.sqld" / "dbs").iterdir()}

    def query(self, namespace: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows of one statement in ``namespace`` (sqld's /v2/pipeline, its Host)."""
        stmt = {"sql": sql, "args": [_encode(a) for a in args]}
        body = {"requests": [{"type": "execute", "stmt": stmt}, {"type": "close"}]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v2/pipeline", json.dumps(body).encode(),
            headers={"content-type": "application/json",
                     "host": f"{namespace}.localhost:{self.port}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10 * TIMEOUT_FACTOR) as r:
            reply = json.load(r)
        result = reply["results"][0]
        if result["type"] != "ok":
            raise RuntimeError(f"sqld refused {sql!r} in {namespace}: {result['error']}")
        return [tuple(_decode(v) for v in row) for row in result["response"]["result"]["rows"]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NamespacedSqld]:
    s = NamespacedSqld(tmp_path / "sqld").start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def resolve_localhost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``*.localhost`` resolved to 127.0.0.1 by aiohttp, in this process and the hub's."""
    site = tmp_path / "resolver"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RESOLVER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p))  # fmt: skip
    import aiohttp.resolver

    for name in ("ThreadedResolver", "AsyncResolver"):
        cls = getattr(aiohttp.resolver, name, None)
        if cls is None:
            continue
        resolve = cls.resolve

        async def patched(self: Any, host: str, port: int = 0, family: int = socket.AF_INET,
                          _resolve: Any = resolve) -> Any:  # fmt: skip
            if host.lower().rstrip(".").endswith(".localhost"):
                host = "127.0.0.1"
            return await _resolve(self, host, port, family)

        monkeypatch.setattr(cls, "resolve", patched)


@pytest.fixture
def on_server(server: NamespacedSqld, resolve_localhost: None,
              monkeypatch: pytest.MonkeyPatch) -> NamespacedSqld:  # fmt: skip
    """Every database of the hub (``hub seed`` and ``hub serve``) on ``server``."""
    server.create_namespace("public")
    monkeypatch.setenv("HUB_STREAMS_DB", server.ws_url)
    monkeypatch.setenv("HUB_PUBLIC_DB", server.ns_url("http", "public"))
    monkeypatch.setenv("HUB_TENANT_DB", server.ns_url("ws", "{tenant}"))
    monkeypatch.setenv("HUB_TENANT_ADMIN_URL", server.admin_url)
    return server


# -- the hub's building blocks, in this process ---------------------------------------------


async def test_a_tenant_is_created_by_its_first_write_never_by_a_read(
    server: NamespacedSqld, resolve_localhost: None
) -> None:
    """A tenant with no namespace reads as an empty DB (reads, UPDATEs that find nothing,
    a guard that fails) and is not created; its first INSERT creates it with the schema;
    ``default`` and the other DBs' namespaces are no tenant's; ``load_seed`` creates the
    seed's three tenants, and running it again changes nothing; an instance that reads a
    tenant that exists makes no admin call."""
    server.create_namespace("public")
    tenants = Tenants(server.ns_url("ws", "{tenant}"), server.ns_url("http", "public"),
                      admin_url=server.admin_url, other_dbs=(server.ws_url,))  # fmt: skip
    try:
        assert tenants.exists("ghost")  # remote: reading it is safe, below
        ghost = tenants.tenant("ghost")
        assert (await ghost.execute("SELECT id FROM nodes")).rows == []
        assert (await ghost.execute("SELECT COUNT(*) FROM points")).rows == [(0,)]
        r = await ghost.execute("UPDATE points SET qty = 1 WHERE id = 'pt-x'")
        assert r.rowcount == 0
        with pytest.raises(GuardFailed):
            await ghost.batch([("UPDATE points SET qty = qty - 1 WHERE id = 'pt-x'", ()),
                               guard("stock")])  # fmt: skip
        assert not server.exists("ghost")

        for reserved in ("default", "public"):
            assert not tenants.exists(reserved)
            with pytest.raises(BadRequest, match="not available"):
                tenants.tenant(reserved)

        await ghost.execute("INSERT INTO nodes (id, nodeType) VALUES ('ghost', 'customer')")
        assert server.exists("ghost")
        assert server.query("ghost", "SELECT id, nodeType FROM nodes") == [("ghost", "customer")]
        columns = {row[1] for row in server.query("ghost", "PRAGMA table_info(points)")}
        assert {"applied", "seenAt"} <= columns

        await load_seed(tenants)
        assert {"ali", "bab-hara", "rami", "ghost"} <= server.namespaces()
        seeded = {t: server.query(t, "SELECT id, nodeType FROM nodes ORDER BY id")
                  for t in SEED_TENANTS}  # fmt: skip
        assert seeded == {"ali": [("ali", "customer")], "rami": [("rami", "driver")],
                          "bab-hara": [("prod-lbn", "product"), ("prod-shw", "product"),
                                       ("rest-01", "restaurant")]}  # fmt: skip
        namespaces = tenants.namespaces
        assert namespaces is not None
        calls = namespaces.calls
        await load_seed(tenants)  # known namespaces: no admin call, no row
        assert namespaces.calls == calls
        assert {t: server.query(t, "SELECT id, nodeType FROM nodes ORDER BY id")
                for t in SEED_TENANTS} == seeded  # fmt: skip
    finally:
        await tenants.close()

    # Another instance (or this one restarted) reads a tenant that exists: no admin call.
    again = Tenants(server.ns_url("ws", "{tenant}"), server.ns_url("http", "public"),
                    admin_url=server.admin_url)  # fmt: skip
    try:
        r = await again.tenant("bab-hara").execute("SELECT id FROM nodes WHERE id = 'rest-01'")
        assert r.rows == [("rest-01",)]
        assert again.namespaces is not None
        assert again.namespaces.calls == 0
    finally:
        await again.close()


async def test_two_instances_creating_the_same_namespaces_at_once_both_succeed(
    server: NamespacedSqld, resolve_localhost: None
) -> None:
    """Two hub instances (two Tenants, each its own cache) write the first row of the same
    20 tenants at once: every write succeeds, each namespace is created once (the loser's
    "already exists" is success) and has each row once. A namespace another instance made
    is success too when this one has never seen it."""
    a = Namespaces(server.admin_url)
    b = Namespaces(server.admin_url)
    try:
        names = [f"race-{i}" for i in range(20)]
        await asyncio.gather(*(ns.create(n) for n in names for ns in (a, b)))
        assert set(names) <= server.namespaces()
        assert a.calls == b.calls == 20  # each created each one: one of the two "exists"
        c = Namespaces(server.admin_url)
        await c.create("race-0")  # exists already: 400 "already exists" is success
        assert await c.exists("race-1")
        assert not await c.exists("race-none")
        await c.close()
    finally:
        await a.close()
        await b.close()

    ones = [Tenants(server.ns_url("ws", "{tenant}"), server.ws_url, admin_url=server.admin_url)
            for _ in range(2)]  # fmt: skip
    try:
        insert = ("INSERT INTO nodes (id, nodeType) VALUES (?, 'customer')"
                  " ON CONFLICT (id) DO NOTHING")  # fmt: skip
        tenants = [f"twin-{i}" for i in range(12)]
        await asyncio.gather(*(t.tenant(n).execute(insert, [n]) for n in tenants for t in ones))
        for n in tenants:
            assert server.query(n, "SELECT id FROM nodes") == [(n,)]
    finally:
        for t in ones:
            await t.close()


async def test_the_admin_api_refusing_the_key_or_away_is_a_clear_database_error(
    server: NamespacedSqld, resolve_localhost: None
) -> None:
    """A wrong key, or no admin API where HUB_TENANT_ADMIN_URL points: the write that needed
    the namespace fails with a DatabaseError (503) saying so, and nothing is created."""
    for url, says in ((f"http://:wrong@127.0.0.1:{server.admin_port}", "refused"),
                      (f"http://127.0.0.1:{free_port()}", "unreachable")):  # fmt: skip
        namespaces = Namespaces(url)
        db = RemoteDatabase(server.ns_url("ws", "nokey"), auth_token=None, schema=TENANT_SCHEMA,
                            namespace=namespaces.of("nokey"))  # fmt: skip
        try:
            with pytest.raises(DatabaseError, match=says) as caught:
                await db.execute("INSERT INTO nodes (id, nodeType) VALUES ('x', 'customer')")
            assert "wrong" not in str(caught.value)
        finally:
            await db.close()
            await namespaces.close()
        assert not server.exists("nokey")


# -- hub seed and hub serve, as users run them ------------------------------------------------


class Rider:
    """Rami's GPS pings, as tests.test_orders.Rider, his position read from his namespace."""

    def __init__(self, c: httpx.AsyncClient, server: NamespacedSqld, inbox: Socket,
                 watcher: Socket) -> None:  # fmt: skip
        self.c, self.server, self.inbox, self.watcher = c, server, inbox, watcher
        self.last = 0.0
        self.sent: list[tuple[float, float]] = []
        self.writes = dict(ZERO)

    def position(self) -> tuple[Any, ...]:
        return tuple(self.server.query("rami", DRIVER_POINT)[0][2:])

    async def ride(self, route: list[tuple[float, float]]) -> None:
        for lat, lng in route:
            await asyncio.sleep(max(0.0, self.last + 1.1 - time.monotonic()))
            before = await writes(self.c)
            if len(self.sent) % 2 == 0:
                r = await self.c.post("/api/motion", json={"lat": lat, "lng": lng}, headers=RAMI)
                assert r.status_code == 200, r.text
            else:
                await self.inbox.send({"type": "location", "lat": lat, "lng": lng})
            self.last = time.monotonic()
            self.sent.append((lat, lng))
            await until(lambda p=(lat, lng): any(
                (f["lat"], f["lng"]) == p for f in self.watcher.of("location")),
                5, f"location {lat},{lng} on Ali's socket")  # fmt: skip
            await until(lambda p=(lat, lng): self.position() == p, 5, "the ping in rami's DB")
            ping = diff(before, await writes(self.c))
            assert ping == {"streams": 0, "tenant": 1, "public": 0}, ping
            self.writes = {t: self.writes[t] + ping[t] for t in TARGETS}


async def test_seed_and_order_end_to_end_with_every_db_on_one_namespaced_sqld(
    hub_factory: Callable[..., HubProcess], on_server: NamespacedSqld, tmp_path: Path
) -> None:
    """``hub seed`` creates the seed's three tenants' namespaces; then the seed's Steps
    1-11 over HTTP and WebSockets: the 12-event table, each socket its events once, the
    write counts of tests/test_sqld.py, the rows each namespace is left with, and nothing
    written to an embedded file."""
    server = on_server
    data = tmp_path / "data"
    assert not any(server.exists(t) for t in SEED_TENANTS)

    run_seed(data)  # Step 0
    assert all(server.exists(t) for t in SEED_TENANTS), server.namespaces()
    assert server.query("public", DRIVER_POINT) == [("idle", 1, 25.2640, 55.3310)]
    stock_sql = "SELECT id, qty FROM points WHERE qty IS NOT NULL ORDER BY id"
    assert server.query("bab-hara", stock_sql) == [("pt-lbn", 150), ("pt-shw", 200)]

    hub = hub_factory(data_dir=data)
    statuses: list[str] = []
    async with http(hub) as c, AsyncExitStack() as stack:
        kitchen = await stack.enter_async_context(subscribe(hub, "/ws/inbox", KITCHEN))
        inbox = await stack.enter_async_context(subscribe(hub, "/ws/inbox", RAMI))
        await until(lambda: kitchen.of("live") and inbox.of("live"), 10, "the inboxes' live frames")
        before = await writes(c)

        created = await place(c, ORDER)  # Step 1
        assert (created["total"], created["currency"]) == (46, "AED"), created
        ali = await stack.enter_async_context(subscribe(hub, f"/ws/streams/{ORDER}", ALI))
        statuses.append((await stream(c, ORDER))["orderStatus"])
        statuses += [(await step(c, ORDER, name))["orderStatus"]
                     for name in ("pay", "accept", "ready")]  # Steps 2-6  # fmt: skip
        assert server.query("public", "SELECT claim FROM points") == [(ORDER,)]

        rider = Rider(c, server, inbox, ali)
        await rider.ride([(25.2643, 55.3313)])  # Step 7
        statuses.append((await step(c, ORDER, "pickup"))["orderStatus"])  # Step 8
        await rider.ride([(25.1000, 55.1600)])  # Step 9
        statuses.append((await step(c, ORDER, "deliver"))["orderStatus"])  # Step 10

        await until(lambda: ali.closed, 10, "Ali's socket closed after archiving (Step 11)")
        after = await writes(c)
        final = await stream(c, ORDER)
        events = final["events"]
        await until(lambda: len(kitchen.of("event")) >= 12 and len(inbox.of("event")) >= 5, 10,
                    "the inboxes' events")  # fmt: skip
        await asyncio.sleep(0.3)  # anything extra would arrive now
        health = (await c.get("/healthz")).json()

    assert statuses == ["placed", "paid", "preparing", "assigned", "picked_up", "delivered"]
    assert (final["status"], final["orderStatus"]) == ("archived", "delivered"), final
    check_seed_table(events, ORDER)
    assert ali.events() == events
    assert kitchen.events() == events
    assert inbox.events() == events[7:]
    for sock in (kitchen, inbox, ali):
        assert not sock.of("error"), sock.frames
    assert health["checks"]["tenant_dbs"] == "ok", health

    order_writes = {t: diff(before, after)[t] - rider.writes[t] for t in TARGETS}
    assert order_writes == {"streams": 12, "tenant": 7, "public": 2}
    assert rider.writes == {"streams": 0, "tenant": 2, "public": 0}

    assert server.query("default", "SELECT COUNT(*) FROM events") == [(0,)]  # archived
    assert server.query("default", "SELECT lastSeq, archived FROM streams") == [(12, 1)]
    assert server.query("bab-hara", stock_sql) == [("pt-lbn", 149), ("pt-shw", 198)]
    dest = (DEST["lat"], DEST["lng"])
    assert server.query("rami", DRIVER_POINT) == [("idle", 1, *dest)]
    assert server.query("public", DRIVER_POINT) == [("idle", 1, *dest)]
    assert [n for (n,) in server.query("ali", "SELECT id FROM nodes ORDER BY id")] == [
        "ali", ORDER]  # fmt: skip
    assert not list(data.rglob("*.db")), list(data.rglob("*.db"))
    assert server.namespaces() == {"default", "public", *SEED_TENANTS}


async def test_tenants_made_through_the_api_by_two_hubs_at_once(
    hub_factory: Callable[..., HubProcess], on_server: NamespacedSqld, tmp_path: Path
) -> None:
    """Two hubs get ``POST /api/tenants`` for the same new tenants at the same moment: every
    request succeeds (one 201, one 200 each), each namespace holds its rows once. Reading a
    restaurant that does not exist creates nothing; a customer nobody created gets a
    namespace with their first order; a tenant id that would be sqld's ``default`` namespace
    or the public DB's is refused with 400 and writes nothing."""
    server = on_server
    run_seed(tmp_path / "seed")  # the seed's restaurant and driver, for the order below
    hubs = [hub_factory(data_dir=tmp_path / f"hub-{i}") for i in range(2)]
    new = [{"id": f"kitchen-{i}", "role": "restaurant", "name": f"Kitchen {i}", "lat": 25.2,
            "lng": 55.3, "address": f"Street {i}", "currency": "AED"}
           for i in range(6)]  # fmt: skip
    async with http(hubs[0]) as a, http(hubs[1]) as b:
        answers = await asyncio.gather(*(
            c.post("/api/tenants", json=body, headers=PLATFORM) for body in new for c in (a, b)
        ))  # fmt: skip
        for i, body in enumerate(new):
            pair = sorted(r.status_code for r in answers[2 * i: 2 * i + 2])
            assert pair == [200, 201], [(r.status_code, r.text) for r in answers]
            assert server.query(body["id"], "SELECT id, nodeType, title FROM nodes") == [
                (body["id"], "restaurant", body["name"])]  # fmt: skip
            assert server.query(body["id"], "SELECT COUNT(*) FROM points") == [(1,)]

        r = await a.get("/api/restaurants/nowhere", headers=ALI)
        assert r.status_code in (404, 422), r.text
        r = await b.post("/api/orders", headers=ALI, json={
            "orderId": "ord-nowhere", "restaurant": "nowhere", "deliveryAddress": "Marina",
            "items": [{"productId": "prod-shw", "qty": 1}]})  # fmt: skip
        assert (r.status_code, r.json()["error"]["code"]) == (422, "unknown_restaurant"), r.text
        assert not server.exists("nowhere")

        assert not server.exists("newbie")
        r = await a.post("/api/orders", headers=auth("newbie", "customer"), json={
            "orderId": "ord-newbie", "restaurant": "bab-hara", "deliveryAddress": "Marina",
            "items": [{"productId": "prod-lbn", "qty": 1}]})  # fmt: skip
        assert r.status_code == 201, r.text
        assert server.query("newbie", "SELECT id, nodeType FROM nodes") == [
            ("ord-newbie", "order")]  # fmt: skip

        before = server.namespaces()
        for reserved in ("default", "public"):
            r = await b.post("/api/tenants", headers=PLATFORM, json={
                "id": reserved, "role": "customer", "name": "X", "lat": 25.2, "lng": 55.3,
                "address": "Nowhere"})  # fmt: skip
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_tenant_id"), r.text
        assert server.namespaces() == before
        assert server.query("default", "SELECT name FROM sqlite_master WHERE name = 'nodes'") == []


# -- the setting --------------------------------------------------------------------------------


@pytest.mark.parametrize(("tenant_db", "admin", "says"), [
    ("", "http://127.0.0.1:9090", "needs a remote HUB_TENANT_DB"),
    ("ws://db.internal:8080/{tenant}", "http://127.0.0.1:9090", "first label of its host"),
    ("ws://{tenant}:8080", "http://127.0.0.1:9090", "first label of its host"),
    ("ws://db.{tenant}.internal:8080", "http://127.0.0.1:9090", "first label of its host"),
    ("ws://{tenant}.db.internal:8080", "ftp://127.0.0.1:9090", "must be an http:// or https://"),
    ("ws://{tenant}.db.internal:8080", "http://:s3cret@127.0.0.1:port", "HUB_TENANT_ADMIN_URL"),
])  # fmt: skip
def test_a_bad_tenant_admin_setting_is_refused_at_start(
    tmp_path: Path, tenant_db: str, admin: str, says: str
) -> None:
    """HUB_TENANT_ADMIN_URL needs an http(s) URL and a remote HUB_TENANT_DB naming the tenant
    in its host's first label; what is wrong is one line, without the key."""
    from hub.config import Settings, SettingsError

    env = {"HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": "x" * 32, "HUB_TENANT_DB": tenant_db,
           "HUB_TENANT_ADMIN_URL": admin}  # fmt: skip
    with pytest.raises(SettingsError, match=says) as caught:
        Settings.from_env(env)
    assert "s3cret" not in str(caught.value)


def test_the_tenant_admin_setting_maps_tenants_to_namespaces(tmp_path: Path) -> None:
    from hub.config import Settings
    from hub.infra.namespaces import namespace_of

    settings = Settings.from_env({
        "HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": "x" * 32,
        "HUB_TENANT_DB": "wss://{tenant}.db.internal:8080",
        "HUB_TENANT_ADMIN_URL": "http://:s3cret@10.0.0.5:9090"})  # fmt: skip
    assert settings.tenant_admin_url == "http://:s3cret@10.0.0.5:9090"
    assert "s3cret" not in repr(settings)
    assert namespace_of(settings.tenant_db.replace("{tenant}", "bab-hara")) == "bab-hara"
    assert namespace_of("libsql://t-bab-hara.db.internal") == "t-bab-hara"
    assert namespace_of("ws://localhost:8080") == namespace_of("http://db:8080") == "default"
    assert namespace_of("ws://10.0.0.5:8080") == "10"  # sqld's rule: the first label
    namespaces = Namespaces("http://:s3cret@10.0.0.5:9090")
    assert namespaces.base == "http://10.0.0.5:9090"
    assert namespaces.reserved("default")


def test_check_reaches_the_namespaces_admin_api_with_its_key(
    on_server: NamespacedSqld, tmp_path: Path
) -> None:
    """``hub check`` with HUB_TENANT_ADMIN_URL reads from sqld's admin API with its key (no
    namespace is created); a wrong key, or an admin API that is not there, fails the
    tenant DBs' line (exit 1), and the key is never printed."""
    before = on_server.namespaces()
    ok = run_hub("check", data=tmp_path / "data")
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    line = check_lines(ok)["tenant DBs"]
    assert line.startswith("ok "), line
    assert "admin API http://127.0.0.1:" in line, line
    assert on_server.namespaces() == before

    wrong = on_server.admin_url.replace(KEY, "not-the-admin-key")
    bad = run_hub("check", data=tmp_path / "data", extra={"HUB_TENANT_ADMIN_URL": wrong})
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    line = check_lines(bad)["tenant DBs"]
    assert line.startswith("FAILED "), line
    assert "refused HUB_TENANT_ADMIN_URL's key" in line, line
    assert check_lines(bad)["streams DB"].startswith("ok ")

    gone = f"http://:{KEY}@127.0.0.1:{free_port()}"
    down = run_hub("check", data=tmp_path / "data", extra={"HUB_TENANT_ADMIN_URL": gone})
    assert down.returncode == 1, (down.stdout, down.stderr)
    assert check_lines(down)["tenant DBs"].startswith("FAILED "), down.stdout
    for out in (ok, bad, down):
        assert KEY not in out.stdout + out.stderr
        assert "not-the-admin-key" not in out.stdout + out.stderr
