"""Attacks on the order flow, each against a real hub (docs/reliability.md, "Attacks on the
order flow"): squatted and probed event ids, a driver claimed for an order that never names
him, forged prices, a stream padded past what a step reads, tenant ids outside the pattern
in payloads, rows left by a refused Step 1.

Each test failed on the hub before its fix. The hubs are real ``hub serve`` processes on
data dirs loaded by ``hub seed`` (the helpers of tests/test_orders.py); the assertions read
the answers, the hub's SQLite files (read-only) and its /metrics write counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, auth
from tests.test_orders import (
    ACCEPT,
    ALI,
    KITCHEN,
    PLATFORM,
    RAMI,
    ZERO,
    Json,
    advance,
    check_seed_table,
    diff,
    driver_point,
    http,
    order_body,
    place,
    restart_after,
    rows,
    run_seed,
    snapshot,
    step,
    stock,
    stored_opcodes,
    stream,
    tenant_db,
    until,
    write_sql,
    writes,
)

BOB = auth("bob", "customer")
ONLINE = {"status": "online", "lat": 25.2640, "lng": 55.3310}  # Rami where the seed has him


def sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def order_create(customer: str, **fields: Any) -> Json:
    """A customer's own ORDER_CREATE, through the generic event API."""
    return {"opcode": 501, "payload": {"customer": customer, "restaurant": "bab-hara"}, **fields}


async def post_events(c: httpx.AsyncClient, stream_id: str, body: Json,
                      who: dict[str, str]) -> httpx.Response:  # fmt: skip
    return await c.post(f"/api/streams/{stream_id}/events", json=body, headers=who)


def error_code(r: httpx.Response) -> str | None:
    """The error body's code; None for an answer that is no error."""
    error = r.json().get("error") if r.status_code >= 400 else None
    return str(error["code"]) if isinstance(error, dict) else None


def archived(c: httpx.AsyncClient, oid: str) -> Callable[[], Any]:
    """A probe for ``until``: the stream once Step 11 archived it (a read while it is being
    archived may find it active and already emptied: read it once it is archived)."""

    async def probe() -> Json | None:
        got = await stream(c, oid)
        return got if got["status"] == "archived" else None

    return probe


@pytest.fixture
def seeded(hub_factory: Callable[..., HubProcess], tmp_path: Path) -> Callable[..., HubProcess]:
    """Start a hub (``seeded(env)``) on a data dir loaded with the seed's Step 0."""

    def make(env: dict[str, str] | None = None) -> HubProcess:
        data = tmp_path / "data"
        run_seed(data)
        return hub_factory(data_dir=data, env=env)

    return make


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One seeded hub for the tests that leave Rami idle."""
    data = tmp_path_factory.mktemp("attacks") / "data"
    run_seed(data)
    hub = HubProcess(data).start()
    try:
        yield hub
    finally:
        hub.stop()


# -- 1. event ids: no oracle, no squatting ------------------------------------------------


async def test_an_event_id_held_by_another_stream_tells_nothing(shared: HubProcess) -> None:
    """Bob's new stream takes any id, whether another stream holds it or not: the answer
    cannot tell him that Ali's order (or Ali's own event id) exists."""
    oid = sid("ord")
    async with http(shared) as c:
        await place(c, oid)
        note = {"id": f"ali-note-{oid}", "opcode": 203, "payload": {"note": "ring twice"}}
        assert (await post_events(c, oid, note, ALI)).status_code == 201
        ali_sees = await stream(c, oid, ALI)

        probes = {  # id -> whether some stream Bob cannot read holds it
            f"{oid}.create": True, f"{oid}.pay": False, f"ali-note-{oid}": True,
            f"{sid('ord')}.create": False, f"bob-{oid}": False,
        }  # fmt: skip
        answers = {}
        for event_id in probes:
            own = sid("bob")
            r = await post_events(c, own, order_create("bob", id=event_id), BOB)
            answers[event_id] = (r.status_code, sorted(r.json()))
            if r.status_code == 201:
                assert r.json()["events"][0]["id"] == event_id, r.text
                assert r.json()["events"][0]["streamId"] == own, r.text
        assert answers == dict.fromkeys(probes, (201, ["events"])), answers
        assert await stream(c, oid, ALI) == ali_sees


async def test_the_next_order_id_cannot_be_squatted(shared: HubProcess) -> None:
    """Bob writes ``<Ali's next order>.create`` first; Ali's order goes through anyway."""
    oid = sid("ord")
    async with http(shared) as c:
        r = await post_events(c, sid("bob"), order_create("bob", id=f"{oid}.create"), BOB)
        assert r.status_code == 201, r.text
        await place(c, oid)  # 409 before: the id was taken
        await advance(c, oid, "deliver")
        check_seed_table((await until(archived(c, oid), 5, "the order archived"))["events"], oid)


async def test_the_order_steps_ids_are_the_hubs(shared: HubProcess) -> None:
    """A party may not choose an id ``{streamId}.…`` (the order steps' ids): 422
    ``reserved_id``, nothing written, whether the stream exists or not; the platform may."""
    data = shared.data_dir
    oid = sid("ord")
    own = sid("ali")
    async with http(shared) as c:
        await place(c, oid)
        before, rows_before = await writes(c), snapshot(data)
        attempts: list[tuple[str, dict[str, str], Json]] = [
            (oid, ALI, {"id": f"{oid}.assign", "opcode": 203}),
            (oid, ALI, {"id": f"{oid}.pay", "opcode": 203, "delta": 0}),
            (oid, KITCHEN, {"id": f"{oid}.sale.prod-shw", "opcode": 102, "nodeId": "prod-shw",
                            "pointId": "pt-shw", "delta": -2}),
            (oid, KITCHEN, {"events": [{"opcode": 301}, {"id": f"{oid}.done", "opcode": 305}]}),
            (own, ALI, order_create("ali", id=f"{own}.create")),
            (oid, BOB, {"id": f"{oid}.x", "opcode": 203}),  # not a member: the same 422
            (f"{oid}-nope", BOB, {"id": f"{oid}-nope.x", "opcode": 203}),  # no such stream
        ]  # fmt: skip
        for stream_id, who, body in attempts:
            r = await post_events(c, stream_id, body, who)
            assert (r.status_code, error_code(r)) == (422, "reserved_id"), (body, r.text)
        assert diff(before, await writes(c)) == ZERO
        assert snapshot(data) == rows_before

        # The platform may (it repairs what a crash left, as tests/test_orders.py does).
        r = await post_events(c, own, order_create("ali", id=f"{own}.create"), PLATFORM)
        assert r.status_code == 201, r.text


# -- 2. a driver claimed for an order that never names him ---------------------------------


async def test_a_squatted_assign_id_cannot_strand_the_driver(
    seeded: Callable[..., HubProcess],
) -> None:
    """Ali writes ``<her order>.assign`` into a second stream of her own, then the order is
    paid, accepted and ready: Rami is assigned (before: claimed, then the TASK_ASSIGN got
    409 and he stayed en-route with no order), delivers, and takes the next order."""
    hub = seeded()
    data = hub.data_dir
    first, second = "ord-trap", "ord-next"
    async with http(hub) as c:
        await place(c, first)
        r = await post_events(c, "ali-second", order_create("ali", id=f"{first}.assign"), ALI)
        assert r.status_code == 201, r.text
        await advance(c, first, "deliver")
        check_seed_table((await until(archived(c, first), 5, "the order archived"))["events"],
                         first)  # fmt: skip
        await place(c, second)
        await advance(c, second, "deliver")
    for db in (tenant_db(data, "rami"), data / "public.db"):
        assert driver_point(db)[:2] == ("idle", 1), db
    assert rows(data / "public.db", "SELECT claim FROM points") == [(None,)]


STALE_DELIVERY = (
    "INSERT INTO nodes (id, nodeType, title, createdAt, payload)"
    " VALUES (?, 'delivery', ?, '2026-11-27T12:43:30.000Z', '{}')"
)


@pytest.mark.parametrize("order_state", ["paid", "no-such-order"])
async def test_start_up_undoes_a_claim_without_its_task_assign(
    seeded: Callable[..., HubProcess], hub_factory: Callable[..., HubProcess], order_state: str,
) -> None:  # fmt: skip
    """Rami left claimed and en-route for an order without a TASK_ASSIGN for him (what a
    refused Step 6 left before): a restart releases him, and he takes the next order."""
    hub = seeded()
    data = hub.data_dir
    stale = "ord-stale" if order_state == "paid" else "ord-ghost"
    async with http(hub) as c:
        if order_state == "paid":
            await place(c, stale)
            await advance(c, stale, "pay")

    def crashed() -> None:
        write_sql(
            data / "public.db",
            ("UPDATE points SET openNow = false, claim = ? WHERE id = 'pt-rami-loc'", (stale,)),
        )
        write_sql(tenant_db(data, "rami"), (STALE_DELIVERY, (stale, f"Delivery {stale}")), (
            "UPDATE points SET availability = 'en-route', openNow = false"
            " WHERE id = 'pt-rami-loc'", ()))  # fmt: skip

    hub = await restart_after(hub, hub_factory, crashed)
    async with http(hub) as c:
        r = await c.get("/api/drivers/me", headers=RAMI)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["orderId"]) == ("online", None), r.text
        for db in (tenant_db(data, "rami"), data / "public.db"):
            assert driver_point(db)[:2] == ("idle", 1), db
        assert rows(data / "public.db", "SELECT claim FROM points") == [(None,)]
        assert rows(tenant_db(data, "rami"), "SELECT id FROM nodes WHERE nodeType = 'delivery'"
                    ) == []  # fmt: skip
        nxt = "ord-after"
        await place(c, nxt)
        await advance(c, nxt, "deliver")
        if order_state == "paid":  # the stale order itself goes on as well
            await advance_from(c, stale, "accept")


async def test_a_claim_that_cannot_become_a_task_assign_is_undone(
    seeded: Callable[..., HubProcess], hub_factory: Callable[..., HubProcess],
) -> None:  # fmt: skip
    """A ready order claimed for a public DB row whose workspaceId is no tenant id (its
    TASK_ASSIGN can never be written): the claim is undone and the order gets Rami once he
    is online (before: the claim stayed and every attempt failed on it)."""
    hub = seeded()
    data = hub.data_dir
    oid = "ord-bad-claim"
    async with http(hub) as c:
        r = await c.post("/api/drivers/status", json={"status": "offline"}, headers=RAMI)
        assert r.status_code == 200, r.text
        await place(c, oid)
        await advance(c, oid, "accept")
        await step(c, oid, "ready", "ready")

    def crashed() -> None:
        write_sql(data / "public.db", (
            "INSERT INTO points (id, workspaceId, nodeId, availability, lat, lng, openNow,"
            " claim) VALUES ('pt-x', 'Rami X', 'Rami X', 'idle', 25.2650, 55.3320, 0, ?)",
            (oid,)))  # fmt: skip

    hub = await restart_after(hub, hub_factory, crashed)
    async with http(hub) as c:
        r = await c.post("/api/drivers/status", json=ONLINE, headers=RAMI)
        assert r.status_code == 200, r.text

        async def assigned() -> Json | None:
            got = await stream(c, oid)
            return got if got["orderStatus"] == "assigned" else None

        got = await until(assigned, 5, "the order assigned to rami")
        check_seed_table(got["events"], oid, count=8)
        await advance_from(c, oid, "pickup")
    assert rows(data / "public.db", "SELECT workspaceId, claim FROM points ORDER BY id") == [
        ("rami", None), ("Rami X", None)]  # fmt: skip


async def advance_from(c: httpx.AsyncClient, oid: str, first: str) -> None:
    """The order steps from ``first`` on, to delivery."""
    names = ["pay", "accept", "ready", "pickup", "deliver"]
    for name in names[names.index(first) :]:
        await step(c, oid, name)


async def test_orders_the_kitchen_never_accepted_get_no_driver(
    seeded: Callable[..., HubProcess],
) -> None:
    """Waiting orders are offered a driver oldest first; one the kitchen marked done by
    hand without accepting it (no stock taken, prices never checked), and one that wants
    no driver, neither take him nor hold back the honest order behind them."""
    hub = seeded()
    forged, odd, honest = sid("ali"), "ord-odd", "ord-honest"
    async with http(hub) as c:
        r = await c.post("/api/drivers/status", json={"status": "offline"}, headers=RAMI)
        assert r.status_code == 200, r.text
        items = [{"productId": "prod-shw", "qty": 100, "price": 0.01}]
        r = await post_events(c, forged, {"events": [
            {"opcode": 501, "delta": 6, "payload": {"customer": "ali", "restaurant": "bab-hara",
                                                    "items": items}},
            {"opcode": 203, "delta": 0}]}, ALI)  # fmt: skip
        assert r.status_code == 201, r.text
        r = await post_events(c, forged, {"events": [{"opcode": op} for op in (301, 303, 305)]},
                              KITCHEN)  # fmt: skip
        assert r.status_code == 201, r.text
        await place(c, odd)
        await advance(c, odd, "accept")
        await step(c, odd, "ready", "ready")
        r = await post_events(c, odd, {"opcode": 502}, PLATFORM)  # past ready, never assigned
        assert r.status_code == 201, r.text
        await place(c, honest)
        await advance(c, honest, "accept")
        await step(c, honest, "ready", "ready")

        r = await c.post("/api/drivers/status", json=ONLINE, headers=RAMI)
        assert r.status_code == 200, r.text

        async def assigned() -> bool:
            return bool((await stream(c, honest))["orderStatus"] == "assigned")

        await until(assigned, 5, "the honest order assigned")
        assert 302 not in stored_opcodes(hub.data_dir, forged)
        assert 302 not in stored_opcodes(hub.data_dir, odd)
        await advance_from(c, honest, "pickup")


async def test_a_padded_stream_cannot_strand_the_driver(seeded: Callable[..., HubProcess]) -> None:
    """Ali appends 1,000 events to her order once Rami is assigned: the order steps still
    see the whole order, and Rami picks it up and delivers it (before: the steps read the
    first 1,000 events only, did not see ORDER_SHIP, and deliver was out of turn for good)."""
    hub = seeded()
    oid = "ord-padded"
    async with http(hub) as c:
        await place(c, oid)
        await advance(c, oid, "ready")
        for batch in range(10):
            r = await post_events(
                c,
                oid,
                {
                    "events": [
                        {"opcode": 203, "payload": {"n": 100 * batch + i}} for i in range(100)
                    ]
                },
                ALI,
            )
            assert r.status_code == 201, r.text
        await step(c, oid, "pickup", "picked_up")
        await step(c, oid, "deliver", "delivered")
        r = await c.get(f"/api/orders/{oid}", headers=ALI)
        assert r.json()["orderStatus"] == "delivered", r.text
    for db in (tenant_db(hub.data_dir, "rami"), hub.data_dir / "public.db"):
        assert driver_point(db)[:2] == ("idle", 1), db


# -- 3. forged prices ------------------------------------------------------------------------


def forged_items(price: float, pid: str = "prod-shw") -> list[Json]:
    return [{"productId": pid, "title": "Chicken Shawarma", "qty": 100, "price": price}]


FORGED = {  # a hand-written order: (its items, its total, how it is paid)
    "total-0.01-paid-0": (forged_items(18.0), 0.01, "203 of 0"),
    "total-0.01-paid-by-the-hub": (forged_items(18.0), 0.01, "pay"),
    "price-0.01": (forged_items(0.01), 6.0, "pay"),
    "not-on-the-menu": (forged_items(18.0, "prod-gold"), 1805.0, "pay"),
    "menu-prices-paid-0": (forged_items(18.0), 1805.0, "203 of 0"),
}


@pytest.mark.parametrize("case", list(FORGED))
async def test_the_kitchen_accepts_only_orders_the_hub_can_vouch_for(
    shared: HubProcess, case: str
) -> None:
    """A customer's own ORDER_CREATE with a forged price, total or payment: the kitchen's
    accept is 409 ``unverified_order`` and writes nothing (before: 200, 100 shawarmas taken
    from stock, a negative payin at delivery)."""
    items, total, paid = FORGED[case]
    data = shared.data_dir
    oid = sid("forged")
    async with http(shared) as c:
        create = {"opcode": 501, "delta": total, "payload": {
            "customer": "ali", "restaurant": "bab-hara", "items": items,
            "deliveryAddress": "Marina Walk"}}  # fmt: skip
        assert (await post_events(c, oid, create, ALI)).status_code == 201
        if paid == "pay":
            await step(c, oid, "pay", "paid")
        else:
            r = await post_events(c, oid, {"opcode": 203, "delta": 0}, ALI)
            assert r.status_code == 201, r.text
        before, rows_before, shelf = await writes(c), snapshot(data), stock(data)
        r = await c.post(f"/api/orders/{oid}/accept", json=ACCEPT, headers=KITCHEN)
        assert (r.status_code, error_code(r)) == (409, "unverified_order"), r.text
        assert diff(before, await writes(c)) == ZERO
        assert snapshot(data) == rows_before
        assert stock(data) == shelf


async def test_a_hand_written_order_at_menu_prices_is_accepted(shared: HubProcess) -> None:
    """The check is what the order says, not who wrote it: menu prices, the right total and
    the hub's payment pass."""
    oid = sid("by-hand")
    async with http(shared) as c:
        items = [{"productId": "prod-lbn", "title": "Laban", "qty": 2, "price": 5.0}]
        create = {"opcode": 501, "delta": 15.0, "payload": {
            "customer": "ali", "restaurant": "bab-hara", "items": items}}  # fmt: skip
        assert (await post_events(c, oid, create, ALI)).status_code == 201
        shelf = stock(shared.data_dir)
        await step(c, oid, "pay", "paid")
        await step(c, oid, "accept", "preparing")
    assert stock(shared.data_dir) == {**shelf, "pt-lbn": shelf["pt-lbn"] - 2}


# -- 4. tenant ids in payloads ----------------------------------------------------------------

BAD_PAYLOADS = {
    "platform-customer-dotdot": (PLATFORM, [{"opcode": 501, "payload": {
        "customer": "../x", "restaurant": "bab-hara"}}]),
    "platform-restaurant-upper": (PLATFORM, [{"opcode": 501, "payload": {
        "customer": "ali", "restaurant": "Bab-Hara"}}]),
    "platform-customer-number": (PLATFORM, [{"opcode": 501, "payload": {
        "customer": 5, "restaurant": "bab-hara"}}]),
    "platform-driver-slash": (PLATFORM, [{"opcode": 302, "payload": {"driver": "a/b"}}]),
    "platform-driver-null": (PLATFORM, [{"opcode": 302, "payload": {"driver": None}}]),
    "customer-restaurant-dotdot": (ALI, [{"opcode": 501, "payload": {
        "customer": "ali", "restaurant": "../bab-hara"}}]),
    "second-of-a-batch": (PLATFORM, [{"opcode": 303}, {"opcode": 302, "payload": {
        "driver": "rami\n"}}]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
async def test_a_tenant_id_outside_the_pattern_in_a_payload_is_400(
    shared: HubProcess, case: str
) -> None:
    """ORDER_CREATE's customer and restaurant and TASK_ASSIGN's driver must be tenant ids:
    400 ``invalid_tenant_id`` and nothing written, no stream, no member, no file."""
    who, drafts = BAD_PAYLOADS[case]
    data = shared.data_dir
    stream_id = sid("bad")
    async with http(shared) as c:
        before, rows_before = await writes(c), snapshot(data)
        r = await post_events(c, stream_id, {"events": drafts}, who)
        assert (r.status_code, error_code(r)) == (400, "invalid_tenant_id"), r.text
        assert diff(before, await writes(c)) == ZERO
        assert snapshot(data) == rows_before  # every *.db under the data dir: no new one
        assert (await c.get(f"/api/streams/{stream_id}", headers=PLATFORM)).status_code == 404


# -- 5. Step 1 refused: nothing written anywhere -----------------------------------------------


async def test_a_refused_order_leaves_no_order_nodes(seeded: Callable[..., HubProcess]) -> None:
    """POST /api/orders while the streams DB refuses the ORDER_CREATE (a write lock held
    elsewhere: 503): no order node in the customer's or the restaurant's DB (before: both
    stayed, and a retry without orderId drew a new id, so they were never completed)."""
    hub = seeded()
    data = hub.data_dir
    async with http(hub) as c:
        before, rows_before = await writes(c), snapshot(data)
        with contextlib.closing(sqlite3.connect(data / "streams.db", timeout=5)) as lock:
            lock.execute("BEGIN IMMEDIATE")  # the hub's writer waits out its busy timeout
            try:
                answers = await asyncio.gather(
                    c.post("/api/orders", json=order_body("ord-locked"), headers=ALI),
                    c.post("/api/orders", json={**order_body("x"), "orderId": None}, headers=ALI),
                )
            finally:
                lock.rollback()
        for r in answers:
            assert r.status_code == 503, r.text
        assert diff(before, await writes(c)) == ZERO
        assert snapshot(data) == rows_before

        await place(c, "ord-locked")  # the retry completes it, once
        assert diff(before, await writes(c)) == {"streams": 1, "tenant": 2, "public": 0}
    for tenant in ("ali", "bab-hara"):
        assert rows(tenant_db(data, tenant), "SELECT id FROM nodes WHERE nodeType = 'order'"
                    ) == [("ord-locked",)]  # fmt: skip


async def test_create_retried_after_its_event_writes_the_missing_order_nodes(
    seeded: Callable[..., HubProcess], hub_factory: Callable[..., HubProcess],
) -> None:  # fmt: skip
    """Step 1 now writes ORDER_CREATE first: a crash right after it leaves the order nodes
    unwritten, and the retry (409 already_done: the order exists) writes them."""
    hub = seeded()
    data = hub.data_dir
    oid = "ord-crash-nodes"
    async with http(hub) as c:
        await place(c, oid)

    def crashed() -> None:
        for tenant in ("ali", "bab-hara"):
            write_sql(tenant_db(data, tenant), ("DELETE FROM nodes WHERE id = ?", (oid,)))

    hub = await restart_after(hub, hub_factory, crashed)
    async with http(hub) as c:
        before = await writes(c)
        r = await c.post("/api/orders", json=order_body(oid), headers=ALI)
        assert (r.status_code, error_code(r)) == (409, "already_done"), r.text
        assert diff(before, await writes(c)) == {"streams": 0, "tenant": 2, "public": 0}
        again = await c.post("/api/orders", json=order_body(oid), headers=ALI)
        assert again.status_code == 409, again.text
        assert diff(before, await writes(c)) == {"streams": 0, "tenant": 2, "public": 0}
        await advance(c, oid, "deliver")
    for tenant, fixed in (
        ("ali", {"restaurant": "bab-hara", "total": 46}),
        ("bab-hara", {"customer": "ali", "deliveryAddress": "Marina Walk"}),
    ):
        got = rows(tenant_db(data, tenant), "SELECT payload FROM nodes WHERE id = ?", oid)
        assert len(got) == 1, (tenant, got)
        payload = json.loads(got[0][0])
        assert {k: payload.get(k) for k in fixed} == fixed, (tenant, payload)
        assert [i["productId"] for i in payload["items"]] == ["prod-shw", "prod-lbn"], payload


# -- 6. a streams DB from before ids were scoped to their stream ------------------------------

OLD_EVENTS = """CREATE TABLE events (
    id TEXT NOT NULL UNIQUE, streamId TEXT NOT NULL, opcode INTEGER NOT NULL, nodeId TEXT,
    pointId TEXT, delta REAL NOT NULL DEFAULT 0, payload TEXT NOT NULL, ts TEXT NOT NULL,
    seq INTEGER NOT NULL, pos INTEGER PRIMARY KEY AUTOINCREMENT, UNIQUE (streamId, seq))"""
OLD_REST = (
    "CREATE TABLE streams (streamId TEXT PRIMARY KEY, lastSeq INTEGER NOT NULL,"
    " archived INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE TABLE members (streamId TEXT NOT NULL, tenant TEXT NOT NULL, fromSeq INTEGER"
    " NOT NULL, fromPos INTEGER NOT NULL, PRIMARY KEY (streamId, tenant)) WITHOUT ROWID",
    "CREATE INDEX members_by_tenant ON members (tenant, streamId)",
    "CREATE INDEX events_by_opcode ON events (opcode, streamId)",
)


async def test_a_streams_db_with_global_ids_is_migrated(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """A streams DB made before ids were scoped to their stream: the hub rebuilds its events
    table at start (same events, seq and pos; pos never reused, not even an archived
    event's), after which another stream may use the same id."""
    data = tmp_path / "data"
    run_seed(data)
    created = {"customer": "ali", "restaurant": "bab-hara"}
    with contextlib.closing(sqlite3.connect(data / "streams.db")) as db, db:
        for ddl in (OLD_EVENTS, *OLD_REST):
            db.execute(ddl)
        for seq, (stream_id, opcode, event_id, payload) in enumerate([
            ("old-1", 501, "old-1.create", created), ("old-1", 203, "note-1", {}),
            ("old-2", 501, "old-2.create", created), ("old-2", 203, "note-2", {}),
        ], start=1):  # fmt: skip
            db.execute(
                "INSERT INTO events (id, streamId, opcode, payload, ts, seq) VALUES"
                " (?, ?, ?, ?, '2026-11-27T12:30:00.000Z', ?)",
                (event_id, stream_id, opcode, json.dumps(payload), 1 + (seq - 1) % 2),
            )
        db.executemany("INSERT INTO streams VALUES (?, 2, ?)", [("old-1", 0), ("old-2", 1)])
        db.executemany("INSERT INTO members VALUES (?, ?, 1, ?)", [
            ("old-1", "ali", 1), ("old-1", "bab-hara", 1), ("old-2", "ali", 3),
            ("old-2", "bab-hara", 3)])  # fmt: skip
        db.execute("DELETE FROM events WHERE streamId = 'old-2'")  # archived: pos 3, 4 gone
    hub = hub_factory(data_dir=data)
    async with http(hub) as c:
        old = await stream(c, "old-1", ALI)
        assert [(e["id"], e["seq"], e["pos"]) for e in old["events"]] == [
            ("old-1.create", 1, 1), ("note-1", 2, 2)]  # fmt: skip
        r = await post_events(c, "new-1", order_create("ali", id="note-1"), ALI)
        assert r.status_code == 201, r.text
        assert r.json()["events"][0]["pos"] == 5, r.text
        r = await post_events(c, "old-1", {"id": "note-1", "opcode": 203}, ALI)
        assert r.status_code == 200, r.text  # a retry in its own stream, as before
        r = await post_events(c, "old-1", {"id": "note-1", "opcode": 203, "delta": 1}, ALI)
        assert r.status_code == 409, r.text
    found = rows(data / "streams.db", "SELECT sql FROM sqlite_master WHERE name = 'events'")
    assert "UNIQUE (streamId, id)" in found[0][0], found
    assert rows(data / "streams.db", "SELECT name FROM sqlite_master WHERE type = 'index'"
                " AND name = 'events_by_opcode'") == [("events_by_opcode",)]  # fmt: skip
