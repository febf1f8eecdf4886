"""The statements of "menus and tenants are data" against the tenant and public DBs.

Every SQL statement that creates a tenant, puts a product on a menu or opens and closes a
restaurant is here, one method each (one per batch that must be atomic), over
:class:`~hub.infra.tenants.Tenants`; the rules are :mod:`hub.domain.restaurants`.

- A tenant's first rows (its node, and its point if it has one) are one batch whose
  ``INSERT OR IGNORE`` of the node is followed by a :func:`~hub.infra.db.guard`: of two
  creations racing for one tenant exactly one writes, the other finds what it wrote.
- A product's node and point are one batch too, created the same way; an update writes only
  the columns it changes and never touches the point's ``applied`` list (the order flow's
  stock-take bookkeeping), so a retried Step 4 still never deducts twice.
- Nothing here writes a row that is already as asked: an update that changes nothing is not
  run, an open restaurant opened again is a conditional UPDATE that matches no row.

With a remote ``HUB_TENANT_DB`` (libSQL) these run unchanged against the tenant's database
URL; creating that database (a namespace on sqld) is not done here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from hub.infra.db import GuardFailed, Stmt, guard
from hub.infra.tenants import Tenants

__all__ = [
    "ROOT_TYPES",
    "MenuDb",
    "NewNode",
    "NewPoint",
    "ProductState",
    "RestaurantState",
    "RootRow",
]

ROOT_TYPES = ("restaurant", "customer", "driver")  # the node a tenant's DB is about
_ROOT_TYPES_SQL = "('restaurant', 'customer', 'driver')"
_INSERT_NODE = (
    "INSERT OR IGNORE INTO nodes (id, parentId, nodeType, title, createdAt, payload)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_POINT = (
    "INSERT OR IGNORE INTO points (id, nodeId, qty, price, currency, availability, lat, lng,"
    " openNow) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The point columns a product update may set (names from this list only reach the SQL).
PRODUCT_POINT_COLUMNS = ("qty", "price", "availability", "openNow")


class NewNode(NamedTuple):
    """A node to insert, with the seed's columns."""

    id: str
    parent_id: str | None
    node_type: str
    title: str
    created: str
    payload: Mapping[str, Any]

    def stmt(self) -> Stmt:
        return (_INSERT_NODE, [self.id, self.parent_id, self.node_type, self.title,
                               self.created, json.dumps(self.payload)])  # fmt: skip


class NewPoint(NamedTuple):
    """A point to insert, with the seed's columns."""

    id: str
    node_id: str
    qty: float | None
    price: float | None
    currency: str | None
    availability: str | None
    lat: float | None
    lng: float | None
    open_now: bool

    def stmt(self) -> Stmt:
        return (_INSERT_POINT, list(self))


class RootRow(NamedTuple):
    """A tenant's own node (restaurant, customer or driver) and its point, if it has one."""

    node_id: str
    node_type: str
    title: str | None
    payload: dict[str, Any]
    point_id: str | None
    lat: float | None
    lng: float | None


class RestaurantState(NamedTuple):
    """What an order needs to know of a restaurant: its node, its location point's
    availability, and a currency its products are priced in (None: none is)."""

    node_id: str
    payload: dict[str, Any]
    point_id: str | None
    availability: str | None
    open_now: Any
    product_currency: str | None


class ProductState(NamedTuple):
    """A node of a restaurant's DB by id (a product, or something else) and its point."""

    node_type: str
    title: str | None
    payload: dict[str, Any]
    point_id: str | None
    qty: float | None
    price: float | None
    currency: str | None
    availability: str | None
    open_now: Any


def _payload(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class MenuDb:
    """Tenants, menus and restaurant status in the tenant DBs (and drivers' public rows)."""

    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def exists(self, tenant: str) -> bool:
        """Whether ``tenant`` has a database (asking never creates one: see Tenants)."""
        return self.tenants.exists(tenant)

    # -- tenants ---------------------------------------------------------------------------

    async def roots(self, tenant: str) -> list[RootRow]:
        """The tenant's own nodes (restaurant, customer, driver) with their points."""
        r = await self.tenants.tenant(tenant).execute(
            "SELECT n.id, n.nodeType, n.title, n.payload, p.id, p.lat, p.lng FROM nodes n"
            " LEFT JOIN points p ON p.nodeId = n.id"
            f" WHERE n.nodeType IN {_ROOT_TYPES_SQL} ORDER BY n.id, p.id LIMIT 10"
        )
        seen: dict[str, RootRow] = {}
        for node_id, kind, title, payload, point_id, lat, lng in r.rows:
            seen.setdefault(node_id, RootRow(node_id, kind, title, _payload(payload),
                                             point_id, lat, lng))  # fmt: skip
        return list(seen.values())

    async def insert_root(self, tenant: str, node: NewNode, point: NewPoint | None) -> bool:
        """The tenant's node and point in one transaction; False (nothing written) when a
        node with that id is there already."""
        stmts: list[Stmt] = [node.stmt(), guard("tenant")]
        if point is not None:
            stmts.append(point.stmt())
        try:
            await self.tenants.tenant(tenant).batch(stmts)
        except GuardFailed:
            return False
        return True

    async def insert_point(self, tenant: str, point: NewPoint) -> None:
        """A point a tenant's node lacks (a second run writes nothing)."""
        await self.tenants.tenant(tenant).execute(*point.stmt())

    async def list_driver(self, driver: str, node: NewNode, point: NewPoint) -> None:
        """The driver's rows in the public DB, as its own DB has them (those already there
        are left as they are)."""
        await self.tenants.public.batch([
            ("INSERT OR IGNORE INTO nodes (id, workspaceId, parentId, nodeType, title,"
             " createdAt, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
             [node.id, driver, node.parent_id, node.node_type, node.title, node.created,
              json.dumps(node.payload)]),
            ("INSERT OR IGNORE INTO points (id, workspaceId, nodeId, availability, lat, lng,"
             " openNow) VALUES (?, ?, ?, ?, ?, ?, ?)",
             [point.id, driver, point.node_id, point.availability, point.lat, point.lng,
              point.open_now]),
        ])  # fmt: skip

    # -- restaurants -----------------------------------------------------------------------

    async def restaurant(self, restaurant: str) -> RestaurantState | None:
        """The restaurant's node (the first, as the order flow finds it) and location."""
        r = await self.tenants.tenant(restaurant).execute(
            "SELECT n.id, n.payload, p.id, p.availability, p.openNow,"
            " (SELECT currency FROM points WHERE currency IS NOT NULL AND nodeId IN"
            "  (SELECT id FROM nodes WHERE nodeType = 'product') ORDER BY id LIMIT 1)"
            " FROM nodes n LEFT JOIN points p ON p.nodeId = n.id"
            " WHERE n.nodeType = 'restaurant' ORDER BY n.id LIMIT 1"
        )
        if not r.rows:
            return None
        node_id, payload, point_id, availability, open_now, currency = r.rows[0]
        return RestaurantState(str(node_id), _payload(payload), point_id, availability,
                               open_now, currency)  # fmt: skip

    async def set_open(self, restaurant: str, point_id: str, is_open: bool) -> int:
        """Open or close the restaurant's location point; the rows written (0: it was so)."""
        availability = "open" if is_open else "closed"
        r = await self.tenants.tenant(restaurant).execute(
            "UPDATE points SET availability = ?, openNow = ? WHERE id = ?"
            " AND (availability IS NOT ? OR openNow IS NOT ?)",
            [availability, is_open, point_id, availability, is_open],
        )
        return r.rowcount

    # -- products --------------------------------------------------------------------------

    async def product(self, restaurant: str, product_id: str) -> ProductState | None:
        """The node ``product_id`` of the restaurant's DB (whatever its type) and its point."""
        r = await self.tenants.tenant(restaurant).execute(
            "SELECT n.nodeType, n.title, n.payload, p.id, p.qty, p.price, p.currency,"
            " p.availability, p.openNow FROM nodes n LEFT JOIN points p ON p.nodeId = n.id"
            " WHERE n.id = ? ORDER BY p.id LIMIT 1",
            [product_id],
        )
        if not r.rows:
            return None
        kind, title, payload, *point = r.rows[0]
        return ProductState(kind, title, _payload(payload), *point)

    async def point_owner(self, tenant: str, point_id: str) -> str | None:
        """The node a point of the tenant's DB belongs to; None when there is no such point."""
        r = await self.tenants.tenant(tenant).execute(
            "SELECT nodeId FROM points WHERE id = ?", [point_id]
        )
        return str(r.rows[0][0]) if r.rows else None

    async def insert_product(self, restaurant: str, node: NewNode, point: NewPoint) -> bool:
        """A new product and its point in one transaction; False (nothing written) when the
        node or the point id is taken meanwhile."""
        try:
            await self.tenants.tenant(restaurant).batch(
                [node.stmt(), guard("product"), point.stmt(), guard("product")]
            )
        except GuardFailed:
            return False
        return True

    async def update_product(self, restaurant: str, product_id: str,
                             node: tuple[str | None, Mapping[str, Any]] | None,
                             point_id: str | None, point: Mapping[str, Any]) -> None:  # fmt: skip
        """The product's new (title, payload), and new values of its point's columns (of
        :data:`PRODUCT_POINT_COLUMNS`), in one transaction; ``applied`` is left alone."""
        stmts: list[Stmt] = []
        if node is not None:
            title, payload = node
            stmts.append(("UPDATE nodes SET title = ?, payload = ? WHERE id = ?"
                          " AND nodeType = 'product'",
                          [title, json.dumps(payload), product_id]))  # fmt: skip
        if point and point_id is not None:
            columns = [c for c in PRODUCT_POINT_COLUMNS if c in point]
            if len(columns) != len(point):
                raise ValueError(f"not a product point column: {sorted(point)}")
            sets = ", ".join(f"{c} = ?" for c in columns)
            stmts.append((f"UPDATE points SET {sets} WHERE id = ?",
                          [*(point[c] for c in columns), point_id]))  # fmt: skip
        if stmts:
            await self.tenants.tenant(restaurant).batch(stmts)

    async def product_rows(self, restaurant: str, product_id: str) -> Sequence[Any] | None:
        """The product as the menu lists it: id, title, payload, point id, qty, price,
        currency, availability (the columns of :meth:`OrderDb.menu`)."""
        r = await self.tenants.tenant(restaurant).execute(
            "SELECT n.id, n.title, n.payload, p.id, p.qty, p.price, p.currency, p.availability"
            " FROM nodes n JOIN points p ON p.nodeId = n.id"
            " WHERE n.nodeType = 'product' AND n.id = ? ORDER BY p.id LIMIT 1",
            [product_id],
        )
        return r.rows[0] if r.rows else None
