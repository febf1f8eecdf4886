"""The order's rules without I/O (hub.domain.orders.rules): statuses, which step may follow
which and who may take it, and the arithmetic of prices, payouts, stock and minutes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.domain.auth import Principal, Role
from hub.domain.orders import rules
from hub.domain.orders.rules import (
    FOLLOWS,
    STATUS_OPCODES,
    STATUSES,
    OrderState,
    check_may,
    check_party,
    check_turn,
    deliver_retry,
    deliver_turn,
    order_status,
    ready_turn,
    status_of,
)
from hub.errors import Conflict, Forbidden, NotFound, Unprocessable
from hub.events import Event, Opcode
from hub.infra.orderdb import ProductRow, StockPoint, StockTake
from hub.infra.store import StreamInfo

ORDER = "ord-5001"
ITEMS = [{"productId": "prod-shw", "qty": 2}, {"productId": "prod-lbn", "qty": 1}]

# The seed's Full Event Stream: (step id, opcode, payload, delta).
SEED: list[tuple[str, int, dict[str, Any], float]] = [
    ("create", Opcode.ORDER_CREATE, {"customer": "ali", "restaurant": "bab-hara",
                                     "items": ITEMS}, 46),
    ("pay", Opcode.INVOICE_PAYMENT, {"method": "card"}, 46),
    ("task", Opcode.TASK_CREATE, {"task": "kitchen-prep"}, 0),
    ("start", Opcode.TASK_START, {"chef": "Hassan"}, 0),
    ("sale.prod-shw", Opcode.SALE_OUT, {"reason": "order-sale"}, -2),
    ("sale.prod-lbn", Opcode.SALE_OUT, {"reason": "order-sale"}, -1),
    ("done", Opcode.TASK_DONE, {"task": "kitchen-prep"}, 0),
    ("assign", Opcode.TASK_ASSIGN, {"task": "delivery", "driver": "rami"}, 0),
    ("ship", Opcode.ORDER_SHIP, {"pickedUpBy": "rami"}, 0),
    ("deliver", Opcode.ORDER_DELIVER, {"deliveredBy": "rami"}, 0),
    ("payout", Opcode.ACCOUNT_PAYOUT, {"type": "delivery-fee"}, 12),
    ("payin", Opcode.ACCOUNT_PAYIN, {"type": "order-revenue"}, 34),
]  # fmt: skip
# How many of the seed's events an order in each status holds.
AT = {"placed": 1, "paid": 2, "preparing": 6, "ready": 7, "assigned": 8, "picked_up": 9,
      "delivered": 12}  # fmt: skip
SEEDED = tuple(AT)  # the statuses the seed's happy path goes through

ALI = Principal("ali", Role.CUSTOMER)
KITCHEN = Principal("bab-hara", Role.RESTAURANT)
RAMI = Principal("rami", Role.DRIVER)
PLATFORM = Principal("ops", Role.PLATFORM)


def event(seq: int, step: str, opcode: int, payload: dict[str, Any], delta: float = 0) -> Event:
    return Event(id=f"{ORDER}.{step}", stream_id=ORDER, seq=seq, pos=seq, opcode=opcode,
                 node_id=ORDER, point_id=None, delta=float(delta), payload=json.dumps(payload),
                 ts=f"2026-11-27T12:{30 + seq:02d}:00.000Z")  # fmt: skip


def events(count: int, *, skip: tuple[str, ...] = ()) -> list[Event]:
    """The first ``count`` events of the seed's stream, leaving out the steps ``skip``."""
    return [event(i + 1, *row) for i, row in enumerate(SEED[:count]) if row[0] not in skip]


def state(status: str, *, skip: tuple[str, ...] = ()) -> OrderState:
    """The order as it stands in ``status`` after the seed's steps."""
    return OrderState(ORDER, events(AT[status], skip=skip))


def refusal(call: Any, *args: Any) -> tuple[int, str] | None:
    """(status, code) of the error ``call(*args)`` raises; None when it raises none."""
    try:
        call(*args)
    except (Conflict, Forbidden, NotFound, Unprocessable) as exc:
        return exc.status, exc.code
    return None


# -- statuses -----------------------------------------------------------------------------


def test_statuses_are_in_step_order() -> None:
    """The seven order statuses, in the order the steps reach them, then "cancelled"."""
    assert STATUSES == ("placed", "paid", "preparing", "ready", "assigned", "picked_up",
                        "delivered", "cancelled")  # fmt: skip
    assert set(STATUS_OPCODES) == {501, 203, 301, 303, 305, 302, 502, 503, 504, 306}


def test_unassigned_is_ready_again_and_cancelled_is_final() -> None:
    """TASK_UNASSIGN after the last TASK_ASSIGN takes "assigned" back to "ready" (a mapping
    of opcode to last seq tells it); ORDER_CANCEL is final whatever came before."""
    base = {501: 1, 203: 2, 301: 3, 303: 4, 305: 5}
    assert status_of({**base, 302: 6, 306: 7}) == "ready"
    assert status_of({**base, 302: 8, 306: 7}) == "assigned"
    assert status_of({**base, 302: 6, 306: 7, 502: 9}) == "picked_up"
    assert status_of({**base, 504: 6}) == "cancelled"
    assert status_of({501, 504}) == "cancelled"


@pytest.mark.parametrize("status", list(AT))
def test_order_status_of_the_seeds_events(status: str) -> None:
    """order_status of the seed's events up to a status is that status."""
    assert order_status(events(AT[status])) == status


def test_status_of_opcode_sets() -> None:
    """status_of: None without ORDER_CREATE, else the furthest step, whatever the order."""
    assert status_of(set()) is None
    assert status_of({Opcode.INVOICE_PAYMENT, Opcode.TASK_DONE}) is None
    assert status_of({Opcode.ORDER_CREATE}) == "placed"
    assert status_of({Opcode.ORDER_CREATE, Opcode.SALE_OUT, Opcode.ACCOUNT_PAYIN}) == "placed"
    assert status_of({Opcode.ORDER_CREATE, Opcode.TASK_START}) == "preparing"
    assert status_of([Opcode.ORDER_DELIVER, Opcode.ORDER_CREATE, Opcode.TASK_ASSIGN]) == (
        "delivered"
    )
    assert status_of({Opcode.ORDER_CREATE, Opcode.TASK_ASSIGN, Opcode.INVOICE_PAYMENT}) == (
        "assigned"
    )
    assert order_status([]) is None


# -- the order as its stream tells it ------------------------------------------------------


def test_order_state_reads_parties_total_and_driver() -> None:
    """OrderState: customer, restaurant, total and items from ORDER_CREATE; driver from
    TASK_ASSIGN (None before it)."""
    ready, assigned = state("ready"), state("assigned")
    assert (ready.customer, ready.restaurant, ready.total) == ("ali", "bab-hara", 46.0)
    assert ready.items == ITEMS
    assert ready.driver is None
    assert assigned.driver == "rami"
    assert assigned.party(Role.DRIVER) == "rami"
    assert assigned.party(Role.CUSTOMER) == "ali"
    assert [e.id for e in assigned.written(["sale"])] == [
        f"{ORDER}.sale.prod-shw", f"{ORDER}.sale.prod-lbn"]  # fmt: skip


def test_a_stream_without_order_create_is_no_order() -> None:
    """A stream with no ORDER_CREATE is 404 (no such order)."""
    assert refusal(OrderState, ORDER, events(3, skip=("create",))) == (404, "not_found")


@pytest.mark.parametrize("items", [
    [], [{"productId": "p", "qty": 0}], [{"productId": "p", "qty": True}],
    [{"productId": "p", "qty": 1}, {"productId": "p", "qty": 2}], [{"productId": " ", "qty": 1}],
    [{"productId": "p", "qty": rules.MAX_QTY + 1}], ["p"], "p",
])  # fmt: skip
def test_hand_written_items_the_steps_cannot_use_are_refused(items: Any) -> None:
    """check_items: 422 invalid_order for items the steps cannot use."""
    order = OrderState(
        ORDER,
        [
            event(
                1,
                "create",
                Opcode.ORDER_CREATE,
                {"customer": "ali", "restaurant": "x", "items": items},
            )
        ],
    )
    assert refusal(order.check_items) == (422, "invalid_order")
    assert refusal(state("placed").check_items) is None


def test_a_negative_total_is_refused() -> None:
    """check_items: an ORDER_CREATE with a negative delta is 422 invalid_order."""
    order = OrderState(
        ORDER,
        [
            event(
                1,
                "create",
                Opcode.ORDER_CREATE,
                {"customer": "ali", "restaurant": "x", "items": ITEMS},
                -1,
            )
        ],
    )
    assert refusal(order.check_items) == (422, "invalid_order")


# -- which step may follow which -----------------------------------------------------------

MAY_FOLLOW = {  # step -> the statuses it may follow
    "pay": {"placed"},
    "accept": {"paid", "preparing"},
    "ready": {"preparing"},
    "pickup": {"assigned"},
    "deliver": {"picked_up", "delivered"},
    "decline": {"assigned"},
}


@pytest.mark.parametrize("step", list(MAY_FOLLOW))
def test_which_step_may_follow_which_status(step: str) -> None:
    """may_follow: each step follows exactly its statuses, for every status."""
    for status in STATUSES:
        assert rules.may_follow(step, status) is (status in MAY_FOLLOW[step]), (step, status)
    assert set(FOLLOWS) == set(MAY_FOLLOW)


TURN = {  # (step, status) -> what check_turn answers for the seed's order in that status
    ("pay", "placed"): None,
    **{("pay", s): (409, "already_done") for s in SEEDED[1:]},
    ("accept", "placed"): (409, "out_of_turn"),
    ("accept", "paid"): None,
    **{("accept", s): (409, "already_done") for s in SEEDED[2:]},
    **{("pickup", s): (409, "out_of_turn") for s in SEEDED[:4]},
    ("pickup", "assigned"): None,
    ("pickup", "picked_up"): (409, "already_done"),
    ("pickup", "delivered"): (409, "already_done"),
}


@pytest.mark.parametrize(("step", "status"), sorted(TURN))
def test_check_turn_for_every_status(step: str, status: str) -> None:
    """check_turn: ok in turn, already_done once the step's events are written, else
    out_of_turn."""
    assert refusal(check_turn, state(status), step) == TURN[(step, status)]


def test_accept_retried_after_a_crash_part_way_is_in_turn() -> None:
    """Accept is in turn again while one of its events is missing (preparing, partly written)."""
    assert refusal(check_turn, state("preparing", skip=("sale.prod-lbn",)), "accept") is None
    assert refusal(check_turn, state("preparing", skip=("start",)), "accept") is None


def test_out_of_turn_names_the_status() -> None:
    """The 409's message says the order's status."""
    with pytest.raises(Conflict, match=r"^out_of_turn: not now: order is placed$"):
        check_turn(state("placed"), "pickup")
    with pytest.raises(Conflict, match=r"^already_done: already done \(order is delivered\)$"):
        check_turn(state("delivered"), "pay")


@pytest.mark.parametrize("status", SEEDED)
def test_ready_turn_for_every_status(status: str) -> None:
    """ready_turn: writes Step 5 when preparing; resumes Step 6 when ready without a
    driver; already_done after; out_of_turn before."""
    expected: Any = {
        "placed": (409, "out_of_turn"),
        "paid": (409, "out_of_turn"),
        "preparing": True,
        "ready": False,
    }.get(status, (409, "already_done"))
    got: Any = refusal(ready_turn, state(status))
    if got is None:
        got = ready_turn(state(status))
    assert got == expected


def test_ready_resumes_step_6_only_while_the_order_is_ready() -> None:
    """ready_turn: Step 5 written, no TASK_ASSIGN, but the stream went past ready (a
    hand-written ORDER_SHIP): already_done, not a second assignment."""
    assert refusal(ready_turn, state("picked_up", skip=("assign",))) == (409, "already_done")


def test_ready_before_the_stock_is_taken_is_out_of_turn() -> None:
    """ready_turn: preparing without every SALE_OUT is 409 out_of_turn (not accepted)."""
    with pytest.raises(Conflict, match="the kitchen has not accepted it") as caught:
        ready_turn(state("preparing", skip=("sale.prod-shw",)))
    assert caught.value.code == "out_of_turn"


@pytest.mark.parametrize("status", SEEDED)
def test_deliver_turn_for_every_status(status: str) -> None:
    """deliver_turn: the driver once picked up (or delivered: a retry), else out_of_turn."""
    if status in ("picked_up", "delivered"):
        assert deliver_turn(state(status)) == "rami"
    else:
        assert refusal(deliver_turn, state(status)) == (409, "out_of_turn")


def test_deliver_without_an_assigned_driver_is_out_of_turn() -> None:
    """deliver_turn: picked up (a hand-written ORDER_SHIP) but never assigned: out_of_turn."""
    assert refusal(deliver_turn, state("picked_up", skip=("assign",))) == (409, "out_of_turn")


def test_deliver_retry_depends_on_the_claim() -> None:
    """deliver_retry: a first delivery writes; written but still claimed only releases;
    written and released is already_done."""
    assert deliver_retry(state("picked_up"), claimed=True) is False
    assert deliver_retry(state("delivered"), claimed=True) is True
    assert refusal(deliver_retry, state("delivered"), False) == (409, "already_done")
    partly = OrderState(ORDER, events(11))  # ORDER_DELIVER and ACCOUNT_PAYOUT, no payin
    assert deliver_retry(partly, claimed=True) is False


# -- who may take each step ----------------------------------------------------------------

WHO = {  # action -> the principals that may take it
    "create": {ALI},
    "pay": {ALI, PLATFORM},
    "accept": {KITCHEN, PLATFORM},
    "ready": {KITCHEN, PLATFORM},
    "pickup": {RAMI, PLATFORM},
    "deliver": {RAMI, PLATFORM},
    "driver_status": {RAMI},
    "driver_me": {RAMI},
    "motion": {RAMI},
}


@pytest.mark.parametrize("action", list(WHO))
def test_who_may_take_each_action(action: str) -> None:
    """check_may: only the action's role (and the platform for the order steps); 403 else."""
    for who in (ALI, KITCHEN, RAMI, PLATFORM):
        assert refusal(check_may, who, action) == (None if who in WHO[action] else
                                                   (403, "forbidden")), (action, who)  # fmt: skip


def test_refusals_say_who_may() -> None:
    """The 403's message names who may take the action."""
    with pytest.raises(Forbidden, match=r"^forbidden: only a customer places orders$"):
        check_may(KITCHEN, "create")
    with pytest.raises(Forbidden, match=r"^forbidden: only the order's restaurant may do this$"):
        check_may(ALI, "accept")
    with pytest.raises(Forbidden, match=r"^forbidden: only a driver changes its availability$"):
        check_may(PLATFORM, "driver_status")


def test_only_the_orders_own_party_may_take_its_step() -> None:
    """check_party: the order's own customer/restaurant/driver, or the platform; no driver
    may take a driver's step before one is assigned."""
    other_kitchen = Principal("zaatar", Role.RESTAURANT)
    assert refusal(check_party, KITCHEN, state("paid"), "accept") is None
    assert refusal(check_party, other_kitchen, state("paid"), "accept") == (403, "forbidden")
    assert refusal(check_party, PLATFORM, state("paid"), "accept") is None
    assert refusal(check_party, ALI, state("placed"), "pay") is None
    assert refusal(check_party, Principal("eve", Role.CUSTOMER), state("placed"), "pay") == (
        403, "forbidden")  # fmt: skip
    assert refusal(check_party, RAMI, state("ready"), "pickup") == (403, "forbidden")
    assert refusal(check_party, RAMI, state("assigned"), "pickup") is None


# -- arithmetic -----------------------------------------------------------------------------


def product(pid: str, price: float, qty: float | None = 100, availability: str | None = "in-stock",
            title: str | None = None) -> ProductRow:  # fmt: skip
    return ProductRow(pid, title or pid.title(), f"pt-{pid}", qty, price, "AED", availability)


def test_the_seeds_order_costs_46() -> None:
    """Two shawarmas at 18 and a laban at 5, plus the 5.00 fee: 46; items keep their order."""
    offer = {"prod-lbn": product("prod-lbn", 5.0), "prod-shw": product("prod-shw", 18.0)}
    items = rules.price_items({"prod-shw": 2, "prod-lbn": 1}, offer)
    assert items == [
        {"productId": "prod-shw", "title": "Prod-Shw", "qty": 2, "price": 18.0},
        {"productId": "prod-lbn", "title": "Prod-Lbn", "qty": 1, "price": 5.0},
    ]
    assert rules.order_total(items, 5.0) == 46.0
    assert rules.split_payment(46.0, 12.0) == (12.0, 34.0)


def test_totals_are_rounded_to_cents_half_up() -> None:
    """order_total sums price x qty, then rounds to cents (3 x 0.1 is 0.3); halves go up."""
    items = rules.price_items({"gum": 3}, {"gum": product("gum", 0.1)})
    assert rules.order_total(items, 0.0) == 0.3
    assert rules.money(2.675) == 2.68  # round() alone gives 2.67
    assert rules.money(0.125) == 0.13
    assert rules.split_payment(20.005, 12.0) == (12.0, 8.01)


@pytest.mark.parametrize(("row", "want", "expected"), [
    (None, 1, (422, "unknown_product")),
    (product("p", 1.0, qty=1), 2, (409, "out_of_stock")),
    (product("p", 1.0, qty=None), 1, (409, "out_of_stock")),
    (product("p", 1.0, availability="out-of-stock"), 1, (409, "out_of_stock")),
    (product("p", 1.0, qty=2, availability=None), 2, None),
])  # fmt: skip
def test_price_items_refuses_what_cannot_be_sold(
    row: ProductRow | None, want: int, expected: tuple[int, str] | None
) -> None:
    """price_items: 422 for an unknown product, 409 for too little or no stock."""
    offer = {"p": row} if row is not None else {}
    assert refusal(rules.price_items, {"p": want}, offer) == expected


def test_prep_minutes_and_item_count() -> None:
    """The kitchen's estimate wins; else 6 + 3 a piece (the seed's 3 pieces: 15)."""
    assert rules.item_count(ITEMS) == 3
    assert rules.prep_minutes(ITEMS, None) == 15
    assert rules.prep_minutes(ITEMS, 40) == 40


def test_minutes_between() -> None:
    """Whole minutes between two timestamps, rounded, never negative."""
    assert rules.minutes_between("2026-11-27T12:30:00.000Z", "2026-11-27T12:42:00.000Z") == 12
    assert rules.minutes_between("2026-11-27T12:30:00.000Z", "2026-11-27T12:30:31.000Z") == 1
    assert rules.minutes_between("2026-11-27T12:30:00.000Z", "2026-11-27T12:30:29.000Z") == 0
    assert rules.minutes_between("2026-11-27T12:30:00.000Z", "2026-11-27T12:00:00.000Z") == 0
    assert rules.minutes_between("2026-11-27T23:50:00.000Z", "2026-11-28T00:35:00.000Z") == 45


def test_pickup_eta_from_distance() -> None:
    """ETA: 10 minutes plus the distance at 30 km/h; Manhattan degrees x 111 km; None is 0."""
    assert rules.distance_km((25.0, 55.0), (25.0, 55.0)) == 0
    assert rules.distance_km((25.1, 55.0), (25.0, 55.1)) == pytest.approx(22.2)
    assert rules.distance_km((None, None), (0.1, None)) == pytest.approx(11.1)
    assert rules.pickup_eta(0) == 10
    assert rules.pickup_eta(22.2) == 54  # 10 + 44.4
    assert rules.pickup_eta(-20) == 5  # never under 5


# -- stock ---------------------------------------------------------------------------------


def test_stock_takes_record_the_order_on_each_point() -> None:
    """stock_takes: each item's qty from its point, the order appended to the point's list,
    conditional on the list read."""
    points = {"prod-shw": StockPoint("pt-shw", 200, None),
              "prod-lbn": StockPoint("pt-lbn", 150, '["ord-1"]')}  # fmt: skip
    assert rules.stock_takes(ORDER, ITEMS, points) == [
        StockTake("pt-shw", 2, json.dumps([ORDER]), None),
        StockTake("pt-lbn", 1, json.dumps(["ord-1", ORDER]), '["ord-1"]'),
    ]


def test_stock_already_taken_for_the_order_is_not_taken_again() -> None:
    """stock_takes: a point that recorded the order is skipped (a retried Step 4)."""
    points = {"prod-shw": StockPoint("pt-shw", 198, json.dumps([ORDER])),
              "prod-lbn": StockPoint("pt-lbn", 0, json.dumps([ORDER]))}  # fmt: skip
    assert rules.stock_takes(ORDER, ITEMS, points) == []


def test_stock_takes_refuse_missing_or_short_stock() -> None:
    """stock_takes: 409 out_of_stock for a product without a point or with too little."""
    shw = StockPoint("pt-shw", 200, None)
    assert refusal(rules.stock_takes, ORDER, ITEMS, {"prod-shw": shw}) == (409, "out_of_stock")
    short = {"prod-shw": shw, "prod-lbn": StockPoint("pt-lbn", 0, None)}
    assert refusal(rules.stock_takes, ORDER, ITEMS, short) == (409, "out_of_stock")


def test_the_applied_list_keeps_the_latest_orders() -> None:
    """stock_takes: a point remembers the last APPLIED_KEEP orders, the newest last."""
    old = [f"ord-{i}" for i in range(rules.APPLIED_KEEP)]
    points = {"prod-shw": StockPoint("pt-shw", 10, json.dumps(old))}
    (take,) = rules.stock_takes(ORDER, ITEMS[:1], points)
    assert json.loads(take.applied) == [*old[1:], ORDER]


# -- what the hub vouches for (docs/reliability.md, "Attacks on the order flow") ----------

PRICED = [{"productId": "prod-shw", "title": "Chicken Shawarma", "qty": 2, "price": 18.0},
          {"productId": "prod-lbn", "title": "Laban", "qty": 1, "price": 5.0}]  # fmt: skip
MENU = {"prod-shw": product("prod-shw", 18.0), "prod-lbn": product("prod-lbn", 5.0)}


def priced_order(items: Any = PRICED, total: float = 46, paid: float | None = 46,
                 paid_by: str = "pay") -> OrderState:  # fmt: skip
    """A paid order as the hub writes it (``paid_by`` another id: a party's own 203)."""
    created = event(1, "create", Opcode.ORDER_CREATE,
                    {"customer": "ali", "restaurant": "bab-hara", "items": items}, total)
    payment = [] if paid is None else [event(2, paid_by, Opcode.INVOICE_PAYMENT, {}, paid)]
    return OrderState(ORDER, [created, *payment])


@pytest.mark.parametrize(("order", "expected"), [
    (priced_order(), None),
    (priced_order(paid=50), None),
    (priced_order([{**PRICED[0], "price": 0.01}, PRICED[1]], total=10.02), "price"),
    (priced_order([{**PRICED[0], "price": "18"}, PRICED[1]]), "price"),
    (priced_order([{**PRICED[0], "price": True}, PRICED[1]]), "price"),
    (priced_order([{k: v for k, v in PRICED[0].items() if k != "price"}, PRICED[1]]), "price"),
    (priced_order([{**PRICED[0], "productId": "prod-gold"}, PRICED[1]]), "menu"),
    (priced_order(total=0.01, paid=0.01), "total"),
    (priced_order(total=47, paid=47), "total"),
    (priced_order(paid=None), "paid"),
    (priced_order(paid=0), "paid"),
    (priced_order(paid=45.99), "paid"),
    (priced_order(paid_by="evt-1234"), "paid"),  # a customer's own 203, not Step 2's
])  # fmt: skip
def test_vouch_for_menu_prices_the_total_and_the_payment(
    order: OrderState, expected: str | None
) -> None:
    """vouch: the items at the menu's prices, the total those plus the fee, Step 2's
    payment covering it; anything else is 409 unverified_order naming what is wrong."""
    if expected is None:
        rules.vouch(order, MENU, 5.0)
        return
    with pytest.raises(Conflict) as caught:
        rules.vouch(order, MENU, 5.0)
    assert (caught.value.status, caught.value.code) == (409, "unverified_order")
    assert expected in str(caught.value), caught.value


def test_vouch_uses_the_menu_of_now_and_the_fee_configured() -> None:
    """A price or fee other than the order's: the order is no longer one the hub vouches for."""
    assert refusal(rules.vouch, priced_order(), MENU, 6.0) == (409, "unverified_order")
    dearer = {**MENU, "prod-lbn": product("prod-lbn", 6.0)}
    assert refusal(rules.vouch, priced_order(), dearer, 5.0) == (409, "unverified_order")
    unpriced = {**MENU, "prod-lbn": product("prod-lbn", None)}  # type: ignore[arg-type]
    assert refusal(rules.vouch, priced_order(), unpriced, 5.0) == (409, "unverified_order")


def test_check_accepted_wants_every_sale_of_the_order_steps() -> None:
    """check_accepted: Step 4's SALE_OUT for every item, by their ids (only the hub and the
    platform write those); a kitchen's own TASK_DONE is no acceptance."""
    assert refusal(rules.check_accepted, state("ready")) is None
    assert refusal(rules.check_accepted, state("ready", skip=("sale.prod-lbn",))) == (
        409, "out_of_turn")  # fmt: skip
    by_hand = OrderState(ORDER, [*events(2), Event(
        id="evt-1", stream_id=ORDER, seq=3, pos=3, opcode=Opcode.SALE_OUT, node_id="prod-shw",
        point_id="pt-shw", delta=-2, payload="{}", ts="2026-11-27T12:33:00.000Z"), Event(
        id="evt-2", stream_id=ORDER, seq=4, pos=4, opcode=Opcode.SALE_OUT, node_id="prod-lbn",
        point_id="pt-lbn", delta=-1, payload="{}", ts="2026-11-27T12:34:00.000Z")])  # fmt: skip
    assert refusal(rules.check_accepted, by_hand) == (409, "out_of_turn")


def test_assigned_to_and_step() -> None:
    """assigned_to: a TASK_ASSIGN names the driver; step: the event of a step, by its id."""
    assert state("assigned").assigned_to("rami")
    assert not state("assigned").assigned_to("omar")
    assert not state("ready").assigned_to("rami")
    paid = state("paid").step("pay")
    assert paid is not None
    assert (paid.id, paid.opcode, paid.delta) == (f"{ORDER}.pay", Opcode.INVOICE_PAYMENT, 46)
    assert state("placed").step("pay") is None


class PagedNode:
    """The two methods of a Node the order flow's reads use, over a list of events; with
    ``archive_after`` reads the stream is archived (its events gone from the store)."""

    def __init__(self, stored: list[Event], archive_after: int | None = None) -> None:
        self.stored = stored
        self.archive_after = archive_after
        self.reads: list[tuple[int, int]] = []
        self.archived_reads = 0

    async def read_events(self, stream_id: str, since: int, limit: int, *,
                          archived: bool) -> list[Event]:  # fmt: skip
        if archived:
            self.archived_reads += 1
        else:
            self.reads.append((since, limit))
            if self.archive_after is not None and len(self.reads) > self.archive_after:
                return []  # Step 11 deleted the events
        return [e for e in self.stored if e.seq > since][:limit]

    async def stream_info(self, stream_id: str) -> StreamInfo:
        archived = self.archive_after is not None and len(self.reads) > self.archive_after
        return StreamInfo(stream_id, self.stored[-1].seq, archived, {})


async def test_load_sees_the_whole_of_a_long_stream() -> None:
    """load reads an order's stream page by page to its end and keeps only what the steps
    look at: a customer's 2,500 payments after the assignment hide neither ORDER_SHIP nor
    ORDER_DELIVER (the first 1,000 events alone told 'assigned')."""
    from hub.domain.orders.stream import READ_MAX, load

    head = events(AT["assigned"])
    padding = [Event(id=f"evt-{i}", stream_id=ORDER, seq=9 + i, pos=9 + i,
                     opcode=Opcode.INVOICE_PAYMENT, node_id=None, point_id=None, delta=0,
                     payload="{}", ts="2026-11-27T12:40:00.000Z") for i in range(2500)]  # fmt: skip
    tail = [event(2509 + i, *row) for i, row in enumerate(SEED[AT["assigned"]:])]
    node = PagedNode([*head, *padding, *tail])
    got = await load(node, ORDER)  # type: ignore[arg-type]
    assert got.status == "delivered"
    assert got.has("ship")
    assert got.has("payin")
    assert got.driver == "rami"
    assert [e.id for e in got.events] == [e.id for e in [*head, *tail]]  # no padding kept
    pages = len(node.stored) // READ_MAX + 1  # the last one short (or empty)
    assert node.reads == [(k * READ_MAX, READ_MAX) for k in range(pages)]
    assert node.archived_reads == 0


async def test_load_reads_the_archive_when_the_stream_is_archived_while_it_reads() -> None:
    """A stream archived between two pages of a read (Step 11 deletes the events) reads
    short; load then reads the archive, and sees the delivery (it told 'assigned')."""
    from hub.domain.orders.stream import load

    head = events(AT["assigned"])
    padding = [Event(id=f"evt-{i}", stream_id=ORDER, seq=9 + i, pos=9 + i,
                     opcode=Opcode.INVOICE_PAYMENT, node_id=None, point_id=None, delta=0,
                     payload="{}", ts="2026-11-27T12:40:00.000Z") for i in range(100)]  # fmt: skip
    tail = [event(109 + i, *row) for i, row in enumerate(SEED[AT["assigned"]:])]
    node = PagedNode([*head, *padding, *tail], archive_after=2)
    got = await load(node, ORDER)  # type: ignore[arg-type]
    assert node.archived_reads > 0
    assert got.status == "delivered"
    assert got.has("payin")


# -- ids and tenant ids a party writes --------------------------------------------------------


def test_the_order_steps_ids_are_refused_to_the_parties() -> None:
    """check_client_ids: an id ``{streamId}.…`` chosen by a party is 422 reserved_id; the
    platform may; ids drawn by the hub, and other streams' step ids, are fine."""
    from hub.domain.auth import check_client_ids
    from hub.events import parse_draft

    def drafts(*ids: str | None) -> list[Any]:
        return [parse_draft({"opcode": 203, **({"id": i} if i else {})}, stream_id=ORDER)
                for i in ids]  # fmt: skip

    for who in (ALI, KITCHEN, RAMI):
        for ids in ((f"{ORDER}.assign",), (None, f"{ORDER}.sale.prod-shw"), (f"{ORDER}.",)):
            with pytest.raises(Unprocessable) as caught:
                check_client_ids(who, ORDER, drafts(*ids))
            assert caught.value.code == "reserved_id"
        check_client_ids(who, ORDER, drafts(None, "ord-5002.assign", ORDER, f"{ORDER}-x.pay"))
    check_client_ids(PLATFORM, ORDER, drafts(f"{ORDER}.assign"))


@pytest.mark.parametrize(("opcode", "payload", "refused"), [
    (Opcode.ORDER_CREATE, {"customer": "../x", "restaurant": "bab-hara"}, True),
    (Opcode.ORDER_CREATE, {"customer": "ali", "restaurant": "Bab"}, True),
    (Opcode.ORDER_CREATE, {"customer": ["ali"]}, True),
    (Opcode.ORDER_CREATE, {"customer": None}, True),
    (Opcode.TASK_ASSIGN, {"driver": "x" * 64}, True),
    (Opcode.TASK_ASSIGN, {"driver": "rami\n"}, True),
    (Opcode.ORDER_CREATE, {"customer": "ali", "restaurant": "bab-hara"}, False),
    (Opcode.ORDER_CREATE, {}, False),  # names nobody: confers nothing
    (Opcode.TASK_ASSIGN, {"driver": "rami"}, False),
    (Opcode.INVOICE_PAYMENT, {"customer": "../x"}, False),  # names no tenant there
])  # fmt: skip
def test_payload_fields_naming_tenants_must_be_tenant_ids(
    opcode: int, payload: dict[str, Any], refused: bool
) -> None:
    """ORDER_CREATE's customer and restaurant and TASK_ASSIGN's driver, when present, are
    tenant ids or the event is 400 invalid_tenant_id (for every writer)."""
    from hub.errors import BadRequest
    from hub.events import parse_body, parse_draft

    draft = {"opcode": int(opcode), "payload": payload}
    for parse in (lambda: parse_draft(draft, stream_id=ORDER),
                  lambda: parse_body(json.dumps(draft).encode(), stream_id=ORDER)):  # fmt: skip
        if not refused:
            parse()
            continue
        with pytest.raises(BadRequest) as caught:
            parse()
        assert (caught.value.status, caught.value.code) == (400, "invalid_tenant_id")
