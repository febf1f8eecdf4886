"""The seed's Step 0 data: Bab Al Hara's restaurant and menu, Rami the driver, Ali.

:func:`load_seed` writes it through the code path of ``POST /api/tenants`` and
``PUT /api/restaurants/{tenant}/menu/{productId}``
(:class:`~hub.domain.restaurants.Restaurants`), passing the seed's ids where the API derives
them, so the rows are exactly the seed's. Running it twice changes nothing: a tenant that
exists with the same content writes nothing, and a product that exists is left as it is
(its stock, too).
"""

from __future__ import annotations

import logging

from hub.domain.restaurants import ProductChange, Restaurants, TenantSpec
from hub.errors import Conflict
from hub.infra.tenants import Tenants

__all__ = ["CUSTOMER", "DRIVER", "PRODUCTS", "RESTAURANT", "TENANTS", "load_seed"]

log = logging.getLogger("hub.seed")

CUSTOMER, RESTAURANT, DRIVER = "ali", "bab-hara", "rami"
CREATED = "2026-11-27T12:00:00.000Z"

# The seed's tenants, with its node and point ids.
TENANTS: tuple[TenantSpec, ...] = (
    TenantSpec(RESTAURANT, "restaurant", "Bab Al Hara", 25.2650, 55.3320,
               address="Al Rigga, Dubai", currency="AED", node_id="rest-01",
               point_id="pt-rest-loc", created=CREATED),
    TenantSpec(DRIVER, "driver", "Rami", 25.2640, 55.3310, vehicle="Motorcycle",
               node_id="rami", point_id="pt-rami-loc", idle=True, created=CREATED),
    TenantSpec(CUSTOMER, "customer", "Ali", 25.0805, 55.1403, address="Marina Walk, Dubai",
               node_id="ali", created=CREATED),
)  # fmt: skip
# Bab Al Hara's menu: (product id, point id, what the product is).
PRODUCTS: tuple[tuple[str, str, ProductChange], ...] = (
    ("prod-shw", "pt-shw", ProductChange("Chicken Shawarma", "Grilled chicken wrap", 18.00, 200,
                                         "in-stock")),
    ("prod-lbn", "pt-lbn", ProductChange("Laban", "Traditional buttermilk", 5.00, 150,
                                         "in-stock")),
)  # fmt: skip
MENU = "menu-01"


async def load_seed(tenants: Tenants) -> None:
    """Write Step 0 into the tenant DBs and the public DB (idempotent).

    A seed tenant that exists with other content (renamed since, say) is left as it is,
    with a warning.
    """
    restaurants = Restaurants(tenants)
    for spec in TENANTS:
        try:
            await restaurants.create_tenant(spec)
        except Conflict as exc:
            log.warning("seed: %s left as it is (%s)", spec.tenant, exc.message)
    for product_id, point_id, product in PRODUCTS:
        await restaurants.put_product(RESTAURANT, product_id, product, point_id=point_id,
                                      parent=MENU, created=CREATED, create_only=True)  # fmt: skip
