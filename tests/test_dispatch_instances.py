"""Driver dispatch across two hub instances (docs/protocol.md §4, §4.6; bench/city.py
``--instances 2``): two ``hub serve`` processes on one data dir (streams, tenant and public
DBs) linked by one Redis, orders readied on both while a few drivers deliver on both.

Each instance offers idle drivers to waiting orders on its own (a ``ready``, a driver
delivering or coming online): the two must never both claim a driver for one order, since a
claim that loses to the other instance's TASK_ASSIGN is undone, and the claim and its undo
are two public-DB rows no order accounts for. A delivered order writes exactly 12 streams
rows, 7 tenant rows and 2 public rows (the driver claimed, then released), whichever
instance took each step; the tests read ``hub_db_writes_total`` from both instances'
/metrics.

A driver taken off an order (a decline, a cancel, silence) is released by the instance that
took him off, and by the other one too when it finds his claim first (it assigns the order,
or completes the same cancel): the release's rows are written once. A driver gone silent
who comes back online is never left off an order whose stream names him: the hub does not
offer him that order again, so the claim of a driver taken off an order is always one to
release, never the other instance's new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, RedisServer, auth
from tests.test_orders import (
    ALI,
    DEST,
    KITCHEN,
    PLATFORM,
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

Json = dict[str, Any]

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


# -- drivers taken off an order (docs/protocol.md §4.6) ---------------------------------------

# Orders whose driver is taken off, one at a time (a decline races less often: more orders).
TAKEN_OFF = {"decline": 48, "cancel": 24}
AGAIN = 16  # the other instance's requests per order, one every GAP seconds
GAP = 0.001
DECLINE = {"streams": 1, "tenant": 1, "public": 1}  # the TASK_UNASSIGN, the decliner released
REASSIGN = {"streams": 1, "tenant": 2, "public": 1}  # the next driver's TASK_ASSIGN and claim
CANCEL = {"streams": 5, "tenant": 4, "public": 1}  # cancel while assigned (the seed's 2 items)


async def two_hubs(redis_server: RedisServer, hub_factory: Callable[..., HubProcess],
                   data: Path, drivers: list[str],
                   env: dict[str, str] | None = None) -> list[HubProcess]:  # fmt: skip
    """Two instances on one seeded data dir and one Redis, Rami offline and ``drivers``
    online near the restaurant (alternately through each instance)."""
    run_seed(data)
    write_sql(tenant_db(data, "bab-hara"),
              ("UPDATE points SET qty = 100000 WHERE id = 'pt-shw'", ()))  # fmt: skip
    env = {"HUB_REDIS_URL": redis_server.url, **(env or {})}
    hubs = [hub_factory(data_dir=data, env=env), hub_factory(data_dir=data, env=env)]
    async with http(hubs[0]) as a, http(hubs[1]) as b:
        r = await a.post("/api/drivers/status", json={"status": "offline"},
                         headers=auth("rami", "driver"))  # fmt: skip
        assert r.status_code == 200, r.text
        for n, driver in enumerate(drivers):
            r = await (a, b)[n % 2].post("/api/drivers/status", headers=auth(driver, "driver"),
                                         json={"status": "online", **NEAR})  # fmt: skip
            assert r.status_code == 200, r.text
    return hubs


async def ready_order(clients: list[httpx.AsyncClient], i: int, oid: str) -> str:
    """Steps 1-5 of one order over both instances, Step 6 where it is readied; the driver
    assigned."""
    cust, kitchen = clients[i % 2], clients[(i // 2) % 2]
    r = await cust.post("/api/orders", json=order_body(oid), headers=ALI)
    assert r.status_code == 201, r.text
    for path, who, body in (("pay", ALI, {"method": "card"}),
                            ("accept", KITCHEN, {"chef": "Hassan", "station": "grill"}),
                            ("ready", KITCHEN, {})):  # fmt: skip
        r = await post(cust if path == "pay" else kitchen, f"/api/orders/{oid}/{path}", who, body)
        assert r.status_code == 200, r.text
    assert r.json()["orderStatus"] == "assigned", r.text
    driver: str = r.json()["events"][-1]["payload"]["driver"]
    return driver


async def meanwhile(c: httpx.AsyncClient, path: str, who: dict[str, str],
                    body: dict[str, object]) -> list[int]:  # fmt: skip
    """``AGAIN`` requests, one every ``GAP`` seconds (a retrying client's), all answered;
    their status codes. Spread so that some land while the other instance is between the
    TASK_UNASSIGN it committed and the release of that driver's claim."""

    async def one(k: int) -> int:
        await asyncio.sleep(k * GAP)
        r = await c.post(path, json=body, headers=who)
        assert r.status_code in (200, 409), r.text
        return r.status_code

    return list(await asyncio.gather(*(one(k) for k in range(AGAIN))))


def summed(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, int]:
    """Rows written on both instances between ``before`` and ``after``."""
    return {t: round(sum(x[t] - y[t] for x, y in zip(after, before, strict=True)))
            for t in TARGETS}  # fmt: skip


def drivers_now(data: Path, prefix: str) -> dict[str, tuple[str, int, str | None]]:
    """(availability, openNow, claim) of each driver whose id starts with ``prefix``, from
    the public DB."""
    got = rows(data / "public.db", "SELECT workspaceId, availability, openNow, claim FROM points"
               " WHERE workspaceId LIKE ? ORDER BY workspaceId", f"{prefix}%")  # fmt: skip
    return {d: (av, on, claim) for d, av, on, claim in got}


def holding(events: dict[str, list[Json]]) -> dict[str, str]:
    """The driver each order's stream names now (assigned, not taken off since): order by
    driver."""
    out = {}
    for oid, evs in events.items():
        driver = None
        for e in evs:
            if e["opcode"] == 302:
                driver = e["payload"]["driver"]
            elif e["opcode"] == 306 and e["payload"]["driver"] == driver:
                driver = None
        if driver is not None:
            out[driver] = oid
    return out


@pytest.mark.parametrize("path", ["decline", "cancel"])
async def test_a_driver_taken_off_on_one_instance_is_released_once(
    path: str, redis_server: RedisServer, hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """48 (24) assigned orders, one at a time: the driver declines (the platform cancels)
    through one instance while the other instance, at moments spread over the next 16 ms,
    completes the same order's Step 6 (the kitchen's ``ready`` sent again there, as a
    retrying client does; a driver delivering or coming online there does the same) or the
    same cancel (sent again there). That instance may find the driver still claimed for the
    order he was just taken off, and finish his release as well: each order still writes
    exactly what docs/protocol.md §4.6 gives its path (a decline 1 + 1 + 1 rows, and 1 + 2
    + 1 for the next driver's TASK_ASSIGN; a cancel while assigned 5 + 4 + 1), never the
    released driver's row in his DB twice (one tenant row more per such race; on the old
    code, per run, in 5 to 13 of the 48 declined orders, 13 to 18 of the 24 cancelled),
    and every driver ends claimed for the order whose stream names him, or idle and
    unclaimed."""
    data = tmp_path / "data"
    drivers = [f"off-{i}" for i in range(TAKEN_OFF[path])]
    # A cancelled order stays unarchived meanwhile (a cancel sent again then is 409).
    hubs = await two_hubs(redis_server, hub_factory, data, drivers, {"HUB_ARCHIVE_DELAY": "60"})
    oids = [f"ord-{path}-{i}" for i in range(TAKEN_OFF[path])]
    async with http(hubs[0]) as a, http(hubs[1]) as b:
        clients = [a, b]
        first = [await ready_order(clients, i, oid) for i, oid in enumerate(oids)]
        wrong = []
        for i, (oid, driver) in enumerate(zip(oids, first, strict=True)):
            here, there = clients[i % 2], clients[(i + 1) % 2]
            before = [await writes(c) for c in clients]
            if path == "decline":
                taken = post(here, f"/api/orders/{oid}/decline", auth(driver, "driver"), {})
                again = meanwhile(there, f"/api/orders/{oid}/ready", KITCHEN, {})
            else:
                body = {"reason": "kitchen fire"}
                taken = post(here, f"/api/orders/{oid}/cancel", PLATFORM, body)
                again = meanwhile(there, f"/api/orders/{oid}/cancel", PLATFORM, body)
            r, _ = await asyncio.gather(taken, again)
            # A cancel sent again at once may land first: this one is then its retry (the
            # same answer) or too late (409).
            assert r.status_code in ((200, 409) if path == "cancel" else (200,)), r.text
            await asyncio.sleep(0.03)  # anything written late would be counted now
            written = summed(before, [await writes(c) for c in clients])
            ops = [e["opcode"] for e in (await stream(a, oid))["events"]]
            if path == "decline":
                assert ops[7:9] == [302, 306], ops
                again_assigned = ops[9:].count(302)
                expected = {t: DECLINE[t] + again_assigned * REASSIGN[t] for t in TARGETS}
            else:
                assert ops[7:] == [302, 504, 204, 103, 103, 306], ops
                expected = CANCEL
            if written != expected:
                wrong.append((oid, written, expected))
        events = {oid: (await stream(a, oid))["events"] for oid in oids}
    assert not wrong, f"{len(wrong)} of {len(oids)} orders wrote other rows: {wrong}"
    held = holding(events)
    assert drivers_now(data, "off-") == {
        d: ("idle", 0, held[d]) if d in held else ("idle", 1, None) for d in drivers
    }


SILENT = 16  # orders whose driver goes silent, then comes back online
SILENT_TIMEOUT = 4.0  # HUB_DRIVER_TIMEOUT: long enough for drivers assigned again to keep
# their orders until the test has read everything


async def test_silent_drivers_back_online_while_the_other_instance_assigns_stay_consistent(
    redis_server: RedisServer, hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """16 assigned orders whose drivers send no position: both instances' timers take each
    off his order (``unreachable``, offline) and the orders wait ``ready`` with no driver
    idle. Then, one at a time, the silent driver of an order comes back online through one
    instance (which offers the waiting orders an idle driver) while the other instance
    completes that order's Step 6 (the kitchen's ``ready`` sent again there, at moments
    spread over 16 ms). Whichever orders they get, the databases agree with the streams:
    a driver whose order's stream names him is claimed for it, every other driver is
    online and unclaimed, and the rows are exactly the paths' (coming online 1 tenant + 1
    public row; a TASK_ASSIGN 1 + 1 streams and public rows, and the driver's delivery
    node and point). On the old code a driver was offered the order he was taken off
    again, and the other instance, taking his new claim for the old one left unreleased,
    set him offline and unclaimed while the order's stream named him (4 to 7 of the 16
    per run)."""
    data = tmp_path / "data"
    drivers = [f"sil-{i}" for i in range(SILENT)]
    env = {"HUB_DRIVER_TIMEOUT": str(SILENT_TIMEOUT)}
    hubs = await two_hubs(redis_server, hub_factory, data, drivers, env)
    oids = [f"ord-sil-{i}" for i in range(SILENT)]
    async with http(hubs[0]) as a, http(hubs[1]) as b:
        clients = [a, b]
        first = [await ready_order(clients, i, oid) for i, oid in enumerate(oids)]

        async def all_waiting() -> list[dict[str, list[Json]]]:
            got = await asyncio.gather(*(stream(a, oid) for oid in oids))
            if all(s["orderStatus"] == "ready" for s in got):
                return [{oid: s["events"] for oid, s in zip(oids, got, strict=True)}]
            return []

        (taken_off,) = await until(all_waiting, 2 * SILENT_TIMEOUT + 5, "every driver off")
        await asyncio.sleep(0.2)  # both instances' releases done
        assert drivers_now(data, "sil-") == {d: ("offline", 0, None) for d in drivers}
        before = [await writes(c) for c in clients]
        started = time.monotonic()
        for i, (oid, driver) in enumerate(zip(oids, first, strict=True)):
            here, there = clients[i % 2], clients[(i + 1) % 2]
            back = post(here, "/api/drivers/status", auth(driver, "driver"),
                        {"status": "online", **NEAR})  # fmt: skip
            r, _ = await asyncio.gather(back, meanwhile(there, f"/api/orders/{oid}/ready",
                                                        KITCHEN, {}))  # fmt: skip
            assert r.status_code == 200, r.text
        await asyncio.sleep(0.1)  # anything written late would be counted now
        written = summed(before, [await writes(c) for c in clients])
        events = {oid: (await stream(a, oid))["events"] for oid in oids}
        assert time.monotonic() - started < SILENT_TIMEOUT - 0.5, "too slow for the timeout"

    new = {oid: events[oid][len(taken_off[oid]) :] for oid in oids}
    assert all(e["opcode"] == 302 for evs in new.values() for e in evs), new
    # A TASK_ASSIGN writes the driver's delivery node only if his DB has none for the order.
    nodes = sum(
        1
        for oid in oids
        for e in new[oid]
        if e["payload"]["driver"]
        not in {x["payload"]["driver"] for x in taken_off[oid] if x["opcode"] == 302}
    )
    assigned = sum(len(evs) for evs in new.values())
    held = holding(events)
    assert drivers_now(data, "sil-") == {
        d: ("idle", 0, held[d]) if d in held else ("idle", 1, None) for d in drivers
    }
    assert written == {"streams": assigned, "tenant": SILENT + assigned + nodes,
                       "public": SILENT + assigned}, (written, new)  # fmt: skip
