"""The seed's Step 0 data: Bab Al Hara's restaurant and menu, Rami the driver, Ali.

:func:`load_seed` writes it into the configured tenant and public DBs with
``INSERT OR IGNORE``, so running it twice changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from hub.infra.tenants import Tenants

__all__ = ["CUSTOMER", "DRIVER", "RESTAURANT", "load_seed"]

CUSTOMER, RESTAURANT, DRIVER = "ali", "bab-hara", "rami"
CREATED = "2026-11-27T12:00:00.000Z"

# (tenant, nodes, points) with the seed's columns.
TENANT_NODES: dict[str, list[tuple[Any, ...]]] = {
    RESTAURANT: [
        ("rest-01", None, "restaurant", "Bab Al Hara", {"address": "Al Rigga, Dubai"}),
        ("prod-shw", "menu-01", "product", "Chicken Shawarma", {"desc": "Grilled chicken wrap"}),
        ("prod-lbn", "menu-01", "product", "Laban", {"desc": "Traditional buttermilk"}),
    ],
    DRIVER: [("rami", None, "driver", "Rami", {"vehicle": "Motorcycle"})],
    CUSTOMER: [("ali", None, "customer", "Ali", {"address": "Marina Walk, Dubai",
                                                  "lat": 25.0805, "lng": 55.1403})],
}  # fmt: skip
# id, nodeId, qty, price, currency, availability, lat, lng, openNow
TENANT_POINTS: dict[str, list[tuple[Any, ...]]] = {
    RESTAURANT: [
        ("pt-shw", "prod-shw", 200, 18.00, "AED", "in-stock", None, None, True),
        ("pt-lbn", "prod-lbn", 150, 5.00, "AED", "in-stock", None, None, True),
        ("pt-rest-loc", "rest-01", None, None, None, "open", 25.2650, 55.3320, True),
    ],
    DRIVER: [("pt-rami-loc", "rami", None, None, None, "idle", 25.2640, 55.3310, True)],
}
PUBLIC_NODES = [("rami", DRIVER, None, "driver", "Rami", {"vehicle": "Motorcycle"})]
PUBLIC_POINTS = [("pt-rami-loc", DRIVER, "rami", "idle", 25.2640, 55.3310, True)]


async def load_seed(tenants: Tenants) -> None:
    """Write Step 0 into the tenant DBs and the public DB (idempotent)."""
    for tenant, nodes in TENANT_NODES.items():
        stmts: list[tuple[str, list[Any]]] = [
            ("INSERT OR IGNORE INTO nodes (id, parentId, nodeType, title, createdAt, payload)"
             " VALUES (?, ?, ?, ?, ?, ?)", [i, parent, kind, title, CREATED, json.dumps(p)])
            for i, parent, kind, title, p in nodes
        ]  # fmt: skip
        stmts += [
            ("INSERT OR IGNORE INTO points (id, nodeId, qty, price, currency, availability,"
             " lat, lng, openNow) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", list(row))
            for row in TENANT_POINTS.get(tenant, [])
        ]  # fmt: skip
        await tenants.tenant(tenant).batch(stmts)
    await tenants.public.batch(
        [("INSERT OR IGNORE INTO nodes (id, workspaceId, parentId, nodeType, title, createdAt,"
          " payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
          [i, ws, parent, kind, title, CREATED, json.dumps(p)])
         for i, ws, parent, kind, title, p in PUBLIC_NODES]
        + [("INSERT OR IGNORE INTO points (id, workspaceId, nodeId, availability, lat, lng,"
            " openNow) VALUES (?, ?, ?, ?, ?, ?, ?)", list(row)) for row in PUBLIC_POINTS]
    )  # fmt: skip
