"""Driver dispatch across two hub instances (docs/protocol.md §4, §4.6; bench/city.py
``--instances 2``): two ``hub serve`` processes on one data dir (streams, tenant and public
DBs) linked by one Redis, orders readied on both while a few drivers deliver on both.

Each instance offers idle drivers to waiting orders on its own (a ``ready``, a driver
delivering or coming online): the two must never both claim a driver for one order, since a
claim that loses to the other instance's TASK_ASSIGN is undone, and the claim and its undo
are two public-DB rows no order accounts for. A delivered order writes exactly 12 streams
rows, 7 tenant rows and 2 public rows (the driver claimed, then released), whichever
instance took each step; the test reads ``hub_db_writes_total`` from both instances'
/metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import HubProcess, RedisServer, auth
from tests.test_orders import (
    ALI,
    DEST,
    KITCHEN,
    TARGETS,
    http,
    order_body,
    rows,
    run_seed,
    stream,
    tenant_db,
    until,
    write_sql,
    writes,
)

ORDERS = 80
DRIVERS = [f"drv-{i}" for i in range(8)]  # fewer than the orders: most of them wait
TICK = 0.2  # seconds: drivers deliver on these ticks
NEAR = {"lat": 25.2700, "lng": 55.3400}  # about 1 km from Bab Al Hara
PER_ORDER = {"streams": 12, "tenant": 7, "public": 2}  # docs/protocol.md §4.2


async def post(c: httpx.AsyncClient, path: str, who: dict[str, str],
               body: dict[str, object]) -> httpx.Response:  # fmt: skip
    """A step, retried while the hub answers ``busy`` (as its answer says to)."""
    r = await c.post(path, json=body, headers=who)
    for pause in (0.05, 0.1, 0.2, 0.4, 0.8):
        if r.status_code == 200 or "busy" not in r.text:
            break
        await asyncio.sleep(pause)
        r = await c.post(path, json=body, headers=who)
    return r


async def deliver_order(clients: list[httpx.AsyncClient], i: int, oid: str) -> str:
    """One order, its steps spread over both instances as a platform's clients would be:
    placed, paid, accepted and readied (Step 6 there: the nearest idle driver, or none and
    the order waits), then picked up and delivered by whichever driver it was assigned,
    through that driver's own instance. The driver who delivered it."""
    cust, kitchen = clients[i % 2], clients[(i // 2) % 2]
    r = await cust.post("/api/orders", json=order_body(oid), headers=ALI)
    assert r.status_code == 201, r.text
    r = await post(cust, f"/api/orders/{oid}/pay", ALI, {"method": "card"})
    assert r.status_code == 200, r.text
    r = await post(kitchen, f"/api/orders/{oid}/accept", KITCHEN,
                   {"chef": "Hassan", "station": "grill"})  # fmt: skip
    assert r.status_code == 200, r.text
    r = await post(kitchen, f"/api/orders/{oid}/ready", KITCHEN, {})
    assert r.status_code == 200, r.text

    async def assigned() -> str | None:
        got = await stream(cust, oid)
        if got["orderStatus"] != "assigned":
            return None
        driver: str = [e for e in got["events"] if e["opcode"] == 302][-1]["payload"]["driver"]
        return driver

    driver = await until(assigned, 30, f"{oid} assigned")
    c = clients[DRIVERS.index(driver) % 2]
    who = auth(driver, "driver")
    r = await post(c, f"/api/orders/{oid}/pickup", who, {})
    assert r.status_code == 200, r.text
    # Drivers on both instances deliver at the same moments, as a busy city's do: both
    # instances then offer the drivers freed to the same waiting orders at once.
    await asyncio.sleep(TICK - time.monotonic() % TICK)
    r = await post(c, f"/api/orders/{oid}/deliver", who, DEST)
    assert r.status_code == 200, r.text
    return driver


async def test_orders_on_two_instances_write_each_row_once(
    redis_server: RedisServer, hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """80 orders at once over two instances, 8 drivers delivering on both: every order
    delivered, and the rows written, summed over both instances' /metrics, are exactly
    12 + 7 + 2 per order (no driver claimed for an order, then released because the other
    instance assigned it: that left 2 public and 3 tenant rows more per race)."""
    data = tmp_path / "data"
    run_seed(data)
    write_sql(tenant_db(data, "bab-hara"),
              ("UPDATE points SET qty = 100000 WHERE id = 'pt-shw'", ()))  # fmt: skip
    env = {"HUB_REDIS_URL": redis_server.url}
    hubs = [hub_factory(data_dir=data, env=env), hub_factory(data_dir=data, env=env)]
    async with http(hubs[0]) as a, http(hubs[1]) as b:
        clients = [a, b]
        r = await a.post("/api/drivers/status", json={"status": "offline"},
                         headers=auth("rami", "driver"))  # fmt: skip
        assert r.status_code == 200, r.text
        for n, driver in enumerate(DRIVERS):
            r = await clients[n % 2].post("/api/drivers/status", headers=auth(driver, "driver"),
                                          json={"status": "online", **NEAR})  # fmt: skip
            assert r.status_code == 200, r.text
        before = [await writes(c) for c in clients]

        oids = [f"ord-two-{i}" for i in range(ORDERS)]
        by = await asyncio.gather(*(deliver_order(clients, i, oid) for i, oid in enumerate(oids)))

        async def archived() -> bool:
            got = await asyncio.gather(*(stream(a, oid) for oid in oids))
            return all((s["status"], s["orderStatus"]) == ("archived", "delivered") for s in got)

        await until(archived, 10, "every order delivered and archived")
        await asyncio.sleep(0.3)  # anything written late would be counted now
        after = [await writes(c) for c in clients]

    written = {t: round(sum(x[t] - y[t] for x, y in zip(after, before, strict=True)))
               for t in TARGETS}  # fmt: skip
    expected = {t: n * ORDERS for t, n in PER_ORDER.items()}
    assert written == expected, (written, expected, sorted(set(by)))
    # No driver is left claimed, and every one is idle and discoverable again.
    assert rows(data / "public.db", "SELECT workspaceId, availability, openNow, claim FROM points"
                " WHERE workspaceId LIKE 'drv-%' ORDER BY workspaceId") == [
        (d, "idle", 1, None) for d in DRIVERS]  # fmt: skip
