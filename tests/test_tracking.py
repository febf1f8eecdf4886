"""Live tracking (docs/protocol.md §5, "Tracking frames"; contract §8): the position right
after ``live`` on any instance, ETA and distance to the next stop, presence, arriving,
impossible fixes refused, and none of it written to the streams DB.

The ETA test runs the hub's parts in this process with a simulated clock (a 3 km ride at a
constant speed, one fix a second, and a 60 s gap in it): time is scaled there, not
slept. The others run real ``hub serve`` processes (two linked by a real Redis where it
says so) with ``HUB_PRESENCE_TIMEOUT`` lowered to a second or two.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, closing
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from hub.config import Settings
from hub.domain.auth import Principal, Role
from hub.domain.orders import NewOrder
from hub.domain.orders.rules import distance_m
from hub.domain.tracking import ARRIVING_M, Tracking, once, vehicle_speed
from hub.edge.app import Parts
from hub.edge.wire import frames
from hub.edge.wire.orders import OrderDetails
from hub.infra.broker import MemoryBroker
from hub.infra.claims import MemoryClaims, RedisClaims
from tests.conftest import SECRET, HubProcess, RedisServer, free_port, timeout
from tests.test_orders import (
    ALI,
    KITCHEN,
    ORDER,
    PLATFORM,
    RAMI,
    Socket,
    advance,
    diff,
    http,
    place,
    run_seed,
    step,
    subscribe,
    tenant_db,
    until,
    writes,
)

Json = dict[str, Any]

RESTAURANT_AT = (25.2650, 55.3320)  # Bab Al Hara (the seed's)
ALI_AT = (25.0805, 55.1403)  # Ali's own location: the drop-off of an order without one
M_PER_DEG = 111_195.0  # metres per degree of latitude (the haversine's Earth)
STRUCTS: dict[str, type[frames.Frame]] = {
    "location": frames.LocationFrame, "presence": frames.PresenceFrame,
    "arriving": frames.ArrivingFrame,
}  # fmt: skip


def as_declared(frame: Json) -> None:
    """A tracking frame decodes as its Struct (every field as declared, and no other)."""
    msgspec.json.decode(json.dumps(frame).encode(), type=STRUCTS[frame["type"]])


def north_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
    return point[0] + metres / M_PER_DEG, point[1]


def seen_at(data: Path) -> tuple[float, float, str]:
    """Rami's position and seenAt as his tenant DB keeps them."""
    with closing(sqlite3.connect(f"file:{tenant_db(data, 'rami')}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT lat, lng, seenAt FROM points WHERE nodeId = 'rami'").fetchone()
    assert row is not None
    assert row[2] is not None, row
    return float(row[0]), float(row[1]), str(row[2])


async def motion(c: httpx.AsyncClient, point: tuple[float, float]) -> httpx.Response:
    return await c.post("/api/motion", json={"lat": point[0], "lng": point[1]}, headers=RAMI)


async def details(c: httpx.AsyncClient, order_id: str = ORDER) -> Json:
    """GET /api/orders/{id}, as its Struct declares it."""
    r = await c.get(f"/api/orders/{order_id}", headers=PLATFORM)
    assert r.status_code == 200, r.text
    msgspec.json.decode(r.content, type=OrderDetails)
    out: Json = r.json()
    return out


# -- 1. ETA on a simulated ride (in-process, simulated clock) --------------------------------


@pytest.mark.parametrize("speed", [vehicle_speed("Motorcycle"), 12.0], ids=["default", "faster"])
async def test_eta_follows_distance_over_speed_through_a_gap(tmp_path: Path, speed: float) -> None:
    """A 3 km ride to the drop-off at a constant speed, a fix a (simulated) second with a
    60 s gap: each ETA is the remaining distance over the speed within the stated
    tolerance, never negative, the gap makes it fall by 60 s (no jump), and ``arriving``
    comes once, within 200 m."""
    data = tmp_path / "data"
    run_seed(data)
    parts = Parts.build(Settings(data_dir=data, secret=SECRET))
    async with parts.running():
        customer, kitchen = Principal("ali", Role.CUSTOMER), Principal("bab-hara", Role.RESTAURANT)
        drop_off = (25.0900, 55.1500)  # the order's deliveryLocation, not Ali's own
        orders = parts.orders
        await orders.create(customer, NewOrder("bab-hara", {"prod-shw": 1}, "Marina Walk",
                                               delivery_location=drop_off, order_id=ORDER))
        await orders.pay(customer, ORDER, method="card", card_last4="4242")
        await orders.accept(kitchen, ORDER, chef="Hassan", station="grill", est_minutes=5)
        await orders.ready(kitchen, ORDER, actual_minutes=5)
        await orders.pickup(Principal("rami", Role.DRIVER), ORDER, confirmed_items=1)

        clock = [time.time()]
        tracking = Tracking(parts.node, parts.tenants, MemoryBroker(), clock=lambda: clock[0])
        length, gap = 3000.0, (100, 160)  # metres; no fix from second 100 to second 160
        etas: list[tuple[int, float, int]] = []  # (second, remaining metres, etaSeconds)
        arriving: list[Json] = []
        for second in range(int(length / speed) + 1):
            if gap[0] < second < gap[1]:
                continue
            clock[0] += 1.0 if not etas else second - etas[-1][0]
            where = north_of(drop_off, length - speed * second)
            _, notices = await tracking.fix("rami", *where, [ORDER])
            sent = [json.loads(n.frame) for n in notices]
            for frame in sent:
                as_declared(frame)
            (location,) = [f for f in sent if f["type"] == "location"]
            arriving += [f for f in sent if f["type"] == "arriving"]
            assert location["stop"] == "dropoff", location
            remaining = distance_m(where, drop_off)
            assert abs(location["distanceM"] - remaining) <= 1, (location, remaining)
            etas.append((second, remaining, location["etaSeconds"]))
        await tracking.close()

    # The stated tolerance: from the 15th fix on (the speed is the driver's own by then; it
    # starts from the vehicle's default) each ETA is within 2 % (+1 s of rounding) of the
    # remaining distance over the speed, and falls by the time elapsed (within 2 s); before
    # that it lies between the distance over the default and over the driver's speed.
    warm = 15
    default = vehicle_speed("Motorcycle")
    worst = 0.0
    for i, (second, remaining, eta) in enumerate(etas):
        assert eta >= 0
        truth = remaining / speed
        error = abs(eta - truth)
        if i < warm:
            low, high = sorted((truth, remaining / default))
            assert low - 1 <= eta <= high + 1, (second, eta, truth)
            continue
        worst = max(worst, error / max(truth, 1.0))
        assert error <= 0.02 * truth + 1, (second, eta, truth)
        drop, elapsed = etas[i - 1][2] - eta, second - etas[i - 1][0]
        assert abs(drop - elapsed) <= 0.02 * elapsed + 2, (second, etas[i - 1], eta)
    before = next(e for e in etas if e[0] == gap[0])
    after = next(e for e in etas if e[0] == gap[1])
    assert abs((before[2] - after[2]) - (gap[1] - gap[0])) <= 2, (before, after)
    print(f"speed {speed:.2f} m/s: worst ETA error after {warm} fixes {worst:.2%}")
    assert len(arriving) == 1, arriving
    assert arriving[0]["distanceM"] <= ARRIVING_M, arriving


def test_a_subscriber_gets_each_presence_change_once() -> None:
    """A presence frame that repeats the state last sent, or comes late (an earlier
    lastSeen), is dropped; a second arriving too; other frames pass."""
    seen: dict[str, tuple[str, str]] = {}

    def presence(state: str, last: str | None, driver: str = "rami") -> str:
        return json.dumps({"type": "presence", "streamId": ORDER, "driver": driver,
                           "state": state, "lastSeen": last})  # fmt: skip

    t1, t2, t3 = "2026-12-05T10:00:01.000Z", "2026-12-05T10:00:40.000Z", "2026-12-05T10:01:30.000Z"
    sent = [once(f, seen) for f in (
        presence("unreachable", t1), presence("unreachable", t1),  # two instances noticed
        presence("online", t2), presence("unreachable", t1),  # the second one, late
        presence("unreachable", t3), presence("online", None, "sami"),
        '{"type": "arriving", "driver": "rami"}', '{"type": "arriving", "driver": "rami"}',
        '{"type": "location", "driver": "rami"}', '{"type": "location", "driver": "rami"}',
    )]  # fmt: skip
    assert sent == [True, False, True, False, True, True, True, False, True, True]


async def test_claims_are_granted_once(redis_server: RedisServer) -> None:
    """A claim is won once (in memory; in Redis, by one of two instances); with Redis
    unreachable it is granted (fail open: the subscribers drop a repeat)."""
    memory = MemoryClaims()
    assert [await memory.claim("k", 60) for _ in range(2)] == [True, False]
    assert await memory.claim("other", 60)
    a, b = RedisClaims(redis_server.url), RedisClaims(redis_server.url)
    try:
        assert [await a.claim("k", 60), await b.claim("k", 60)] == [True, False]
        assert await b.claim("k2", 60)
    finally:
        await a.close()
        await b.close()
    down = RedisClaims(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert await down.claim("k", 60)
        assert await down.claim("k", 60)
    finally:
        await down.close()


# -- 2. impossible fixes, and the position right after live after a restart ------------------


async def test_impossible_fixes_are_refused_and_change_nothing(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """A 100 km jump in a second (HTTP 422 and an error frame ``impossible_position``),
    latitude 200 and NaN are refused: not written, not sent, not fed into the ETA."""
    data = tmp_path / "data"
    run_seed(data)
    hub = hub_factory(data_dir=data)
    async with http(hub) as c, AsyncExitStack() as stack:
        await place(c, ORDER)
        await advance(c, ORDER, "ready")  # assigned to rami
        ali = await stack.enter_async_context(subscribe(hub, f"/ws/streams/{ORDER}", ALI))
        inbox = await stack.enter_async_context(subscribe(hub, "/ws/inbox", RAMI))
        await until(lambda: ali.of("live") and inbox.of("live"), 10, "the live frames")
        good = north_of(RESTAURANT_AT, 500)
        assert (await motion(c, good)).status_code == 200
        await until(lambda: ali.of("location"), 5, "the first location")
        before = await writes(c)

        far = north_of(good, 100_000)  # 100 km north, a moment later
        r = await motion(c, far)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "impossible_position"), r.text
        await inbox.send({"type": "location", "lat": far[0], "lng": far[1]})
        await inbox.send({"type": "location", "lat": 200, "lng": 55.0})
        await inbox.conn.send('{"type": "location", "lat": NaN, "lng": 55.0}')
        await until(lambda: len(inbox.of("error")) >= 3, 5, "three error frames")
        codes = [f["error"]["code"] for f in inbox.of("error")]
        assert codes == ["impossible_position", "invalid_frame", "invalid_frame"], codes
        r = await c.post("/api/motion", json={"lat": 200, "lng": 55.0}, headers=RAMI)
        assert r.status_code == 422, r.text
        await asyncio.sleep(1.2)  # a coalesced write of a refused fix would land by now
        assert diff(before, await writes(c)) == {"streams": 0, "tenant": 0, "public": 0}
        assert seen_at(data)[:2] == good

        nearer = north_of(RESTAURANT_AT, 400)
        assert (await motion(c, nearer)).status_code == 200
        await until(lambda: len(ali.of("location")) >= 2, 5, "the next location")
    locations = ali.of("location")
    assert [(f["lat"], f["lng"]) for f in locations] == [good, nearer], locations
    for frame in locations:
        as_declared(frame)
        assert frame["stop"] == "restaurant", frame
        assert abs(frame["distanceM"] - distance_m((frame["lat"], frame["lng"]),
                                                   RESTAURANT_AT)) <= 1, frame
        assert frame["etaSeconds"] <= frame["distanceM"] / vehicle_speed("Motorcycle") * 1.05 + 1


async def test_state_survives_a_restart(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """Rami's last fix before a restart: a socket opened after it gets ``live``, then his
    position (``ts`` = seenAt), then ``presence`` ``unreachable``; the order's details say
    so; his next fix brings ``online``, once."""
    data = tmp_path / "data"
    run_seed(data)
    env = {"HUB_PRESENCE_TIMEOUT": "2"}
    hub = hub_factory(data_dir=data, env=env)
    where = north_of(RESTAURANT_AT, 300)
    async with http(hub) as c:
        await place(c, ORDER)
        await advance(c, ORDER, "ready")
        assert (await motion(c, where)).status_code == 200
        await until(lambda: seen_at(data)[:2] == where, 5, "the fix in rami.db")
    hub.stop()
    lat, lng, seen = seen_at(data)
    await asyncio.sleep(2.2)  # silent for longer than HUB_PRESENCE_TIMEOUT, hub down
    hub = hub_factory(data_dir=data, env=env)
    async with http(hub) as c, subscribe(hub, f"/ws/streams/{ORDER}", ALI) as ali:
        await until(lambda: ali.of("presence"), 5, "presence after live")
        kinds = [f["type"] for f in ali.frames]
        live = kinds.index("live")
        assert kinds[live + 1 : live + 3] == ["location", "presence"], kinds
        location, presence = ali.frames[live + 1 : live + 3]
        assert (location["lat"], location["lng"], location["ts"]) == (lat, lng, seen)
        assert presence == {"type": "presence", "streamId": ORDER, "driver": "rami",
                            "state": "unreachable", "lastSeen": seen}  # fmt: skip
        d = await details(c)
        assert (d["driver"]["id"], d["driver"]["state"], d["driver"]["lastSeen"]) == (
            "rami", "unreachable", seen)  # fmt: skip
        assert d["driverLastSeen"] == seen

        assert (await motion(c, north_of(where, -50))).status_code == 200
        await until(lambda: len(ali.of("presence")) >= 2, 5, "presence online")
        await asyncio.sleep(0.5)  # a second one would come now
        states = [f["state"] for f in ali.of("presence")]
        assert states == ["unreachable", "online"], ali.frames
        assert ali.of("presence")[1]["lastSeen"] == seen_at(data)[2]
        assert (await details(c))["driver"]["state"] == "online"
    for frame in ali.of("location") + ali.of("presence"):
        as_declared(frame)


# -- 3. two instances linked by Redis --------------------------------------------------------


@pytest.fixture
def linked(redis_server: RedisServer, hub_factory: Callable[..., HubProcess],
           tmp_path: Path) -> tuple[HubProcess, HubProcess]:  # fmt: skip
    """Hubs A and B on one seeded data dir, linked by Redis, HUB_PRESENCE_TIMEOUT=2.5."""
    data = tmp_path / "data"
    run_seed(data)
    env = {"HUB_REDIS_URL": redis_server.url, "HUB_PRESENCE_TIMEOUT": "2.5"}
    a = hub_factory(data, env)
    b = hub_factory(data, env)
    for hub in (a, b):  # wait until the broker is linked
        deadline = time.monotonic() + timeout(10)
        while httpx.get(hub.url + "/healthz", timeout=timeout(5)).json()["status"] != "ok":
            assert time.monotonic() < deadline, f"hub {hub.port} never linked"
            time.sleep(0.02)
    return a, b


def tracking_frames(sock: Socket) -> list[Json]:
    return [f for f in sock.frames if f["type"] in ("presence", "arriving")]


async def test_tracking_across_two_instances(linked: tuple[HubProcess, HubProcess]) -> None:
    """Rami's fix taken by A reaches a socket opened later on B right after ``live``
    (within 1 s); his silence is announced ``unreachable`` once on both instances' sockets
    and ``online`` once when he pings again (on B); riding to the drop-off through A and B
    in turn, ``arriving`` comes once. The streams DB gets none of it."""
    a, b = linked
    data = a.data_dir
    async with http(a) as ca, http(b) as cb, AsyncExitStack() as stack:
        await place(ca, ORDER)
        await advance(ca, ORDER, "ready")
        start = north_of(RESTAURANT_AT, 200)
        assert (await motion(ca, start)).status_code == 200
        await until(lambda: seen_at(data)[:2] == start, 5, "the fix in rami.db")
        before = {hub: await writes(c) for hub, c in ((a, ca), (b, cb))}

        opened = time.monotonic()
        ali = await stack.enter_async_context(subscribe(b, f"/ws/streams/{ORDER}", ALI))
        await until(lambda: ali.of("location"), 5, "the position on B")
        kinds = [f["type"] for f in ali.frames]
        assert kinds[kinds.index("live") + 1] == "location", kinds
        took = time.monotonic() - opened
        print(f"the position reached a new socket on the other instance {took * 1000:.0f} ms"
              " after it was opened")
        assert took < timeout(1.0)
        first = ali.of("location")[0]
        assert (first["lat"], first["lng"], first["ts"]) == seen_at(data)
        assert first["stop"] == "restaurant"
        kitchen = await stack.enter_async_context(subscribe(a, f"/ws/streams/{ORDER}", KITCHEN))
        await until(lambda: kitchen.of("location"), 5, "the position on A")

        # Silence: unreachable, once per socket, whichever instance noticed first.
        await until(lambda: ali.of("presence") and kitchen.of("presence"), 8, "unreachable")
        await asyncio.sleep(1.0)  # a repeat would come now
        seen = seen_at(data)[2]
        for sock in (ali, kitchen):
            assert [(f["state"], f["lastSeen"]) for f in sock.of("presence")] == [
                ("unreachable", seen)], sock.frames  # fmt: skip
        got = (await details(cb))["driver"]
        assert (got["state"], got["lastSeen"]) == ("unreachable", seen), got

        # He pings again, through B: online, once per socket.
        back = north_of(start, -100)
        assert (await motion(cb, back)).status_code == 200
        await until(lambda: len(ali.of("presence")) == len(kitchen.of("presence")) == 2, 5,
                    "online")  # fmt: skip
        await step(ca, ORDER, "pickup", "picked_up")

        # To the drop-off (Ali's own location), through A and B in turn.
        route = [north_of(ALI_AT, m) for m in (900, 600, 350, 150, 90, 40)]
        for i, point in enumerate(route):
            assert (await motion(ca if i % 2 else cb, point)).status_code == 200
            await asyncio.sleep(0.25)
        await until(lambda: ali.of("arriving") and kitchen.of("arriving"), 5, "arriving")
        await asyncio.sleep(0.8)  # a second one would come now
        for hub, c, written in ((a, ca, 1), (b, cb, 0)):  # A wrote the pickup's event
            assert diff(before[hub], await writes(c))["streams"] == written

    for sock in (ali, kitchen):
        assert [f["state"] for f in sock.of("presence")] == ["unreachable", "online"]
        (arriving,) = sock.of("arriving")
        assert arriving["distanceM"] <= ARRIVING_M, arriving
        assert (arriving["streamId"], arriving["driver"]) == (ORDER, "rami")
        last = sock.of("location")[-1]
        assert (last["stop"], last["lat"]) == ("dropoff", route[-1][0]), last
        assert math.isclose(last["distanceM"], distance_m(route[-1], ALI_AT), abs_tol=1)
        for frame in sock.of("location") + tracking_frames(sock):
            as_declared(frame)
        assert not sock.of("error"), sock.frames
