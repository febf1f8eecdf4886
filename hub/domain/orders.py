"""The seed's order flow, Steps 1-10: one method per endpoint, writing what the seed writes.

The stream is the order's truth: every step reads the order's events, checks that it
is its turn, then writes. Writes go to several databases that cannot share one
transaction, so every step is idempotent and can be retried after a crash part-way:

- event ids derive from the order and the step (``ord-5001.pay``), so a retried append
  returns the stored event instead of writing another;
- tenant rows are ``INSERT OR IGNORE``; updates carry the condition that makes a second
  run a no-op;
- stock is taken with one guarded UPDATE per point that also records the order in that
  row's ``applied`` list, so a retried Step 4 never deducts twice, and stock never goes
  below zero whatever runs concurrently;
- a driver is claimed in the public DB by a conditional UPDATE that records the order in
  ``claim``: exactly one order gets an idle driver, and a retried Step 6 finds it.

A step whose writes are all done answers 409 (``already_done``); a step out of turn 409
(``out_of_turn``); nothing is written by a refused step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.domain.archiver import Archiver
from hub.domain.auth import Principal, Role
from hub.domain.gps import Gps
from hub.domain.node import Node, order_status
from hub.errors import Conflict, Forbidden, HubError, NotFound, Unprocessable
from hub.events import (
    STREAM_ID_RE,
    Event,
    NewEvent,
    Opcode,
    check_tenant_id,
    now_ts,
)
from hub.infra.db import GuardFailed
from hub.infra.tenants import Tenants
from hub.timing import KeyedLocks

__all__ = ["CURRENCY", "OrderState", "Orders"]

log = logging.getLogger("hub.orders")

CURRENCY = "AED"
MAX_ITEMS = 50
MAX_QTY = 1000
APPLIED_KEEP = 64  # orders remembered per stock point (retry window)
KMH = 30.0  # assumed average speed for ETAs
KM_PER_DEG = 111.0
_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}\Z")


def _event(order_id: str, step: str, opcode: int, payload: Mapping[str, Any], *,
           node_id: str | None = None, point_id: str | None = None,
           delta: float = 0.0) -> NewEvent:  # fmt: skip
    return NewEvent(
        id=f"{order_id}.{step}",
        opcode=opcode,
        node_id=node_id if node_id is not None else order_id,
        point_id=point_id,
        delta=float(delta),
        payload=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        ts=now_ts(),
        ts_given=False,
    )


def _str(body: Mapping[str, Any], key: str, *, required: bool = True, max_len: int = 200,
         default: str | None = None) -> str | None:  # fmt: skip
    value = body.get(key)
    if value is None:
        if required:
            raise Unprocessable(f"{key} is required", code="invalid_body")
        return default
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise Unprocessable(f"{key} must be a non-empty string of at most {max_len} characters",
                            code="invalid_body")  # fmt: skip
    return value


def _int(body: Mapping[str, Any], key: str, *, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise Unprocessable(f"{key} must be an integer in {lo}..{hi}", code="invalid_body")
    return value


def _coord(body: Mapping[str, Any], key: str, limit: float) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unprocessable(f"{key} must be a number", code="invalid_body")
    if not -limit <= value <= limit:
        raise Unprocessable(f"{key} out of range", code="invalid_body")
    return float(value)


def lat_lng(body: Mapping[str, Any]) -> tuple[float, float]:
    """Validated ``lat``/``lng`` of a request body."""
    if not isinstance(body, Mapping):
        raise Unprocessable("body must be a JSON object", code="invalid_body")
    return _coord(body, "lat", 90), _coord(body, "lng", 180)


def _minutes_between(start: str, end: str) -> int:
    a = datetime.fromisoformat(start)
    b = datetime.fromisoformat(end)
    return max(0, round((b - a).total_seconds() / 60))


def _money(x: float) -> float:
    return round(x + 1e-9, 2)


@dataclass
class OrderState:
    """An order as its stream tells it."""

    order_id: str
    events: list[Event]

    def __post_init__(self) -> None:
        self.ids = {e.id for e in self.events}
        created = next((e for e in self.events if e.opcode == Opcode.ORDER_CREATE), None)
        if created is None:
            raise NotFound("no such order")
        self.created = created
        self.payload = created.payload_obj
        assign = next((e for e in self.events if e.opcode == Opcode.TASK_ASSIGN), None)
        self.driver: str | None = assign.payload_obj.get("driver") if assign else None
        self.status = order_status(self.events) or "placed"

    def check_items(self) -> None:
        """Refuse an ORDER_CREATE written by hand whose items the steps cannot use."""
        raw = self.payload.get("items")
        items: list[Any] = raw if isinstance(raw, list) else []
        ok = 1 <= len(items) <= MAX_ITEMS
        seen: set[str] = set()
        for item in items:
            pid = item.get("productId") if isinstance(item, dict) else None
            qty = item.get("qty") if isinstance(item, dict) else None
            if (not isinstance(pid, str) or not pid.strip() or len(pid) > 128 or pid in seen
                    or isinstance(qty, bool) or not isinstance(qty, int)
                    or not 1 <= qty <= MAX_QTY):  # fmt: skip
                ok = False
                break
            seen.add(pid)
        restaurant, customer = self.payload.get("restaurant"), self.payload.get("customer")
        if not ok or not isinstance(restaurant, str) or not isinstance(customer, str):
            raise Unprocessable("this order's ORDER_CREATE is not one the order steps can use",
                                code="invalid_order")  # fmt: skip
        if self.created.delta < 0:
            raise Unprocessable("this order's total is negative", code="invalid_order")

    @property
    def customer(self) -> str:
        return str(self.payload.get("customer"))

    @property
    def restaurant(self) -> str:
        return str(self.payload.get("restaurant"))

    @property
    def items(self) -> list[dict[str, Any]]:
        items = self.payload.get("items")
        return list(items) if isinstance(items, list) else []

    @property
    def total(self) -> float:
        return float(self.created.delta)

    def has(self, step: str) -> bool:
        return f"{self.order_id}.{step}" in self.ids

    def written(self, steps: Sequence[str]) -> list[Event]:
        wanted = {f"{self.order_id}.{s}" for s in steps}
        return [e for e in self.events if e.id in wanted or any(
            e.id.startswith(w + ".") for w in wanted)]  # fmt: skip


class Orders:
    """The order endpoints of CONTRACT §4, on one node and its tenant databases."""

    def __init__(self, node: Node, tenants: Tenants, *, archiver: Archiver | None = None,
                 gps: Gps | None = None) -> None:  # fmt: skip
        self.node = node
        self.tenants = tenants
        self.archiver = archiver
        self.gps = gps
        self.settings = node.settings
        self._locked: KeyedLocks[str] = KeyedLocks()  # one step at a time per order
        self._assign = asyncio.Lock()  # one driver assignment at a time in this process

    # -- helpers -----------------------------------------------------------------

    async def load(self, order_id: str) -> OrderState:
        if not STREAM_ID_RE.match(order_id):
            raise Forbidden("not a member of this order")
        events = await self.node.store.read_stream(order_id, 0, 1000)
        return OrderState(order_id, events)

    async def _member_state(self, who: Principal, order_id: str, role: Role) -> OrderState:
        """The order, if ``who`` has ``role`` and is the order's party in that role."""
        if who.role is not role and not who.is_platform:
            raise Forbidden(f"only the order's {role} may do this")
        info = await self.node.store.stream_info(order_id) if STREAM_ID_RE.match(order_id) else None
        if info is None or (not who.is_platform and who.tenant not in info.members):
            raise Forbidden("not a member of this order")
        if info.archived:
            raise Conflict("already done: this order is archived", code="already_done")
        state = await self.load(order_id)
        party = {Role.CUSTOMER: state.customer, Role.RESTAURANT: state.restaurant,
                 Role.DRIVER: state.driver}[role]  # fmt: skip
        if not who.is_platform and party != who.tenant:
            raise Forbidden(f"only the order's {role} may do this")
        return state

    async def _append(self, order_id: str, events: Sequence[NewEvent]) -> list[Event]:
        result = await self.node.commit(order_id, events)
        return result.events

    @staticmethod
    def _turn(state: OrderState, allowed: Sequence[str], done_step: str) -> None:
        if state.has(done_step):
            raise Conflict(f"already done (order is {state.status})", code="already_done")
        if state.status not in allowed:
            raise Conflict(f"not now: order is {state.status}", code="out_of_turn")

    async def _restaurant_node(self, restaurant: str) -> tuple[str, float | None, float | None]:
        """The restaurant's node id and location (from its own DB)."""
        if not self.tenants.exists(restaurant):
            raise Unprocessable(f"unknown restaurant {restaurant!r}", code="unknown_restaurant")
        db = self.tenants.tenant(restaurant)
        r = await db.execute(
            "SELECT n.id, p.lat, p.lng FROM nodes n LEFT JOIN points p ON p.nodeId = n.id"
            " WHERE n.nodeType = 'restaurant' ORDER BY n.id LIMIT 1"
        )
        if not r.rows:
            raise Unprocessable(f"unknown restaurant {restaurant!r}", code="unknown_restaurant")
        node_id, lat, lng = r.rows[0]
        return str(node_id), lat, lng

    def response(self, state_or_id: OrderState | str, status: str,
                 events: Sequence[Event]) -> dict[str, Any]:  # fmt: skip
        order_id = state_or_id if isinstance(state_or_id, str) else state_or_id.order_id
        return {"orderId": order_id, "orderStatus": status,
                "events": [json.loads(e.json) for e in events]}  # fmt: skip

    # -- reads for the apps ------------------------------------------------------

    async def menu(self, who: Principal, restaurant: str) -> dict[str, Any]:
        """A restaurant's name, location and products with price and stock."""
        check_tenant_id(restaurant)
        if not self.tenants.exists(restaurant):
            raise NotFound("no such restaurant")
        node_id, lat, lng = await self._restaurant_node(restaurant)
        db = self.tenants.tenant(restaurant)
        r = await db.execute("SELECT title, payload FROM nodes WHERE id = ?", [node_id])
        title, payload = r.rows[0]
        r = await db.execute(
            "SELECT n.id, n.title, n.payload, p.id, p.qty, p.price, p.currency, p.availability"
            " FROM nodes n JOIN points p ON p.nodeId = n.id WHERE n.nodeType = 'product'"
            " ORDER BY n.title LIMIT 500"
        )
        return {
            "restaurant": restaurant, "nodeId": node_id, "name": title,
            "address": json.loads(payload or "{}").get("address"),
            "location": {"lat": lat, "lng": lng} if lat is not None else None,
            "products": [
                {"productId": pid, "title": t, "desc": json.loads(p or "{}").get("desc"),
                 "pointId": pt, "stock": int(qty) if qty is not None and float(qty).is_integer()
                 else qty, "price": price, "currency": cur,
                 "availability": av}
                for pid, t, p, pt, qty, price, cur, av in r.rows
            ],
        }  # fmt: skip

    async def details(self, who: Principal, order_id: str) -> dict[str, Any]:
        """What the apps show of an order: parties, places, items, driver position."""
        info = await self.node.read(who, order_id)
        if info.archived:
            archive = self.node.archive
            events = (await archive.get(order_id) if archive is not None else None) or []
        else:
            events = await self.node.store.read_stream(order_id, 0, 1000)
        state = OrderState(order_id, events)
        _, lat, lng = await self._restaurant_node(state.restaurant)
        menu = await self.tenants.tenant(state.restaurant).execute(
            "SELECT title, payload FROM nodes WHERE nodeType = 'restaurant' LIMIT 1")
        where = None
        if self.tenants.exists(state.customer):
            # The order node's deliveryLocation, else the customer's own location.
            r = await self.tenants.tenant(state.customer).execute(
                "SELECT id, payload FROM nodes WHERE id IN (?, ?)", [order_id, state.customer])
            found = {row[0]: json.loads(row[1] or "{}") for row in r.rows}
            where = found.get(order_id, {}).get("deliveryLocation")
            profile = found.get(state.customer, {})
            if where is None and "lat" in profile and "lng" in profile:
                where = {"lat": profile["lat"], "lng": profile["lng"]}
        driver_at = None
        if state.driver is not None and self.tenants.exists(state.driver):
            r = await self.tenants.tenant(state.driver).execute(
                "SELECT lat, lng FROM points WHERE nodeId = ? LIMIT 1", [state.driver])
            if r.rows and r.rows[0][0] is not None:
                driver_at = {"lat": r.rows[0][0], "lng": r.rows[0][1]}
        return {
            "orderId": order_id, "orderStatus": state.status,
            "status": "archived" if info.archived else "active",
            "customer": state.customer, "restaurant": state.restaurant,
            "restaurantName": menu.rows[0][0] if menu.rows else state.restaurant,
            "pickupAddress": json.loads(menu.rows[0][1] or "{}").get("address")
            if menu.rows else None,
            "restaurantLocation": {"lat": lat, "lng": lng} if lat is not None else None,
            "deliveryAddress": state.payload.get("deliveryAddress"),
            "deliveryLocation": where, "items": state.items, "total": state.total,
            "currency": CURRENCY, "driver": state.driver, "driverLocation": driver_at,
            "lastSeq": info.last_seq,
        }  # fmt: skip

    # -- Step 1 ------------------------------------------------------------------

    async def create(self, who: Principal, body: Any) -> dict[str, Any]:
        if who.role is not Role.CUSTOMER:
            raise Forbidden("only a customer places orders")
        if not isinstance(body, dict):
            raise Unprocessable("body must be a JSON object", code="invalid_body")
        restaurant = body.get("restaurant")
        if not isinstance(restaurant, str):
            raise Unprocessable("restaurant is required", code="invalid_body")
        check_tenant_id(restaurant)
        address = _str(body, "deliveryAddress", max_len=300)
        notes = _str(body, "notes", required=False, max_len=500, default="")
        where = body.get("deliveryLocation")
        if where is not None:
            dlat, dlng = lat_lng(where)
            where = {"lat": dlat, "lng": dlng}
        order_id = body.get("orderId")
        if order_id is None:
            order_id = f"ord-{secrets.token_hex(5)}"
        elif not isinstance(order_id, str) or not _ORDER_ID_RE.match(order_id):
            raise Unprocessable("orderId must match ^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$",
                                code="invalid_body")  # fmt: skip
        raw_items = body.get("items")
        if not isinstance(raw_items, list) or not 1 <= len(raw_items) <= MAX_ITEMS:
            raise Unprocessable(f"items must be a list of 1..{MAX_ITEMS}", code="invalid_body")
        wanted: dict[str, int] = {}
        for item in raw_items:
            if not isinstance(item, dict) or set(item) - {"productId", "qty"}:
                raise Unprocessable("each item is {productId, qty}", code="invalid_body")
            pid = _str(item, "productId", max_len=128)
            qty = _int(item, "qty", lo=1, hi=MAX_QTY)
            if qty is None:
                raise Unprocessable("qty must be an integer in 1..1000", code="invalid_body")
            assert pid is not None
            if pid in wanted:
                raise Unprocessable(f"product {pid!r} listed twice", code="invalid_body")
            wanted[pid] = qty
        await self._restaurant_node(restaurant)  # 422 for a restaurant that does not exist
        rdb = self.tenants.tenant(restaurant)
        marks = ",".join("?" * len(wanted))
        r = await rdb.execute(
            "SELECT n.id, n.title, p.id, p.qty, p.price, p.currency, p.availability"
            f" FROM nodes n JOIN points p ON p.nodeId = n.id"
            f" WHERE n.nodeType = 'product' AND n.id IN ({marks})",
            list(wanted),
        )
        found = {row[0]: row for row in r.rows}
        items: list[dict[str, Any]] = []
        subtotal = 0.0
        for pid, qty in wanted.items():
            row = found.get(pid)
            if row is None:
                raise Unprocessable(f"unknown product {pid!r}", code="unknown_product")
            _, title, _, stock, price, _, availability = row
            if availability not in (None, "in-stock") or stock is None or stock < qty:
                raise Conflict(f"not enough {title or pid} in stock", code="out_of_stock")
            items.append({"productId": pid, "title": title, "qty": qty, "price": price})
            subtotal += float(price) * qty
        total = _money(subtotal + self.settings.delivery_fee)
        if await self.node.store.stream_info(order_id) is not None:
            existing = await self.load(order_id)
            if existing.customer != who.tenant:
                raise Forbidden("ORDER_CREATE may only open a new stream")
            raise Conflict("this order already exists", code="already_done")
        ts = now_ts()
        cdb = self.tenants.tenant(who.tenant)
        await cdb.execute(
            "INSERT OR IGNORE INTO nodes (id, nodeType, title, createdAt, payload)"
            " VALUES (?, 'order', ?, ?, ?)",
            [order_id, f"Order {order_id}", ts,
             json.dumps({"restaurant": restaurant, "items": items, "total": total,
                         **({"deliveryLocation": where} if where else {})})],
        )  # fmt: skip
        await rdb.execute(
            "INSERT OR IGNORE INTO nodes (id, nodeType, title, createdAt, payload)"
            " VALUES (?, 'order', ?, ?, ?)",
            [order_id, f"{order_id} - {who.tenant}", ts,
             json.dumps({"customer": who.tenant, "items": items, "total": total,
                         "deliveryAddress": address})],
        )  # fmt: skip
        create = _event(order_id, "create", Opcode.ORDER_CREATE, {
            "customer": who.tenant, "restaurant": restaurant, "items": items,
            "deliveryAddress": address, "notes": notes, "channel": "app",
        }, delta=total)  # fmt: skip
        result = await self.node.commit(order_id, [create], first=True)
        out = self.response(order_id, "placed", result.events)
        out.update(streamId=order_id, total=total, currency=CURRENCY)
        return out

    # -- Step 2 ------------------------------------------------------------------

    async def pay(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Unprocessable("body must be a JSON object", code="invalid_body")
        method = _str(body, "method", max_len=32)
        last4 = body.get("cardLast4")
        if last4 is not None and not (isinstance(last4, str) and re.fullmatch(r"[0-9]{4}", last4)):
            raise Unprocessable("cardLast4 must be 4 digits", code="invalid_body")
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, Role.CUSTOMER)
            self._turn(state, ["placed"], "pay")
            payload: dict[str, Any] = {"method": method}
            if last4 is not None:
                payload["cardLast4"] = last4
            events = await self._append(
                order_id, [_event(order_id, "pay", Opcode.INVOICE_PAYMENT, payload,
                                  delta=state.total)])  # fmt: skip
            return self.response(state, "paid", events)

    # -- Steps 3 and 4 -----------------------------------------------------------

    async def accept(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Unprocessable("body must be a JSON object", code="invalid_body")
        chef = _str(body, "chef", required=False, max_len=100, default="Kitchen")
        station = _str(body, "station", required=False, max_len=100, default="main")
        est = _int(body, "estMinutes", lo=1, hi=600)
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, Role.RESTAURANT)
            state.check_items()
            done = all(state.has(s) for s in ("task", "start")) and all(
                state.has(f"sale.{i['productId']}") for i in state.items)
            if done:
                raise Conflict(f"already done (order is {state.status})", code="already_done")
            if state.status not in ("paid", "preparing"):
                raise Conflict(f"not now: order is {state.status}", code="out_of_turn")
            points = await self._take_stock(state)
            qty = sum(int(i["qty"]) for i in state.items)
            events = [
                _event(order_id, "task", Opcode.TASK_CREATE,
                       {"task": "kitchen-prep", "estMinutes": est or 6 + 3 * qty}),
                _event(order_id, "start", Opcode.TASK_START, {"chef": chef, "station": station}),
            ] + [
                _event(order_id, f"sale.{i['productId']}", Opcode.SALE_OUT,
                       {"reason": "order-sale"}, node_id=i["productId"],
                       point_id=points[i["productId"]], delta=-int(i["qty"]))
                for i in state.items
            ]  # fmt: skip
            written = await self._append(order_id, events)
            return self.response(state, "preparing", written)

    async def _take_stock(self, state: OrderState) -> dict[str, str]:
        """Deduct the order's items from the restaurant's points, once, never below zero."""
        db = self.tenants.tenant(state.restaurant)
        for _attempt in range(8):
            pids = [str(i["productId"]) for i in state.items]
            marks = ",".join("?" * len(pids))
            r = await db.execute(
                f"SELECT nodeId, id, qty, applied FROM points WHERE nodeId IN ({marks})", pids
            )
            rows = {row[0]: row for row in r.rows}
            stmts: list[tuple[str, list[Any]]] = []
            for item in state.items:
                row = rows.get(item["productId"])
                if row is None:
                    raise Conflict(f"product {item['productId']!r} is gone", code="out_of_stock")
                _, point_id, qty, applied_raw = row
                applied = json.loads(applied_raw) if applied_raw else []
                if state.order_id in applied:
                    continue
                need = int(item["qty"])
                if qty is None or qty < need:
                    raise Conflict(f"not enough {item['productId']} in stock", code="out_of_stock")
                new_applied = json.dumps(([*applied, state.order_id])[-APPLIED_KEEP:])
                stmts.append((
                    "UPDATE points SET qty = qty - ?, applied = ? WHERE id = ? AND qty >= ?"
                    " AND applied IS ?", [need, new_applied, point_id, need, applied_raw]))
                stmts.append(("SELECT CASE WHEN changes() = 1 THEN 1 ELSE json('hub-guard:stock')"
                              " END", []))  # fmt: skip
            if not stmts:
                return {pid: rows[pid][1] for pid in rows}
            try:
                await db.batch(stmts)
            except GuardFailed:
                continue  # another order took stock meanwhile: read again
            return {pid: rows[pid][1] for pid in rows}
        raise Conflict("stock is changing too fast; retry", code="busy")

    # -- Steps 5 and 6 -----------------------------------------------------------

    async def ready(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Unprocessable("body must be a JSON object", code="invalid_body")
        actual = _int(body, "actualMinutes", lo=0, hi=600)
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, Role.RESTAURANT)
            state.check_items()
            if state.has("done"):
                # Step 5 is written; a retry only completes Step 6 if that is missing.
                if state.has("assign") or state.status != "ready":
                    raise Conflict(f"already done (order is {state.status})", code="already_done")
                written = state.written(["done"])
            else:
                self._turn(state, ["preparing"], "done")
                if not all(state.has(f"sale.{i['productId']}") for i in state.items):
                    raise Conflict("not now: the kitchen has not accepted it", code="out_of_turn")
                start = next(e for e in state.events if e.opcode == Opcode.TASK_START)
                minutes = actual if actual is not None else _minutes_between(start.ts, now_ts())
                written = await self._append(order_id, [_event(
                    order_id, "done", Opcode.TASK_DONE,
                    {"task": "kitchen-prep", "actualMinutes": minutes})])  # fmt: skip
        assigned = await self.assign(order_id)
        if assigned:
            written = written + assigned
        return self.response(order_id, "assigned" if assigned else "ready", written)

    async def assign(self, order_id: str) -> list[Event]:
        """Step 6: give a ready order the nearest idle driver (no-op if none is idle)."""
        async with self._assign, self._locked(order_id):
            state = await self.load(order_id)
            if state.has("assign") or state.status != "ready":
                return []
            node_id, lat, lng = await self._restaurant_node(state.restaurant)
            public = self.tenants.public
            r = await public.execute(
                "SELECT workspaceId, id, lat, lng FROM points WHERE claim = ? LIMIT 1", [order_id]
            )
            claimed = r.rows[0] if r.rows else None
            for _ in range(8):
                if claimed is not None:
                    break
                r = await public.execute(
                    "SELECT workspaceId, id, lat, lng FROM points"
                    " WHERE nodeId IN (SELECT id FROM nodes WHERE nodeType = 'driver')"
                    " AND openNow = true AND availability = 'idle' AND claim IS NULL"
                    " ORDER BY ABS(lat - ?) + ABS(lng - ?) LIMIT 1",
                    [lat or 0.0, lng or 0.0],
                )
                if not r.rows:
                    return []  # stays ready; assigned when a driver becomes idle
                cand = r.rows[0]
                res = await public.execute(
                    "UPDATE points SET openNow = false, claim = ? WHERE id = ? AND workspaceId = ?"
                    " AND openNow = true AND availability = 'idle' AND claim IS NULL",
                    [order_id, cand[1], cand[0]],
                )
                if res.rowcount == 1:
                    claimed = cand
            if claimed is None:
                return []
            driver, point_id, dlat, dlng = claimed
            ddb = self.tenants.tenant(driver)
            r = await ddb.execute(
                "SELECT payload FROM nodes WHERE id = ? AND nodeType = 'driver'", [driver]
            )
            vehicle = "Motorcycle"
            if r.rows and r.rows[0][0]:
                vehicle = json.loads(r.rows[0][0]).get("vehicle", vehicle)
            km = (abs((dlat or 0) - (lat or 0)) + abs((dlng or 0) - (lng or 0))) * KM_PER_DEG
            eta = max(5, round(10 + km / KMH * 60))
            rdb = self.tenants.tenant(state.restaurant)
            r = await rdb.execute("SELECT payload FROM nodes WHERE id = ?", [node_id])
            pickup = json.loads(r.rows[0][0]).get("address") if r.rows and r.rows[0][0] else None
            await ddb.batch([
                ("INSERT OR IGNORE INTO nodes (id, nodeType, title, createdAt, payload)"
                 " VALUES (?, 'delivery', ?, ?, ?)",
                 [order_id, f"Delivery {order_id}", now_ts(), json.dumps({
                     "restaurant": state.restaurant, "pickupAddress": pickup,
                     "deliverTo": state.payload.get("deliveryAddress")})]),
                ("UPDATE points SET availability = 'en-route', openNow = false WHERE id = ?"
                 " AND (availability IS NOT 'en-route' OR openNow IS NOT 0)", [point_id]),
            ])  # fmt: skip
            written = await self._append(order_id, [_event(
                order_id, "assign", Opcode.TASK_ASSIGN,
                {"task": "delivery", "driver": driver, "vehicle": vehicle, "eta": eta},
                node_id=driver)])  # fmt: skip
            if self.gps is not None:
                self.gps.forget(driver)
            return written

    async def assign_waiting(self) -> None:
        """Offer idle drivers to orders that are ready and still have none, oldest first."""
        waiting = await self.node.store.find_streams(
            having=Opcode.TASK_DONE, lacking=Opcode.TASK_ASSIGN, limit=100
        )
        for order_id in waiting:
            try:
                if not await self.assign(order_id):
                    return  # no idle driver left
            except HubError as exc:
                log.warning("cannot assign %s: %s", order_id, exc)
            except Exception:
                log.exception("assigning %s failed", order_id)

    # -- Step 8 ------------------------------------------------------------------

    async def pickup(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Unprocessable("body must be a JSON object", code="invalid_body")
        confirmed = _int(body, "confirmedItems", lo=0, hi=MAX_ITEMS * MAX_QTY)
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, Role.DRIVER)
            state.check_items()
            self._turn(state, ["assigned"], "ship")
            if confirmed is None:
                confirmed = sum(int(i["qty"]) for i in state.items)
            written = await self._append(order_id, [_event(
                order_id, "ship", Opcode.ORDER_SHIP,
                {"pickedUpBy": state.driver, "confirmedItems": confirmed})])  # fmt: skip
            return self.response(state, "picked_up", written)

    # -- Step 10 -----------------------------------------------------------------

    async def deliver(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        lat, lng = lat_lng(body)
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, Role.DRIVER)
            driver = state.driver
            if driver is None or state.status not in ("picked_up", "delivered"):
                raise Conflict(f"not now: order is {state.status}", code="out_of_turn")
            public = self.tenants.public
            r = await public.execute(
                "SELECT id FROM points WHERE claim = ? AND workspaceId = ?", [order_id, driver]
            )
            still_claimed = bool(r.rows)
            if state.has("deliver") and not still_claimed:
                raise Conflict("already done (order is delivered)", code="already_done")
            if state.status not in ("picked_up", "delivered"):
                raise Conflict(f"not now: order is {state.status}", code="out_of_turn")
            steps = ("deliver", "payout", "payin")
            if all(state.has(s) for s in steps):  # a retry: the events stand as written
                written = state.written(steps)
            else:
                written = await self._append(order_id, await self._deliver_events(state))
            await self._release_driver(order_id, driver, lat, lng)
        if self.gps is not None:
            self.gps.forget(driver)
        if self.archiver is not None:
            self.archiver.schedule(order_id)
        await self.assign_waiting()
        return self.response(state, "delivered", written)

    async def _deliver_events(self, state: OrderState) -> list[NewEvent]:
        order_id, driver = state.order_id, state.driver
        assert driver is not None
        ts = now_ts()
        payout = _money(self.settings.driver_payout)
        node_id, _, _ = await self._restaurant_node(state.restaurant)
        events = [
            _event(order_id, "deliver", Opcode.ORDER_DELIVER, {
                "deliveredBy": driver, "confirmedBy": state.customer,
                "totalMinutes": _minutes_between(state.created.ts, ts)}),
            _event(order_id, "payout", Opcode.ACCOUNT_PAYOUT,
                   {"type": "delivery-fee", "currency": CURRENCY},
                   node_id=driver, delta=payout),
            _event(order_id, "payin", Opcode.ACCOUNT_PAYIN,
                   {"type": "order-revenue", "currency": CURRENCY},
                   node_id=node_id, delta=_money(state.total - payout)),
        ]  # fmt: skip
        return events

    async def _release_driver(self, order_id: str, driver: str, lat: float, lng: float) -> None:
        """Step 10's last writes: the driver idle at (lat, lng), discoverable again."""
        await self.tenants.tenant(driver).execute(
            "UPDATE points SET availability = 'idle', openNow = true, lat = ?, lng = ?"
            " WHERE nodeId = ?", [lat, lng, driver])  # fmt: skip
        await self.tenants.public.execute(
            "UPDATE points SET openNow = true, availability = 'idle', lat = ?, lng = ?,"
            " claim = NULL WHERE claim = ? AND workspaceId = ?", [lat, lng, order_id, driver])

    async def recover(self) -> None:
        """At start-up, finish what a crash left half-done across databases.

        A driver still claimed by a delivered order is released (at its last known
        position); orders that are ready without a driver get one if any is idle.
        """
        public = self.tenants.public
        r = await public.execute(
            "SELECT workspaceId, claim FROM points WHERE claim IS NOT NULL LIMIT 1000"
        )
        for driver, order_id in r.rows:
            try:
                events = await self.node.store.read_stream(order_id, 0, 1000)
                info = await self.node.store.stream_info(order_id)
                delivered = any(e.opcode == Opcode.ORDER_DELIVER for e in events) or bool(
                    info and info.archived)
                if not delivered:
                    continue
                at = await self.tenants.tenant(driver).execute(
                    "SELECT lat, lng FROM points WHERE nodeId = ? LIMIT 1", [driver])
                lat, lng = at.rows[0] if at.rows else (None, None)
                await self._release_driver(order_id, driver, lat, lng)
                log.warning("released driver %s still claimed by delivered %s", driver, order_id)
            except Exception:
                log.exception("recovering the claim of %s on %s failed", driver, order_id)
        await self.assign_waiting()

    # -- drivers -----------------------------------------------------------------

    async def driver_me(self, who: Principal) -> dict[str, Any]:
        """A driver's own availability, position and current order."""
        if who.role is not Role.DRIVER:
            raise Forbidden("only a driver has a driver status")
        r = await self.tenants.public.execute(
            "SELECT availability, openNow, lat, lng, claim FROM points WHERE workspaceId = ?"
            " LIMIT 1", [who.tenant])  # fmt: skip
        if not r.rows:
            return {"driver": who.tenant, "status": "offline", "lat": None, "lng": None,
                    "orderId": None}  # fmt: skip
        availability, open_now, lat, lng, claim = r.rows[0]
        if claim is not None:
            status = "en-route"
        elif availability == "idle" and open_now:
            status = "online"
        else:
            status = "offline"
        if self.tenants.exists(who.tenant):  # the freshest position is in its own DB
            at = await self.tenants.tenant(who.tenant).execute(
                "SELECT lat, lng FROM points WHERE nodeId = ? LIMIT 1", [who.tenant])
            if at.rows and at.rows[0][0] is not None:
                lat, lng = at.rows[0]
        return {"driver": who.tenant, "status": status, "lat": lat, "lng": lng,
                "orderId": claim}  # fmt: skip

    async def driver_status(self, who: Principal, body: Any) -> dict[str, Any]:
        """A driver comes online (idle, discoverable at lat/lng) or goes offline."""
        if who.role is not Role.DRIVER:
            raise Forbidden("only a driver changes its availability")
        if not isinstance(body, dict):
            raise Unprocessable("body must be a JSON object", code="invalid_body")
        status = body.get("status")
        if status not in ("online", "offline"):
            raise Unprocessable("status must be 'online' or 'offline'", code="invalid_body")
        driver = who.tenant
        vehicle = _str(body, "vehicle", required=False, max_len=50, default="Motorcycle")
        lat, lng = lat_lng(body) if status == "online" else (None, None)
        public = self.tenants.public
        r = await public.execute(
            "SELECT claim FROM points WHERE workspaceId = ? AND claim IS NOT NULL", [driver]
        )
        if r.rows:
            raise Conflict(f"on a delivery ({r.rows[0][0]})", code="on_delivery")
        ddb = self.tenants.tenant(driver)
        r = await ddb.execute("SELECT id FROM points WHERE nodeId = ? LIMIT 1", [driver])
        point_id = r.rows[0][0] if r.rows else f"pt-{driver}-loc"
        ts = now_ts()
        if status == "online":
            node = [driver, "driver", driver.title(), ts, json.dumps({"vehicle": vehicle})]
            await ddb.batch([
                ("INSERT OR IGNORE INTO nodes (id, nodeType, title, createdAt, payload)"
                 " VALUES (?, ?, ?, ?, ?)", node),
                ("INSERT INTO points (id, nodeId, availability, lat, lng, openNow)"
                 " VALUES (?, ?, 'idle', ?, ?, true) ON CONFLICT (id) DO UPDATE SET"
                 " availability = 'idle', openNow = true, lat = excluded.lat, lng = excluded.lng",
                 [point_id, driver, lat, lng]),
            ])  # fmt: skip
            await public.batch([
                ("INSERT OR IGNORE INTO nodes (id, workspaceId, nodeType, title, createdAt,"
                 " payload) VALUES (?, ?, ?, ?, ?, ?)", [driver, driver, *node[1:]]),
                ("INSERT INTO points (id, workspaceId, nodeId, availability, lat, lng, openNow)"
                 " VALUES (?, ?, ?, 'idle', ?, ?, true) ON CONFLICT (workspaceId, id) DO UPDATE"
                 " SET availability = 'idle', openNow = true, lat = excluded.lat,"
                 " lng = excluded.lng WHERE claim IS NULL", [point_id, driver, driver, lat, lng]),
            ])  # fmt: skip
            await self.assign_waiting()
        else:
            await ddb.execute(
                "UPDATE points SET availability = 'offline', openNow = false WHERE id = ?",
                [point_id],
            )
            await public.execute(
                "UPDATE points SET availability = 'offline', openNow = false"
                " WHERE workspaceId = ? AND id = ? AND claim IS NULL",
                [driver, point_id],
            )
        return {"driver": driver, "status": status, "pointId": point_id}
