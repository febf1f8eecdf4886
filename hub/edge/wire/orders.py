"""Wire shapes of the order flow (the seed's Steps 1-10), menus and drivers.

Each request body is a Struct whose fields are declared in the order the hub checks them,
each with its limit and the words of its refusal (422 ``invalid_body`` unless said
otherwise); ``decode_<body>`` turns a body's bytes (or its parsed JSON) into the Struct
or raises that error. A null stands for an absent field (the order flow applies its own
defaults, e.g. ``chef``). The response Structs describe what the order endpoints answer,
for the OpenAPI document and the tests.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta, Struct

from hub.domain.orders import MAX_ITEMS, MAX_QTY
from hub.edge.wire import OrderStatus, decode, literal, refusal_of, refuse
from hub.edge.wire.events import StoredEvent, StreamId, TenantId
from hub.errors import BadRequest, Unprocessable
from hub.events import TENANT_ID_PATTERN, anchored
from hub.refusals import Refusal

__all__ = [
    "ORDER_ID_PATTERN",
    "STEP_BODIES",
    "Accept",
    "Cancel",
    "CreateOrder",
    "Decline",
    "DriverMe",
    "DriverOffline",
    "DriverOnline",
    "DriverStatus",
    "DriverStatusResult",
    "LatLng",
    "Location",
    "Menu",
    "MotionResult",
    "OrderCreated",
    "OrderDetails",
    "OrderDriver",
    "OrderItem",
    "OrderStep",
    "Pay",
    "Pickup",
    "Product",
    "Ready",
    "decode_accept",
    "decode_cancel",
    "decode_create_order",
    "decode_decline",
    "decode_deliver",
    "decode_driver_status",
    "decode_motion",
    "decode_pay",
    "decode_pickup",
    "decode_ready",
]

ORDER_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"
INVALID = "invalid_body"
_BODY = refuse("body must be a JSON object", code=INVALID)


def text(max_length: int, description: str | None = None) -> Meta:
    """A string the hub takes when it is not blank and at most ``max_length`` characters."""
    return Meta(
        min_length=1,
        max_length=max_length,
        pattern=r"\S",  # not blank
        description=description,
        extra=refuse(
            "{name} must be a non-empty string of at most {max_length} characters",
            code=INVALID,
            missing="{name} is required",
        ),
    )


def count(low: int, high: int, description: str | None = None) -> Meta:
    """An integer in ``low..high``."""
    return Meta(ge=low, le=high, description=description,
                extra=refuse("{name} must be an integer in {ge}..{le}", code=INVALID))  # fmt: skip


def coordinate(limit: int) -> Meta:
    """Degrees in ``-limit..limit``."""
    return Meta(
        ge=-limit,
        le=limit,
        extra=refuse("{name} out of range", code=INVALID, type="{name} must be a number",
                     missing="{name} must be a number"),
    )  # fmt: skip


# -- request bodies --------------------------------------------------------------------


class LatLng(Struct):
    """A position in degrees (WGS 84); other fields are ignored."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    lat: Annotated[float, coordinate(90)]
    lng: Annotated[float, coordinate(180)]


class OrderItem(Struct, forbid_unknown_fields=True, rename="camel"):
    """One line of an order."""

    refusals: ClassVar[dict[str, Any]] = refuse(literal("each item is {productId, qty}"),
                                                code=INVALID)  # fmt: skip

    product_id: Annotated[str, text(128)]
    qty: Annotated[int, count(1, MAX_QTY)]


class CreateOrder(Struct, kw_only=True, rename="camel"):
    """``POST /api/orders`` (seed Step 1); other fields are ignored."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    restaurant: Annotated[str, Meta(
        pattern=anchored(TENANT_ID_PATTERN),
        description="The restaurant's tenant id.",
        extra=refuse("invalid tenant id", BadRequest, "invalid_tenant_id",
                     missing=Refusal("restaurant is required", Unprocessable, INVALID),
                     type=Refusal("restaurant is required", Unprocessable, INVALID)),
    )]  # fmt: skip
    delivery_address: Annotated[str, text(300)]
    notes: Annotated[str, text(500)] | None = None
    delivery_location: Annotated[LatLng | None, Meta(description="Where it goes, when known.")] = (
        None
    )
    order_id: Annotated[str, Meta(
        pattern=anchored(ORDER_ID_PATTERN),
        description="The order's (and its stream's) id; drawn by the hub when absent.",
        extra=refuse("orderId must match " + literal(ORDER_ID_PATTERN), code=INVALID),
    )] | None = None  # fmt: skip
    items: Annotated[list[OrderItem], Meta(
        min_length=1,
        max_length=MAX_ITEMS,
        description="Each productId at most once.",
        extra={**refuse("items must be a list of {min_length}..{max_length}", code=INVALID,
                        unique="product {value!r} listed twice"),
               "unique": "productId"},
    )]  # fmt: skip


class Pay(Struct, rename="camel"):
    """``POST /api/orders/{id}/pay`` (seed Step 2); other fields are ignored."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    method: Annotated[str, text(32, "e.g. card, cash.")]
    card_last4: Annotated[str, Meta(
        pattern=anchored("^[0-9]{4}$"),
        extra=refuse("cardLast4 must be 4 digits", code=INVALID),
    )] | None = None  # fmt: skip


class Accept(Struct, rename="camel"):
    """``POST /api/orders/{id}/accept`` (seed Steps 3-4); other fields are ignored."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    chef: Annotated[str, text(100, "Kitchen when absent.")] | None = None
    station: Annotated[str, text(100, "main when absent.")] | None = None
    est_minutes: Annotated[int, count(1, 600, "Computed from the items when absent.")] | None = None


class Ready(Struct, rename="camel"):
    """``POST /api/orders/{id}/ready`` (seed Steps 5-6); other fields are ignored."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    actual_minutes: Annotated[int, count(0, 600, "Measured when absent.")] | None = None


class Pickup(Struct, rename="camel"):
    """``POST /api/orders/{id}/pickup`` (seed Step 8); other fields are ignored."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    confirmed_items: (
        Annotated[int, count(0, MAX_ITEMS * MAX_QTY, "All the order's items when absent.")] | None
    ) = None


class Cancel(Struct, rename="camel"):
    """``POST /api/orders/{id}/cancel`` (docs/protocol.md §6); other fields are ignored."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    reason: Annotated[str, text(200, "Why (shown to the other parties).")] | None = None


class Decline(Struct, rename="camel"):
    """``POST /api/orders/{id}/decline`` (docs/protocol.md §6); other fields are ignored."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    reason: Annotated[str, text(200, "Why (kept as the TASK_UNASSIGN's note).")] | None = None


class DriverOnline(Struct, kw_only=True, tag_field="status", tag="online"):
    """Idle and discoverable at ``lat``/``lng``; other fields are ignored."""

    vehicle: Annotated[str, text(50, "Motorcycle when absent.")] | None = None
    lat: Annotated[float, coordinate(90)]
    lng: Annotated[float, coordinate(180)]


class DriverOffline(Struct, tag_field="status", tag="offline"):
    """Not taking orders; other fields are ignored."""

    vehicle: Annotated[str, text(50)] | None = None


DriverStatus = Annotated[
    DriverOnline | DriverOffline,
    Meta(
        description="``POST /api/drivers/status``: a driver comes online or goes offline.",
        extra=refuse("status must be 'online' or 'offline'", code=INVALID,
                     type="body must be a JSON object"),
    ),
]  # fmt: skip

STEP_BODIES: dict[str, Any] = {
    "pay": Pay,
    "accept": Accept,
    "ready": Ready,
    "pickup": Pickup,
    "deliver": LatLng,
    "cancel": Cancel,
    "decline": Decline,
}  # the body of each POST /api/orders/{id}/{step}


def decode_create_order(body: bytes | bytearray | object) -> CreateOrder:
    """``POST /api/orders``'s body, or its 422 (400 ``invalid_tenant_id`` for the restaurant)."""
    order: CreateOrder = decode(body, CreateOrder)
    seen: set[str] = set()
    for item in order.items:  # what msgspec cannot check (explain() does on a refusal)
        if item.product_id in seen:
            raise refusal_of(CreateOrder, "items", "unique")(value=item.product_id)
        seen.add(item.product_id)
    return order


def decode_pay(body: bytes | bytearray | object) -> Pay:
    """``POST /api/orders/{id}/pay``'s body, or its 422."""
    decoded: Pay = decode(body, Pay)
    return decoded


def decode_accept(body: bytes | bytearray | object) -> Accept:
    """``POST /api/orders/{id}/accept``'s body, or its 422."""
    decoded: Accept = decode(body, Accept)
    return decoded


def decode_ready(body: bytes | bytearray | object) -> Ready:
    """``POST /api/orders/{id}/ready``'s body, or its 422."""
    decoded: Ready = decode(body, Ready)
    return decoded


def decode_pickup(body: bytes | bytearray | object) -> Pickup:
    """``POST /api/orders/{id}/pickup``'s body, or its 422."""
    decoded: Pickup = decode(body, Pickup)
    return decoded


def decode_cancel(body: bytes | bytearray | object) -> Cancel:
    """``POST /api/orders/{id}/cancel``'s body, or its 422."""
    decoded: Cancel = decode(body, Cancel)
    return decoded


def decode_decline(body: bytes | bytearray | object) -> Decline:
    """``POST /api/orders/{id}/decline``'s body, or its 422."""
    decoded: Decline = decode(body, Decline)
    return decoded


def decode_deliver(body: bytes | bytearray | object) -> LatLng:
    """``POST /api/orders/{id}/deliver``'s body (where the driver is), or its 422."""
    decoded: LatLng = decode(body, LatLng)
    return decoded


def decode_motion(body: bytes | bytearray | object) -> LatLng:
    """``POST /api/motion``'s body, or its 422."""
    decoded: LatLng = decode(body, LatLng)
    return decoded


def decode_driver_status(body: bytes | bytearray | object) -> DriverOnline | DriverOffline:
    """``POST /api/drivers/status``'s body, or its 422."""
    decoded: DriverOnline | DriverOffline = decode(body, DriverStatus)
    return decoded


# -- responses -------------------------------------------------------------------------


class OrderCreated(Struct, forbid_unknown_fields=True, rename="camel"):
    """An order placed: its id (also its stream's), total and the ORDER_CREATE written."""

    order_id: StreamId
    stream_id: StreamId
    order_status: OrderStatus
    total: float
    currency: str
    events: list[StoredEvent]


class OrderStep(Struct, forbid_unknown_fields=True, rename="camel"):
    """An order step taken: the order's status after it, and what it wrote."""

    order_id: StreamId
    order_status: OrderStatus
    events: Annotated[list[StoredEvent], Meta(description="What the step wrote.")]


OrderAction = Literal["pay", "accept", "ready", "pickup", "deliver", "cancel", "decline"]


class Refund(Struct, forbid_unknown_fields=True):
    """What a cancel paid back."""

    amount: float
    currency: str


class Cancelled(Struct, forbid_unknown_fields=True):
    """Who cancelled the order, and why."""

    by: Any
    reason: Any


class Location(Struct, forbid_unknown_fields=True):
    """A known position."""

    lat: float
    lng: float


class OrderDriver(Struct, forbid_unknown_fields=True, rename="camel"):
    """The order's driver as tracking shows him (docs/protocol.md §5, Tracking frames)."""

    id: TenantId
    vehicle: Any
    assigned_at: Annotated[str | None, Meta(description="His TASK_ASSIGN's time.")]
    last_seen: Annotated[str | None, Meta(
        description="When his last position arrived (null: never).")]
    state: Annotated[Literal["online", "unreachable"], Meta(
        description="unreachable: no position for HUB_PRESENCE_TIMEOUT seconds since the"
        " last one or his assignment, whichever is later.")]


class OrderDetails(Struct, forbid_unknown_fields=True, rename="camel"):
    """What the apps show of an order."""

    order_id: StreamId
    order_status: OrderStatus
    status: Literal["active", "archived"]
    customer: str
    restaurant: str
    restaurant_name: str
    pickup_address: Annotated[Any, Meta(description="The restaurant's address.")]
    restaurant_location: Location | None
    delivery_address: Annotated[Any, Meta(description="As the order was placed.")]
    delivery_location: Annotated[Location | None, Meta(description="Where it goes, if known.")]
    items: list[Any]
    total: float
    currency: str
    driver: Annotated[OrderDriver | None, Meta(
        description="The assigned driver (the last one, once the order is done).")]
    driver_location: Location | None
    driver_last_seen: Annotated[
        str | None, Meta(description="When the driver's position last arrived.")]
    last_seq: Annotated[int, Meta(ge=0)]
    actions: Annotated[list[OrderAction], Meta(
        description="What the caller may do to the order now (the apps' buttons).")]
    refund: Refund | None
    cancelled: Cancelled | None


class Product(Struct, forbid_unknown_fields=True, rename="camel"):
    """One product of a menu, with its stock point."""

    product_id: str
    title: str | None
    desc: Any
    point_id: str
    stock: float | None
    price: float | None
    currency: str | None
    availability: str | None


class Menu(Struct, forbid_unknown_fields=True, rename="camel"):
    """A restaurant's name, location, whether it takes orders, its currency and products."""

    restaurant: TenantId
    node_id: str
    name: str | None
    address: Any
    location: Location | None
    open: Annotated[bool, Meta(description="Whether it takes orders now.")]
    currency: Annotated[str, Meta(description="The currency its orders are in.")]
    products: list[Product]


class MotionResult(Struct, forbid_unknown_fields=True):
    """A position taken (or rate-limited)."""

    driver: TenantId
    accepted: Annotated[bool, Meta(description="False: rate-limited.")]


class DriverStatusResult(Struct, forbid_unknown_fields=True, rename="camel"):
    """A driver's new availability."""

    driver: TenantId
    status: Literal["online", "offline"]
    point_id: str


class DriverMe(Struct, forbid_unknown_fields=True, rename="camel"):
    """A driver's own availability, position and current order."""

    driver: TenantId
    status: Literal["online", "offline", "en-route"]
    lat: float | None
    lng: float | None
    order_id: str | None
