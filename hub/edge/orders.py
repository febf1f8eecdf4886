"""HTTP endpoints of the order flow (the seed's Steps 1-10), menus and drivers.

Each endpoint reads who calls and what they sent, parses the body into the step's typed
arguments (the "request bodies" section below: one function per body, the only place
each body is checked), and hands them to :class:`~hub.domain.orders.Orders` or the GPS
service; the answer goes back as JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hub.domain.auth import Principal, TokenCache
from hub.domain.gps import Gps
from hub.domain.orders import (
    DEFAULT_VEHICLE,
    MAX_ITEMS,
    MAX_QTY,
    NewOrder,
    Orders,
    check_may,
)
from hub.edge.http import json_body, ok, principal
from hub.errors import Unprocessable
from hub.events import check_stream_id, check_tenant_id

__all__ = [
    "STEPS",
    "OrdersHttp",
    "accept_body",
    "create_body",
    "driver_status_body",
    "lat_lng",
    "pay_body",
    "pickup_body",
    "ready_body",
]

STEPS = ("pay", "accept", "ready", "pickup", "deliver")
_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}\Z")
_CARD_LAST4_RE = re.compile(r"[0-9]{4}")

StepRun = Callable[[Principal, str, Any], Awaitable[dict[str, Any]]]

# -- request bodies -----------------------------------------------------------------------
# Every check of a body, in the order it is made, raising 422 ``invalid_body`` (400 for a
# restaurant that is not a valid tenant id): a body is parsed whole before anything is read
# or written.


def _invalid(message: str) -> Unprocessable:
    return Unprocessable(message, code="invalid_body")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid("body must be a JSON object")
    return body


def _str(body: Mapping[str, Any], key: str, *, max_len: int = 200,
         default: str | None = None) -> str:  # fmt: skip
    """``body[key]``: a non-empty string; required unless it has a ``default``."""
    value = body.get(key)
    if value is None:
        if default is None:
            raise _invalid(f"{key} is required")
        return default
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise _invalid(f"{key} must be a non-empty string of at most {max_len} characters")
    return value


def _int(body: Mapping[str, Any], key: str, *, lo: int, hi: int) -> int | None:
    """``body[key]``: an integer in lo..hi, or None when absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _invalid(f"{key} must be an integer in {lo}..{hi}")
    return value


def _coord(body: Mapping[str, Any], key: str, limit: float) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"{key} must be a number")
    if not -limit <= value <= limit:
        raise _invalid(f"{key} out of range")
    return float(value)


def lat_lng(body: Any) -> tuple[float, float]:
    """``{"lat", "lng"}`` (``POST /api/motion``, ``deliver``, a ``deliveryLocation``)."""
    if not isinstance(body, Mapping):
        raise _invalid("body must be a JSON object")
    return _coord(body, "lat", 90), _coord(body, "lng", 180)


def create_body(body: Any) -> NewOrder:
    """``POST /api/orders``: ``{"restaurant", "items": [{"productId", "qty"}],
    "deliveryAddress", "notes"?, "deliveryLocation"?, "orderId"?}``."""
    body = _object(body)
    restaurant = body.get("restaurant")
    if not isinstance(restaurant, str):
        raise _invalid("restaurant is required")
    check_tenant_id(restaurant)
    address = _str(body, "deliveryAddress", max_len=300)
    notes = _str(body, "notes", max_len=500, default="")
    where = body.get("deliveryLocation")
    location = lat_lng(where) if where is not None else None
    order_id = body.get("orderId")
    if order_id is not None and (not isinstance(order_id, str)
                                 or not _ORDER_ID_RE.match(order_id)):  # fmt: skip
        raise _invalid("orderId must match ^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$")
    raw_items = body.get("items")
    if not isinstance(raw_items, list) or not 1 <= len(raw_items) <= MAX_ITEMS:
        raise _invalid(f"items must be a list of 1..{MAX_ITEMS}")
    wanted: dict[str, int] = {}
    for item in raw_items:
        if not isinstance(item, dict) or set(item) - {"productId", "qty"}:
            raise _invalid("each item is {productId, qty}")
        pid = _str(item, "productId", max_len=128)
        qty = _int(item, "qty", lo=1, hi=MAX_QTY)
        if qty is None:
            raise _invalid(f"qty must be an integer in 1..{MAX_QTY}")
        if pid in wanted:
            raise _invalid(f"product {pid!r} listed twice")
        wanted[pid] = qty
    return NewOrder(restaurant, wanted, address, notes, location, order_id)


def pay_body(body: Any) -> tuple[str, str | None]:
    """``pay``: ``{"method", "cardLast4"?}``: (method, cardLast4)."""
    body = _object(body)
    method = _str(body, "method", max_len=32)
    last4 = body.get("cardLast4")
    if last4 is not None and not (isinstance(last4, str) and _CARD_LAST4_RE.fullmatch(last4)):
        raise _invalid("cardLast4 must be 4 digits")
    return method, last4


def accept_body(body: Any) -> tuple[str, str, int | None]:
    """``accept``: ``{"chef"?, "station"?, "estMinutes"?}``: (chef, station, estMinutes)."""
    body = _object(body)
    chef = _str(body, "chef", max_len=100, default="Kitchen")
    station = _str(body, "station", max_len=100, default="main")
    return chef, station, _int(body, "estMinutes", lo=1, hi=600)


def ready_body(body: Any) -> int | None:
    """``ready``: ``{"actualMinutes"?}``."""
    return _int(_object(body), "actualMinutes", lo=0, hi=600)


def pickup_body(body: Any) -> int | None:
    """``pickup``: ``{"confirmedItems"?}``."""
    return _int(_object(body), "confirmedItems", lo=0, hi=MAX_ITEMS * MAX_QTY)


def driver_status_body(body: Any) -> tuple[str, tuple[float, float] | None]:
    """``POST /api/drivers/status``: ``{"status": "online"|"offline", "vehicle"?, "lat",
    "lng"}`` (a position only when online): (vehicle, (lat, lng) or None for offline)."""
    body = _object(body)
    status = body.get("status")
    if status not in ("online", "offline"):
        raise _invalid("status must be 'online' or 'offline'")
    vehicle = _str(body, "vehicle", max_len=50, default=DEFAULT_VEHICLE)
    return vehicle, lat_lng(body) if status == "online" else None


# -- endpoints ----------------------------------------------------------------------------


class OrdersHttp:
    """``/api/orders``, ``/api/restaurants``, ``/api/motion`` and ``/api/drivers``."""

    def __init__(self, orders: Orders, gps: Gps, tokens: TokenCache, *, body_limit: int) -> None:
        self.orders = orders
        self.gps = gps
        self.tokens = tokens
        self.body_limit = body_limit
        self._steps: dict[str, StepRun] = {
            "pay": self._pay, "accept": self._accept, "ready": self._ready,
            "pickup": self._pickup, "deliver": self._deliver,
        }  # fmt: skip

    async def create(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        check_may(who, "create")  # 403 before the body's checks
        return ok(await self.orders.create(who, create_body(body)), 201)

    def step(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of ``POST /api/orders/{order_id}/{name}``, one of :data:`STEPS`."""
        run = self._steps[name]

        async def endpoint(request: Request) -> Response:
            order_id = check_stream_id(request.path_params["order_id"])
            who = principal(request, self.tokens)
            body = await json_body(request, self.body_limit)
            return ok(await run(who, order_id, body))

        return endpoint

    async def _pay(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        method, card_last4 = pay_body(body)
        return await self.orders.pay(who, order_id, method=method, card_last4=card_last4)

    async def _accept(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        chef, station, est = accept_body(body)
        return await self.orders.accept(who, order_id, chef=chef, station=station,
                                        est_minutes=est)  # fmt: skip

    async def _ready(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        return await self.orders.ready(who, order_id, actual_minutes=ready_body(body))

    async def _pickup(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        return await self.orders.pickup(who, order_id, confirmed_items=pickup_body(body))

    async def _deliver(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        lat, lng = lat_lng(body)
        return await self.orders.deliver(who, order_id, lat=lat, lng=lng)

    async def details(self, request: Request) -> Response:
        order_id = check_stream_id(request.path_params["order_id"])
        return ok(await self.orders.details(principal(request, self.tokens), order_id))

    async def menu(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        restaurant = check_tenant_id(request.path_params["restaurant"])
        return ok(await self.orders.menu(who, restaurant))

    async def motion(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        check_may(who, "motion")
        lat, lng = lat_lng(await json_body(request, self.body_limit))
        accepted = await self.gps.ping(who.tenant, lat, lng)
        return ok({"driver": who.tenant, "accepted": accepted})

    async def driver_status(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        check_may(who, "driver_status")  # 403 before the body's checks
        vehicle, at = driver_status_body(body)
        return ok(await self.orders.driver_status(who, vehicle=vehicle, at=at))

    async def driver_me(self, request: Request) -> Response:
        return ok(await self.orders.driver_me(principal(request, self.tokens)))
