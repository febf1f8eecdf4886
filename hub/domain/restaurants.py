"""Menus, restaurant status and tenants as data (docs/protocol.md §4.5).

- :meth:`Restaurants.create_tenant` (``POST /api/tenants``) writes a tenant's own rows: a
  restaurant's node and location point (open), a customer's node, a driver's node and point
  (offline until the driver comes online through ``POST /api/drivers/status``). The same
  tenant again with the same content writes nothing; with other content it is 409.
- :meth:`Restaurants.put_product` (``PUT /api/restaurants/{tenant}/menu/{productId}``)
  creates a product (its node under the restaurant's menu and its stock point) or changes
  what is given of one; :meth:`Restaurants.set_open` opens or closes the restaurant.
- :func:`restaurant_terms` is what an order needs of its restaurant: whether it is open
  and the currency it prices in.

``hub seed`` (:mod:`hub.domain.seed`) goes through the same two methods, passing the seed's
ids where the API derives them: a tenant's node is the tenant id (a customer's and a
driver's always are; the seed's restaurant is ``rest-01``), a location point is
``pt-<tenant>-loc`` (the seed's restaurant: ``pt-rest-loc``) and a product's point
``pt-<productId>`` (the seed's: ``pt-shw``, ``pt-lbn``).

Where the data lives, in the seed's columns: a restaurant's open state is its location
point's ``availability`` (``open``/``closed``) and ``openNow``; its currency is its node
payload's ``currency``, left out when it is :data:`DEFAULT_CURRENCY` (the seed's Bab Al Hara,
whose Step 0 row has no currency), and each product point's ``currency`` column. A
product's ``openNow`` says whether it is in stock.

Every check is made before anything is written, and asking about a tenant that has no
database never creates one.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hub.domain.auth import Principal, Role
from hub.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable, Unprocessable
from hub.events import REF_MAX, STREAM_ID_RE, check_tenant_id, now_ts
from hub.infra.menudb import (
    MenuDb,
    NewNode,
    NewPoint,
    ProductState,
    RestaurantState,
    RootRow,
)
from hub.infra.orderdb import OrderDb
from hub.infra.tenants import Tenants
from hub.timing import KeyedLocks

__all__ = [
    "AVAILABILITIES",
    "CURRENCIES",
    "DEFAULT_CURRENCY",
    "DEFAULT_VEHICLE",
    "MENU_ID",
    "PRICE_MAX",
    "QTY_MAX",
    "ROLES",
    "ProductChange",
    "Restaurants",
    "TenantSpec",
    "check_currency",
    "check_manages",
    "check_platform",
    "check_price",
    "check_product_id",
    "order_currency",
    "product_view",
    "restaurant_terms",
]

DEFAULT_CURRENCY = "AED"  # the seed's; a restaurant whose node names no currency prices in it
DEFAULT_VEHICLE = "Motorcycle"  # a driver that names none (the seed's Rami rides one)
MENU_ID = "menu-01"  # the parentId of a restaurant's products (the seed's)
ROLES = ("restaurant", "customer", "driver")  # the tenants POST /api/tenants creates
AVAILABILITIES = ("in-stock", "out-of-stock")  # a product's
PRICE_MAX = 1_000_000  # of one product
QTY_MAX = 1_000_000  # a product's stock
WRITE_ATTEMPTS = 4  # reads of a product when another writer creates it meanwhile

# ISO 4217 (list one) codes of the currencies in use: not the fund codes (BOV, CHE, ...),
# precious metals (XAU, ...), bond-market units, XDR, the testing code XTS or XXX.
CURRENCIES = frozenset((
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM",
    "BBD", "BDT", "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN",
    "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK",
    "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD",
    "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK",
    "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK",
    "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU",
    "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR",
    "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR",
    "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
    "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD",
    "UYU", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER",
    "ZAR", "ZMW", "ZWG",
))  # fmt: skip


# -- what the requests ask ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant to create (``POST /api/tenants``'s body, parsed).

    ``node_id``, ``point_id``: None derives them (the tenant id; ``pt-<tenant>-loc``).
    ``idle``: a driver idle and listed in the public DB at once (the seed's Rami), instead
    of offline until he comes online. ``created``: the nodes' ``createdAt`` (None: now).
    """

    tenant: str
    role: str
    name: str
    lat: float
    lng: float
    address: str | None = None
    currency: str | None = None
    vehicle: str | None = None
    node_id: str | None = None
    point_id: str | None = None
    idle: bool = False
    created: str | None = None


@dataclass(frozen=True, slots=True)
class ProductChange:
    """What ``PUT .../menu/{productId}`` sets; None leaves a field as it is (a new product
    needs ``title`` and ``price``; its ``qty`` is 0 and ``availability`` in-stock unless
    given). ``qty`` is the stock, set as it is given (not added)."""

    title: str | None = None
    desc: str | None = None
    price: float | None = None
    qty: int | None = None
    availability: str | None = None


# -- rules ----------------------------------------------------------------------------------


def check_platform(who: Principal) -> None:
    """403 unless ``who`` is the platform."""
    if not who.is_platform:
        raise Forbidden("only the platform creates tenants")


def check_manages(who: Principal, restaurant: str) -> None:
    """403 unless ``who`` is ``restaurant`` itself (its restaurant token) or the platform."""
    if not who.is_platform and not (who.role is Role.RESTAURANT and who.tenant == restaurant):
        raise Forbidden("only the restaurant itself (or the platform) changes its menu")


def check_currency(code: object) -> str:
    """``code`` if it is a currency of :data:`CURRENCIES`, else 422 ``unknown_currency``."""
    if isinstance(code, str) and code in CURRENCIES:
        return code
    raise Unprocessable(f"unknown currency {code!r}: an ISO 4217 code such as AED",
                        code="unknown_currency")  # fmt: skip


def check_product_id(product_id: object) -> str:
    """``product_id`` if it is a product id (a stream id's pattern), else 400."""
    if isinstance(product_id, str) and STREAM_ID_RE.match(product_id):
        return product_id
    raise BadRequest("invalid product id", code="invalid_product_id")


def check_price(price: float) -> float:
    """A price in 0..PRICE_MAX with at most 2 decimals (422 otherwise: a price is money and
    is kept as the restaurant gave it, never rounded)."""
    if (isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price)
            or not 0 <= price <= PRICE_MAX):  # fmt: skip
        raise Unprocessable(f"price must be a number in 0..{PRICE_MAX}", code="invalid_body")
    if abs(price * 100 - round(price * 100)) > 1e-6:
        raise Unprocessable("price must have at most 2 decimals", code="invalid_body")
    return float(price)


def _check_change(change: ProductChange) -> None:
    if change.price is not None:
        check_price(change.price)
    if change.qty is not None and (isinstance(change.qty, bool) or not 0 <= change.qty <= QTY_MAX):
        raise Unprocessable(f"qty must be an integer in 0..{QTY_MAX}", code="invalid_body")
    if change.availability is not None and change.availability not in AVAILABILITIES:
        raise Unprocessable("availability must be 'in-stock' or 'out-of-stock'",
                            code="invalid_body")  # fmt: skip
    for name in ("title", "desc"):
        value = getattr(change, name)
        if value is not None and not value.strip():
            raise Unprocessable(f"{name} must not be blank", code="invalid_body")


def _check_spec(spec: TenantSpec) -> TenantSpec:
    """The spec with its defaults, or the refusal of its first fault."""
    check_tenant_id(spec.tenant)
    if spec.role not in ROLES:
        raise Unprocessable("role must be 'restaurant', 'customer' or 'driver'",
                            code="invalid_body")  # fmt: skip
    if not spec.name.strip():
        raise Unprocessable("name must not be blank", code="invalid_body")
    for name, value, limit in (("lat", spec.lat, 90), ("lng", spec.lng, 180)):
        if not (math.isfinite(value) and -limit <= value <= limit):
            raise Unprocessable(f"{name} out of range", code="invalid_body")
    if spec.role in ("restaurant", "customer") and not spec.address:
        raise Unprocessable(f"a {spec.role} needs an address", code="invalid_body")
    if spec.role == "restaurant" and spec.currency is None:
        raise Unprocessable("a restaurant needs a currency", code="invalid_body")
    if spec.currency is not None:
        check_currency(spec.currency)
    if spec.role == "driver":
        # A driver has a vehicle; an address or a currency would be stored nowhere.
        return replace(spec, vehicle=spec.vehicle or DEFAULT_VEHICLE, address=None,
                       currency=None)  # fmt: skip
    return replace(spec, vehicle=None)


def is_open(availability: Any, open_now: Any) -> bool:
    """A location point's open state (a restaurant without one is open)."""
    return availability != "closed" and (open_now is None or bool(open_now))


def currency_of(payload: Mapping[str, Any]) -> str:
    """The currency a restaurant node's payload names, else :data:`DEFAULT_CURRENCY`."""
    currency = payload.get("currency")
    return currency if isinstance(currency, str) and currency else DEFAULT_CURRENCY


def product_view(row: Sequence[Any]) -> dict[str, Any]:
    """A product as ``GET /api/restaurants/{tenant}`` lists it, from the columns of
    :meth:`~hub.infra.menudb.MenuDb.product_rows`."""
    pid, title, payload, point_id, qty, price, currency, availability = row
    desc = json.loads(payload or "{}").get("desc")
    stock = int(qty) if qty is not None and float(qty).is_integer() else qty
    return {"productId": pid, "title": title, "desc": desc, "pointId": point_id,
            "stock": stock, "price": price, "currency": currency,
            "availability": availability}  # fmt: skip


def _tenant_node(spec: TenantSpec) -> dict[str, Any]:
    """The payload of a tenant's own node."""
    if spec.role == "restaurant":
        payload: dict[str, Any] = {"address": spec.address}
        if spec.currency != DEFAULT_CURRENCY:
            payload["currency"] = spec.currency
        return payload
    if spec.role == "customer":
        payload = {"address": spec.address, "lat": spec.lat, "lng": spec.lng}
        if spec.currency is not None:
            payload["currency"] = spec.currency
        return payload
    return {"vehicle": spec.vehicle}


def _differences(spec: TenantSpec, root: RootRow) -> list[str]:
    """What of ``spec`` the tenant's stored node says otherwise (a driver's position is
    not compared: it moves)."""
    found: list[str] = []
    if root.title != spec.name:
        found.append("name")
    p = root.payload
    if spec.role == "restaurant":
        if p.get("address") != spec.address:
            found.append("address")
        if currency_of(p) != spec.currency:
            found.append("currency")
        if root.point_id is not None and (root.lat, root.lng) != (spec.lat, spec.lng):
            found.append("lat/lng")
    elif spec.role == "customer":
        if p.get("address") != spec.address:
            found.append("address")
        if (p.get("lat"), p.get("lng")) != (spec.lat, spec.lng):
            found.append("lat/lng")
        if p.get("currency") != spec.currency:
            found.append("currency")
    elif p.get("vehicle", DEFAULT_VEHICLE) != spec.vehicle:
        found.append("vehicle")
    return found


def _tenant_view(spec: TenantSpec, node_id: str, point_id: str | None, lat: Any = None,
                 lng: Any = None) -> dict[str, Any]:  # fmt: skip
    """``POST /api/tenants``'s answer."""
    where = (spec.lat, spec.lng) if lat is None else (lat, lng)
    return {"id": spec.tenant, "role": spec.role, "name": spec.name, "lat": where[0],
            "lng": where[1], "address": spec.address, "currency": spec.currency,
            "vehicle": spec.vehicle, "nodeId": node_id, "pointId": point_id}  # fmt: skip


async def restaurant_terms(db: OrderDb | Tenants, restaurant: str) -> tuple[bool, str]:
    """(open, currency) of ``restaurant``: whether it takes orders now, and the currency it
    prices in. 422 ``unknown_restaurant`` when it has no database or no restaurant node
    (asking never creates a database)."""
    menu = MenuDb(db.tenants if isinstance(db, OrderDb) else db)
    state = await menu.restaurant(restaurant) if menu.exists(restaurant) else None
    if state is None:
        raise Unprocessable(f"unknown restaurant {restaurant!r}", code="unknown_restaurant")
    return is_open(state.availability, state.open_now), currency_of(state.payload)


async def order_currency(db: OrderDb | Tenants, restaurant: str) -> str:
    """The currency of an order placed now with ``restaurant``; 409 ``restaurant_closed``
    when it is closed (422 ``unknown_restaurant`` as :func:`restaurant_terms`)."""
    open_now, currency = await restaurant_terms(db, restaurant)
    if not open_now:
        raise Conflict(f"{restaurant} is closed", code="restaurant_closed")
    return currency


# -- the service ---------------------------------------------------------------------------


class Restaurants:
    """Tenants, menus and restaurant status, over the tenant DBs (and the public DB)."""

    def __init__(self, tenants: Tenants) -> None:
        self.db = MenuDb(tenants)
        self._tenant_locks: KeyedLocks[str] = KeyedLocks()  # one creation per tenant id
        self._product_locks: KeyedLocks[tuple[str, str]] = KeyedLocks()  # one write each

    async def _restaurant(self, restaurant: str) -> RestaurantState:
        """The restaurant's state; 404 when it has no database or no restaurant node."""
        state = await self.db.restaurant(restaurant) if self.db.exists(restaurant) else None
        if state is None:
            raise NotFound("no such restaurant")
        return state

    # -- tenants ---------------------------------------------------------------------------

    async def create_tenant(self, spec: TenantSpec) -> tuple[dict[str, Any], bool]:
        """Create the tenant's database and its own rows: (the tenant, whether it was
        created now). The same tenant again writes nothing (rows a crash left out are
        written); another tenant under the same id is 409 ``tenant_exists``."""
        spec = _check_spec(spec)
        tenant = spec.tenant
        async with self._tenant_locks(tenant):
            for _ in range(WRITE_ATTEMPTS):
                root = await self._existing(spec)
                if root is not None:
                    return await self._complete(spec, root), False
                node, point = self._rows(spec)
                if await self.db.insert_root(tenant, node, point):
                    if spec.idle and point is not None:
                        await self.db.list_driver(tenant, node, point)
                    return _tenant_view(spec, node.id, point.id if point else None), True
            raise Unavailable("the tenant kept changing; retry")

    async def _existing(self, spec: TenantSpec) -> RootRow | None:
        """The tenant's node if it is ``spec``'s; 409 if it is another's; None if none."""
        roots = await self.db.roots(spec.tenant)
        if not roots:
            return None
        mine = [r for r in roots if r.node_type == spec.role]
        if not mine:
            raise Conflict(f"tenant {spec.tenant} exists as a {roots[0].node_type}",
                           code="tenant_exists")  # fmt: skip
        wanted = spec.node_id or spec.tenant
        root = next((r for r in mine if r.node_id == wanted), mine[0])
        differ = _differences(spec, root)
        if differ:
            raise Conflict(f"tenant {spec.tenant} exists with another {', '.join(differ)}",
                           code="tenant_exists")  # fmt: skip
        return root

    def _rows(self, spec: TenantSpec) -> tuple[NewNode, NewPoint | None]:
        node_id = spec.node_id or spec.tenant
        node = NewNode(node_id, None, spec.role, spec.name, spec.created or now_ts(),
                       _tenant_node(spec))  # fmt: skip
        if spec.role == "customer":
            return node, None
        return node, self._point(spec, node_id, spec.point_id or f"pt-{spec.tenant}-loc")

    @staticmethod
    def _point(spec: TenantSpec, node_id: str, point_id: str) -> NewPoint:
        if spec.role == "restaurant":
            return NewPoint(point_id, node_id, None, None, None, "open", spec.lat, spec.lng, True)
        if spec.idle:
            return NewPoint(point_id, node_id, None, None, None, "idle", spec.lat, spec.lng, True)
        return NewPoint(point_id, node_id, None, None, None, "offline", spec.lat, spec.lng,
                        False)  # fmt: skip

    async def _complete(self, spec: TenantSpec, root: RootRow) -> dict[str, Any]:
        """The same tenant again: the rows its creation writes that are missing (a crash
        part-way, or a node written before this API), none of those that are there."""
        point_id, lat, lng = root.point_id, root.lat, root.lng
        if spec.role != "customer" and point_id is None:
            point_id = spec.point_id or f"pt-{spec.tenant}-loc"
            point = self._point(spec, root.node_id, point_id)
            await self.db.insert_point(spec.tenant, point)
            lat, lng = spec.lat, spec.lng
        if spec.idle and point_id is not None:
            node = NewNode(root.node_id, None, spec.role, spec.name,
                           spec.created or now_ts(), _tenant_node(spec))  # fmt: skip
            await self.db.list_driver(spec.tenant, node, self._point(spec, root.node_id,
                                                                     point_id))  # fmt: skip
        if spec.role == "customer":
            lat, lng = root.payload.get("lat", spec.lat), root.payload.get("lng", spec.lng)
        return _tenant_view(spec, root.node_id, point_id, lat, lng)

    # -- restaurants -----------------------------------------------------------------------

    async def set_open(self, restaurant: str, open_now: bool) -> dict[str, Any]:
        """Open or close the restaurant (its location point); 404 when there is none."""
        check_tenant_id(restaurant)
        state = await self._restaurant(restaurant)
        if state.point_id is None:  # a restaurant node written without a location point
            point_id = await self._free_point_id(restaurant, f"pt-{restaurant}-loc")
            await self.db.insert_point(restaurant, NewPoint(
                point_id, state.node_id, None, None, None, "open" if open_now else "closed",
                None, None, open_now))  # fmt: skip
        else:
            await self.db.set_open(restaurant, state.point_id, open_now)
        return {"restaurant": restaurant, "open": open_now}

    async def put_product(
        self,
        restaurant: str,
        product_id: str,
        change: ProductChange,
        *,
        point_id: str | None = None,
        parent: str = MENU_ID,
        created: str | None = None,
        create_only: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Create or change a product of ``restaurant``'s menu: (the product as the menu
        lists it, whether it was created now). ``point_id``: its point's id when it is
        created (None: ``pt-<productId>``, or a drawn one when that is taken).
        ``create_only``: a product that exists is left as it is (``hub seed``)."""
        check_tenant_id(restaurant)
        check_product_id(product_id)
        _check_change(change)
        state = await self._restaurant(restaurant)
        async with self._product_locks((restaurant, product_id)):
            for _ in range(WRITE_ATTEMPTS):
                outcome = await self._write_product(
                    restaurant, product_id, change, state, point_id, parent, created, create_only
                )
                if outcome is not None:
                    break
            else:
                raise Unavailable("the product kept changing; retry")
        row = await self.db.product_rows(restaurant, product_id)
        if row is None:  # removed by hand meanwhile
            raise Unavailable("the product changed meanwhile; retry")
        return product_view(row), outcome == "created"

    async def _write_product(
        self,
        restaurant: str,
        product_id: str,
        change: ProductChange,
        state: RestaurantState,
        point_id: str | None,
        parent: str,
        created: str | None,
        create_only: bool,
    ) -> str | None:
        """One attempt of :meth:`put_product`: ``created``, ``changed`` (or left as it
        was), or None when the product changed meanwhile and must be read again."""
        found = await self.db.product(restaurant, product_id)
        if found is not None and found.node_type != "product":
            raise Conflict(
                f"{product_id} is a {found.node_type}, not a product", code="not_a_product"
            )
        if found is None or found.point_id is None:
            if change.price is None or (found is None and change.title is None):
                raise Unprocessable("a new product needs a title and a price", code="invalid_body")
            pid = point_id or await self._free_point_id(restaurant, f"pt-{product_id}")
            point = self._product_point(pid, product_id, change, state)
            if found is not None:  # a product node written without a point: its point now
                await self.db.insert_point(restaurant, point)
                return None  # read it again, with its point
            node = NewNode(
                product_id,
                parent,
                "product",
                change.title or product_id,
                created or now_ts(),
                {"desc": change.desc} if change.desc is not None else {},
            )
            # False: created meanwhile, or its point id taken: read again.
            return "created" if await self.db.insert_product(restaurant, node, point) else None
        if not create_only:
            await self._update(restaurant, product_id, change, found)
        return "changed"

    @staticmethod
    def _product_point(point_id: str, product_id: str, change: ProductChange,
                       state: RestaurantState) -> NewPoint:  # fmt: skip
        availability = change.availability or "in-stock"
        return NewPoint(point_id, product_id, change.qty or 0, change.price,
                        currency_of(state.payload), availability, None, None,
                        availability == "in-stock")  # fmt: skip

    async def _update(self, restaurant: str, product_id: str, change: ProductChange,
                      found: ProductState) -> None:  # fmt: skip
        """Write what ``change`` changes of the product (nothing when it changes nothing)."""
        title = change.title if change.title is not None else found.title
        payload = dict(found.payload)
        if change.desc is not None:
            payload["desc"] = change.desc
        node = (title, payload) if (title, payload) != (found.title, found.payload) else None
        point: dict[str, Any] = {}
        if change.qty is not None and change.qty != found.qty:
            point["qty"] = change.qty
        if change.price is not None and change.price != found.price:
            point["price"] = change.price
        if change.availability is not None:
            if change.availability != found.availability:
                point["availability"] = change.availability
            in_stock = change.availability == "in-stock"
            if found.open_now is None or bool(found.open_now) != in_stock:
                point["openNow"] = in_stock
        await self.db.update_product(restaurant, product_id, node, found.point_id, point)

    async def _free_point_id(self, tenant: str, wanted: str) -> str:
        """``wanted`` if no point of the tenant's DB has that id (and it is short enough for
        an event's pointId), else a drawn one."""
        if len(wanted) <= REF_MAX and await self.db.point_owner(tenant, wanted) is None:
            return wanted
        return f"pt-{secrets.token_hex(8)}"
