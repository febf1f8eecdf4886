"""The seed's order flow against a real hub (docs/protocol.md §4, §5; the seed's Steps 0-11).

Every hub here is a real ``hub serve`` process on a data dir loaded by ``hub seed``; the
assertions read the hub's SQLite files directly (read-only, as a seed-style SQL reader
would), its archive files, its /metrics write counters and its WebSocket frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import SECRET, HubProcess, auth, timeout

Json = dict[str, Any]

PLATFORM = auth("ops", "platform")
ALI = auth("ali", "customer")
KITCHEN = auth("bab-hara", "restaurant")
RAMI = auth("rami", "driver")
ORDER = "ord-5001"
ITEMS = [{"productId": "prod-shw", "qty": 2}, {"productId": "prod-lbn", "qty": 1}]
DEST = {"lat": 25.0805, "lng": 55.1403}  # Marina Walk
TARGETS = ("streams", "tenant", "public")
ZERO = dict.fromkeys(TARGETS, 0)
EVENT_FIELDS = {
    "id", "streamId", "seq", "pos", "opcode", "name", "nodeId", "pointId", "delta", "payload", "ts",
}  # fmt: skip
LOCATION_FIELDS = {"type", "streamId", "driver", "lat", "lng", "ts"}
ETA_FIELDS = {"etaSeconds", "distanceM", "stop"}  # to the next stop (docs/protocol.md §5)
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

# The steps after Step 1: endpoint, who, body (the seed's values), orderStatus answered.
STEPS: list[tuple[str, dict[str, str], Json, str]] = [
    ("pay", ALI, {"method": "card", "cardLast4": "4242"}, "paid"),
    ("accept", KITCHEN, {"chef": "Hassan", "station": "grill", "estMinutes": 15}, "preparing"),
    ("ready", KITCHEN, {"actualMinutes": 12}, "assigned"),
    ("pickup", RAMI, {"confirmedItems": 3}, "picked_up"),
    ("deliver", RAMI, DEST, "delivered"),
]
STEP = {name: (who, body) for name, who, body, _ in STEPS}


def seed_table(order_id: str) -> list[tuple[int, str, str, str | None, float, Json, set[str]]]:
    """The seed's "Full Event Stream" with the payload values its Steps 1-10 write:
    opcode, name, nodeId, pointId, delta, fixed payload values, computed payload keys."""
    return [
        (501, "ORDER_CREATE", order_id, None, 46,
         {"customer": "ali", "restaurant": "bab-hara", "deliveryAddress": "Marina Walk",
          "channel": "app"}, {"items"}),
        (203, "INVOICE_PAYMENT", order_id, None, 46, {"method": "card", "cardLast4": "4242"},
         set()),
        (301, "TASK_CREATE", order_id, None, 0, {"task": "kitchen-prep", "estMinutes": 15}, set()),
        (303, "TASK_START", order_id, None, 0, {"chef": "Hassan", "station": "grill"}, set()),
        (102, "SALE_OUT", "prod-shw", "pt-shw", -2, {"reason": "order-sale"}, set()),
        (102, "SALE_OUT", "prod-lbn", "pt-lbn", -1, {"reason": "order-sale"}, set()),
        (305, "TASK_DONE", order_id, None, 0, {"task": "kitchen-prep", "actualMinutes": 12}, set()),
        (302, "TASK_ASSIGN", "rami", None, 0,
         {"task": "delivery", "driver": "rami", "vehicle": "Motorcycle"}, {"eta"}),
        (502, "ORDER_SHIP", order_id, None, 0, {"pickedUpBy": "rami", "confirmedItems": 3}, set()),
        (503, "ORDER_DELIVER", order_id, None, 0, {"deliveredBy": "rami", "confirmedBy": "ali"},
         {"totalMinutes"}),
        (402, "ACCOUNT_PAYOUT", "rami", None, 12, {"type": "delivery-fee", "currency": "AED"},
         set()),
        (401, "ACCOUNT_PAYIN", "rest-01", None, 34, {"type": "order-revenue", "currency": "AED"},
         set()),
    ]  # fmt: skip


def check_seed_table(events: list[Json], order_id: str, count: int = 12) -> None:
    """``events`` are the first ``count`` rows of the seed's table for ``order_id``."""
    assert [e["seq"] for e in events] == list(range(1, count + 1)), events
    positions = [e["pos"] for e in events]
    assert positions == sorted(set(positions)), positions
    for event, (opcode, name, node, point, delta, fixed, computed) in zip(
        events, seed_table(order_id)[:count], strict=True
    ):
        where = f"seq {event['seq']}: {event}"
        assert set(event) == EVENT_FIELDS, where
        assert event["streamId"] == order_id, where
        got = (event["opcode"], event["name"], event["nodeId"], event["pointId"], event["delta"])
        assert got == (opcode, name, node, point, delta), where
        payload = event["payload"]
        assert {k: payload.get(k) for k in fixed} == fixed, where
        assert set(payload) >= computed, where
        assert TS.fullmatch(event["ts"]), where
        if opcode == 501:
            assert [(i["productId"], i["qty"]) for i in payload["items"]] == [
                (i["productId"], i["qty"]) for i in ITEMS
            ], where
        for key in computed - {"items"}:
            value = payload[key]
            assert isinstance(value, int | float), where
            assert not isinstance(value, bool), where
            assert value >= 0, where


# -- processes, databases, metrics --------------------------------------------------------


def run_seed(data: Path) -> None:
    """``hub seed`` on ``data`` (a subprocess reading the same environment as the hub)."""
    env = {**os.environ, "HUB_DATA_DIR": str(data), "HUB_SECRET": SECRET}
    subprocess.run(
        [sys.executable, "-m", "hub", "seed"], env=env, check=True, capture_output=True,
        timeout=timeout(60),
    )  # fmt: skip


@pytest.fixture
def seeded(hub_factory: Callable[..., HubProcess], tmp_path: Path) -> Callable[..., HubProcess]:
    """Start a hub (``seeded(env)``) on a data dir loaded with the seed's Step 0."""

    def make(env: dict[str, str] | None = None) -> HubProcess:
        data = tmp_path / "data"
        run_seed(data)
        return hub_factory(data_dir=data, env=env)

    return make


def tenant_db(data: Path, tenant: str) -> Path:
    return data / "tenants" / f"{tenant}.db"


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, args).fetchall()


def write_sql(path: Path, *stmts: tuple[str, tuple[Any, ...]]) -> None:
    """Run statements in one transaction (the test's stand-in for a hub that crashed)."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for sql, args in stmts:
            conn.execute(sql, args)


def stock(data: Path) -> dict[str, float]:
    return dict(
        rows(tenant_db(data, "bab-hara"), "SELECT id, qty FROM points WHERE qty IS NOT NULL")
    )


def driver_point(path: Path) -> tuple[Any, ...]:
    """Rami's point (availability, openNow, lat, lng) in his tenant DB or the public DB."""
    got = rows(path, "SELECT availability, openNow, lat, lng FROM points WHERE id = 'pt-rami-loc'")
    assert len(got) == 1, got
    return got[0]


def position(data: Path) -> tuple[float, float]:
    return driver_point(tenant_db(data, "rami"))[2:]


def stored_opcodes(data: Path, stream_id: str) -> list[int]:
    got = rows(data / "streams.db", "SELECT opcode FROM events WHERE streamId = ? ORDER BY seq",
               stream_id)  # fmt: skip
    return [r[0] for r in got]


def snapshot(data: Path) -> dict[str, Any]:
    """Every row of every table of every database under ``data``, and the archive's files."""
    out: dict[str, Any] = {}
    for path in sorted(data.rglob("*.db")):
        tables = rows(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        out[str(path.relative_to(data))] = {
            t: sorted(rows(path, f'SELECT * FROM "{t}"'), key=repr) for (t,) in tables
        }
    archive = data / "archive"
    out["archive"] = sorted(p.name for p in archive.iterdir()) if archive.exists() else []
    return out


async def writes(c: httpx.AsyncClient) -> dict[str, float]:
    """``hub_db_writes_total`` by target."""
    r = await c.get("/metrics")
    assert r.status_code == 200, r.text
    out = {}
    for target in TARGETS:
        m = re.search(rf'^hub_db_writes_total\{{target="{target}"\}} (\S+)$', r.text, re.M)
        assert m, f"no hub_db_writes_total for {target}"
        out[target] = float(m.group(1))
    return out


def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {t: round(after[t] - before[t]) for t in TARGETS}


async def until(probe: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout(seconds):.1f}s waiting for {what}")
        await asyncio.sleep(0.02)


# -- HTTP and WebSocket clients ---------------------------------------------------------


@asynccontextmanager
async def http(hub: HubProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(30), trust_env=False) as c:
        yield c


def order_body(order_id: str, items: list[Json] = ITEMS) -> Json:
    return {"orderId": order_id, "restaurant": "bab-hara", "items": items,
            "deliveryAddress": "Marina Walk", "notes": "Extra garlic sauce"}  # fmt: skip


async def place(c: httpx.AsyncClient, order_id: str, items: list[Json] = ITEMS) -> Json:
    """Step 1 as Ali; checks the 201 answer."""
    r = await c.post("/api/orders", json=order_body(order_id, items), headers=ALI)
    assert r.status_code == 201, r.text
    out: Json = r.json()
    assert out["orderId"] == out["streamId"] == order_id, out
    return out


async def step(c: httpx.AsyncClient, order_id: str, name: str, status: str | None = None) -> Json:
    """One order step with the seed's body; checks 200 and (if given) the orderStatus."""
    who, body = STEP[name]
    r = await c.post(f"/api/orders/{order_id}/{name}", json=body, headers=who)
    assert r.status_code == 200, (name, r.status_code, r.text)
    out: Json = r.json()
    assert out["orderId"] == order_id, out
    if status is not None:
        assert out["orderStatus"] == status, (name, out)
    return out


async def advance(c: httpx.AsyncClient, order_id: str, through: str) -> list[Json]:
    """The steps after Step 1 up to and including ``through`` (a driver being idle)."""
    names = [s[0] for s in STEPS]
    return [await step(c, order_id, name, status)
            for name, _, _, status in STEPS[: names.index(through) + 1]]  # fmt: skip


async def stream(c: httpx.AsyncClient, stream_id: str, who: dict[str, str] = PLATFORM) -> Json:
    r = await c.get(f"/api/streams/{stream_id}", headers=who)
    assert r.status_code == 200, r.text
    out: Json = r.json()
    return out


class Socket:
    """A WebSocket client reading every frame in the background."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[Json] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.conn:
                assert isinstance(raw, str), raw
                self.frames.append(json.loads(raw))

    @property
    def closed(self) -> bool:
        return self.task.done()

    def of(self, kind: str) -> list[Json]:
        return [f for f in self.frames if f.get("type") == kind]

    def events(self) -> list[Json]:
        return [{k: v for k, v in f.items() if k != "type"} for f in self.of("event")]

    async def send(self, frame: Json) -> None:
        await self.conn.send(json.dumps(frame))


@asynccontextmanager
async def subscribe(hub: HubProcess, path: str, who: dict[str, str]) -> AsyncIterator[Socket]:
    async with connect(
        hub.ws_url + path, additional_headers=who, compression=None, proxy=None,
        open_timeout=timeout(10), close_timeout=timeout(5),
    ) as conn:  # fmt: skip
        sock = Socket(conn)
        try:
            yield sock
        finally:
            await conn.close()
            await sock.task


# -- 1. the seed's order, end to end -----------------------------------------------------


class Rider:
    """Rami's GPS pings, each 1 s or more after the previous one, alternately through
    POST /api/motion and a ``location`` frame on his inbox socket (seed Steps 7 and 9)."""

    def __init__(self, c: httpx.AsyncClient, data: Path, inbox: Socket, watcher: Socket) -> None:
        self.c, self.data, self.inbox, self.watcher = c, data, inbox, watcher
        self.last = 0.0
        self.sent: list[tuple[float, float]] = []
        self.writes = dict(ZERO)

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
            await until(
                lambda p=(lat, lng): self.seen(p), 5, f"location {lat},{lng} on Ali's socket"
            )
            await until(lambda p=(lat, lng): position(self.data) == p, 5, "the ping in rami.db")
            ping = diff(before, await writes(self.c))
            assert ping == {"streams": 0, "tenant": 1, "public": 0}, ping
            self.writes = {t: self.writes[t] + ping[t] for t in TARGETS}

    def seen(self, point: tuple[float, float]) -> bool:
        return any((f["lat"], f["lng"]) == point for f in self.watcher.of("location"))


async def test_seed_order_end_to_end(seeded: Callable[..., HubProcess]) -> None:
    """The seed's order via HTTP: its 12-event table, each socket its events once, its writes."""
    hub = seeded()
    data = hub.data_dir
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

        rider = Rider(c, data, inbox, ali)
        await rider.ride([(25.2643, 55.3313), (25.2647, 55.3317)])  # Step 7
        statuses.append((await step(c, ORDER, "pickup"))["orderStatus"])  # Step 8
        await rider.ride([(25.1800, 55.2400), (25.1000, 55.1600)])  # Step 9
        assert stored_opcodes(data, ORDER) == [501, 203, 301, 303, 102, 102, 305, 302, 502]
        statuses.append((await step(c, ORDER, "deliver"))["orderStatus"])  # Step 10

        await until(lambda: ali.closed, 10, "Ali's socket closed after archiving (Step 11)")
        after = await writes(c)
        final = await stream(c, ORDER)
        events = final["events"]
        await until(lambda: len(kitchen.of("event")) >= 12 and len(inbox.of("event")) >= 5, 10,
                    "the inboxes' events")  # fmt: skip
        await asyncio.sleep(0.3)  # anything extra would arrive now

        for who in (ALI, KITCHEN, RAMI):  # "same response for Ali, Bab Al Hara, and Rami"
            assert (await stream(c, ORDER, who))["events"] == events

    assert statuses == ["placed", "paid", "preparing", "assigned", "picked_up", "delivered"]
    assert (final["status"], final["orderStatus"]) == ("archived", "delivered"), final
    check_seed_table(events, ORDER)

    # Who got what, once, in order.
    assert ali.events() == events
    assert ali.frames[-1] == {"type": "archived", "streamId": ORDER}
    assert ali.conn.close_code == 1000
    locations = ali.of("location")
    assert [(f["lat"], f["lng"]) for f in locations] == rider.sent
    for frame in locations:
        assert set(frame) == LOCATION_FIELDS | ETA_FIELDS, frame
        assert (frame["streamId"], frame["driver"]) == (ORDER, "rami"), frame
        assert TS.fullmatch(frame["ts"]), frame
    assert kitchen.events() == events
    assert inbox.events() == events[7:]  # from TASK_ASSIGN (seq 8) on
    for sock in (kitchen, inbox, ali):
        assert not sock.of("error"), sock.frames

    # The seed's write counts, GPS pings apart (each wrote one row to rami.db only).
    order_writes = {t: diff(before, after)[t] - rider.writes[t] for t in TARGETS}
    assert order_writes == {"streams": 12, "tenant": 7, "public": 2}
    assert rider.writes == {"streams": 0, "tenant": 4, "public": 0}
    assert rows(data / "streams.db", "SELECT COUNT(*) FROM events") == [(0,)]  # archived

    # The tenant DBs and the public DB as the seed leaves them.
    assert stock(data) == {"pt-shw": 198, "pt-lbn": 149}
    dest = (DEST["lat"], DEST["lng"])
    assert driver_point(tenant_db(data, "rami")) == ("idle", 1, *dest)
    assert driver_point(data / "public.db") == ("idle", 1, *dest)
    for tenant, kind, fixed in (
        ("ali", "order", {"restaurant": "bab-hara"}),
        ("bab-hara", "order", {"customer": "ali", "deliveryAddress": "Marina Walk"}),
        ("rami", "delivery", {"restaurant": "bab-hara", "deliverTo": "Marina Walk"}),
    ):
        nodes = rows(tenant_db(data, tenant), "SELECT nodeType, payload FROM nodes WHERE id = ?",
                     ORDER)  # fmt: skip
        assert [n[0] for n in nodes] == [kind], (tenant, nodes)
        payload = json.loads(nodes[0][1])
        assert {k: payload.get(k) for k in fixed} == fixed, (tenant, payload)


# -- 2. GPS coalescing -------------------------------------------------------------------


@pytest.mark.parametrize("via", ["http", "ws"])
async def test_gps_burst_is_coalesced(seeded: Callable[..., HubProcess], via: str) -> None:
    """A GPS burst writes 1 row at once, the latest within 1 s; a ping 1 s later writes 1."""
    hub = seeded()
    data = hub.data_dir
    async with http(hub) as c, subscribe(hub, "/ws/inbox", RAMI) as inbox:

        async def ping(point: tuple[float, float]) -> None:
            lat, lng = point
            if via == "http":
                r = await c.post("/api/motion", json={"lat": lat, "lng": lng}, headers=RAMI)
                assert r.status_code == 200, r.text
            else:
                await inbox.send({"type": "location", "lat": lat, "lng": lng})

        burst = [(25.2640 + i * 0.001, 55.3310 + i * 0.001) for i in range(1, 11)]
        before = await writes(c)
        start = time.monotonic()
        await ping(burst[0])
        await until(lambda: position(data) == burst[0], 0.5, "the burst's first ping written")
        for point in burst[1:]:
            await asyncio.sleep(0.025)
            await ping(point)
        last = time.monotonic()
        assert last - start < 0.9, "the burst took too long to be one"
        assert diff(before, await writes(c)) == {"streams": 0, "tenant": 1, "public": 0}

        await until(lambda: position(data) == burst[-1], 1.5, "the burst's latest position")
        assert time.monotonic() - last <= timeout(1.0) + 0.15, "the latest landed after 1 s"
        assert diff(before, await writes(c)) == {"streams": 0, "tenant": 2, "public": 0}

        await asyncio.sleep(max(0.0, last + 1.05 - time.monotonic()))
        alone = (25.3000, 55.4000)
        await ping(alone)  # 1 s or more after the last ping
        sent = time.monotonic()
        await until(lambda: position(data) == alone, 1.5, "the lone ping's position")
        print(f"a ping 1 s after a burst's last ping landed after {time.monotonic() - sent:.2f}s")
        await asyncio.sleep(1.2)  # a second write for it would have landed by now
        assert diff(before, await writes(c)) == {"streams": 0, "tenant": 3, "public": 0}
        assert not inbox.of("error"), inbox.frames
    assert rows(data / "streams.db", "SELECT COUNT(*) FROM events") == [(0,)]


# -- 3. refusals write nothing -----------------------------------------------------------


@pytest.fixture(scope="module")
def refusals_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, Json]]:
    """One hub with an order in each state: placed, paid, preparing, assigned (to rami)."""
    data = tmp_path_factory.mktemp("refusals") / "data"
    run_seed(data)
    hub = HubProcess(data).start()
    ids = {state: f"ord-{state}" for state in ("placed", "paid", "preparing", "assigned")}

    async def prepare() -> None:
        async with http(hub) as c:
            for state, through in (("placed", None), ("paid", "pay"), ("preparing", "accept"),
                                   ("assigned", "ready")):  # fmt: skip
                await place(c, ids[state])
                if through is not None:
                    await advance(c, ids[state], through)

    try:
        asyncio.run(prepare())
        yield hub, ids
    finally:
        hub.stop()


def create(**changes: Any) -> Json:
    body = order_body("ord-new")
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def items(*pairs: tuple[Any, Any]) -> list[Json]:
    return [{"productId": p, "qty": q} for p, q in pairs]


PAY, ACCEPT = STEP["pay"][1], STEP["accept"][1]
OTHER_RESTAURANT = auth("other-rest", "restaurant")
OTHER_DRIVER = auth("omar", "driver")
OTHER_CUSTOMER = auth("bob", "customer")


@pytest.mark.parametrize(
    ("path", "who", "body", "status"),
    [
        pytest.param("/api/orders/{paid}/pay", ALI, PAY, 409, id="pay twice"),
        pytest.param("/api/orders/{placed}/accept", KITCHEN, ACCEPT, 409, id="accept before pay"),
        pytest.param("/api/orders/{preparing}/accept", KITCHEN, ACCEPT, 409, id="accept twice"),
        pytest.param("/api/orders/{paid}/ready", KITCHEN, {"actualMinutes": 12}, 409,
                     id="ready before accept"),
        pytest.param("/api/orders/{preparing}/pickup", RAMI, {"confirmedItems": 3}, None,
                     id="pickup before assignment"),
        pytest.param("/api/orders/{assigned}/deliver", RAMI, DEST, 409,
                     id="deliver before pickup"),
        pytest.param("/api/orders/{placed}/pay", ALI, {"cardLast4": "4242"}, None,
                     id="pay without method"),
        pytest.param("/api/orders/{placed}/pay", ALI, {"method": "card", "cardLast4": 4242}, None,
                     id="pay with a numeric cardLast4"),
        pytest.param("/api/orders/{assigned}/deliver", RAMI, {"lat": 25.08}, None,
                     id="deliver without lng"),
        pytest.param("/api/orders/{placed}/pay", ALI, b"{method: card", None,
                     id="step body not JSON"),
        pytest.param("/api/orders", ALI, b"{not json", None, id="order body not JSON"),
        pytest.param("/api/orders", ALI, [order_body("ord-new")], None, id="order body a list"),
        pytest.param("/api/orders", ALI, create(items=items(("prod-xxx", 1))), 422,
                     id="unknown product"),
        pytest.param("/api/orders", ALI, create(items=items(("prod-shw", 0))), None, id="qty 0"),
        pytest.param("/api/orders", ALI, create(items=items(("prod-shw", -1))), None,
                     id="negative qty"),
        pytest.param("/api/orders", ALI, create(items=items(("prod-shw", "2"))), None,
                     id="qty a string"),
        pytest.param("/api/orders", ALI, create(items=items(("prod-shw", 201))), None,
                     id="more than in stock"),
        pytest.param("/api/orders", ALI, create(items=[]), None, id="no items"),
        pytest.param("/api/orders", ALI, create(items=None), None, id="missing items"),
        pytest.param("/api/orders", ALI, create(deliveryAddress=None), None,
                     id="missing deliveryAddress"),
        pytest.param("/api/orders", ALI, create(restaurant=None), None, id="missing restaurant"),
        pytest.param("/api/orders", ALI, create(restaurant="no-such-place"), None,
                     id="unknown restaurant"),
        pytest.param("/api/orders", ALI, create(orderId="ord-placed"), None,
                     id="orderId taken"),
        pytest.param("/api/orders", OTHER_CUSTOMER, create(orderId="ord-placed"), None,
                     id="another customer's orderId"),
        pytest.param("/api/orders", KITCHEN, create(), 403, id="restaurant places an order"),
        pytest.param("/api/orders/{paid}/accept", OTHER_RESTAURANT, ACCEPT, 403,
                     id="another restaurant accepts"),
        pytest.param("/api/orders/{assigned}/pickup", OTHER_DRIVER, {"confirmedItems": 3}, 403,
                     id="a driver not assigned picks up"),
        pytest.param("/api/orders/{placed}/pay", OTHER_CUSTOMER, PAY, 403,
                     id="another customer pays"),
        pytest.param("/api/orders/{paid}/accept", ALI, ACCEPT, 403, id="the customer accepts"),
    ],
)  # fmt: skip
async def test_refused_request_writes_nothing(
    refusals_hub: tuple[HubProcess, Json], path: str, who: dict[str, str], body: Any,
    status: int | None,
) -> None:  # fmt: skip
    """A step out of turn, bad input or the wrong party: 4xx, error body, nothing written."""
    hub, ids = refusals_hub
    async with http(hub) as c:
        streams_before = {i: await stream(c, i) for i in ids.values()}
        before, rows_before = await writes(c), snapshot(hub.data_dir)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await c.post(path.format(**ids), content=content,
                         headers={**who, "content-type": "application/json"})  # fmt: skip
        if status is None:
            assert 400 <= r.status_code < 500, (r.status_code, r.text)
        else:
            assert r.status_code == status, (r.status_code, r.text)
        error = r.json()["error"]
        assert isinstance(error["code"], str), r.text
        assert error["code"], r.text
        assert isinstance(error["message"], str), r.text
        await asyncio.sleep(0.05)  # anything written in the background would show now
        assert diff(before, await writes(c)) == ZERO
        assert snapshot(hub.data_dir) == rows_before
        for i, got in streams_before.items():
            assert await stream(c, i) == got


# -- 4. driver assignment ----------------------------------------------------------------


def check_one_order_per_driver(events: list[Json]) -> None:
    """Walking the events in commit order, no driver ever holds two undelivered orders."""
    holding: dict[str, set[str]] = {}
    for e in events:
        if e["opcode"] == 302:
            orders = holding.setdefault(e["payload"]["driver"], set())
            orders.add(e["streamId"])
            assert len(orders) == 1, f"{e['payload']['driver']} holds {sorted(orders)}"
        elif e["opcode"] == 503:
            for orders in holding.values():
                orders.discard(e["streamId"])


async def test_one_idle_driver_two_ready_orders(seeded: Callable[..., HubProcess]) -> None:
    """One idle driver, two orders ready at once: one waits, gets him after the first."""
    hub = seeded()
    pair = ["ord-a", "ord-b"]
    async with http(hub) as c, subscribe(hub, "/ws/inbox", PLATFORM) as ops:
        for oid in pair:
            await place(c, oid)
            await advance(c, oid, "accept")
        answers = await asyncio.gather(*(step(c, oid, "ready") for oid in pair))
        assert sorted(a["orderStatus"] for a in answers) == ["assigned", "ready"], answers
        first, second = pair if answers[0]["orderStatus"] == "assigned" else pair[::-1]
        by_id = {a["orderId"]: a for a in answers}
        assert [e["opcode"] for e in by_id[first]["events"]] == [305, 302]
        assert by_id[first]["events"][1]["payload"]["driver"] == "rami"
        assert [e["opcode"] for e in by_id[second]["events"]] == [305]

        await asyncio.sleep(0.5)
        waiting = await stream(c, second)
        assert waiting["orderStatus"] == "ready", waiting
        assert 302 not in [e["opcode"] for e in waiting["events"]]

        await step(c, first, "pickup", "picked_up")
        await step(c, first, "deliver", "delivered")

        async def assigned() -> bool:
            return (await stream(c, second))["orderStatus"] == "assigned"

        await until(assigned, 5, f"{second} assigned once rami delivered {first}")
        assign = (await stream(c, second))["events"][-1]
        assert (assign["opcode"], assign["nodeId"], assign["payload"]["driver"]) == (
            302, "rami", "rami")  # fmt: skip
        await step(c, second, "pickup", "picked_up")
        await step(c, second, "deliver", "delivered")
        await until(lambda: len(ops.of("event")) >= 24, 10, "the platform inbox's 24 events")
        await asyncio.sleep(0.3)

    events = ops.events()
    assert len(events) == 24
    assert [e["pos"] for e in events] == sorted({e["pos"] for e in events})
    assert [e["streamId"] for e in events if e["opcode"] == 302] == [first, second]
    check_one_order_per_driver(events)


async def test_ready_order_waits_for_a_driver_to_come_online(
    seeded: Callable[..., HubProcess],
) -> None:
    """With no idle driver an order stays ready; a driver coming online is assigned it."""
    hub = seeded()
    oid = "ord-wait"
    async with http(hub) as c:
        r = await c.post("/api/drivers/status", json={"status": "offline"}, headers=RAMI)
        assert r.status_code == 200, r.text
        await place(c, oid)
        await advance(c, oid, "accept")
        out = await step(c, oid, "ready", "ready")
        assert [e["opcode"] for e in out["events"]] == [305]
        await asyncio.sleep(0.5)
        assert (await stream(c, oid))["orderStatus"] == "ready"
        assert 302 not in stored_opcodes(hub.data_dir, oid)

        r = await c.post("/api/drivers/status", headers=RAMI,
                         json={"status": "online", "lat": 25.2640, "lng": 55.3310})  # fmt: skip
        assert r.status_code == 200, r.text

        async def assigned() -> Json | None:
            got = await stream(c, oid)
            return got if got["orderStatus"] == "assigned" else None

        got = await until(assigned, 5, "the order assigned once rami is online")
        check_seed_table(got["events"], oid, count=8)


# -- 5. stock under concurrency ----------------------------------------------------------


async def test_stock_never_goes_negative_under_concurrent_orders(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """8 concurrent orders of 2 against stock 5: 2 accepted, 6 out_of_stock, stock 1."""
    data = tmp_path / "data"
    run_seed(data)
    write_sql(tenant_db(data, "bab-hara"), ("UPDATE points SET qty = 5 WHERE id = 'pt-shw'", ()))
    hub = hub_factory(data_dir=data)
    oids = [f"ord-stock-{i}" for i in range(8)]
    two = [{"productId": "prod-shw", "qty": 2}]
    async with http(hub) as c:
        before = await writes(c)
        await asyncio.gather(*(place(c, oid, two) for oid in oids))
        await asyncio.gather(*(step(c, oid, "pay", "paid") for oid in oids))
        answers = await asyncio.gather(
            *(c.post(f"/api/orders/{oid}/accept", json=ACCEPT, headers=KITCHEN) for oid in oids)
        )
        accepted = [oid for oid, r in zip(oids, answers, strict=True) if r.status_code == 200]
        for r in answers:
            if r.status_code != 200:
                assert r.status_code == 409, r.text
                assert r.json()["error"]["code"] == "out_of_stock", r.text
        after = await writes(c)

    assert len(accepted) == 2, [(r.status_code, r.text) for r in answers]
    assert stock(data) == {"pt-shw": 5 - 2 * len(accepted), "pt-lbn": 150}
    sales = rows(
        data / "streams.db",
        "SELECT streamId, nodeId, pointId, delta FROM events WHERE opcode = 102",
    )
    assert sorted(sales) == [(oid, "prod-shw", "pt-shw", -2) for oid in sorted(accepted)]
    for oid in oids:
        expected = [501, 203, 301, 303, 102] if oid in accepted else [501, 203]
        assert stored_opcodes(data, oid) == expected, oid
    assert diff(before, after) == {
        "streams": 8 + 8 + 3 * len(accepted),
        "tenant": 8 + 8 + len(accepted),
        "public": 0,
    }


# -- 6. a crash between databases, then the retry ----------------------------------------


async def restart_after(hub: HubProcess, hub_factory: Callable[..., HubProcess],
                        crashed: Callable[[], None]) -> HubProcess:  # fmt: skip
    """SIGKILL the hub, leave the databases as ``crashed`` says, start it again."""
    await asyncio.to_thread(hub.kill)
    crashed()
    restarted: HubProcess = await asyncio.to_thread(hub_factory, data_dir=hub.data_dir)
    return restarted


async def test_create_retried_after_the_tenant_nodes_were_written(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """Step 1 retried after a crash before ORDER_CREATE: completes, no duplicate rows."""
    data = tmp_path / "data"
    run_seed(data)
    oid = "ord-crash-create"
    ts = "2026-11-27T12:30:00.000Z"
    stored = [{"productId": "prod-shw", "title": "Chicken Shawarma", "qty": 2, "price": 18.0},
              {"productId": "prod-lbn", "title": "Laban", "qty": 1, "price": 5.0}]  # fmt: skip
    insert = (
        "INSERT INTO nodes (id, nodeType, title, createdAt, payload) VALUES (?, 'order', ?, ?, ?)"
    )
    customer_node = {"restaurant": "bab-hara", "items": stored, "total": 46}
    kitchen_node = {"customer": "ali", "deliveryAddress": "Marina Walk", **customer_node}
    del kitchen_node["restaurant"]
    write_sql(
        tenant_db(data, "ali"), (insert, (oid, f"Order {oid}", ts, json.dumps(customer_node)))
    )
    write_sql(tenant_db(data, "bab-hara"),
              (insert, (oid, f"{oid} - ali", ts, json.dumps(kitchen_node))))  # fmt: skip
    hub = hub_factory(data_dir=data)
    async with http(hub) as c:
        before = await writes(c)
        out = await place(c, oid)
        assert out["total"] == 46, out
        assert diff(before, await writes(c)) == {"streams": 1, "tenant": 0, "public": 0}
        check_seed_table((await stream(c, oid))["events"], oid, count=1)
        await advance(c, oid, "pay")
    for tenant in ("ali", "bab-hara"):
        assert rows(tenant_db(data, tenant), "SELECT COUNT(*) FROM nodes WHERE id = ?", oid) == [
            (1,)]  # fmt: skip
    assert stored_opcodes(data, oid) == [501, 203]


async def test_accept_retried_after_the_stock_was_taken(
    seeded: Callable[..., HubProcess], hub_factory: Callable[..., HubProcess]
) -> None:
    """Accept retried after a crash after the stock update: stock and events once."""
    hub = seeded()
    data = hub.data_dir
    oid = "ord-crash-accept"
    async with http(hub) as c:
        await place(c, oid)
        await advance(c, oid, "pay")

    def crashed() -> None:  # what hub/orders.py _take_stock commits, and nothing after it
        applied = json.dumps([oid])
        write_sql(tenant_db(data, "bab-hara"), *(
            ("UPDATE points SET qty = qty - ?, applied = ? WHERE id = ?", (qty, applied, point))
            for point, qty in (("pt-shw", 2), ("pt-lbn", 1))))  # fmt: skip

    hub = await restart_after(hub, hub_factory, crashed)
    async with http(hub) as c:
        before = await writes(c)
        out = await step(c, oid, "accept", "preparing")
        assert [e["opcode"] for e in out["events"]] == [301, 303, 102, 102]
        assert diff(before, await writes(c)) == {"streams": 4, "tenant": 0, "public": 0}
        again = await c.post(f"/api/orders/{oid}/accept", json=ACCEPT, headers=KITCHEN)
        assert again.status_code == 409, again.text
        assert diff(before, await writes(c)) == {"streams": 4, "tenant": 0, "public": 0}
        check_seed_table((await stream(c, oid))["events"], oid, count=6)
    assert stock(data) == {"pt-shw": 198, "pt-lbn": 149}


async def test_ready_retried_after_the_driver_was_claimed(
    seeded: Callable[..., HubProcess], hub_factory: Callable[..., HubProcess]
) -> None:
    """Ready retried after a crash after the driver claim: the order still gets him."""
    hub = seeded()
    data = hub.data_dir
    oid = "ord-crash-ready"
    async with http(hub) as c:
        await place(c, oid)
        await advance(c, oid, "accept")
        # TASK_DONE as hub/orders.py ready() appends it (its id and content), then the crash.
        done = {"id": f"{oid}.done", "opcode": 305, "nodeId": oid,
                "payload": {"task": "kitchen-prep", "actualMinutes": 12}}  # fmt: skip
        r = await c.post(f"/api/streams/{oid}/events", json=done, headers=PLATFORM)
        assert r.status_code == 201, r.text

    def crashed() -> None:  # the claim hub/orders.py assign() commits first, nothing after it
        write_sql(
            data / "public.db",
            ("UPDATE points SET openNow = false, claim = ? WHERE id = 'pt-rami-loc'", (oid,)),
        )

    hub = await restart_after(hub, hub_factory, crashed)
    async with http(hub) as c:
        r = await c.post(f"/api/orders/{oid}/ready", json=STEP["ready"][1], headers=KITCHEN)
        assert r.status_code in (200, 409), r.text

        async def assigned() -> Json | None:
            got = await stream(c, oid)
            return got if got["orderStatus"] == "assigned" else None

        got = await until(assigned, 5, "the claimed driver assigned after the restart")
        check_seed_table(got["events"], oid, count=8)
        await step(c, oid, "pickup", "picked_up")
        await step(c, oid, "deliver", "delivered")
    assert driver_point(data / "public.db")[:2] == ("idle", 1)


@pytest.mark.parametrize("minutes_later", [0, 5])
async def test_deliver_retried_after_its_events_were_written(
    seeded: Callable[..., HubProcess], hub_factory: Callable[..., HubProcess],
    minutes_later: int,
) -> None:  # fmt: skip
    """Deliver retried after a crash after its events: completes, events once, driver idle."""
    hub = seeded()
    data = hub.data_dir
    oid = "ord-crash-deliver"
    delivered_after = 35 if minutes_later else 0  # totalMinutes when the crash happened
    async with http(hub) as c:
        await place(c, oid)
        await advance(c, oid, "pickup")
        # The events hub/orders.py deliver() appends (its ids and content), then the crash.
        drafts = [
            {"id": f"{oid}.deliver", "opcode": 503, "nodeId": oid, "payload": {
                "deliveredBy": "rami", "confirmedBy": "ali", "totalMinutes": delivered_after}},
            {"id": f"{oid}.payout", "opcode": 402, "nodeId": "rami", "delta": 12,
             "payload": {"type": "delivery-fee", "currency": "AED"}},
            {"id": f"{oid}.payin", "opcode": 401, "nodeId": "rest-01", "delta": 34,
             "payload": {"type": "order-revenue", "currency": "AED"}},
        ]  # fmt: skip
        r = await c.post(f"/api/streams/{oid}/events", json={"events": drafts}, headers=PLATFORM)
        assert r.status_code == 201, r.text

    def crashed() -> None:
        if minutes_later:  # the order was placed 35 + 5 minutes before this retry
            created = datetime.now(UTC) - timedelta(minutes=delivered_after + minutes_later)
            ts = created.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            write_sql(
                data / "streams.db",
                ("UPDATE events SET ts = ? WHERE id = ?", (ts, f"{oid}.create")),
            )

    hub = await restart_after(hub, hub_factory, crashed)
    # The restarted hub may release Rami itself (start-up recovery) before the retry comes.
    async with http(hub) as c:
        r = await c.post(f"/api/orders/{oid}/deliver", json=DEST, headers=RAMI)
        # The retry finishes Step 10, or the restarted hub already had (then: already_done).
        if r.status_code == 200:
            assert r.json()["orderStatus"] == "delivered", r.text
        else:
            assert (r.status_code, r.json()["error"]["code"]) == (409, "already_done"), r.text
        # Counted since the restart: the missing driver and public rows, no event again.
        assert diff(ZERO, await writes(c)) == {"streams": 0, "tenant": 1, "public": 1}

        async def archived() -> Json | None:
            got = await stream(c, oid)
            return got if got["status"] == "archived" else None

        events = (await until(archived, 5, "the delivered order archived"))["events"]
    check_seed_table(events, oid)
    assert events[9]["payload"]["totalMinutes"] == delivered_after
    for db in (tenant_db(data, "rami"), data / "public.db"):
        point = driver_point(db)
        assert point[:2] == ("idle", 1), (db.name, point)
        if r.status_code == 200:  # the retry carried Marina Walk's position
            assert point[2:] == (DEST["lat"], DEST["lng"]), (db.name, point)
    assert rows(data / "public.db", "SELECT claim FROM points WHERE id = 'pt-rami-loc'") == [
        (None,)
    ]


# -- 7. archiving ------------------------------------------------------------------------


async def test_delivered_stream_is_archived_and_read_back(
    seeded: Callable[..., HubProcess],
) -> None:
    """A delivered stream moves to the archive; GET and late sockets replay it from there."""
    hub = seeded()
    data = hub.data_dir
    async with http(hub) as c:
        await place(c, ORDER)
        await advance(c, ORDER, "pickup")
        active = await stream(c, ORDER)
        assert active["status"] == "active", active
        live = active["events"] + (await step(c, ORDER, "deliver", "delivered"))["events"]
        check_seed_table(live, ORDER)

        async def archived() -> Json | None:
            got = await stream(c, ORDER)
            return got if got["status"] == "archived" else None

        got = await until(archived, 5, "the stream archived")
        assert got["events"] == live
        assert got["orderStatus"] == "delivered"
        assert (await c.get(f"/api/streams/{ORDER}?since=5", headers=ALI)).json()[
            "events"] == live[5:]  # fmt: skip

    assert rows(data / "streams.db", "SELECT COUNT(*) FROM events WHERE streamId = ?",
                ORDER) == [(0,)]  # fmt: skip
    stored = json.loads((data / "archive" / f"{ORDER}.json").read_text())
    assert [(e["id"], e["seq"], e["pos"]) for e in stored] == [
        (e["id"], e["seq"], e["pos"]) for e in live]  # fmt: skip
    for e, row in zip(stored, live, strict=True):  # the seed's columns, as in the streams DB
        seed_columns = ("id", "streamId", "opcode", "nodeId", "pointId", "delta", "payload", "ts")
        assert {k: e[k] for k in seed_columns} == {k: row[k] for k in seed_columns}

    for who, since in ((ALI, 5), (KITCHEN, 0), (RAMI, 7), (PLATFORM, 11)):
        async with subscribe(hub, f"/ws/streams/{ORDER}?since={since}", who) as late:
            await until(lambda s=late: s.closed, 10, "the late subscriber closed")
        assert late.events() == live[since:], since
        assert late.frames[-1] == {"type": "archived", "streamId": ORDER}, late.frames
        assert late.conn.close_code == 1000


async def test_archive_delay_keeps_the_stream_active(seeded: Callable[..., HubProcess]) -> None:
    """HUB_ARCHIVE_DELAY=2 keeps a delivered stream active, archived ~2 s later."""
    hub = seeded({"HUB_ARCHIVE_DELAY": "2"})
    data = hub.data_dir
    async with http(hub) as c:
        await place(c, ORDER)
        await advance(c, ORDER, "pickup")
        start = time.monotonic()
        await step(c, ORDER, "deliver", "delivered")
        got = await stream(c, ORDER)
        assert (got["status"], len(got["events"])) == ("active", 12), got
        assert len(stored_opcodes(data, ORDER)) == 12
        await asyncio.sleep(max(0.0, start + 1.5 - time.monotonic()))
        assert (await stream(c, ORDER))["status"] == "active"

        async def archived() -> bool:
            return (await stream(c, ORDER))["status"] == "archived"

        await until(archived, 3, "the stream archived after the delay")
        elapsed = time.monotonic() - start
    assert 1.9 <= elapsed <= 2 + timeout(1.5), elapsed
    assert (data / "archive" / f"{ORDER}.json").exists()
    assert stored_opcodes(data, ORDER) == []


async def test_only_the_platform_archives_on_demand(seeded: Callable[..., HubProcess]) -> None:
    """POST /api/streams/{id}/archive: the platform archives at once, anyone else 403."""
    hub = seeded()
    data = hub.data_dir
    oid = "ord-manual"
    async with http(hub) as c:
        await place(c, oid)
        await advance(c, oid, "pay")
        active = await stream(c, oid)
        before = snapshot(data)
        for who in (ALI, KITCHEN, RAMI, OTHER_CUSTOMER):
            r = await c.post(f"/api/streams/{oid}/archive", headers=who)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"], r.text
        assert snapshot(data) == before
        assert await stream(c, oid) == active

        r = await c.post(f"/api/streams/{oid}/archive", headers=PLATFORM)
        assert r.status_code == 200, r.text
        got = await stream(c, oid)
    assert got["status"] == "archived", got
    assert got["events"] == active["events"]
    assert (data / "archive" / f"{oid}.json").exists()
    assert stored_opcodes(data, oid) == []


# -- 8. hub seed -------------------------------------------------------------------------


def test_seed_twice_changes_nothing(tmp_path: Path) -> None:
    """hub seed loads Step 0, and running it again changes nothing."""
    data = tmp_path / "data"
    run_seed(data)
    first = snapshot(data)
    run_seed(data)
    assert snapshot(data) == first

    kitchen = tenant_db(data, "bab-hara")
    nodes = rows(kitchen, "SELECT id, parentId, nodeType, title, payload FROM nodes ORDER BY id")
    assert [(*n[:4], json.loads(n[4])) for n in nodes] == [
        ("prod-lbn", "menu-01", "product", "Laban", {"desc": "Traditional buttermilk"}),
        ("prod-shw", "menu-01", "product", "Chicken Shawarma", {"desc": "Grilled chicken wrap"}),
        ("rest-01", None, "restaurant", "Bab Al Hara", {"address": "Al Rigga, Dubai"}),
    ]
    columns = "id, nodeId, qty, price, currency, availability, lat, lng, openNow"
    assert rows(kitchen, f"SELECT {columns} FROM points ORDER BY id") == [
        ("pt-lbn", "prod-lbn", 150, 5.0, "AED", "in-stock", None, None, 1),
        ("pt-rest-loc", "rest-01", None, None, None, "open", 25.2650, 55.3320, 1),
        ("pt-shw", "prod-shw", 200, 18.0, "AED", "in-stock", None, None, 1),
    ]
    assert rows(tenant_db(data, "rami"), "SELECT id, nodeId FROM points") == [
        ("pt-rami-loc", "rami")
    ]
    for db in (tenant_db(data, "rami"), data / "public.db"):
        assert driver_point(db) == ("idle", 1, 25.2640, 55.3310)
    assert rows(data / "public.db", "SELECT workspaceId, nodeId FROM points") == [("rami", "rami")]
    assert rows(data / "public.db", "SELECT id, workspaceId, nodeType FROM nodes") == [
        ("rami", "rami", "driver")]  # fmt: skip

    write_sql(kitchen, ("UPDATE points SET qty = 198 WHERE id = 'pt-shw'", ()))
    run_seed(data)
    assert stock(data) == {"pt-shw": 198, "pt-lbn": 150}
