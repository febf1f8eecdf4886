"""Wire shapes of menus, restaurant status and tenants as data (docs/protocol.md §4.5).

Each request body is a Struct whose fields are declared in the order the hub checks them,
each with its limit and the words of its refusal (422 ``invalid_body`` unless said
otherwise); ``decode_<body>`` turns a body's bytes (or its parsed JSON) into the Struct or
raises that error. Unlike the order flow's bodies these refuse unknown fields: they are
stored, and a misspelt field would be lost without a word. A null stands for an absent
field. What is not a wire rule (a new product needs a title and a price, a restaurant a
currency from ISO 4217, a price at most 2 decimals) is :mod:`hub.domain.restaurants`'s.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta, Struct

from hub.domain.restaurants import DEFAULT_VEHICLE, PRICE_MAX, QTY_MAX
from hub.edge.wire import decode, refuse
from hub.edge.wire.events import TenantId
from hub.edge.wire.orders import coordinate, count, text
from hub.errors import BadRequest, Unprocessable
from hub.events import STREAM_ID_PATTERN, TENANT_ID_PATTERN, anchored
from hub.refusals import Refusal

__all__ = [
    "NewTenant",
    "ProductId",
    "PutProduct",
    "RestaurantStatus",
    "SetOpen",
    "Tenant",
    "decode_new_tenant",
    "decode_put_product",
    "decode_set_open",
]

INVALID = "invalid_body"
CURRENCY_PATTERN = "^[A-Z]{3}$"
_BODY = refuse("body must be a JSON object", code=INVALID, unknown="unknown field(s): {names}")

ProductId = Annotated[str, Meta(
    pattern=anchored(STREAM_ID_PATTERN),
    description="The product's node id in the restaurant's DB (a stream id's pattern); 400"
    " otherwise.",
)]  # fmt: skip
Role = Literal["restaurant", "customer", "driver"]
Availability = Literal["in-stock", "out-of-stock"]
Currency = Annotated[str, Meta(
    pattern=anchored(CURRENCY_PATTERN),
    description="An ISO 4217 code in use, e.g. AED (422 unknown_currency otherwise).",
    extra=refuse("currency must be an ISO 4217 code such as AED", code="unknown_currency"),
)]  # fmt: skip


# -- request bodies --------------------------------------------------------------------


class PutProduct(Struct, kw_only=True, forbid_unknown_fields=True):
    """``PUT /api/restaurants/{tenant}/menu/{productId}``: what to set of the product.

    A new product needs ``title`` and ``price`` (``qty`` 0 and ``availability`` in-stock
    unless given); for one that exists, the fields given are changed and the others kept.
    """

    refusals: ClassVar[dict[str, Any]] = _BODY

    title: Annotated[str, text(200)] | None = None
    desc: Annotated[str, text(1000)] | None = None
    price: Annotated[float, Meta(
        ge=0, le=PRICE_MAX, description="In the restaurant's currency; at most 2 decimals.",
        extra=refuse(f"price must be a number in 0..{PRICE_MAX}", code=INVALID),
    )] | None = None  # fmt: skip
    qty: Annotated[int, count(0, QTY_MAX, "The stock, set as given (not added).")] | None = None
    availability: Annotated[Availability, Meta(
        extra=refuse("availability must be 'in-stock' or 'out-of-stock'", code=INVALID),
    )] | None = None  # fmt: skip


class SetOpen(Struct, forbid_unknown_fields=True):
    """``POST /api/restaurants/{tenant}/status``: open or closed for orders."""

    refusals: ClassVar[dict[str, Any]] = _BODY

    open: Annotated[bool, Meta(extra=refuse("open must be true or false", code=INVALID))]


class NewTenant(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/tenants``: a tenant and its database.

    A restaurant needs ``address`` and ``currency``, a customer ``address``; a driver has
    a ``vehicle`` (Motorcycle when absent) and no address or currency (ignored if given).
    """

    refusals: ClassVar[dict[str, Any]] = _BODY

    id: Annotated[str, Meta(
        pattern=anchored(TENANT_ID_PATTERN),
        description="The tenant id (400 invalid_tenant_id otherwise).",
        extra=refuse("invalid tenant id", BadRequest, "invalid_tenant_id",
                     missing=Refusal("id is required", Unprocessable, INVALID),
                     type=Refusal("id must be a string", Unprocessable, INVALID)),
    )]  # fmt: skip
    role: Annotated[Role, Meta(
        extra=refuse("role must be 'restaurant', 'customer' or 'driver'", code=INVALID),
    )]  # fmt: skip
    name: Annotated[str, text(100)]
    lat: Annotated[float, coordinate(90)]
    lng: Annotated[float, coordinate(180)]
    address: Annotated[str, text(300)] | None = None
    currency: Currency | None = None
    vehicle: Annotated[str, text(50, f"A driver's; {DEFAULT_VEHICLE} when absent.")] | None = None


def decode_put_product(body: bytes | bytearray | object) -> PutProduct:
    """``PUT /api/restaurants/{tenant}/menu/{productId}``'s body, or its 422."""
    decoded: PutProduct = decode(body, PutProduct)
    return decoded


def decode_set_open(body: bytes | bytearray | object) -> SetOpen:
    """``POST /api/restaurants/{tenant}/status``'s body, or its 422."""
    decoded: SetOpen = decode(body, SetOpen)
    return decoded


def decode_new_tenant(body: bytes | bytearray | object) -> NewTenant:
    """``POST /api/tenants``'s body, or its 422 (400 ``invalid_tenant_id`` for the id)."""
    decoded: NewTenant = decode(body, NewTenant)
    return decoded


# -- responses -------------------------------------------------------------------------


class RestaurantStatus(Struct, forbid_unknown_fields=True):
    """A restaurant open or closed for orders."""

    restaurant: TenantId
    open: bool


class Tenant(Struct, forbid_unknown_fields=True, rename="camel"):
    """A tenant as created: its own node and point (a customer has no point)."""

    id: TenantId
    role: Role
    name: str
    lat: float | None
    lng: float | None
    address: str | None
    currency: Annotated[str | None, Meta(description="A restaurant's prices' (or a"
                                         " customer's, when given).")]  # fmt: skip
    vehicle: str | None
    node_id: str
    point_id: str | None
