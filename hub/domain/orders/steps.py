"""The order steps (the seed's Steps 1-10), one method per endpoint, and what the apps read.

Each step takes its request already parsed (:mod:`hub.edge.orders`), checks who asks and
that it is the step's turn (:mod:`~hub.domain.orders.rules`), then writes: the tenant and
public DBs through :class:`~hub.infra.orderdb.OrderDb`, and the order's stream. The
databases cannot share one transaction, so every step can be retried after a crash
part-way and completes only what is missing; a refused step writes nothing. Step 1 writes
its ORDER_CREATE first: the stream may still refuse it (the order id taken meanwhile, the
streams DB down), and the order nodes of an order that does not exist would stay for good.

The kitchen accepts (and so takes stock for) only an order the hub can vouch for
(:func:`~hub.domain.orders.rules.vouch`): anyone may write an ORDER_CREATE of their own
through the generic event API, with any price.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.domain.archiver import Archiver
from hub.domain.auth import Principal
from hub.domain.gps import Gps
from hub.domain.node import Node
from hub.domain.orders.dispatch import Dispatch, find_restaurant
from hub.domain.orders.rules import (
    CURRENCY,
    OrderState,
    check_may,
    check_party,
    check_turn,
    deliver_retry,
    deliver_turn,
    item_count,
    minutes_between,
    order_total,
    prep_minutes,
    price_items,
    ready_turn,
    split_payment,
    stock_takes,
    vouch,
)
from hub.domain.orders.stream import append, load, step_event
from hub.errors import Conflict, Forbidden, NotFound, Unavailable
from hub.events import STREAM_ID_RE, Event, NewEvent, Opcode, now_ts
from hub.infra.orderdb import OrderDb
from hub.infra.store import StreamInfo
from hub.infra.tenants import Tenants
from hub.timing import KeyedLocks

__all__ = ["NewOrder", "Orders"]

DELIVER_STEPS = ("deliver", "payout", "payin")
STOCK_ATTEMPTS = 8  # reads of the stock when other orders take it meanwhile
ORDER_ID_DRAWS = 4  # order ids drawn at most when the drawn one is taken


@dataclass(frozen=True, slots=True)
class NewOrder:
    """Step 1's request, parsed."""

    restaurant: str
    items: dict[str, int]  # product id -> quantity, in the order given
    delivery_address: str
    notes: str = ""
    delivery_location: tuple[float, float] | None = None  # (lat, lng)
    order_id: str | None = None  # None: the hub draws one


def response(order_id: str, status: str, events: Sequence[Event]) -> dict[str, Any]:
    """What every step answers: the order, its status, and the events the step wrote."""
    return {"orderId": order_id, "orderStatus": status,
            "events": [json.loads(e.json) for e in events]}  # fmt: skip


class Orders:
    """The order endpoints of docs/protocol.md §4, on one node and its tenant databases."""

    def __init__(self, node: Node, tenants: Tenants, *, archiver: Archiver | None = None,
                 gps: Gps | None = None) -> None:  # fmt: skip
        self.node = node
        self.db = OrderDb(tenants)
        self.archiver = archiver
        self.gps = gps
        self.settings = node.settings
        self._locked: KeyedLocks[str] = KeyedLocks()  # one step at a time per order
        self.dispatch = Dispatch(node, self.db, self._locked, gps=gps)

    async def recover(self) -> None:
        """At start-up, finish what a crash left half-done (see :meth:`Dispatch.recover`)."""
        await self.dispatch.recover()

    async def _member_state(self, who: Principal, order_id: str, step: str) -> OrderState:
        """The order, if ``who`` may take ``step`` and is the order's party for it."""
        check_may(who, step)
        info = await self.node.stream_info(order_id) if STREAM_ID_RE.match(order_id) else None
        if info is None or (not who.is_platform and who.tenant not in info.members):
            raise Forbidden("not a member of this order")
        if info.archived:
            raise Conflict("already done: this order is archived", code="already_done")
        state = await load(self.node, order_id)
        check_party(who, state, step)
        return state

    # -- reads for the apps ------------------------------------------------------------

    async def menu(self, who: Principal, restaurant: str) -> dict[str, Any]:
        """A restaurant's name, location and products with price and stock."""
        if not self.db.exists(restaurant):
            raise NotFound("no such restaurant")
        node_id, lat, lng = await find_restaurant(self.db, restaurant)
        title, profile = await self.db.node(restaurant, node_id) or (None, {})
        rows = await self.db.menu(restaurant)
        return {
            "restaurant": restaurant, "nodeId": node_id, "name": title,
            "address": profile.get("address"),
            "location": {"lat": lat, "lng": lng} if lat is not None else None,
            "products": [
                {"productId": pid, "title": t, "desc": json.loads(p or "{}").get("desc"),
                 "pointId": pt, "stock": int(qty) if qty is not None and float(qty).is_integer()
                 else qty, "price": price, "currency": cur,
                 "availability": av}
                for pid, t, p, pt, qty, price, cur, av in rows
            ],
        }  # fmt: skip

    async def details(self, who: Principal, order_id: str) -> dict[str, Any]:
        """What the apps show of an order: parties, places, items, driver position."""
        info = await self.node.read(who, order_id)
        state = await load(self.node, order_id, archived=info.archived)
        _, lat, lng = await find_restaurant(self.db, state.restaurant)
        profile = await self.db.restaurant_profile(state.restaurant)
        where = None
        if self.db.exists(state.customer):
            # The order node's deliveryLocation, else the customer's own location.
            found = await self.db.node_payloads(state.customer, [order_id, state.customer])
            where = found.get(order_id, {}).get("deliveryLocation")
            own = found.get(state.customer, {})
            if where is None and "lat" in own and "lng" in own:
                where = {"lat": own["lat"], "lng": own["lng"]}
        driver_at = None
        if state.driver is not None and self.db.exists(state.driver):
            at = await self.db.position(state.driver)
            if at is not None and at[0] is not None:
                driver_at = {"lat": at[0], "lng": at[1]}
        return {
            "orderId": order_id, "orderStatus": state.status,
            "status": "archived" if info.archived else "active",
            "customer": state.customer, "restaurant": state.restaurant,
            "restaurantName": profile[0] if profile else state.restaurant,
            "pickupAddress": profile[1].get("address") if profile else None,
            "restaurantLocation": {"lat": lat, "lng": lng} if lat is not None else None,
            "deliveryAddress": state.payload.get("deliveryAddress"),
            "deliveryLocation": where, "items": state.items, "total": state.total,
            "currency": CURRENCY, "driver": state.driver, "driverLocation": driver_at,
            "lastSeq": info.last_seq,
        }  # fmt: skip

    # -- Step 1 ------------------------------------------------------------------------

    async def create(self, who: Principal, order: NewOrder) -> dict[str, Any]:
        check_may(who, "create")
        restaurant = order.restaurant
        await find_restaurant(self.db, restaurant)  # 422 for a restaurant that does not exist
        offer = await self.db.products(restaurant, list(order.items))
        items = price_items(order.items, offer)
        total = order_total(items, self.settings.delivery_fee)
        order_id = order.order_id
        for _ in range(ORDER_ID_DRAWS):
            if order.order_id is None:
                order_id = f"ord-{secrets.token_hex(5)}"
            assert order_id is not None
            info = await self.node.stream_info(order_id)
            if info is None:
                break
            if order.order_id is not None:
                await self._placed_already(who, order, info)  # raises
        else:
            raise Unavailable("no free order id was drawn; retry")
        create = step_event(order_id, "create", Opcode.ORDER_CREATE, {
            "customer": who.tenant, "restaurant": restaurant, "items": items,
            "deliveryAddress": order.delivery_address, "notes": order.notes, "channel": "app",
        }, delta=total)  # fmt: skip
        # The ORDER_CREATE first: refused, it leaves nothing behind; committed, the order
        # nodes follow (a retry with the same orderId writes those still missing).
        written = await append(self.node, order_id, [create], first=True)
        await self._order_nodes(who.tenant, order, written[0])
        out = response(order_id, "placed", written)
        out.update(streamId=order_id, total=total, currency=CURRENCY)
        return out

    async def _placed_already(self, who: Principal, order: NewOrder, info: StreamInfo) -> None:
        """Step 1 again for an order that exists: 403 when it is not the caller's (as for
        anyone's ORDER_CREATE on a stream that is not new), else 409 ``already_done``, once
        the order nodes a crash after its ORDER_CREATE left unwritten are written."""
        order_id = info.stream_id
        if who.tenant not in info.members:
            raise Forbidden("ORDER_CREATE may only open a new stream")
        if not info.archived:
            try:
                state = await load(self.node, order_id)
            except NotFound:
                raise Forbidden("ORDER_CREATE may only open a new stream") from None
            if state.customer != who.tenant:
                raise Forbidden("ORDER_CREATE may only open a new stream")
            created = state.step("create")
            if created is not None and created.opcode == Opcode.ORDER_CREATE:
                await self._order_nodes(who.tenant, order, created)
        raise Conflict("this order already exists", code="already_done")

    async def _order_nodes(self, customer: str, order: NewOrder, created: Event) -> None:
        """Step 1's order nodes in the customer's and the restaurant's DBs, as the order's
        ORDER_CREATE (``created``) tells them; those already there are left as they are."""
        order_id, payload = created.stream_id, created.payload_obj
        restaurant, items = payload.get("restaurant"), payload.get("items")
        if not isinstance(restaurant, str) or not self.db.exists(restaurant):
            return
        where = order.delivery_location
        await self.db.insert_order_node(customer, order_id, f"Order {order_id}", created.ts, {
            "restaurant": restaurant, "items": items, "total": created.delta,
            **({"deliveryLocation": {"lat": where[0], "lng": where[1]}} if where else {}),
        })  # fmt: skip
        await self.db.insert_order_node(restaurant, order_id, f"{order_id} - {customer}",
                                        created.ts, {
            "customer": customer, "items": items, "total": created.delta,
            "deliveryAddress": payload.get("deliveryAddress")})  # fmt: skip

    # -- Step 2 ------------------------------------------------------------------------

    async def pay(self, who: Principal, order_id: str, *, method: str,
                  card_last4: str | None) -> dict[str, Any]:  # fmt: skip
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, "pay")
            check_turn(state, "pay")
            payload: dict[str, Any] = {"method": method}
            if card_last4 is not None:
                payload["cardLast4"] = card_last4
            written = await append(
                self.node,
                order_id,
                [step_event(order_id, "pay", Opcode.INVOICE_PAYMENT, payload, delta=state.total)],
            )
            return response(order_id, "paid", written)

    # -- Steps 3 and 4 -----------------------------------------------------------------

    async def accept(self, who: Principal, order_id: str, *, chef: str, station: str,
                     est_minutes: int | None) -> dict[str, Any]:  # fmt: skip
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, "accept")
            state.check_items()
            check_turn(state, "accept")
            await find_restaurant(self.db, state.restaurant)
            offer = await self.db.products(state.restaurant, [i["productId"] for i in state.items])
            vouch(state, offer, self.settings.delivery_fee)
            points = await self._take_stock(state)
            events = [
                step_event(order_id, "task", Opcode.TASK_CREATE, {
                    "task": "kitchen-prep", "estMinutes": prep_minutes(state.items, est_minutes)}),
                step_event(order_id, "start", Opcode.TASK_START,
                           {"chef": chef, "station": station}),
            ] + [
                step_event(order_id, f"sale.{i['productId']}", Opcode.SALE_OUT,
                           {"reason": "order-sale"}, node_id=i["productId"],
                           point_id=points[i["productId"]], delta=-int(i["qty"]))
                for i in state.items
            ]  # fmt: skip
            written = await append(self.node, order_id, events)
            return response(order_id, "preparing", written)

    async def _take_stock(self, state: OrderState) -> dict[str, str]:
        """Deduct the order's items from the restaurant's points, once, never below zero;
        the point of each product."""
        for _attempt in range(STOCK_ATTEMPTS):
            pids = [str(i["productId"]) for i in state.items]
            points = await self.db.stock_points(state.restaurant, pids)
            takes = stock_takes(state.order_id, state.items, points)
            if not takes or await self.db.take_stock(state.restaurant, takes):
                return {pid: point.point_id for pid, point in points.items()}
            # another order took stock meanwhile: read again
        raise Conflict("stock is changing too fast; retry", code="busy")

    # -- Steps 5 and 6 -----------------------------------------------------------------

    async def ready(self, who: Principal, order_id: str, *,
                    actual_minutes: int | None) -> dict[str, Any]:  # fmt: skip
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, "ready")
            state.check_items()
            if ready_turn(state):
                start = next(e for e in state.events if e.opcode == Opcode.TASK_START)
                minutes = (actual_minutes if actual_minutes is not None
                           else minutes_between(start.ts, now_ts()))  # fmt: skip
                written = await append(self.node, order_id, [step_event(
                    order_id, "done", Opcode.TASK_DONE,
                    {"task": "kitchen-prep", "actualMinutes": minutes})])  # fmt: skip
            else:  # Step 5 is written; a retry only completes Step 6
                written = state.written(["done"])
        assigned = await self.dispatch.assign(order_id)
        if assigned:
            written = written + assigned
        return response(order_id, "assigned" if assigned else "ready", written)

    # -- Step 8 ------------------------------------------------------------------------

    async def pickup(self, who: Principal, order_id: str, *,
                     confirmed_items: int | None) -> dict[str, Any]:  # fmt: skip
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, "pickup")
            state.check_items()
            check_turn(state, "pickup")
            confirmed = confirmed_items if confirmed_items is not None else item_count(state.items)
            written = await append(self.node, order_id, [step_event(
                order_id, "ship", Opcode.ORDER_SHIP,
                {"pickedUpBy": state.driver, "confirmedItems": confirmed})])  # fmt: skip
            return response(order_id, "picked_up", written)

    # -- Step 10 -----------------------------------------------------------------------

    async def deliver(self, who: Principal, order_id: str, *, lat: float,
                      lng: float) -> dict[str, Any]:  # fmt: skip
        async with self._locked(order_id):
            state = await self._member_state(who, order_id, "deliver")
            driver = deliver_turn(state)
            if deliver_retry(state, await self.db.is_claimed(order_id, driver)):
                written = state.written(DELIVER_STEPS)  # a retry: the events stand as written
            else:
                written = await append(self.node, order_id, await self._deliver_events(state))
            await self.dispatch.release(order_id, driver, lat, lng)
        if self.gps is not None:
            self.gps.forget(driver)
        if self.archiver is not None:
            self.archiver.schedule(order_id)
        await self.dispatch.assign_waiting()
        return response(order_id, "delivered", written)

    async def _deliver_events(self, state: OrderState) -> list[NewEvent]:
        order_id, driver = state.order_id, state.driver
        assert driver is not None
        ts = now_ts()
        payout, payin = split_payment(state.total, self.settings.driver_payout)
        node_id, _, _ = await find_restaurant(self.db, state.restaurant)
        return [
            step_event(order_id, "deliver", Opcode.ORDER_DELIVER, {
                "deliveredBy": driver, "confirmedBy": state.customer,
                "totalMinutes": minutes_between(state.created.ts, ts)}),
            step_event(order_id, "payout", Opcode.ACCOUNT_PAYOUT,
                       {"type": "delivery-fee", "currency": CURRENCY},
                       node_id=driver, delta=payout),
            step_event(order_id, "payin", Opcode.ACCOUNT_PAYIN,
                       {"type": "order-revenue", "currency": CURRENCY},
                       node_id=node_id, delta=payin),
        ]  # fmt: skip

    # -- drivers -----------------------------------------------------------------------

    async def driver_me(self, who: Principal) -> dict[str, Any]:
        """A driver's own availability, position and current order."""
        check_may(who, "driver_me")
        listing = await self.db.driver_listing(who.tenant)
        if listing is None:
            return {"driver": who.tenant, "status": "offline", "lat": None, "lng": None,
                    "orderId": None}  # fmt: skip
        availability, open_now, lat, lng, claim = listing
        if claim is not None:
            status = "en-route"
        elif availability == "idle" and open_now:
            status = "online"
        else:
            status = "offline"
        if self.db.exists(who.tenant):  # the freshest position is in its own DB
            at = await self.db.position(who.tenant)
            if at is not None and at[0] is not None:
                lat, lng = at
        return {"driver": who.tenant, "status": status, "lat": lat, "lng": lng,
                "orderId": claim}  # fmt: skip

    async def driver_status(self, who: Principal, *, vehicle: str,
                            at: tuple[float, float] | None) -> dict[str, Any]:  # fmt: skip
        """A driver comes online (idle, discoverable ``at`` (lat, lng)) or, with ``at``
        None, goes offline."""
        check_may(who, "driver_status")
        driver = who.tenant
        claim = await self.db.claim_of(driver)
        if claim is not None:
            raise Conflict(f"on a delivery ({claim})", code="on_delivery")
        point_id = await self.db.driver_point_id(driver) or f"pt-{driver}-loc"
        ts = now_ts()
        if at is not None:
            await self.db.driver_online(driver, point_id, driver.title(), ts,
                                        {"vehicle": vehicle}, *at)  # fmt: skip
            await self.dispatch.assign_waiting()
        else:
            await self.db.driver_offline(driver, point_id)
        return {"driver": driver, "status": "online" if at is not None else "offline",
                "pointId": point_id}  # fmt: skip
