"""The order's rules, without I/O.

- the order statuses an order's events tell (:data:`ORDER_STATUS`, :func:`order_status`);
- which step may follow which (:data:`FOLLOWS`, :func:`check_turn` and the two steps that
  can be retried after a crash part-way, :func:`ready_turn` and :func:`deliver_turn`),
  and until when each party may cancel (:data:`CANCEL_WHILE`);
- who may take each step (:func:`check_may`, :func:`check_party`);
- the actions a caller may take now (:func:`actions`), for the apps' buttons;
- the order as its stream tells it (:class:`OrderState`);
- the arithmetic: prices and totals, payouts, stock to take, minutes and ETAs.

A step whose writes are all done answers 409 ``already_done``; a step out of turn 409
``out_of_turn``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.domain.auth import Principal, Role
from hub.errors import Conflict, Forbidden, NotFound, Unprocessable
from hub.events import Event, Opcode
from hub.infra.orderdb import ProductRow, StockPoint, StockTake

__all__ = [
    "CURRENCY",
    "DEFAULT_VEHICLE",
    "FOLLOWS",
    "MAX_ITEMS",
    "MAX_QTY",
    "ORDER_STATUS",
    "PERFORMER",
    "STATUSES",
    "STATUS_OPCODES",
    "OrderState",
    "actions",
    "check_accepted",
    "check_cancel",
    "check_may",
    "check_party",
    "check_turn",
    "deliver_turn",
    "order_status",
    "ready_turn",
    "status_of",
    "vouch",
]

CURRENCY = "AED"
MAX_ITEMS = 50  # items of one order
MAX_QTY = 1000  # of one item
APPLIED_KEEP = 64  # orders remembered per stock point (retry window)
KMH = 30.0  # assumed average speed for ETAs
KM_PER_DEG = 111.0
DEFAULT_VEHICLE = "Motorcycle"  # a driver that names none (the seed's Rami rides one)

# -- statuses ---------------------------------------------------------------------------

# The order status an opcode moves a stream to (docs/protocol.md §4), in step order.
ORDER_STATUS: dict[int, str] = {
    Opcode.ORDER_CREATE: "placed",
    Opcode.INVOICE_PAYMENT: "paid",
    Opcode.TASK_CREATE: "preparing",
    Opcode.TASK_START: "preparing",
    Opcode.TASK_DONE: "ready",
    Opcode.TASK_ASSIGN: "assigned",
    Opcode.ORDER_SHIP: "picked_up",
    Opcode.ORDER_DELIVER: "delivered",
    Opcode.ORDER_CANCEL: "cancelled",  # final, whatever came before
}
# The opcodes that tell an order's status (TASK_UNASSIGN takes "assigned" back to "ready").
STATUS_OPCODES = (*ORDER_STATUS, Opcode.TASK_UNASSIGN)
STATUSES = tuple(dict.fromkeys(ORDER_STATUS.values()))  # in step order, then "cancelled"
_RANK = {s: i for i, s in enumerate(STATUSES)}
FINAL = frozenset({"delivered", "cancelled"})


def order_status(events: Sequence[Event]) -> str | None:
    """The order status the events tell; None for a stream with no ORDER_CREATE."""
    return status_of({e.opcode: e.seq for e in events})


def status_of(opcodes: Collection[int] | Mapping[int, int]) -> str | None:
    """The order status of a stream holding ``opcodes`` (None: not an order): cancelled
    once cancelled, else the furthest step reached; "assigned" is "ready" again when the
    last TASK_UNASSIGN came after the last TASK_ASSIGN, which only a mapping of each
    opcode to its last ``seq`` tells (a set is read as "assigned": an archived order,
    the only one read so, is delivered or cancelled anyway)."""
    if Opcode.ORDER_CREATE not in opcodes:
        return None
    if Opcode.ORDER_CANCEL in opcodes:
        return "cancelled"
    best = "placed"
    for opcode in opcodes:
        status = ORDER_STATUS.get(opcode)
        if status is not None and _RANK[status] > _RANK[best]:
            best = status
    if best == "assigned" and isinstance(opcodes, Mapping):
        unassigned, assigned = opcodes.get(Opcode.TASK_UNASSIGN, 0), opcodes[Opcode.TASK_ASSIGN]
        best = "ready" if unassigned > assigned else best
    return best


# -- the order as its stream tells it ---------------------------------------------------


@dataclass
class OrderState:
    """An order as its stream tells it.

    ``events`` may be the whole stream or what :func:`~hub.domain.orders.stream.load` keeps
    of it (the first event of each opcode, every TASK_ASSIGN, TASK_UNASSIGN and
    ORDER_CANCEL and every event of the order steps): what follows reads nothing else.
    ``last_seq`` is the stream's last ``seq`` when it was read: a step decided on this
    state commits only onto it (:meth:`Store.append <hub.infra.store.Store.append>`'s
    ``expected``), so two steps decided at once on two instances never both commit.
    """

    order_id: str
    events: list[Event]
    last_seq: int = 0

    def __post_init__(self) -> None:
        self.ids = {e.id for e in self.events}
        created = next((e for e in self.events if e.opcode == Opcode.ORDER_CREATE), None)
        if created is None:
            raise NotFound("no such order")
        self.created = created
        self.payload = created.payload_obj
        # The driver now: the last TASK_ASSIGN's, unless a later TASK_UNASSIGN names him.
        self.driver: str | None = None
        self.assigns = self.unassigns = 0
        self.unassigned: dict[str, str] = {}  # driver taken off it -> why (not back since)
        self.cancel: Event | None = None
        self.assigned_at: Event | None = None  # the current driver's TASK_ASSIGN
        for e in self.events:
            if e.opcode == Opcode.TASK_ASSIGN:
                self.assigns += 1
                named = e.payload_obj.get("driver")
                self.driver = named if isinstance(named, str) else None
                self.assigned_at = e
                if self.driver is not None:
                    self.unassigned.pop(self.driver, None)
            elif e.opcode == Opcode.TASK_UNASSIGN:
                self.unassigns += 1
                payload = e.payload_obj
                named = payload.get("driver")
                if isinstance(named, str):
                    self.unassigned[named] = str(payload.get("reason"))
                if named == self.driver:
                    self.driver = self.assigned_at = None
            elif e.opcode == Opcode.ORDER_CANCEL and self.cancel is None:
                self.cancel = e
        self.status = order_status(self.events) or "placed"

    def status_at(self, seq: int) -> str:
        """The order's status when its stream ended at ``seq``."""
        return order_status([e for e in self.events if e.seq <= seq]) or "placed"

    def assign_id(self) -> str:
        """The step name of the next TASK_ASSIGN: ``assign`` (the seed's), then
        ``assign.2``, ``assign.3`` …"""
        n = self.assigns + 1
        return "assign" if n == 1 else f"assign.{n}"

    def unassign_id(self) -> str:
        """The step name of the next TASK_UNASSIGN: ``unassign.1``, ``unassign.2`` …"""
        return f"unassign.{self.unassigns + 1}"

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

    def party(self, role: Role) -> str | None:
        """The tenant that is the order's ``role`` (the driver: None until one is assigned)."""
        return {Role.CUSTOMER: self.customer, Role.RESTAURANT: self.restaurant,
                Role.DRIVER: self.driver}.get(role)  # fmt: skip

    def has(self, step: str) -> bool:
        return f"{self.order_id}.{step}" in self.ids

    def step(self, step: str) -> Event | None:
        """The event ``step`` wrote (id ``{order_id}.{step}``), if it is in the stream."""
        wanted = f"{self.order_id}.{step}"
        return next((e for e in self.events if e.id == wanted), None)

    def assigned_to(self, driver: str) -> bool:
        """Whether ``driver`` is the order's driver now."""
        return self.driver is not None and self.driver == driver

    def paid(self) -> Event | None:
        """Step 2's payment (``{order_id}.pay``: only the hub and the platform write it),
        the one a cancel refunds; a party's own INVOICE_PAYMENT is its say-so, not money."""
        paid = self.step("pay")
        return paid if paid is not None and paid.opcode == Opcode.INVOICE_PAYMENT else None

    def sales(self) -> list[Event]:
        """Step 4's SALE_OUT events (the stock the kitchen took for the order)."""
        prefix = f"{self.order_id}.sale."
        return [e for e in self.events if e.opcode == Opcode.SALE_OUT and e.id.startswith(prefix)]

    def written(self, steps: Sequence[str]) -> list[Event]:
        wanted = {f"{self.order_id}.{s}" for s in steps}
        return [e for e in self.events if e.id in wanted or any(
            e.id.startswith(w + ".") for w in wanted)]  # fmt: skip


# -- who may take each step -------------------------------------------------------------

# The role that takes each action; the platform may also take the order steps (for any
# party), nothing else in another role's place.
PERFORMER: dict[str, Role] = {
    "create": Role.CUSTOMER,
    "pay": Role.CUSTOMER,
    "accept": Role.RESTAURANT,
    "ready": Role.RESTAURANT,
    "pickup": Role.DRIVER,
    "deliver": Role.DRIVER,
    "driver_status": Role.DRIVER,
    "driver_me": Role.DRIVER,
    "motion": Role.DRIVER,
    "decline": Role.DRIVER,
}
PLATFORM_MAY = frozenset({"pay", "accept", "ready", "pickup", "deliver", "decline"})
_REFUSED = {
    "create": "only a customer places orders",
    "driver_status": "only a driver changes its availability",
    "driver_me": "only a driver has a driver status",
    "motion": "only a driver reports its position",
    "cancel": "only the order's customer, restaurant or the platform may cancel it",
}


def may(who: Principal, action: str) -> bool:
    """Whether ``who``'s role may take ``action`` (a step, or a driver's own action)."""
    if action == "cancel":
        return who.role in CANCEL_WHILE
    return who.role is PERFORMER[action] or (who.is_platform and action in PLATFORM_MAY)


def check_may(who: Principal, action: str) -> None:
    """403 unless ``who``'s role may take ``action``."""
    if not may(who, action):
        refused = _REFUSED.get(action)
        raise Forbidden(refused or f"only the order's {PERFORMER[action]} may do this")


def check_party(who: Principal, state: OrderState, step: str) -> None:
    """403 unless ``who`` is the order's party for ``step`` (or the platform)."""
    role = who.role if step == "cancel" else PERFORMER[step]
    if not who.is_platform and state.party(role) != who.tenant:
        raise Forbidden(f"only the order's {role} may do this")


# -- which step may follow which ---------------------------------------------------------

# The statuses each step may follow. Accept also follows "preparing" and deliver
# "delivered": a retry after a crash part-way completes what is missing.
FOLLOWS: dict[str, frozenset[str]] = {
    "pay": frozenset({"placed"}),
    "accept": frozenset({"paid", "preparing"}),
    "ready": frozenset({"preparing"}),
    "pickup": frozenset({"assigned"}),
    "deliver": frozenset({"picked_up", "delivered"}),
    "decline": frozenset({"assigned"}),
}

# Until when each party may cancel (docs/protocol.md §6): the customer before the kitchen
# accepts, the restaurant before the order is ready (a rejection), the platform until it
# is delivered.
CANCEL_WHILE: dict[Role, frozenset[str]] = {
    Role.CUSTOMER: frozenset({"placed", "paid"}),
    Role.RESTAURANT: frozenset({"placed", "paid", "preparing"}),
    Role.PLATFORM: frozenset({"placed", "paid", "preparing", "ready", "assigned", "picked_up"}),
}


def check_cancel(who: Principal, state: OrderState) -> None:
    """409 unless ``who`` may cancel the order now: ``already_done`` once it is cancelled,
    ``out_of_turn`` when its status is past the caller's point."""
    if state.status == "cancelled":
        raise already_done(state)
    if state.status not in CANCEL_WHILE[who.role]:
        raise Conflict(f"too late to cancel: order is {state.status}", code="out_of_turn")


def actions(who: Principal, state: OrderState) -> list[str]:
    """What ``who`` may do to the order now (the buttons an app shows)."""
    out: list[str] = []
    for step in ("pay", "accept", "ready", "pickup", "deliver"):
        if (may(who, step) and may_follow(step, state.status) and not step_written(state, step)
                and (who.is_platform or state.party(PERFORMER[step]) == who.tenant)):  # fmt: skip
            out.append(step)
    if who.role in CANCEL_WHILE and state.status in CANCEL_WHILE[who.role] and (
        who.is_platform or state.party(who.role) == who.tenant
    ):
        out.append("cancel")
    if (state.status == "assigned" and may(who, "decline")
            and (who.is_platform or state.driver == who.tenant)):  # fmt: skip
        out.append("decline")
    return out


def may_follow(step: str, status: str) -> bool:
    """Whether ``step`` may be taken while the order is ``status``."""
    return status in FOLLOWS[step]


def accepted(state: OrderState) -> bool:
    """Whether the stock of every item is taken (Step 4's SALE_OUT events)."""
    return all(state.has(f"sale.{i['productId']}") for i in state.items)


def step_written(state: OrderState, step: str) -> bool:
    """Whether every event ``step`` writes is in the stream."""
    if step == "decline":
        return False
    ids = {"pay": ("pay",), "accept": ("task", "start"), "ready": ("done",),
           "pickup": ("ship",), "deliver": ("deliver", "payout", "payin")}[step]  # fmt: skip
    return all(state.has(i) for i in ids) and (step != "accept" or accepted(state))


def already_done(state: OrderState) -> Conflict:
    return Conflict(f"already done (order is {state.status})", code="already_done")


def out_of_turn(state: OrderState) -> Conflict:
    if state.status == "cancelled":
        return Conflict("not now: the order is cancelled", code="out_of_turn")
    return Conflict(f"not now: order is {state.status}", code="out_of_turn")


def check_turn(state: OrderState, step: str) -> None:
    """409 unless it is ``step``'s turn: ``already_done`` when its events are written,
    ``out_of_turn`` when the order's status is not one the step follows."""
    if step_written(state, step):
        raise already_done(state)
    if not may_follow(step, state.status):
        raise out_of_turn(state)


def ready_turn(state: OrderState) -> bool:
    """Step 5's turn: True to write it; False when it is written but Step 6 is not (a
    retry completes the assignment); 409 otherwise."""
    if state.has("done"):
        if state.status == "cancelled":
            raise out_of_turn(state)
        if state.driver is not None or state.status != "ready":
            raise already_done(state)
        return False
    check_turn(state, "ready")
    check_accepted(state)
    return True


def check_accepted(state: OrderState) -> None:
    """409 unless Step 4 took the order's stock: its SALE_OUT events, whose ids only the hub
    (after :func:`vouch`) and the platform write, are the proof that the kitchen accepted
    an order the hub vouched for."""
    if not accepted(state):
        raise Conflict("not now: the kitchen has not accepted it", code="out_of_turn")


def deliver_turn(state: OrderState) -> str:
    """Step 10's turn, before the driver's claim is known: the order's driver, or 409."""
    if state.driver is None or not may_follow("deliver", state.status):
        raise out_of_turn(state)
    return state.driver


def deliver_retry(state: OrderState, claimed: bool) -> bool:
    """Step 10 once the claim is known: True when its events are written and only the
    driver's release is left (a retry); 409 when that is done too."""
    if state.has("deliver") and not claimed:
        raise Conflict("already done (order is delivered)", code="already_done")
    return step_written(state, "deliver")


# -- arithmetic --------------------------------------------------------------------------


def money(x: float) -> float:
    """``x`` rounded to cents (halves up, not to even)."""
    return round(x + 1e-9, 2)


def minutes_between(start: str, end: str) -> int:
    """Whole minutes from ``start`` to ``end`` (ISO 8601), never negative."""
    a = datetime.fromisoformat(start)
    b = datetime.fromisoformat(end)
    return max(0, round((b - a).total_seconds() / 60))


def price_items(wanted: Mapping[str, int], offer: Mapping[str, ProductRow]
                ) -> list[dict[str, Any]]:  # fmt: skip
    """The order's items with title and price: 422 for a product not on ``offer``, 409 for
    one without enough stock."""
    items: list[dict[str, Any]] = []
    for pid, qty in wanted.items():
        row = offer.get(pid)
        if row is None:
            raise Unprocessable(f"unknown product {pid!r}", code="unknown_product")
        if row.availability not in (None, "in-stock") or row.qty is None or row.qty < qty:
            raise Conflict(f"not enough {row.title or pid} in stock", code="out_of_stock")
        items.append({"productId": pid, "title": row.title, "qty": qty, "price": row.price})
    return items


def order_total(items: Sequence[Mapping[str, Any]], delivery_fee: float) -> float:
    """What the customer pays: every item's price times its quantity, plus the fee."""
    subtotal = 0.0
    for item in items:
        subtotal += float(item["price"]) * item["qty"]
    return money(subtotal + delivery_fee)


def unverified(reason: str) -> Conflict:
    return Conflict(f"the hub cannot vouch for this order: {reason}", code="unverified_order")


def vouch(state: OrderState, offer: Mapping[str, ProductRow], delivery_fee: float) -> None:
    """409 ``unverified_order`` unless the hub can vouch for the order before its stock is
    taken: every item at the price the restaurant's menu (``offer``) gives it, the total
    those prices plus ``delivery_fee``, and Step 2's payment (``{order_id}.pay``, which only
    the hub and the platform write) covering that total.

    An ORDER_CREATE or INVOICE_PAYMENT a party wrote through the generic event API is the
    party's say-so: it may name any price, total or amount (a total of 0.01, a payment of 0).
    Call after :meth:`OrderState.check_items`.
    """
    priced: list[dict[str, Any]] = []
    for item in state.items:
        pid, price = item["productId"], item.get("price")
        row = offer.get(pid)
        if row is None or row.price is None:
            raise unverified(f"{pid!r} is not on the restaurant's menu")
        if (isinstance(price, bool) or not isinstance(price, int | float)
                or money(price) != money(row.price)):  # fmt: skip
            raise unverified(f"the price of {pid!r} is not the menu's")
        priced.append({"price": row.price, "qty": item["qty"]})
    total = order_total(priced, delivery_fee)
    if money(state.total) != total:
        raise unverified(f"its total is not the items' prices plus the delivery fee ({total:g})")
    paid = state.step("pay")
    if paid is None or paid.opcode != Opcode.INVOICE_PAYMENT or money(paid.delta) < total:
        raise unverified("it is not paid in full (POST /api/orders/{id}/pay)")


def item_count(items: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(i["qty"]) for i in items)


def prep_minutes(items: Sequence[Mapping[str, Any]], estimate: int | None) -> int:
    """The kitchen's estimate, else 6 minutes plus 3 a piece."""
    return estimate or 6 + 3 * item_count(items)


def split_payment(total: float, driver_payout: float) -> tuple[float, float]:
    """(the driver's payout, the restaurant's revenue) of an order's ``total``."""
    payout = money(driver_payout)
    return payout, money(total - payout)


def distance_km(a: tuple[float | None, float | None], b: tuple[float | None, float | None]
                ) -> float:  # fmt: skip
    """The Manhattan distance between two (lat, lng), in km (an unknown coordinate is 0)."""
    return (abs((a[0] or 0) - (b[0] or 0)) + abs((a[1] or 0) - (b[1] or 0))) * KM_PER_DEG


EARTH_RADIUS_M = 6_371_008.8


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The great-circle distance between two (lat, lng), in metres (haversine)."""
    lat1, lng1, lat2, lng2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2)  # fmt: skip
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def pickup_eta(km: float) -> int:
    """Minutes until a driver ``km`` away is at the restaurant (at least 5)."""
    return max(5, round(10 + km / KMH * 60))


def stock_takes(order_id: str, items: Sequence[Mapping[str, Any]],
                points: Mapping[str, StockPoint]) -> list[StockTake]:  # fmt: skip
    """What to take from each point for the order's items, skipping points that already
    recorded the order; 409 for a product without a point or without enough stock."""
    takes: list[StockTake] = []
    for item in items:
        point = points.get(item["productId"])
        if point is None:
            raise Conflict(f"product {item['productId']!r} is gone", code="out_of_stock")
        applied = json.loads(point.applied) if point.applied else []
        if order_id in applied:
            continue
        need = int(item["qty"])
        if point.qty is None or point.qty < need:
            raise Conflict(f"not enough {item['productId']} in stock", code="out_of_stock")
        new_applied = json.dumps(([*applied, order_id])[-APPLIED_KEEP:])
        takes.append(StockTake(point.point_id, need, new_applied, point.applied))
    return takes
