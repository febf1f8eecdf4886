"""HTTP endpoints of the order flow (the seed's Steps 1-10), menus and drivers.

Each endpoint reads who calls and what they sent, and hands it to
:class:`~hub.domain.orders.Orders` or the GPS service; the answer goes back as JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from hub.domain.auth import Role, TokenCache
from hub.domain.gps import Gps
from hub.domain.orders import Orders, lat_lng
from hub.edge.http import json_body, ok, principal
from hub.errors import Forbidden
from hub.events import check_stream_id

__all__ = ["STEPS", "OrdersHttp"]

STEPS = ("pay", "accept", "ready", "pickup", "deliver")


class OrdersHttp:
    """``/api/orders``, ``/api/restaurants``, ``/api/motion`` and ``/api/drivers``."""

    def __init__(self, orders: Orders, gps: Gps, tokens: TokenCache, *, body_limit: int) -> None:
        self.orders = orders
        self.gps = gps
        self.tokens = tokens
        self.body_limit = body_limit

    async def create(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        return ok(await self.orders.create(who, body), 201)

    def step(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of ``POST /api/orders/{order_id}/{name}``, one of :data:`STEPS`."""
        run = getattr(self.orders, name)

        async def endpoint(request: Request) -> Response:
            order_id = check_stream_id(request.path_params["order_id"])
            who = principal(request, self.tokens)
            body = await json_body(request, self.body_limit)
            return ok(await run(who, order_id, body))

        return endpoint

    async def details(self, request: Request) -> Response:
        order_id = check_stream_id(request.path_params["order_id"])
        return ok(await self.orders.details(principal(request, self.tokens), order_id))

    async def menu(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        return ok(await self.orders.menu(who, request.path_params["restaurant"]))

    async def motion(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        if who.role is not Role.DRIVER:
            raise Forbidden("only a driver reports its position")
        lat, lng = lat_lng(await json_body(request, self.body_limit))
        accepted = await self.gps.ping(who.tenant, lat, lng)
        return ok({"driver": who.tenant, "accepted": accepted})

    async def driver_status(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        return ok(await self.orders.driver_status(who, body))

    async def driver_me(self, request: Request) -> Response:
        return ok(await self.orders.driver_me(principal(request, self.tokens)))
