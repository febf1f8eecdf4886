"""Orders that do not go as planned (docs/protocol.md §6) against real hubs: cancel and
reject with their refund, stock and driver; decline and reassignment; a silent driver; an
order nobody accepts; the geofence; membership that ends; races decided once, on one hub
and across two hubs sharing a Redis and the databases.

Every hub is a real ``hub serve`` process on a data dir loaded by ``hub seed``; what the
tests check they read from the hub's answers, its sockets, its /metrics write counters
and its SQLite files (read-only).
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
    RAMI,
    STEP,
    ZERO,
    advance,
    diff,
    http,
    place,
    rows,
    run_seed,
    seeded,
    snapshot,
    step,
    stock,
    stream,
    subscribe,
    tenant_db,
    until,
    write_sql,
    writes,
)

__all__ = ["seeded"]  # the fixture, used here

Json = dict[str, Any]

SAMI = auth("sami", "driver")
TALA = auth("tala", "driver")
NEAR = {"lat": 25.2700, "lng": 55.3400}  # about 1 km from Bab Al Hara
FAR = {"lat": 25.3500, "lng": 55.4500}  # about 15 km from it
# The steps that must never follow a cancel in an order's log.
STEP_OPCODES = {203, 301, 303, 102, 305, 302, 502, 503, 401, 402}


async def online(c: httpx.AsyncClient, who: dict[str, str], at: Json) -> None:
    r = await c.post("/api/drivers/status", json={"status": "online", **at}, headers=who)
    assert r.status_code == 200, r.text


async def act(c: httpx.AsyncClient, order_id: str, action: str, who: dict[str, str],
              body: Json | None = None) -> httpx.Response:  # fmt: skip
    return await c.post(f"/api/orders/{order_id}/{action}", json=body or {}, headers=who)


def opcodes(events: list[Json]) -> list[int]:
    return [e["opcode"] for e in events]


def public_driver(data: Path, driver: str) -> tuple[Any, ...]:
    """The driver's (availability, openNow, claim) in the public DB."""
    got = rows(data / "public.db",
               "SELECT availability, openNow, claim FROM points WHERE workspaceId = ?", driver)
    assert len(got) == 1, got
    return got[0]


def check_no_step_after_cancel(events: list[Json]) -> None:
    ops = opcodes(events)
    if 504 in ops:
        after = set(ops[ops.index(504):]) & STEP_OPCODES
        assert not after, f"steps {after} after the cancel: {ops}"


# -- cancel: what each path writes --------------------------------------------------------

# (the step the order reaches first, who cancels, the opcodes the cancel writes, the rows
# it writes to the streams, tenant and public DBs)
CANCELS = {
    "customer, placed": (None, ALI, [504], {"streams": 1, "tenant": 0, "public": 0}),
    "customer, paid": ("pay", ALI, [504, 204], {"streams": 2, "tenant": 0, "public": 0}),
    "restaurant rejects, paid": ("pay", KITCHEN, [504, 204],
                                 {"streams": 2, "tenant": 0, "public": 0}),
    # the ledger row and the two stock points back
    "restaurant, accepted": ("accept", KITCHEN, [504, 204, 103, 103],
                             {"streams": 4, "tenant": 3, "public": 0}),
    # and the driver idle again in his DB and in the public DB
    "platform, assigned": ("ready", PLATFORM, [504, 204, 103, 103, 306],
                           {"streams": 5, "tenant": 4, "public": 1}),
}


@pytest.mark.parametrize("path", list(CANCELS))
async def test_cancel_writes_what_section_6_says(
    seeded: Callable[..., HubProcess], path: str
) -> None:
    """Each cancel writes ORDER_CANCEL, the refund of what Step 2 took, the stock back
    (SALE_RETURN, and in the restaurant's DB), the driver off the order (TASK_UNASSIGN;
    idle again), no more and no less; the order is ``cancelled``, every later step is
    409, a second cancel is 409 ``already_done``, and the stream is archived."""
    reached, who, written, rows_written = CANCELS[path]
    hub = seeded({"HUB_ARCHIVE_DELAY": "1"})
    data = hub.data_dir
    oid = "ord-c"
    async with http(hub) as c:
        created = await place(c, oid)
        if reached is not None:
            await advance(c, oid, reached)
        stock_before = stock(data)
        before = await writes(c)
        r = await act(c, oid, "cancel", who, {"reason": "changed my mind"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["orderStatus"] == "cancelled"
        assert opcodes(out["events"]) == written
        assert diff(before, await writes(c)) == rows_written
        cancel = out["events"][0]
        role = {id(ALI): "customer", id(KITCHEN): "restaurant", id(PLATFORM): "platform"}[id(who)]
        assert cancel["payload"] == {"by": role, "reason": "changed my mind"}
        assert cancel["id"] == f"{oid}.cancel"
        if 204 in written:
            refund = out["events"][1]
            assert refund["payload"] == {"amount": created["total"], "currency": "AED",
                                         "reason": "changed my mind"}  # fmt: skip
            assert refund["delta"] == -created["total"]
        if 103 in written:
            returns = [e for e in out["events"] if e["opcode"] == 103]
            assert sorted((e["pointId"], e["delta"]) for e in returns) == [
                ("pt-lbn", 1), ("pt-shw", 2)]  # fmt: skip
            assert stock(data) == {"pt-shw": stock_before["pt-shw"] + 2,
                                   "pt-lbn": stock_before["pt-lbn"] + 1}  # fmt: skip
            assert stock(data) == {"pt-shw": 200, "pt-lbn": 150}
        else:
            assert stock(data) == stock_before
        if 306 in written:
            unassign = out["events"][-1]
            assert unassign["payload"] == {"driver": "rami", "reason": "cancelled"}
            assert public_driver(data, "rami") == ("idle", 1, None)
            assert rows(tenant_db(data, "rami"),
                        "SELECT availability FROM points WHERE nodeId = 'rami'") == [("idle",)]

        details = (await c.get(f"/api/orders/{oid}", headers=ALI)).json()
        assert details["orderStatus"] == "cancelled"
        assert details["actions"] == []
        assert details["cancelled"] == {"by": role, "reason": "changed my mind"}
        if 204 in written:
            assert details["refund"] == {"amount": created["total"], "currency": "AED"}
        assert (await stream(c, oid))["orderStatus"] == "cancelled"

        quiet = await writes(c)
        for name, party in (("pay", ALI), ("accept", KITCHEN), ("ready", KITCHEN),
                            ("pickup", RAMI), ("deliver", RAMI)):  # fmt: skip
            r = await act(c, oid, name, party, STEP[name][1])
            assert r.status_code in (403, 409), (name, r.status_code, r.text)
        again = await act(c, oid, "cancel", PLATFORM)
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "already_done"
        assert diff(quiet, await writes(c)) == ZERO

        async def archived() -> bool:
            return (await stream(c, oid))["status"] == "archived"

        await until(archived, 10, "the cancelled order archived")
        assert (await stream(c, oid))["orderStatus"] == "cancelled"


async def test_a_cancel_out_of_turn_is_refused_and_writes_nothing(
    seeded: Callable[..., HubProcess],
) -> None:
    """Too late for the caller (a customer once the kitchen accepted, a restaurant once
    the order is ready, anyone once it is delivered), not the order's party, not a party
    that cancels, or a bad body: a 4xx with the error body, and nothing written anywhere."""
    hub = seeded()
    data = hub.data_dir
    other = auth("noor", "customer")
    async with http(hub) as c:
        await place(c, "ord-a")
        await advance(c, "ord-a", "accept")
        await place(c, "ord-d")
        await advance(c, "ord-d", "deliver")
        await place(c, "ord-b")
        await advance(c, "ord-b", "ready")
        await place(c, "ord-p")
        before, rows_before = await writes(c), snapshot(data)
        refused = [
            ("ord-a", ALI, {}, 409, "out_of_turn"),
            ("ord-b", KITCHEN, {}, 409, "out_of_turn"),
            ("ord-d", PLATFORM, {}, 409, "already_done"),  # delivered, archived
            ("ord-d", ALI, {}, 409, "already_done"),
            ("ord-p", other, {}, 403, None),
            ("ord-p", RAMI, {}, 403, None),
            ("ord-p", ALI, {"reason": "x" * 201}, 422, None),
            ("ord-p", ALI, {"reason": 5}, 422, None),
            ("ord-nope", PLATFORM, {}, 403, None),  # as every order step answers
        ]
        for oid, who, body, status, code in refused:
            r = await act(c, oid, "cancel", who, body)
            assert r.status_code == status, (oid, r.status_code, r.text)
            if code is not None:
                assert r.json()["error"]["code"] == code, r.text
        r = await c.post("/api/orders/ord-p/cancel", content=b"{nope", headers=ALI)
        assert r.status_code == 400, r.text
        assert diff(before, await writes(c)) == ZERO
        after = snapshot(data)
        assert after == rows_before


async def test_a_cancel_sent_again_while_the_order_is_archived_is_409_not_404(
    seeded: Callable[..., HubProcess],
) -> None:
    """A customer's app that sends its cancel again (it did not see the answer) while the
    hub archives the cancelled order gets 409 ``already_done`` every time: never a 404
    from a stream whose events left the DB between the hub's two reads of it."""
    hub = seeded()
    seen: dict[int, int] = {}

    async def resend(c: httpx.AsyncClient, oid: str, done: asyncio.Event) -> None:
        while not done.is_set():  # until the stream is archived, and once more after that
            archived = (await stream(c, oid))["status"] == "archived"
            r = await act(c, oid, "cancel", ALI)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code == 409, (oid, r.status_code, r.text)
            assert r.json()["error"]["code"] == "already_done", r.text
            if archived:
                done.set()

    async def cancel_and_resend(c: httpx.AsyncClient, oid: str) -> None:
        await place(c, oid)
        r = await act(c, oid, "cancel", ALI)
        assert r.status_code == 200, r.text
        done = asyncio.Event()
        await asyncio.gather(*(resend(c, oid, done) for _ in range(6)))

    async with http(hub) as c:
        for batch in range(2):
            await asyncio.gather(*(cancel_and_resend(c, f"ord-re{batch}x{i}") for i in range(10)))
    print(f"answers to cancels sent again: {seen}")


# -- decline and reassignment -------------------------------------------------------------


async def test_decline_goes_to_the_next_nearest_never_back_to_the_decliner(
    seeded: Callable[..., HubProcess],
) -> None:
    """Rami declines: TASK_UNASSIGN, he is idle again, Sami (the next nearest) gets the
    order. Rami's socket on the stream is closed 4403 right after the TASK_UNASSIGN, the
    stream is no longer his (403), his inbox stops carrying it. Sami declines too: the
    order waits ``ready`` although Rami is idle (he declined it); Tala comes online and
    gets it."""
    hub = seeded()
    data = hub.data_dir
    oid = "ord-dec"
    async with http(hub) as c:
        await online(c, SAMI, NEAR)
        await place(c, oid)
        assigned = await advance(c, oid, "ready")
        assert assigned[-1]["events"][-1]["payload"]["driver"] == "rami"
        async with subscribe(hub, f"/ws/streams/{oid}", RAMI) as rami_sock, \
                subscribe(hub, "/ws/inbox", RAMI) as rami_inbox:  # fmt: skip
            await until(lambda: rami_sock.of("live"), 5, "rami's stream socket live")
            await until(lambda: rami_inbox.of("live"), 5, "rami's inbox live")
            before = await writes(c)
            r = await act(c, oid, "decline", RAMI, {"reason": "flat tyre"})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["orderStatus"] == "assigned"
            assert opcodes(out["events"]) == [306, 302]
            unassign, reassign = out["events"]
            assert unassign["payload"] == {"driver": "rami", "reason": "declined",
                                           "note": "flat tyre"}  # fmt: skip
            assert unassign["id"] == f"{oid}.unassign.1"
            assert reassign["payload"]["driver"] == "sami"
            assert reassign["id"] == f"{oid}.assign.2"
            # the two events; rami idle (his DB, public DB); sami claimed (public DB),
            # en route with a delivery node (his DB)
            assert diff(before, await writes(c)) == {"streams": 2, "tenant": 3, "public": 2}
            assert public_driver(data, "rami") == ("idle", 1, None)
            assert public_driver(data, "sami") == ("idle", 0, oid)

            closed_at = time.monotonic()
            await until(lambda: rami_sock.closed, 1.5, "rami's stream socket closed")
            assert time.monotonic() - closed_at < 1.5
            assert rami_sock.conn.close_code == 4403
            assert rami_sock.events()[-1]["id"] == unassign["id"]
            r = await c.get(f"/api/streams/{oid}", headers=RAMI)
            assert r.status_code == 403, r.text
            r = await c.get(f"/api/orders/{oid}", headers=RAMI)
            assert r.status_code == 403, r.text
            r = await act(c, oid, "pickup", RAMI)  # he knew of it: told why, not a 403
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "out_of_turn"

            await until(lambda: any(e["id"] == unassign["id"] for e in rami_inbox.events()),
                        5, "the TASK_UNASSIGN in rami's inbox")  # fmt: skip
            before = await writes(c)
            r = await act(c, oid, "decline", SAMI)
            assert r.status_code == 200, r.text
            assert r.json()["orderStatus"] == "ready"
            # the event; sami idle in his DB and unclaimed in the public DB; nobody else
            assert diff(before, await writes(c)) == {"streams": 1, "tenant": 1, "public": 1}
            assert opcodes(r.json()["events"]) == [306]
            await asyncio.sleep(0.3)
            assert not any(e["opcode"] == 302 and e["id"] == reassign["id"]
                           for e in rami_inbox.events())  # fmt: skip
            # His inbox carried the stream up to his TASK_UNASSIGN, nothing after it.
            assert [e["id"] for e in rami_inbox.events() if e["streamId"] == oid][-1] == (
                unassign["id"])  # fmt: skip

        await asyncio.sleep(0.3)
        assert (await stream(c, oid))["orderStatus"] == "ready"
        assert public_driver(data, "rami") == ("idle", 1, None)
        await online(c, TALA, FAR)

        async def assigned_to_tala() -> bool:
            got = await stream(c, oid)
            return bool(got["orderStatus"] == "assigned"
                        and got["events"][-1]["payload"].get("driver") == "tala")  # fmt: skip

        await until(assigned_to_tala, 5, "the order assigned to tala")
        events = (await stream(c, oid))["events"]
        assert [e["payload"].get("driver") for e in events if e["opcode"] == 302] == [
            "rami", "sami", "tala"]  # fmt: skip
        # A reassigned driver is a member again; the replay of his inbox has both spans.
        r = await act(c, oid, "pickup", TALA)
        assert r.status_code == 200, r.text
        r = await act(c, oid, "deliver", TALA, DEST)
        assert r.status_code == 200, r.text


async def test_decline_is_the_assigned_drivers_before_pickup(
    seeded: Callable[..., HubProcess],
) -> None:
    """A decline by another driver, a customer, or after pickup is refused; nothing written."""
    hub = seeded()
    async with http(hub) as c:
        await online(c, SAMI, FAR)
        await place(c, "ord-x")
        await advance(c, "ord-x", "ready")
        await place(c, "ord-y")
        await advance(c, "ord-y", "accept")
        before = await writes(c)
        for oid, who, status in (("ord-x", SAMI, 403), ("ord-x", ALI, 403),
                                 ("ord-x", KITCHEN, 403), ("ord-y", RAMI, 403)):  # fmt: skip
            r = await act(c, oid, "decline", who)
            assert r.status_code == status, (oid, r.text)
        await step(c, "ord-x", "pickup")
        before = await writes(c)
        r = await act(c, "ord-x", "decline", RAMI)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "out_of_turn"
        assert diff(before, await writes(c)) == ZERO


# -- timers -------------------------------------------------------------------------------


async def test_a_silent_driver_is_unassigned_and_the_order_reassigned(
    seeded: Callable[..., HubProcess],
) -> None:
    """Rami is assigned and sends no position for HUB_DRIVER_TIMEOUT: TASK_UNASSIGN
    (``unreachable``), he is offline (not offered orders), and Sami, who keeps sending his
    position, gets the order and keeps it."""
    hub = seeded({"HUB_DRIVER_TIMEOUT": "1.5"})
    data = hub.data_dir
    oid = "ord-silent"
    async with http(hub) as c:
        await online(c, SAMI, FAR)
        stop = asyncio.Event()

        async def sami_pings() -> None:
            while not stop.is_set():
                await c.post("/api/motion", json=FAR, headers=SAMI)
                await asyncio.sleep(0.3)

        pinger = asyncio.create_task(sami_pings())
        try:
            await place(c, oid)
            await advance(c, oid, "ready")

            async def reassigned() -> list[Json]:
                events = (await stream(c, oid))["events"]
                return events if events[-1]["opcode"] == 302 and len(events) > 8 else []

            events = await until(reassigned, 10, "the order reassigned")
            assert opcodes(events[7:]) == [302, 306, 302]
            assert events[8]["payload"] == {"driver": "rami", "reason": "unreachable"}
            assert events[9]["payload"]["driver"] == "sami"
            assert public_driver(data, "rami") == ("offline", 0, None)
            await asyncio.sleep(2.5)  # sami is heard of: he keeps it
            assert len((await stream(c, oid))["events"]) == 10
        finally:
            stop.set()
            await pinger


async def test_an_order_nobody_accepts_is_cancelled_and_refunded(
    seeded: Callable[..., HubProcess],
) -> None:
    """A paid order no kitchen accepts within HUB_ACCEPT_TIMEOUT is cancelled by the
    platform (``not_accepted``) and refunded; a placed, unpaid order is left alone."""
    hub = seeded({"HUB_ACCEPT_TIMEOUT": "1"})
    async with http(hub) as c:
        await place(c, "ord-unpaid")
        created = await place(c, "ord-late")
        before = await writes(c)
        await step(c, "ord-late", "pay")

        async def cancelled() -> list[Json]:
            got = await stream(c, "ord-late")
            return got["events"] if got["orderStatus"] == "cancelled" else []

        events = await until(cancelled, 10, "the unaccepted order cancelled")
        assert opcodes(events) == [501, 203, 504, 204]
        assert events[2]["payload"] == {"by": "platform", "reason": "not_accepted"}
        assert events[3]["payload"]["amount"] == created["total"]
        assert (await stream(c, "ord-unpaid"))["orderStatus"] == "placed"
        # the payment, then the cancel and the refund: nothing outside the streams DB
        assert diff(before, await writes(c)) == {"streams": 3, "tenant": 0, "public": 0}


async def test_overdue_orders_found_after_a_restart_are_acted_on_once(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """Orders that became overdue while no hub ran (the timers' times are in the stream
    and the driver's DB, not in memory): the restarted hub cancels the unaccepted one and
    unassigns the silent driver, once each, even with two instances starting together."""
    data = tmp_path / "data"
    run_seed(data)
    hub = hub_factory(data_dir=data, env={"HUB_ACCEPT_TIMEOUT": "3600",
                                          "HUB_DRIVER_TIMEOUT": "3600"})  # fmt: skip
    async with http(hub) as c:
        await place(c, "ord-paid")
        await step(c, "ord-paid", "pay")
        await place(c, "ord-taken")
        await advance(c, "ord-taken", "ready")
    hub.stop()
    await asyncio.sleep(1.2)
    env = {"HUB_ACCEPT_TIMEOUT": "1", "HUB_DRIVER_TIMEOUT": "1"}
    one, two = hub_factory(data_dir=data, env=env), hub_factory(data_dir=data, env=env)
    async with http(one) as c:

        async def acted() -> bool:
            paid, taken = await stream(c, "ord-paid"), await stream(c, "ord-taken")
            return paid["orderStatus"] == "cancelled" and 306 in opcodes(taken["events"])

        await until(acted, 15, "both overdue orders acted on")
        await asyncio.sleep(1.5)  # more sweeps of both instances
        paid, taken = await stream(c, "ord-paid"), await stream(c, "ord-taken")
    assert opcodes(paid["events"]) == [501, 203, 504, 204]
    assert opcodes(taken["events"]).count(306) == 1
    assert two.proc is not None
    assert two.proc.poll() is None


# -- the geofence ---------------------------------------------------------------------------


async def test_deliver_far_from_the_drop_off_is_refused(seeded: Callable[..., HubProcess]) -> None:
    """21 km from the drop-off: 409 ``too_far`` and nothing written; at it: delivered."""
    hub = seeded()
    async with http(hub) as c:
        await place(c, "ord-geo")
        await advance(c, "ord-geo", "pickup")
        before, rows_before = await writes(c), snapshot(hub.data_dir)
        r = await act(c, "ord-geo", "deliver", RAMI, {"lat": 25.2650, "lng": 55.3320})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "too_far"
        assert diff(before, await writes(c)) == ZERO
        assert snapshot(hub.data_dir) == rows_before
        r = await act(c, "ord-geo", "deliver", RAMI, DEST)
        assert r.status_code == 200, r.text


# -- races --------------------------------------------------------------------------------

RACES = 100
BATCH = 10  # races run at once (each on its own order)
# The racing cancel of each step: someone who may cancel just before it and not after.
RACE = {
    "accept": ("paid", ALI),
    "ready": ("preparing", KITCHEN),
    "pickup": ("assigned", PLATFORM),
    "deliver": ("picked_up", PLATFORM),
}
DRIVERS = [f"drv-{i}" for i in range(BATCH)]


async def prepare(c: httpx.AsyncClient, oid: str, kind: str) -> dict[str, str] | None:
    """An order of one shawarma brought to just before ``kind``; its driver's token."""
    r = await c.post("/api/orders", headers=ALI, json={
        "orderId": oid, "restaurant": "bab-hara", "items": [{"productId": "prod-shw", "qty": 1}],
        "deliveryAddress": "Marina Walk"})  # fmt: skip
    assert r.status_code == 201, r.text
    driver = None
    for name in ("pay", "accept", "ready", "pickup")[: list(RACE).index(kind) + 1]:
        who = {"pay": ALI, "accept": KITCHEN, "ready": KITCHEN}.get(name, driver)
        assert who is not None
        r = await act(c, oid, name, who, {"method": "card"} if name == "pay" else {})
        # "busy" (100 accepts taking the same stock at once): retry, as the answer says.
        for pause in (0.05, 0.1, 0.2, 0.4, 0.8):
            if r.status_code == 200 or "busy" not in r.text:
                break
            await asyncio.sleep(pause)
            r = await act(c, oid, name, who, {"method": "card"} if name == "pay" else {})
        assert r.status_code == 200, (name, r.text)
        if name == "ready":
            assert r.json()["orderStatus"] == "assigned", r.text
            driver = auth(r.json()["events"][-1]["payload"]["driver"], "driver")
    return driver


async def race_once(cancel_c: httpx.AsyncClient, step_c: httpx.AsyncClient, oid: str,
                    kind: str) -> str:  # fmt: skip
    """One race of a cancel against ``kind``; the winner's name. Afterwards the order is
    finished (cancelled by the platform if the step won and it may still be)."""
    driver = await prepare(step_c, oid, kind)
    _, canceller = RACE[kind]
    who = driver if kind in ("pickup", "deliver") else KITCHEN
    assert who is not None
    step_body = DEST if kind == "deliver" else {}
    cancel, stepped = await asyncio.gather(
        act(cancel_c, oid, "cancel", canceller, {"reason": "race"}),
        act(step_c, oid, kind, who, step_body),
    )
    codes = sorted((cancel.status_code, stepped.status_code))
    if kind == "pickup" and codes == [200, 200]:
        # The platform may cancel a picked-up order (docs/protocol.md §6): a cancel the hub
        # received after the pickup had committed is no race, and lands after it.
        assert opcodes(cancel.json()["events"])[0] == 504
        assert stepped.json()["events"][0]["seq"] < cancel.json()["events"][0]["seq"]
        return "pickup, then cancel"
    assert codes == [200, 409], (oid, cancel.text, stepped.text)
    loser = cancel if cancel.status_code == 409 else stepped
    assert loser.json()["error"]["code"] in ("out_of_turn", "already_done"), loser.text
    winner = "cancel" if cancel.status_code == 200 else kind
    if winner != "cancel" and kind != "deliver":  # finish it: the platform cancels
        r = await act(step_c, oid, "cancel", PLATFORM, {"reason": "cleanup"})
        assert r.status_code == 200, r.text
    return winner


async def run_races(hubs: list[HubProcess], kind: str) -> dict[str, int]:
    """RACES races of a cancel against ``kind``, the two requests on ``hubs[0]`` and
    ``hubs[-1]`` (alternately); checks every order's log and the stock at the end."""
    data = hubs[0].data_dir
    shw = stock(data)["pt-shw"]
    wins: dict[str, int] = {}
    async with http(hubs[0]) as a, http(hubs[-1]) as b:
        for start in range(0, RACES, BATCH):
            oids = [f"ord-{kind}-{i}" for i in range(start, start + BATCH)]
            pairs = [(a, b) if i % 2 else (b, a) for i in range(BATCH)]
            winners = await asyncio.gather(*(race_once(x, y, oid, kind)
                                             for oid, (x, y) in zip(oids, pairs, strict=True)))
            for w in winners:
                wins[w] = wins.get(w, 0) + 1
        for i in range(RACES):
            oid = f"ord-{kind}-{i}"
            got = await stream(a, oid)
            check_no_step_after_cancel(got["events"])
            ops = opcodes(got["events"])
            assert ops.count(504) <= 1, ops
            assert ops.count(103) <= 1, ops
            assert ops.count(103) == (1 if 504 in ops and 102 in ops else 0), ops
    # Every order's shawarma is back unless the order was delivered: never twice, never lost.
    delivered = wins.get("deliver", 0)
    assert stock(data)["pt-shw"] == shw - delivered, wins
    # One return ledger row per order whose stock went back, never more.
    ledgers = rows(tenant_db(data, "bab-hara"),
                   "SELECT id FROM nodes WHERE nodeType = 'stock-return'")
    assert len(ledgers) == len({r[0] for r in ledgers}) <= RACES - delivered
    if kind != "accept":  # every order was accepted: each one not delivered came back
        assert len(ledgers) == RACES - delivered, (len(ledgers), wins)
    print(f"{kind}: {wins}")  # the counts, with -s
    return wins


def race_data(tmp_path: Path) -> Path:
    """The seed, with stock for every race and the drivers that take the orders."""
    data = tmp_path / "data"
    run_seed(data)
    write_sql(tenant_db(data, "bab-hara"),
              ("UPDATE points SET qty = 100000 WHERE id = 'pt-shw'", ()))  # fmt: skip
    return data


async def drivers_online(hub: HubProcess) -> None:
    async with http(hub) as c:
        r = await c.post("/api/drivers/status", json={"status": "offline"}, headers=RAMI)
        assert r.status_code == 200, r.text
        for name in DRIVERS:
            await online(c, auth(name, "driver"), NEAR)


@pytest.mark.parametrize("kind", list(RACE))
async def test_a_cancel_racing_a_step_lands_alone(
    hub_factory: Callable[..., HubProcess], tmp_path: Path, kind: str
) -> None:
    """100 races of a cancel against each step, the two requests from two clients at
    once on one hub: exactly one succeeds, the other is 409 (a cancel received while
    the step was being taken loses even where the platform could cancel the order the
    step leaves; one received after the pickup committed is no race), no log holds a
    step after its cancel, and the stock comes back exactly once for every order not
    delivered."""
    hub = hub_factory(data_dir=race_data(tmp_path))
    await drivers_online(hub)
    await run_races([hub], kind)


@pytest.mark.parametrize("kind", list(RACE))
async def test_a_cancel_racing_a_step_on_another_instance_lands_alone(
    hub_factory: Callable[..., HubProcess], tmp_path: Path, redis_server: RedisServer, kind: str
) -> None:
    """The same 100 races with the cancel sent to one hub instance and the step to
    another, sharing a Redis and the streams, tenant and public DBs."""
    data = race_data(tmp_path)
    env = {"HUB_REDIS_URL": redis_server.url}
    hubs = [hub_factory(data_dir=data, env=env), hub_factory(data_dir=data, env=env)]
    await drivers_online(hubs[0])
    await run_races(hubs, kind)


async def test_a_socket_on_another_instance_is_closed_at_its_drivers_unassign(
    hub_factory: Callable[..., HubProcess], tmp_path: Path, redis_server: RedisServer
) -> None:
    """Rami watches the order on instance B; he declines through instance A. B sends him
    the TASK_UNASSIGN and closes his socket with 4403 within 1 s; his inbox on B carries
    the stream up to that event; a resumed inbox on B replays the same."""
    data = tmp_path / "data"
    run_seed(data)
    env = {"HUB_REDIS_URL": redis_server.url}
    a, b = hub_factory(data_dir=data, env=env), hub_factory(data_dir=data, env=env)
    oid = "ord-x2"
    async with http(a) as c:
        await place(c, oid)
        await advance(c, oid, "ready")
        async with subscribe(b, f"/ws/streams/{oid}", RAMI) as sock, \
                subscribe(b, "/ws/inbox", RAMI) as inbox:  # fmt: skip
            await until(lambda: sock.of("live") and inbox.of("live"), 5, "both sockets live")
            r = await act(c, oid, "decline", RAMI)
            assert r.status_code == 200, r.text
            sent = time.monotonic()
            unassign = r.json()["events"][0]
            await until(lambda: sock.closed, 1.5, "the socket on B closed")
            assert time.monotonic() - sent < 1.5
            assert sock.conn.close_code == 4403
            assert sock.events()[-1]["id"] == unassign["id"]
            await until(lambda: any(e["id"] == unassign["id"] for e in inbox.events()), 5,
                        "the TASK_UNASSIGN in his inbox on B")  # fmt: skip
            live = [e["id"] for e in inbox.events() if e["streamId"] == oid]
        async with subscribe(b, "/ws/inbox?since=0", RAMI) as again:
            await until(lambda: again.of("live"), 5, "the resumed inbox live")
            replayed = [e["id"] for e in again.events() if e["streamId"] == oid]
    assert replayed[-1] == unassign["id"]
    assert live == replayed[-len(live):]
