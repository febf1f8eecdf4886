"""The order steps (the seed's Steps 1-10), the unhappy paths (cancel, decline, a silent
driver, an order nobody accepts), one method per endpoint, and what the apps read.

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

**Races are decided by the stream.** Each step reads the order, decides, and commits its
events only onto the stream it read (``expected`` seq): when anything was appended
meanwhile, on any instance, it reads again and decides anew (:meth:`Orders._decide`). A
cancel and a step sent at once therefore never both land, and the log never holds a step
after a cancel. Accept takes stock before its events commit; an accept that then loses
to a cancel gives the stock back (:meth:`Orders._return_stock`, once per order).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from hub.domain.archiver import Archiver
from hub.domain.auth import Principal, Role
from hub.domain.gps import Gps
from hub.domain.node import Node
from hub.domain.orders.dispatch import Dispatch, find_restaurant, unassign_event
from hub.domain.orders.rules import (
    CURRENCY,
    OrderState,
    accepted,
    actions,
    check_cancel,
    check_may,
    check_party,
    check_turn,
    deliver_retry,
    deliver_turn,
    distance_m,
    item_count,
    may_follow,
    minutes_between,
    money,
    order_total,
    out_of_turn,
    prep_minutes,
    price_items,
    ready_turn,
    split_payment,
    stock_takes,
    vouch,
)
from hub.domain.orders.stream import append, load, step_event
from hub.domain.restaurants import order_currency, restaurant_terms
from hub.errors import Busy, Conflict, Forbidden, HubError, NotFound, Unavailable
from hub.events import STREAM_ID_RE, Event, NewEvent, Opcode, now_ts
from hub.infra.orderdb import OrderDb
from hub.infra.store import StreamArchived, StreamChanged, StreamInfo
from hub.infra.tenants import Tenants
from hub.timing import KeyedLocks

__all__ = ["NewOrder", "Orders"]

log = logging.getLogger("hub.orders")

DELIVER_STEPS = ("deliver", "payout", "payin")
STOCK_ATTEMPTS = 8  # reads of the stock when other orders take it meanwhile
ORDER_ID_DRAWS = 4  # order ids drawn at most when the drawn one is taken
STEP_ATTEMPTS = 8  # reads of an order whose stream changes under a step


@dataclass(frozen=True, slots=True)
class NewOrder:
    """Step 1's request, parsed."""

    restaurant: str
    items: dict[str, int]  # product id -> quantity, in the order given
    delivery_address: str
    notes: str = ""
    delivery_location: tuple[float, float] | None = None  # (lat, lng)
    order_id: str | None = None  # None: the hub draws one


class _Nothing(Exception):
    """A timer found nothing to do after all (the order moved on)."""


After = Callable[[OrderState, list[Event]], Awaitable[None]]


def taken_off(who: Principal, state: OrderState) -> None:
    """409 when ``who`` is a driver the order's TASK_UNASSIGN took off it."""
    why = state.unassigned.get(who.tenant)
    if why is not None:
        raise Conflict(f"you are no longer on this order ({why}; it is {state.status})",
                       code="out_of_turn")  # fmt: skip


def seconds_since(ts: str) -> float:
    """Seconds from ``ts`` (ISO 8601) to now; 0 when ``ts`` does not parse."""
    try:
        then = datetime.fromisoformat(ts)
    except ValueError:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds()


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
        """At start-up, finish what a crash left half-done: claims (see
        :meth:`Dispatch.recover`), and cancelled orders' stock and drivers."""
        await self.dispatch.recover()
        for order_id in await self.node.find_streams(having=Opcode.ORDER_CANCEL, limit=1000):
            try:
                async with self._locked(order_id):
                    await self._after_cancel(await load(self.node, order_id))
            except Exception:
                log.exception("completing the cancel of %s failed", order_id)

    async def _member_state(self, who: Principal, order_id: str, step: str) -> OrderState:
        """The order, if ``who`` may take ``step`` and is the order's party for it."""
        check_may(who, step)
        info = await self.node.stream_info(order_id) if STREAM_ID_RE.match(order_id) else None
        if info is None or (not who.is_platform and who.tenant not in info.members):
            if info is not None and who.role is Role.DRIVER:
                await self._check_taken_off(who, order_id, info.archived)
            raise Forbidden("not a member of this order")
        if info.archived:
            raise Conflict("already done: this order is archived", code="already_done")
        state = await load(self.node, order_id)
        if who.role is Role.DRIVER and state.driver != who.tenant:
            taken_off(who, state)
        check_party(who, state, step)
        return state

    async def _check_taken_off(self, who: Principal, order_id: str, archived: bool) -> None:
        """409 for a driver taken off the order (he knew of it: its steps are no longer
        his, which a racing step's loser is told as 409, not as a stranger's 403)."""
        taken_off(who, await load(self.node, order_id, archived=archived))

    # -- reads for the apps ------------------------------------------------------------

    async def menu(self, who: Principal, restaurant: str) -> dict[str, Any]:
        """A restaurant's name, location, whether it is open, its currency and its products
        with price and stock."""
        if not self.db.exists(restaurant):
            raise NotFound("no such restaurant")
        node_id, lat, lng = await find_restaurant(self.db, restaurant)
        title, profile = await self.db.node(restaurant, node_id) or (None, {})
        is_open, currency = await restaurant_terms(self.db, restaurant)
        rows = await self.db.menu(restaurant)
        return {
            "restaurant": restaurant, "nodeId": node_id, "name": title,
            "address": profile.get("address"),
            "location": {"lat": lat, "lng": lng} if lat is not None else None,
            "open": is_open, "currency": currency,
            "products": [
                {"productId": pid, "title": t, "desc": json.loads(p or "{}").get("desc"),
                 "pointId": pt, "stock": int(qty) if qty is not None and float(qty).is_integer()
                 else qty, "price": price, "currency": cur,
                 "availability": av}
                for pid, t, p, pt, qty, price, cur, av in rows
            ],
        }  # fmt: skip

    async def details(self, who: Principal, order_id: str) -> dict[str, Any]:
        """What the apps show of an order: parties, places, items, the driver (who, on
        what, when he was last heard of, whether he is reachable) and his position."""
        info = await self.node.read(who, order_id)
        state = await load(self.node, order_id, archived=info.archived)
        _, lat, lng = await find_restaurant(self.db, state.restaurant)
        profile = await self.db.restaurant_profile(state.restaurant)
        where = await self._drop_off(state)
        driver_at = last_seen = driver = None
        if state.driver is not None and self.db.exists(state.driver):
            at = await self.db.position(state.driver)
            if at is not None and at[0] is not None:
                driver_at = {"lat": at[0], "lng": at[1]}
            last_seen = await self.db.last_seen(state.driver)
        if state.driver is not None:
            # The driver as tracking shows him (docs/protocol.md §5, Tracking frames): his
            # presence is "unreachable" once no position came for HUB_PRESENCE_TIMEOUT
            # seconds since his last one or his assignment, whichever is later.
            assigned = state.assigned_at
            quiet = [seconds_since(t) for t in (last_seen, assigned.ts if assigned else None)
                     if isinstance(t, str) and t]  # fmt: skip
            driver = {
                "id": state.driver,
                "vehicle": assigned.payload_obj.get("vehicle") if assigned else None,
                "assignedAt": assigned.ts if assigned else None, "lastSeen": last_seen,
                "state": "unreachable" if not quiet or min(quiet) >= self.settings.presence_timeout
                else "online",
            }  # fmt: skip
        currency = await self._currency(state)
        refund = state.step("refund")
        cancel = state.cancel.payload_obj if state.cancel is not None else None
        return {
            "orderId": order_id, "orderStatus": state.status,
            "status": "archived" if info.archived else "active",
            "customer": state.customer, "restaurant": state.restaurant,
            "restaurantName": profile[0] if profile else state.restaurant,
            "pickupAddress": profile[1].get("address") if profile else None,
            "restaurantLocation": {"lat": lat, "lng": lng} if lat is not None else None,
            "deliveryAddress": state.payload.get("deliveryAddress"),
            "deliveryLocation": where, "items": state.items, "total": state.total,
            "currency": currency, "driver": driver, "driverLocation": driver_at,
            "driverLastSeen": last_seen, "lastSeq": info.last_seq,
            "actions": [] if info.archived else actions(who, state),
            "refund": {"amount": -refund.delta, "currency": currency}
            if refund is not None and refund.opcode == Opcode.INVOICE_REFUND else None,
            "cancelled": {"by": cancel.get("by"), "reason": cancel.get("reason")}
            if cancel is not None else None,
        }  # fmt: skip

    # -- Step 1 ------------------------------------------------------------------------

    async def create(self, who: Principal, order: NewOrder) -> dict[str, Any]:
        check_may(who, "create")
        restaurant = order.restaurant
        await find_restaurant(self.db, restaurant)  # 422 for a restaurant that does not exist
        currency = await order_currency(self.db, restaurant)  # 409 when it is closed
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
            "currency": currency,
        }, delta=total)  # fmt: skip
        # The ORDER_CREATE first: refused, it leaves nothing behind; committed, the order
        # nodes follow (a retry with the same orderId writes those still missing).
        written = await append(self.node, order_id, [create], first=True)
        await self._order_nodes(who.tenant, order, written[0])
        out = response(order_id, "placed", written)
        out.update(streamId=order_id, total=total, currency=currency)
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

    # -- how a step decides --------------------------------------------------------------

    async def _decide(self, who: Principal | None, order_id: str, step: str,
                      decide: Callable[[OrderState], Awaitable[list[NewEvent]]],
                      then: After | None = None) -> tuple[OrderState, list[Event]]:  # fmt: skip
        """Read the order (as ``who``, None: the hub itself), let ``decide`` check it and
        say what to write, and commit that onto the stream as read. When the stream
        changed meanwhile it reads again: if the order moved on (another step, a cancel,
        on any instance) this one lost the race (409 ``out_of_turn``, even where the new
        status would allow it: exactly one of two racing steps lands); else (a party's
        own event) it decides again. The same holds for a step that arrived while another
        held the order's lock here: it is decided on the order as it was when the request
        arrived. ``then(state, written)`` runs still holding the lock. The state decided on
        and the events written."""
        info = await self.node.stream_info(order_id) if STREAM_ID_RE.match(order_id) else None
        arrived = info.last_seq if info is not None else None
        async with self._locked(order_id):
            decided: str | None = None
            for _ in range(STEP_ATTEMPTS):
                if who is None:
                    state = await load(self.node, order_id)
                else:
                    state = await self._member_state(who, order_id, step)
                if decided is None and arrived is not None and state.last_seq > arrived:
                    decided = state.status_at(arrived)
                if decided is not None and state.status != decided:
                    raise Conflict(f"the order moved on meanwhile: it is {state.status} now",
                                   code="out_of_turn")  # fmt: skip
                decided = state.status
                events = await decide(state)
                try:
                    written = await append(self.node, order_id, events, onto=state)
                except (StreamChanged, StreamArchived):
                    continue  # read again: archived, it is refused as already done
                if then is not None:
                    await then(state, written)
                return state, written
        raise Busy("the order kept changing meanwhile; retry")

    # -- Step 2 ------------------------------------------------------------------------

    async def pay(self, who: Principal, order_id: str, *, method: str,
                  card_last4: str | None) -> dict[str, Any]:  # fmt: skip
        payload: dict[str, Any] = {"method": method}
        if card_last4 is not None:
            payload["cardLast4"] = card_last4

        async def decide(state: OrderState) -> list[NewEvent]:
            check_turn(state, "pay")
            return [step_event(order_id, "pay", Opcode.INVOICE_PAYMENT, payload,
                               delta=state.total)]  # fmt: skip

        _, written = await self._decide(who, order_id, "pay", decide)
        return response(order_id, "paid", written)

    # -- Steps 3 and 4 -----------------------------------------------------------------

    async def accept(self, who: Principal, order_id: str, *, chef: str, station: str,
                     est_minutes: int | None) -> dict[str, Any]:  # fmt: skip
        took: OrderState | None = None  # set once this call took the order's stock

        async def decide(state: OrderState) -> list[NewEvent]:
            nonlocal took
            state.check_items()
            check_turn(state, "accept")
            await find_restaurant(self.db, state.restaurant)
            offer = await self.db.products(state.restaurant, [i["productId"] for i in state.items])
            vouch(state, offer, self.settings.delivery_fee)
            points = await self._take_stock(state)
            took = state
            return [
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

        try:
            _, written = await self._decide(who, order_id, "accept", decide)
        except (Conflict, Forbidden, Busy):
            if took is not None:  # the stock was taken, but the order moved on
                await self._give_back_if_lost(order_id)
            raise
        return response(order_id, "preparing", written)

    async def _give_back_if_lost(self, order_id: str) -> None:
        """After an accept that took stock lost its order to a cancel: the stock back."""
        with contextlib.suppress(HubError):
            state = await load(self.node, order_id)
            if state.status == "cancelled" and not accepted(state):
                await self._return_stock(state)

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

    async def _return_stock(self, state: OrderState) -> None:
        """A cancelled order's stock back in the restaurant's DB, once: what its SALE_OUT
        events took, else (an accept that lost to the cancel) what the points record as
        taken for it."""
        if not self.db.exists(state.restaurant):
            return
        returns: dict[str, int] = {}
        for sale in state.sales():
            if sale.point_id and sale.delta < 0:
                returns[sale.point_id] = returns.get(sale.point_id, 0) + int(-sale.delta)
        if not returns:
            # An ORDER_CREATE written by hand may hold anything: only well-formed items.
            wanted = {str(i["productId"]): i["qty"] for i in state.items
                      if isinstance(i, dict) and isinstance(i.get("productId"), str)
                      and type(i.get("qty")) is int and i["qty"] > 0}  # fmt: skip
            points = await self.db.stock_points(state.restaurant, list(wanted)) if wanted else {}
            for pid, qty in wanted.items():
                point = points.get(pid)
                applied = json.loads(point.applied) if point and point.applied else []
                if point is not None and state.order_id in applied:
                    returns[point.point_id] = qty
        if returns:
            await self.db.return_stock(state.restaurant, state.order_id, now_ts(),
                                       sorted(returns.items()))  # fmt: skip

    # -- Steps 5 and 6 -----------------------------------------------------------------

    async def ready(self, who: Principal, order_id: str, *,
                    actual_minutes: int | None) -> dict[str, Any]:  # fmt: skip
        async def decide(state: OrderState) -> list[NewEvent]:
            state.check_items()
            if not ready_turn(state):
                return []  # Step 5 is written; a retry only completes Step 6
            start = next(e for e in state.events if e.opcode == Opcode.TASK_START)
            minutes = (actual_minutes if actual_minutes is not None
                       else minutes_between(start.ts, now_ts()))  # fmt: skip
            return [step_event(order_id, "done", Opcode.TASK_DONE,
                               {"task": "kitchen-prep", "actualMinutes": minutes})]  # fmt: skip

        state, written = await self._decide(who, order_id, "ready", decide)
        if not written:
            written = state.written(["done"])
        assigned = await self.dispatch.assign(order_id)
        if assigned:
            written = written + assigned
        return response(order_id, "assigned" if assigned else "ready", written)

    # -- Step 8 ------------------------------------------------------------------------

    async def pickup(self, who: Principal, order_id: str, *,
                     confirmed_items: int | None) -> dict[str, Any]:  # fmt: skip
        async def decide(state: OrderState) -> list[NewEvent]:
            state.check_items()
            check_turn(state, "pickup")
            confirmed = (confirmed_items if confirmed_items is not None
                         else item_count(state.items))  # fmt: skip
            return [step_event(order_id, "ship", Opcode.ORDER_SHIP,
                               {"pickedUpBy": state.driver, "confirmedItems": confirmed})]

        _, written = await self._decide(who, order_id, "pickup", decide)
        return response(order_id, "picked_up", written)

    # -- Step 10 -----------------------------------------------------------------------

    async def deliver(self, who: Principal, order_id: str, *, lat: float,
                      lng: float) -> dict[str, Any]:  # fmt: skip
        driver = ""

        async def decide(state: OrderState) -> list[NewEvent]:
            nonlocal driver
            driver = deliver_turn(state)
            if deliver_retry(state, await self.db.is_claimed(order_id, driver)):
                return []  # a retry: the events stand as written, the release is left
            await self._check_near(state, lat, lng)
            return await self._deliver_events(state)

        async def release(state: OrderState, written: list[Event]) -> None:
            await self.dispatch.release(order_id, driver, lat, lng)

        state, written = await self._decide(who, order_id, "deliver", decide, release)
        if not written:
            written = state.written(DELIVER_STEPS)
        if self.gps is not None:
            self.gps.forget(driver)
        if self.archiver is not None:
            self.archiver.schedule(order_id)
        await self.dispatch.assign_waiting()
        return response(order_id, "delivered", written)

    async def _check_near(self, state: OrderState, lat: float, lng: float) -> None:
        """409 ``too_far`` when the order's drop-off is known and (lat, lng) is more than
        ``HUB_DELIVER_RADIUS`` metres from it."""
        where = await self._drop_off(state)
        if where is None:
            return
        away = distance_m((lat, lng), (where["lat"], where["lng"]))
        if away > self.settings.deliver_radius:
            raise Conflict(f"too far from the drop-off to deliver ({away:.0f} m away; at most"
                           f" {self.settings.deliver_radius:g} m)", code="too_far")  # fmt: skip

    async def _drop_off(self, state: OrderState) -> dict[str, float] | None:
        """The order's ``deliveryLocation`` (its node in the customer's DB), else the
        customer's own location; None when neither is known."""
        if not self.db.exists(state.customer):
            return None
        found = await self.db.node_payloads(state.customer, [state.order_id, state.customer])
        where = found.get(state.order_id, {}).get("deliveryLocation")
        own = found.get(state.customer, {})
        if where is None and "lat" in own and "lng" in own:
            where = {"lat": own["lat"], "lng": own["lng"]}
        if not isinstance(where, dict):
            return None
        try:
            return {"lat": float(where["lat"]), "lng": float(where["lng"])}
        except (KeyError, TypeError, ValueError):
            return None

    async def _deliver_events(self, state: OrderState) -> list[NewEvent]:
        order_id, driver = state.order_id, state.driver
        assert driver is not None
        ts = now_ts()
        payout, payin = split_payment(state.total, self.settings.driver_payout)
        node_id, _, _ = await find_restaurant(self.db, state.restaurant)
        currency = await self._currency(state)
        return [
            step_event(order_id, "deliver", Opcode.ORDER_DELIVER, {
                "deliveredBy": driver, "confirmedBy": state.customer,
                "totalMinutes": minutes_between(state.created.ts, ts)}),
            step_event(order_id, "payout", Opcode.ACCOUNT_PAYOUT,
                       {"type": "delivery-fee", "currency": currency},
                       node_id=driver, delta=payout),
            step_event(order_id, "payin", Opcode.ACCOUNT_PAYIN,
                       {"type": "order-revenue", "currency": currency},
                       node_id=node_id, delta=payin),
        ]  # fmt: skip

    async def _currency(self, state: OrderState) -> str:
        """The order's currency: its ORDER_CREATE's, else the hub's default."""
        given = state.payload.get("currency")
        return given if isinstance(given, str) and given else CURRENCY

    # -- cancel ------------------------------------------------------------------------

    async def cancel(self, who: Principal, order_id: str, *, reason: str) -> dict[str, Any]:
        """ORDER_CANCEL, the refund of what Step 2 took, the stock back (SALE_RETURN),
        the driver off the order (TASK_UNASSIGN), in one append; then the stock and the
        driver in their DBs, and the stream archived like a delivered one."""
        check_may(who, "cancel")
        _, written = await self._decide(who, order_id, "cancel",
                                        partial(self._cancel_events, who, reason),
                                        self._after_cancel)  # fmt: skip
        return response(order_id, "cancelled", written)

    async def _cancel_events(self, who: Principal, reason: str,
                             state: OrderState) -> list[NewEvent]:  # fmt: skip
        if state.cancel is not None:
            await self._after_cancel(state)  # a retry completes what a crash left undone
        check_party(who, state, "cancel")
        check_cancel(who, state)
        order_id = state.order_id
        events = [step_event(order_id, "cancel", Opcode.ORDER_CANCEL,
                             {"by": str(who.role), "reason": reason})]  # fmt: skip
        paid = state.paid()
        if paid is not None:
            amount = money(paid.delta)
            events.append(step_event(order_id, "refund", Opcode.INVOICE_REFUND, {
                "amount": amount, "currency": await self._currency(state),
                "reason": reason}, node_id=state.customer, delta=-amount))  # fmt: skip
        for sale in state.sales():
            pid = sale.id.removeprefix(f"{order_id}.sale.")
            events.append(step_event(order_id, f"return.{pid}", Opcode.SALE_RETURN,
                                     {"reason": "order-cancel"}, node_id=sale.node_id,
                                     point_id=sale.point_id, delta=-sale.delta))  # fmt: skip
        if state.driver is not None:
            events.append(unassign_event(state, "cancelled"))
        return events

    async def _after_cancel(self, state: OrderState, _: object = None) -> None:
        """What follows a cancel outside the streams DB, each part safe to run again: the
        stock back, the driver idle again, the stream scheduled for the archive. Takes the
        state before the cancel or after it."""
        await self._return_stock(state)
        driver = state.driver
        if driver is None and state.cancel is not None:
            # After the cancel: its TASK_UNASSIGN names the driver it took off.
            driver = next((d for d, why in state.unassigned.items() if why == "cancelled"), None)
        if driver is not None:
            await self.dispatch.finish_unassign(state.order_id, driver, "cancelled")
        if self.archiver is not None:
            self.archiver.schedule(state.order_id)

    # -- decline, and a driver gone silent -----------------------------------------------

    async def decline(self, who: Principal, order_id: str, *, reason: str) -> dict[str, Any]:
        """The assigned driver gives the order back before pickup (TASK_UNASSIGN): he is
        idle again, never offered it again, and the order goes to the next nearest idle
        driver or waits ``ready``."""
        check_may(who, "decline")

        async def decide(state: OrderState) -> list[NewEvent]:
            if state.driver is None or not may_follow("decline", state.status):
                raise out_of_turn(state)
            if not who.is_platform and state.driver != who.tenant:
                raise Forbidden("only the order's driver may do this")
            return [unassign_event(state, "declined", reason or None)]

        async def release(state: OrderState, written: list[Event]) -> None:
            assert state.driver is not None
            await self.dispatch.finish_unassign(order_id, state.driver, "declined")

        _, written = await self._decide(who, order_id, "decline", decide, release)
        assigned = await self.dispatch.assign(order_id)
        return response(order_id, "assigned" if assigned else "ready", written + (assigned or []))

    async def unreachable(self, order_id: str, silent_since: Callable[[str], Awaitable[
            float | None]], timeout: float) -> list[Event]:  # fmt: skip
        """Take a driver silent for ``timeout`` seconds off ``order_id`` before pickup
        (TASK_UNASSIGN ``unreachable``; he goes offline) and reassign the order; ``[]``
        when there is nothing to do. ``silent_since(driver)``: seconds since he was heard
        of (None: never)."""
        async def decide(state: OrderState) -> list[NewEvent]:
            if state.driver is None or state.status != "assigned" or state.assigned_at is None:
                raise _Nothing()
            silent = await silent_since(state.driver)
            since_assign = seconds_since(state.assigned_at.ts)
            quiet = since_assign if silent is None else min(silent, since_assign)
            if quiet < timeout:
                raise _Nothing()
            return [unassign_event(state, "unreachable")]

        async def offline(state: OrderState, written: list[Event]) -> None:
            assert state.driver is not None
            await self.dispatch.finish_unassign(order_id, state.driver, "unreachable")
            log.warning("took silent driver %s off %s", state.driver, order_id)

        try:
            await self._decide(None, order_id, "decline", decide, offline)
        except _Nothing:
            return []
        return await self.dispatch.assign(order_id) or []

    async def not_accepted(self, order_id: str, timeout: float) -> list[Event]:
        """Cancel a paid order no kitchen accepted within ``timeout`` seconds of its
        payment (by the platform, reason ``not_accepted``, refunded); ``[]`` when there is
        nothing to do."""
        platform = Principal("hub", Role.PLATFORM)

        async def decide(state: OrderState) -> list[NewEvent]:
            paid = state.paid()
            if state.status != "paid" or paid is None or seconds_since(paid.ts) < timeout:
                raise _Nothing()
            return await self._cancel_events(platform, "not_accepted", state)

        try:
            _, written = await self._decide(None, order_id, "cancel", decide, self._after_cancel)
        except _Nothing:
            return []
        log.warning("cancelled %s: no kitchen accepted it", order_id)
        return written

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
