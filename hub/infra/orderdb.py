"""The order flow's statements against the tenant DBs and the public discovery DB.

Every SQL statement that the order steps and driver dispatch run outside the streams DB is
here, one method each (or one per batch that must be atomic), over
:class:`~hub.infra.tenants.Tenants`. What makes a step safe to retry after a crash part-way
lives in the statements themselves:

- rows are ``INSERT OR IGNORE``; updates carry the condition that makes a second run a no-op;
- stock is taken by one UPDATE per point, conditional on the quantity and on the point's
  ``applied`` list being what was read, each followed by a :func:`~hub.infra.db.guard`: the
  batch is all or nothing, and stock never goes below zero whatever runs concurrently;
- a driver is claimed in the public DB by a conditional UPDATE that records the order in
  ``claim``: exactly one order gets an idle driver, an order gets at most one claimed driver
  (whichever instance claims), and a retried assignment finds it; a claim whose TASK_ASSIGN
  can never come is undone (:meth:`OrderDb.undo_claim`);
- a cancelled order's stock goes back once: the batch that adds it back first inserts the
  order's return ledger row (``return#{order}``, a node of type ``stock-return``) and is
  guarded on that insert, so a second run (a retry, a restart, a racing instance) changes
  nothing, however long after.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from hub.events import TENANT_ID_RE
from hub.infra.db import GuardFailed, Stmt, guard
from hub.infra.tenants import Tenants

__all__ = [
    "DriverListing",
    "DriverPoint",
    "MenuRow",
    "OrderDb",
    "ProductRow",
    "RestaurantRow",
    "StockPoint",
    "StockTake",
]

_NODE = "INSERT OR IGNORE INTO nodes (id, nodeType, title, createdAt, payload)"
# A public DB row whose workspaceId is no tenant id (docs/protocol.md §2) names no database:
# such a driver is never offered (claiming it would fail every time, and first).
_TENANT_ID_SQL = (
    "workspaceId GLOB '[a-z0-9]*' AND workspaceId NOT GLOB '*[^a-z0-9-]*'"
    " AND length(workspaceId) <= 63"
)
_POSITION = "SELECT lat, lng FROM points WHERE nodeId = ? LIMIT 1"
MAX_EXCLUDED = 200  # drivers left out of one search (those who declined the order)


class RestaurantRow(NamedTuple):
    """A restaurant's node and its location (from its own DB)."""

    node_id: str
    lat: float | None
    lng: float | None


class MenuRow(NamedTuple):
    product_id: str
    title: str | None
    payload: str | None
    point_id: str
    qty: float | None
    price: float | None
    currency: str | None
    availability: str | None


class ProductRow(NamedTuple):
    """A product on offer and its stock point."""

    product_id: str
    title: str | None
    point_id: str
    qty: float | None
    price: float | None
    currency: str | None
    availability: str | None


class StockPoint(NamedTuple):
    """A product's stock point: its quantity and the orders already taken from it."""

    point_id: str
    qty: float | None
    applied: str | None  # a JSON list of order ids, as stored


class StockTake(NamedTuple):
    """Take ``qty`` from ``point_id``, recording ``applied`` (the new list), if the point
    still has ``qty`` and its list is still ``was``."""

    point_id: str
    qty: int
    applied: str
    was: str | None


class DriverPoint(NamedTuple):
    """A driver's point in the public DB."""

    driver: str  # the row's workspaceId
    point_id: str
    lat: float | None
    lng: float | None


class DriverListing(NamedTuple):
    availability: str | None
    open_now: Any
    lat: float | None
    lng: float | None
    claim: str | None


class OrderDb:
    """The order flow's reads and writes of the tenant DBs and the public DB."""

    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def exists(self, tenant: str) -> bool:
        """Whether ``tenant`` has a database (reading one never creates it: see Tenants)."""
        return self.tenants.exists(tenant)

    # -- restaurants, menus, orders ----------------------------------------------------

    async def restaurant(self, restaurant: str) -> RestaurantRow | None:
        r = await self.tenants.tenant(restaurant).execute(
            "SELECT n.id, p.lat, p.lng FROM nodes n LEFT JOIN points p ON p.nodeId = n.id"
            " WHERE n.nodeType = 'restaurant' ORDER BY n.id LIMIT 1"
        )
        if not r.rows:
            return None
        node_id, lat, lng = r.rows[0]
        return RestaurantRow(str(node_id), lat, lng)

    async def node(self, tenant: str, node_id: str) -> tuple[Any, dict[str, Any]] | None:
        """A node's title and payload (``{}`` when it has none); None when there is none."""
        r = await self.tenants.tenant(tenant).execute(
            "SELECT title, payload FROM nodes WHERE id = ?", [node_id]
        )
        if not r.rows:
            return None
        title, payload = r.rows[0]
        return title, json.loads(payload or "{}")

    async def restaurant_profile(self, restaurant: str) -> tuple[Any, dict[str, Any]] | None:
        """The title and payload of the restaurant's node (the first one stored)."""
        r = await self.tenants.tenant(restaurant).execute(
            "SELECT title, payload FROM nodes WHERE nodeType = 'restaurant' LIMIT 1"
        )
        if not r.rows:
            return None
        title, payload = r.rows[0]
        return title, json.loads(payload or "{}")

    async def menu(self, restaurant: str) -> list[MenuRow]:
        r = await self.tenants.tenant(restaurant).execute(
            "SELECT n.id, n.title, n.payload, p.id, p.qty, p.price, p.currency, p.availability"
            " FROM nodes n JOIN points p ON p.nodeId = n.id WHERE n.nodeType = 'product'"
            " ORDER BY n.title LIMIT 500"
        )
        return [MenuRow(*row) for row in r.rows]

    async def products(self, restaurant: str, product_ids: Sequence[str]) -> dict[str, ProductRow]:
        """The products among ``product_ids`` that the restaurant has, by id."""
        marks = ",".join("?" * len(product_ids))
        r = await self.tenants.tenant(restaurant).execute(
            "SELECT n.id, n.title, p.id, p.qty, p.price, p.currency, p.availability"
            " FROM nodes n JOIN points p ON p.nodeId = n.id"
            f" WHERE n.nodeType = 'product' AND n.id IN ({marks})",
            list(product_ids),
        )
        return {row[0]: ProductRow(*row) for row in r.rows}

    async def insert_order_node(self, tenant: str, order_id: str, title: str, ts: str,
                                payload: Mapping[str, Any]) -> None:  # fmt: skip
        """The order's node in a party's DB (Step 1); a second run writes nothing."""
        await self.tenants.tenant(tenant).execute(
            f"{_NODE} VALUES (?, 'order', ?, ?, ?)", [order_id, title, ts, json.dumps(payload)]
        )

    async def node_payloads(self, tenant: str, node_ids: Sequence[str]) -> dict[str, Any]:
        """The payloads of those of ``node_ids`` the tenant's DB has, by id."""
        marks = ",".join("?" * len(node_ids))
        r = await self.tenants.tenant(tenant).execute(
            f"SELECT id, payload FROM nodes WHERE id IN ({marks})", list(node_ids)
        )
        return {row[0]: json.loads(row[1] or "{}") for row in r.rows}

    async def stock_points(self, restaurant: str, product_ids: Sequence[str]
                           ) -> dict[str, StockPoint]:  # fmt: skip
        """The stock points of ``product_ids``, by product id."""
        marks = ",".join("?" * len(product_ids))
        r = await self.tenants.tenant(restaurant).execute(
            f"SELECT nodeId, id, qty, applied FROM points WHERE nodeId IN ({marks})",
            list(product_ids),
        )
        return {row[0]: StockPoint(*row[1:]) for row in r.rows}

    async def return_stock(self, restaurant: str, order_id: str, ts: str,
                           returns: Sequence[tuple[str, int]]) -> bool:  # fmt: skip
        """Add each (point id, qty) of ``returns`` back, with the order's return ledger row,
        all in one transaction; False (nothing written) when the order's stock went back
        already."""
        stmts: list[Stmt] = [
            (f"{_NODE} VALUES (?, 'stock-return', ?, ?, ?)",
             [f"return#{order_id}", f"Stock back from {order_id}", ts,
              json.dumps({"points": dict(returns)})]),
            guard("returned"),
        ]  # fmt: skip
        stmts += [("UPDATE points SET qty = qty + ? WHERE id = ?", [qty, point_id])
                  for point_id, qty in returns]  # fmt: skip
        try:
            await self.tenants.tenant(restaurant).batch(stmts)
        except GuardFailed:
            return False
        return True

    async def take_stock(self, restaurant: str, takes: Sequence[StockTake]) -> bool:
        """All of ``takes`` in one transaction, or none (False: a point changed meanwhile)."""
        stmts: list[Stmt] = []
        for take in takes:
            stmts.append(
                (
                    "UPDATE points SET qty = qty - ?, applied = ? WHERE id = ? AND qty >= ?"
                    " AND applied IS ?",
                    [take.qty, take.applied, take.point_id, take.qty, take.was],
                )
            )
            stmts.append(guard("stock"))  # fmt: skip
        try:
            await self.tenants.tenant(restaurant).batch(stmts)
        except GuardFailed:
            return False
        return True

    # -- drivers -----------------------------------------------------------------------

    async def position(self, driver: str) -> tuple[Any, Any] | None:
        """The driver's position in its own DB (the freshest: GPS lands there)."""
        r = await self.tenants.tenant(driver).execute(_POSITION, [driver])
        return (r.rows[0][0], r.rows[0][1]) if r.rows else None

    async def driver_profile(self, driver: str) -> dict[str, Any] | None:
        """The payload of the driver's node in its own DB (None: no node or no payload)."""
        r = await self.tenants.tenant(driver).execute(
            "SELECT payload FROM nodes WHERE id = ? AND nodeType = 'driver'", [driver]
        )
        if r.rows and r.rows[0][0]:
            profile: dict[str, Any] = json.loads(r.rows[0][0])
            return profile
        return None

    async def claimed_for(self, order_id: str) -> DriverPoint | None:
        """The driver claimed for ``order_id``, if any."""
        r = await self.tenants.public.execute(
            "SELECT workspaceId, id, lat, lng FROM points WHERE claim = ? LIMIT 1", [order_id]
        )
        return DriverPoint(*r.rows[0]) if r.rows else None

    async def nearest_idle_driver(self, lat: float | None, lng: float | None, *,
                                  exclude: Sequence[str] = ()) -> DriverPoint | None:  # fmt: skip
        """The unclaimed idle driver nearest to (lat, lng), none of ``exclude``."""
        exclude = list(exclude)[:MAX_EXCLUDED]
        skip = f" AND workspaceId NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        r = await self.tenants.public.execute(
            "SELECT workspaceId, id, lat, lng FROM points"
            " WHERE nodeId IN (SELECT id FROM nodes WHERE nodeType = 'driver')"
            " AND openNow = true AND availability = 'idle' AND claim IS NULL"
            f" AND {_TENANT_ID_SQL}{skip}"
            " ORDER BY ABS(lat - ?) + ABS(lng - ?) LIMIT 1",
            [*exclude, lat or 0.0, lng or 0.0],
        )
        return DriverPoint(*r.rows[0]) if r.rows else None

    async def claim_idle_driver(self, order_id: str, driver: DriverPoint) -> bool:
        """Claim ``driver`` for ``order_id`` if it is still idle and unclaimed and no driver
        is claimed for the order yet: of two instances assigning one order at once, one
        claims a driver and the other finds that claim (:meth:`claimed_for`), so no claim is
        made only to be undone when the other's TASK_ASSIGN lands."""
        r = await self.tenants.public.execute(
            "UPDATE points SET openNow = false, claim = ? WHERE id = ? AND workspaceId = ?"
            " AND openNow = true AND availability = 'idle' AND claim IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM points WHERE claim = ?)",
            [order_id, driver.point_id, driver.driver, order_id],
        )
        return r.rowcount == 1

    async def start_delivery(self, driver: str, point_id: str, order_id: str, ts: str,
                             payload: Mapping[str, Any]) -> None:  # fmt: skip
        """Step 6 in the driver's DB: the delivery node, and the driver en route."""
        await self.tenants.tenant(driver).batch([
            (f"{_NODE} VALUES (?, 'delivery', ?, ?, ?)",
             [order_id, f"Delivery {order_id}", ts, json.dumps(payload)]),
            ("UPDATE points SET availability = 'en-route', openNow = false WHERE id = ?"
             " AND (availability IS NOT 'en-route' OR openNow IS NOT 0)", [point_id]),
        ])  # fmt: skip

    async def undo_claim(self, order_id: str, driver: str) -> bool:
        """Undo a Step 6 whose TASK_ASSIGN never came: the delivery node gone and the
        driver idle again in its DB (if Step 6 got that far), then the claim released and
        the driver discoverable again (the claim took an idle, discoverable driver). False
        when there was no such claim."""
        if not await self.is_claimed(order_id, driver):
            return False
        if TENANT_ID_RE.match(driver) and self.exists(driver):
            await self.tenants.tenant(driver).batch([
                ("DELETE FROM nodes WHERE id = ? AND nodeType = 'delivery'", [order_id]),
                ("UPDATE points SET availability = 'idle', openNow = true WHERE nodeId = ?"
                 " AND availability = 'en-route'", [driver]),
            ])  # fmt: skip
        r = await self.tenants.public.execute(
            "UPDATE points SET openNow = true, claim = NULL WHERE claim = ? AND workspaceId = ?",
            [order_id, driver],
        )
        return r.rowcount > 0

    async def is_claimed(self, order_id: str, driver: str) -> bool:
        """Whether ``driver`` is still claimed for ``order_id``."""
        r = await self.tenants.public.execute(
            "SELECT id FROM points WHERE claim = ? AND workspaceId = ?", [order_id, driver]
        )
        return bool(r.rows)

    async def release_driver(self, order_id: str, driver: str, lat: Any, lng: Any) -> None:
        """The driver idle at (lat, lng) in its DB, then unclaimed and discoverable again.

        Each part is a no-op when done already: two instances may both finish one release
        (a cancel, or a decline, completed on one while the other finds the claim of the
        driver taken off the order), and its driver's row is written once. A second run
        keeps his position as it is (a GPS fix may have moved it since)."""
        await self.tenants.tenant(driver).execute(
            "UPDATE points SET availability = 'idle', openNow = true, lat = ?, lng = ?"
            " WHERE nodeId = ? AND (availability IS NOT 'idle' OR openNow IS NOT 1)",
            [lat, lng, driver])  # fmt: skip
        await self.tenants.public.execute(
            "UPDATE points SET openNow = true, availability = 'idle', lat = ?, lng = ?,"
            " claim = NULL WHERE claim = ? AND workspaceId = ?",
            [lat, lng, order_id, driver],
        )

    async def driver_unreachable(self, order_id: str, driver: str) -> None:
        """A driver taken off ``order_id`` for silence: offline in its DB, then unclaimed
        and offline (not offered orders) in the public DB, until it comes online again."""
        if TENANT_ID_RE.match(driver) and self.exists(driver):
            await self.tenants.tenant(driver).execute(
                "UPDATE points SET availability = 'offline', openNow = false WHERE nodeId = ?"
                " AND (availability IS NOT 'offline' OR openNow IS NOT 0)", [driver])  # fmt: skip
        await self.tenants.public.execute(
            "UPDATE points SET openNow = false, availability = 'offline', claim = NULL"
            " WHERE claim = ? AND workspaceId = ?",
            [order_id, driver],
        )

    async def last_seen(self, driver: str) -> str | None:
        """When the driver's position last arrived (ISO 8601), if it ever did."""
        r = await self.tenants.tenant(driver).execute(
            "SELECT seenAt FROM points WHERE nodeId = ? LIMIT 1", [driver]
        )
        return r.rows[0][0] if r.rows else None

    async def claims(self) -> list[tuple[str, str]]:
        """(driver, order id) of every claimed driver (the first 1000)."""
        r = await self.tenants.public.execute(
            "SELECT workspaceId, claim FROM points WHERE claim IS NOT NULL LIMIT 1000"
        )
        return [(row[0], row[1]) for row in r.rows]

    async def driver_listing(self, driver: str) -> DriverListing | None:
        """The driver's row in the public DB."""
        r = await self.tenants.public.execute(
            "SELECT availability, openNow, lat, lng, claim FROM points WHERE workspaceId = ?"
            " LIMIT 1", [driver])  # fmt: skip
        return DriverListing(*r.rows[0]) if r.rows else None

    async def claim_of(self, driver: str) -> str | None:
        """The order ``driver`` is claimed for, if any."""
        r = await self.tenants.public.execute(
            "SELECT claim FROM points WHERE workspaceId = ? AND claim IS NOT NULL", [driver]
        )
        return r.rows[0][0] if r.rows else None

    async def driver_point_id(self, driver: str) -> str | None:
        """The id of the driver's point in its own DB, if it has one."""
        r = await self.tenants.tenant(driver).execute(
            "SELECT id FROM points WHERE nodeId = ? LIMIT 1", [driver]
        )
        return r.rows[0][0] if r.rows else None

    async def driver_online(self, driver: str, point_id: str, title: str, ts: str,
                            payload: Mapping[str, Any], lat: float,
                            lng: float) -> None:  # fmt: skip
        """The driver idle at (lat, lng): in its DB, then in the public DB (unless claimed)."""
        node = [driver, "driver", title, ts, json.dumps(payload)]
        await self.tenants.tenant(driver).batch([
            (f"{_NODE} VALUES (?, ?, ?, ?, ?)", node),
            ("INSERT INTO points (id, nodeId, availability, lat, lng, openNow)"
             " VALUES (?, ?, 'idle', ?, ?, true) ON CONFLICT (id) DO UPDATE SET"
             " availability = 'idle', openNow = true, lat = excluded.lat, lng = excluded.lng",
             [point_id, driver, lat, lng]),
        ])  # fmt: skip
        await self.tenants.public.batch([
            ("INSERT OR IGNORE INTO nodes (id, workspaceId, nodeType, title, createdAt,"
             " payload) VALUES (?, ?, ?, ?, ?, ?)", [driver, driver, *node[1:]]),
            ("INSERT INTO points (id, workspaceId, nodeId, availability, lat, lng, openNow)"
             " VALUES (?, ?, ?, 'idle', ?, ?, true) ON CONFLICT (workspaceId, id) DO UPDATE"
             " SET availability = 'idle', openNow = true, lat = excluded.lat,"
             " lng = excluded.lng WHERE claim IS NULL", [point_id, driver, driver, lat, lng]),
        ])  # fmt: skip

    async def driver_offline(self, driver: str, point_id: str) -> None:
        """The driver offline: in its DB, then in the public DB (unless claimed)."""
        await self.tenants.tenant(driver).execute(
            "UPDATE points SET availability = 'offline', openNow = false WHERE id = ?",
            [point_id],
        )
        await self.tenants.public.execute(
            "UPDATE points SET availability = 'offline', openNow = false"
            " WHERE workspaceId = ? AND id = ? AND claim IS NULL",
            [driver, point_id],
        )
