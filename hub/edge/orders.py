"""HTTP endpoints of the order flow (the seed's Steps 1-10), menus and drivers.

Each endpoint reads who calls and what they sent, decodes the body with its wire shape
(:mod:`hub.edge.wire.orders`, the one place each body's rules are declared), and hands the
step's typed arguments to :class:`~hub.domain.orders.Orders` or the GPS service; the
answer goes back as JSON.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hub.domain.auth import Principal, TokenCache
from hub.domain.gps import Gps
from hub.domain.orders import DEFAULT_VEHICLE, NewOrder, Orders, check_may
from hub.domain.orders.stream import READ_BYTES
from hub.domain.sessions import ReadBudget
from hub.edge.http import json_body, ok, principal
from hub.edge.wire.orders import (
    DriverOnline,
    decode_accept,
    decode_cancel,
    decode_create_order,
    decode_decline,
    decode_deliver,
    decode_driver_status,
    decode_motion,
    decode_pay,
    decode_pickup,
    decode_ready,
)
from hub.events import check_stream_id, check_tenant_id

__all__ = ["STEPS", "OrdersHttp"]

STEPS = ("pay", "accept", "ready", "pickup", "deliver", "cancel", "decline")

StepRun = Callable[[Principal, str, Any], Awaitable[dict[str, Any]]]

# -- endpoints ----------------------------------------------------------------------------


class OrdersHttp:
    """``/api/orders``, ``/api/restaurants``, ``/api/motion`` and ``/api/drivers``."""

    def __init__(self, orders: Orders, gps: Gps, tokens: TokenCache, *, body_limit: int,
                 budget: ReadBudget | None = None, wait: float = 30.0) -> None:  # fmt: skip
        self.budget = budget  # the tenants' read budget (None: reads are not counted)
        self.wait = wait  # seconds a step waits for its tenant's budget, then 503
        self.orders = orders
        self.gps = gps
        self.tokens = tokens
        self.body_limit = body_limit
        self._steps: dict[str, StepRun] = {
            "pay": self._pay, "accept": self._accept, "ready": self._ready,
            "pickup": self._pickup, "deliver": self._deliver,
            "cancel": self._cancel, "decline": self._decline,
        }  # fmt: skip

    async def create(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        check_may(who, "create")  # 403 before the body's checks
        order = decode_create_order(body)
        location = order.delivery_location
        new = NewOrder(
            order.restaurant,
            {item.product_id: item.qty for item in order.items},
            order.delivery_address,
            order.notes or "",
            (location.lat, location.lng) if location is not None else None,
            order.order_id,
        )
        return ok(await self.orders.create(who, new), 201)

    def step(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of ``POST /api/orders/{order_id}/{name}``, one of :data:`STEPS`."""
        run = self._steps[name]

        async def endpoint(request: Request) -> Response:
            order_id = check_stream_id(request.path_params["order_id"])
            who = principal(request, self.tokens)
            body = await json_body(request, self.body_limit)
            async with self._reading(who):
                return ok(await run(who, order_id, body))

        return endpoint

    async def _pay(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        pay = decode_pay(body)
        return await self.orders.pay(who, order_id, method=pay.method, card_last4=pay.card_last4)

    async def _accept(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        accept = decode_accept(body)
        return await self.orders.accept(who, order_id, chef=accept.chef or "Kitchen",
                                        station=accept.station or "main",
                                        est_minutes=accept.est_minutes)  # fmt: skip

    async def _ready(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        ready = decode_ready(body)
        return await self.orders.ready(who, order_id, actual_minutes=ready.actual_minutes)

    async def _pickup(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        pickup = decode_pickup(body)
        return await self.orders.pickup(who, order_id, confirmed_items=pickup.confirmed_items)

    async def _deliver(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        at = decode_deliver(body)
        return await self.orders.deliver(who, order_id, lat=at.lat, lng=at.lng)

    async def _cancel(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        cancel = decode_cancel(body)
        return await self.orders.cancel(who, order_id, reason=cancel.reason or "")

    async def _decline(self, who: Principal, order_id: str, body: Any) -> dict[str, Any]:
        decline = decode_decline(body)
        return await self.orders.decline(who, order_id, reason=decline.reason or "")

    async def details(self, request: Request) -> Response:
        order_id = check_stream_id(request.path_params["order_id"])
        who = principal(request, self.tokens)
        async with self._reading(who):
            return ok(await self.orders.details(who, order_id))

    @contextlib.asynccontextmanager
    async def _reading(self, who: Principal) -> AsyncIterator[None]:
        """Hold :data:`~hub.domain.orders.stream.READ_BYTES` of ``who``'s read budget while a
        step reads its order's stream (503 after waiting ``wait`` seconds for it)."""
        budget = self.budget
        if budget is None:
            yield
            return
        await budget.acquire_within(who.tenant, READ_BYTES, self.wait)
        try:
            yield
        finally:
            budget.release(who.tenant, READ_BYTES)

    async def menu(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        restaurant = check_tenant_id(request.path_params["restaurant"])
        return ok(await self.orders.menu(who, restaurant))

    async def motion(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        check_may(who, "motion")
        at = decode_motion(await json_body(request, self.body_limit))
        accepted = await self.gps.ping(who.tenant, at.lat, at.lng)
        return ok({"driver": who.tenant, "accepted": accepted})

    async def driver_status(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        check_may(who, "driver_status")  # 403 before the body's checks
        status = decode_driver_status(body)
        vehicle = status.vehicle or DEFAULT_VEHICLE
        at = (status.lat, status.lng) if isinstance(status, DriverOnline) else None
        return ok(await self.orders.driver_status(who, vehicle=vehicle, at=at))

    async def driver_me(self, request: Request) -> Response:
        return ok(await self.orders.driver_me(principal(request, self.tokens)))
