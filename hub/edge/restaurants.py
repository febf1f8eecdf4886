"""HTTP endpoints of menus, restaurant status and tenants as data (docs/protocol.md §4.5).

Each endpoint checks the ids in its path (400), who calls (401, then 403 before the body's
own checks), decodes the body with its wire shape (:mod:`hub.edge.wire.restaurants`) and
hands it to :class:`~hub.domain.restaurants.Restaurants`; a refusal writes nothing.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from hub.domain.auth import TokenCache
from hub.domain.restaurants import (
    ProductChange,
    Restaurants,
    TenantSpec,
    check_manages,
    check_platform,
    check_product_id,
)
from hub.edge.http import json_body, ok, principal
from hub.edge.wire.restaurants import decode_new_tenant, decode_put_product, decode_set_open
from hub.events import check_tenant_id
from hub.infra.tenants import Tenants

__all__ = ["RestaurantsHttp"]


class RestaurantsHttp:
    """``PUT /api/restaurants/{restaurant}/menu/{product_id}``,
    ``POST /api/restaurants/{restaurant}/status`` and ``POST /api/tenants``."""

    def __init__(self, tenants: Tenants, tokens: TokenCache, *, body_limit: int) -> None:
        self.restaurants = Restaurants(tenants)
        self.tokens = tokens
        self.body_limit = body_limit

    async def put_product(self, request: Request) -> Response:
        restaurant = check_tenant_id(request.path_params["restaurant"])
        product_id = check_product_id(request.path_params["product_id"])
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        check_manages(who, restaurant)  # 403 before the body's checks
        put = decode_put_product(body)
        change = ProductChange(put.title, put.desc, put.price, put.qty, put.availability)
        product, created = await self.restaurants.put_product(restaurant, product_id, change)
        return ok(product, 201 if created else 200)

    async def set_status(self, request: Request) -> Response:
        restaurant = check_tenant_id(request.path_params["restaurant"])
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        check_manages(who, restaurant)
        status = decode_set_open(body)
        return ok(await self.restaurants.set_open(restaurant, status.open))

    async def create_tenant(self, request: Request) -> Response:
        who = principal(request, self.tokens)
        body = await json_body(request, self.body_limit)
        check_platform(who)
        new = decode_new_tenant(body)
        spec = TenantSpec(new.id, new.role, new.name, new.lat, new.lng, address=new.address,
                          currency=new.currency, vehicle=new.vehicle)  # fmt: skip
        tenant, created = await self.restaurants.create_tenant(spec)
        return ok(tenant, 201 if created else 200)
