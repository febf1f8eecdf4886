"""Menus, restaurant status and tenants as data (docs/protocol.md §4.5) against a real hub.

A platform creates a restaurant and a customer through ``POST /api/tenants``, the restaurant
puts its menu with ``PUT /api/restaurants/{tenant}/menu/{productId}`` and opens or closes
with ``POST /api/restaurants/{tenant}/status``, and the customer orders from it: the order is
priced from that menu in the restaurant's currency. Every refusal writes nothing (the
``hub_db_writes_total`` counters and every row of every database stay as they were), and
``hub seed`` goes through the same code and still writes exactly the seed's Step 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, auth, parse_metrics, timeout
from tests.test_orders import rows, run_seed, snapshot, tenant_db, write_sql

Json = dict[str, Any]

PLATFORM = auth("ops", "platform")
TARGETS = ("streams", "tenant", "public")
ZERO = dict.fromkeys(TARGETS, 0)
ZAATAR = {"id": "zaatar", "role": "restaurant", "name": "Zaatar w Zeit", "lat": 33.8938,
          "lng": 35.5018, "address": "Hamra, Beirut", "currency": "USD"}  # fmt: skip
SARA = {"id": "sara", "role": "customer", "name": "Sara", "lat": 33.8886, "lng": 35.4955,
        "address": "Verdun, Beirut"}  # fmt: skip
MANOUSHE = {"title": "Manoushe Zaatar", "desc": "Thyme flatbread", "price": 3.5, "qty": 40}
AYRAN = {"title": "Ayran", "price": 1.25, "qty": 10, "availability": "in-stock"}


# -- a hub, a client, what it wrote ------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One hub on an empty data dir (no seed): every tenant here is made through the API."""
    hub = HubProcess(tmp_path_factory.mktemp("restaurants") / "data").start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def c(shared: HubProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared.url, timeout=timeout(30), trust_env=False) as client:
        yield client


def writes(c: httpx.Client) -> dict[str, float]:
    m = parse_metrics(c.get("/metrics").text)
    return {t: m.get(f'hub_db_writes_total{{target="{t}"}}', 0.0) for t in TARGETS}


class Written:
    """``with Written(c) as w:`` then ``w.rows``: the rows written meanwhile, by target."""

    def __init__(self, c: httpx.Client) -> None:
        self.c = c
        self.rows: dict[str, int] = {}

    def __enter__(self) -> Written:
        self.before = writes(self.c)
        return self

    def __exit__(self, *exc: object) -> None:
        after = writes(self.c)
        self.rows = {t: round(after[t] - self.before[t]) for t in TARGETS}


def ok(r: httpx.Response, status: int | None) -> Json:
    assert r.status_code == status, (r.status_code, r.text)
    body: Json = r.json()
    return body


def refused(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"], body
    assert set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body


def create_tenant(c: httpx.Client, body: Json, status: int | None = 201) -> Json:
    """``POST /api/tenants`` as the platform; ``status`` None: 201 or 200."""
    r = c.post("/api/tenants", json=body, headers=PLATFORM)
    return ok(r, r.status_code if status is None and r.status_code in (200, 201) else status)


def put(c: httpx.Client, tenant: str, product: str, body: Any, who: dict[str, str],
        status: int) -> Json:  # fmt: skip
    r = c.put(f"/api/restaurants/{tenant}/menu/{product}", json=body, headers=who)
    return ok(r, status)


def set_open(c: httpx.Client, tenant: str, is_open: bool) -> Json:
    r = c.post(f"/api/restaurants/{tenant}/status", json={"open": is_open}, headers=PLATFORM)
    return ok(r, 200)


def menu(c: httpx.Client, tenant: str) -> Json:
    return ok(c.get(f"/api/restaurants/{tenant}", headers=auth("sara", "customer")), 200)


def order(tenant: str, *items: tuple[str, int]) -> Json:
    return {"restaurant": tenant, "items": [{"productId": p, "qty": q} for p, q in items],
            "deliveryAddress": "Verdun, Beirut"}  # fmt: skip


def restaurant(c: httpx.Client, tenant: str, currency: str = "USD") -> None:
    """A restaurant ``tenant`` (open) with the two products, and the customer Sara."""
    create_tenant(c, {**ZAATAR, "id": tenant, "currency": currency})
    create_tenant(c, SARA, None)  # 201 the first time, 200 after
    kitchen = auth(tenant, "restaurant")
    put(c, tenant, "manoushe", MANOUSHE, kitchen, 201)
    put(c, tenant, "ayran", AYRAN, kitchen, 201)


# -- 1. a restaurant made through the API takes orders -------------------------------------


def test_a_restaurant_made_through_the_api_takes_orders_from_its_menu(
    shared: HubProcess, c: httpx.Client
) -> None:
    """Tenants, menu, open: each call writes what §4.5 says, and the menu is the orders'."""
    data = shared.data_dir
    with Written(c) as w:
        made = create_tenant(c, ZAATAR)
    assert w.rows == {"streams": 0, "tenant": 2, "public": 0}  # node + location point
    assert made == {**ZAATAR, "vehicle": None, "nodeId": "zaatar", "pointId": "pt-zaatar-loc"}
    with Written(c) as w:
        assert create_tenant(c, ZAATAR, 200) == made  # the same again: nothing written
    assert w.rows == ZERO
    with Written(c) as w:
        customer = create_tenant(c, {**SARA, "id": "rania", "name": "Rania"})
    assert w.rows == {"streams": 0, "tenant": 1, "public": 0}  # the customer's node
    assert (customer["nodeId"], customer["pointId"], customer["currency"]) == ("rania", None, None)
    assert rows(tenant_db(data, "rania"), "SELECT id, nodeType, title, payload FROM nodes") == [
        ("rania", "customer", "Rania",
         '{"address": "Verdun, Beirut", "lat": 33.8886, "lng": 35.4955}')]  # fmt: skip

    kitchen = auth("zaatar", "restaurant")
    with Written(c) as w:
        manoushe = put(c, "zaatar", "manoushe", MANOUSHE, kitchen, 201)
    assert w.rows == {"streams": 0, "tenant": 2, "public": 0}  # product node + stock point
    assert manoushe == {"productId": "manoushe", "title": "Manoushe Zaatar",
                        "desc": "Thyme flatbread", "pointId": "pt-manoushe", "stock": 40,
                        "price": 3.5, "currency": "USD", "availability": "in-stock"}  # fmt: skip
    ayran = put(c, "zaatar", "ayran", AYRAN, PLATFORM, 201)  # the platform may too
    with Written(c) as w:
        assert put(c, "zaatar", "manoushe", MANOUSHE, kitchen, 200) == manoushe
    assert w.rows == ZERO  # as it is already
    with Written(c) as w:
        assert set_open(c, "zaatar", True) == {"restaurant": "zaatar", "open": True}
    assert w.rows == ZERO  # open already

    shown = menu(c, "zaatar")
    assert (shown["nodeId"], shown["name"], shown["address"]) == ("zaatar", "Zaatar w Zeit",
                                                                  "Hamra, Beirut")  # fmt: skip
    assert shown["location"] == {"lat": 33.8938, "lng": 35.5018}
    assert (shown["open"], shown["currency"]) == (True, "USD")
    assert sorted(shown["products"], key=lambda p: p["productId"]) == [ayran, manoushe]

    # The database has the seed's columns.
    db = tenant_db(data, "zaatar")
    assert rows(db, "SELECT id, parentId, nodeType, title, payload FROM nodes ORDER BY id") == [
        ("ayran", "menu-01", "product", "Ayran", "{}"),
        ("manoushe", "menu-01", "product", "Manoushe Zaatar", '{"desc": "Thyme flatbread"}'),
        ("zaatar", None, "restaurant", "Zaatar w Zeit",
         '{"address": "Hamra, Beirut", "currency": "USD"}'),
    ]  # fmt: skip
    columns = "id, nodeId, qty, price, currency, availability, lat, lng, openNow, applied"
    assert rows(db, f"SELECT {columns} FROM points ORDER BY id") == [
        ("pt-ayran", "ayran", 10, 1.25, "USD", "in-stock", None, None, 1, None),
        ("pt-manoushe", "manoushe", 40, 3.5, "USD", "in-stock", None, None, 1, None),
        ("pt-zaatar-loc", "zaatar", None, None, None, "open", 33.8938, 35.5018, 1, None),
    ]

    # Rania orders: priced from the menu (plus the delivery fee), in the restaurant's currency.
    with Written(c) as w:
        r = c.post("/api/orders", json=order("zaatar", ("manoushe", 2), ("ayran", 3)),
                   headers=auth("rania", "customer"))  # fmt: skip
    placed = ok(r, 201)
    assert w.rows == {"streams": 1, "tenant": 2, "public": 0}
    assert placed["total"] == 2 * 3.5 + 3 * 1.25 + 5.00
    assert [(i["productId"], i["qty"], i["price"]) for i in placed["events"][0]["payload"]
            ["items"]] == [("manoushe", 2, 3.5), ("ayran", 3, 1.25)]  # fmt: skip
    assert placed["currency"] == "USD"


def test_menu_updates_change_what_is_given_and_keep_the_stock_bookkeeping(
    shared: HubProcess, c: httpx.Client
) -> None:
    """A partial update writes only what changes; qty is set, not added; ``applied`` (the
    orders whose stock was taken) stays; out of stock, the order is 409 and writes nothing."""
    data = shared.data_dir
    restaurant(c, "upd-rest")
    kitchen = auth("upd-rest", "restaurant")
    db = tenant_db(data, "upd-rest")
    write_sql(db, ("UPDATE points SET applied = ? WHERE id = 'pt-manoushe'", ('["ord-1"]',)))

    with Written(c) as w:
        got = put(c, "upd-rest", "manoushe", {"qty": 7}, kitchen, 200)
    assert w.rows == {"streams": 0, "tenant": 1, "public": 0}
    assert (got["stock"], got["price"], got["title"]) == (7, 3.5, "Manoushe Zaatar")
    with Written(c) as w:
        got = put(c, "upd-rest", "manoushe", {"desc": "With olive oil", "price": 4}, kitchen, 200)
    assert w.rows == {"streams": 0, "tenant": 2, "public": 0}  # the node and the point
    assert (got["desc"], got["price"], got["stock"]) == ("With olive oil", 4.0, 7)
    assert rows(db, "SELECT qty, applied FROM points WHERE id = 'pt-manoushe'") == [
        (7, '["ord-1"]')]  # fmt: skip

    with Written(c) as w:
        got = put(c, "upd-rest", "ayran", {"availability": "out-of-stock"}, kitchen, 200)
    assert w.rows == {"streams": 0, "tenant": 1, "public": 0}
    assert (got["availability"], got["stock"]) == ("out-of-stock", 10)
    assert rows(db, "SELECT availability, openNow FROM points WHERE id = 'pt-ayran'") == [
        ("out-of-stock", 0)]  # fmt: skip

    sara = auth("sara", "customer")
    before = snapshot(data)
    for items, what in (((("ayran", 1),), "out of stock"), ((("manoushe", 8),), "only 7")):
        with Written(c) as w:
            r = c.post("/api/orders", json=order("upd-rest", *items), headers=sara)
        refused(r, 409, "out_of_stock")
        assert w.rows == ZERO, what
    assert snapshot(data) == before

    put(c, "upd-rest", "ayran", {"availability": "in-stock"}, kitchen, 200)
    ok(c.post("/api/orders", json=order("upd-rest", ("ayran", 1)), headers=sara), 201)


def test_a_closed_restaurant_takes_no_orders(shared: HubProcess, c: httpx.Client) -> None:
    """Closed: the menu says so and an order is 409 ``restaurant_closed``, nothing written;
    open again, it takes orders."""
    data = shared.data_dir
    restaurant(c, "shut-rest")
    kitchen = auth("shut-rest", "restaurant")
    with Written(c) as w:
        r = c.post("/api/restaurants/shut-rest/status", json={"open": False}, headers=kitchen)
    assert ok(r, 200) == {"restaurant": "shut-rest", "open": False}
    assert w.rows == {"streams": 0, "tenant": 1, "public": 0}  # its location point
    assert rows(tenant_db(data, "shut-rest"),
                "SELECT availability, openNow FROM points WHERE id = 'pt-shut-rest-loc'") == [
        ("closed", 0)]  # fmt: skip
    assert menu(c, "shut-rest")["open"] is False

    sara = auth("sara", "customer")
    before = snapshot(data)
    with Written(c) as w:
        r = c.post("/api/orders", json=order("shut-rest", ("manoushe", 1)), headers=sara)
    refused(r, 409, "restaurant_closed")
    assert w.rows == ZERO
    assert snapshot(data) == before

    set_open(c, "shut-rest", True)
    assert menu(c, "shut-rest")["open"] is True
    ok(c.post("/api/orders", json=order("shut-rest", ("manoushe", 1)), headers=sara), 201)


def test_a_driver_made_through_the_api_is_offline_until_he_comes_online(
    shared: HubProcess, c: httpx.Client
) -> None:
    """A driver's node (vehicle) and point, offline and not in the public DB; then online."""
    data = shared.data_dir
    with Written(c) as w:
        made = create_tenant(c, {"id": "nadim", "role": "driver", "name": "Nadim",
                                 "lat": 33.89, "lng": 35.50})  # fmt: skip
    assert w.rows == {"streams": 0, "tenant": 2, "public": 0}
    assert (made["vehicle"], made["pointId"], made["address"]) == ("Motorcycle", "pt-nadim-loc",
                                                                   None)  # fmt: skip
    nadim = auth("nadim", "driver")
    assert ok(c.get("/api/drivers/me", headers=nadim), 200)["status"] == "offline"
    assert rows(tenant_db(data, "nadim"), "SELECT id, availability, openNow FROM points") == [
        ("pt-nadim-loc", "offline", 0)]  # fmt: skip
    assert rows(data / "public.db", "SELECT id FROM points WHERE workspaceId = 'nadim'") == []
    r = c.post("/api/drivers/status", json={"status": "online", "lat": 33.9, "lng": 35.5},
               headers=nadim)  # fmt: skip
    assert ok(r, 200)["pointId"] == "pt-nadim-loc"
    assert ok(c.get("/api/drivers/me", headers=nadim), 200)["status"] == "online"
    # The same tenant again, where he is now: the same driver (his position is not compared).
    with Written(c) as w:
        again = create_tenant(c, {"id": "nadim", "role": "driver", "name": "Nadim", "lat": 1,
                                  "lng": 2, "vehicle": "Motorcycle"}, 200)  # fmt: skip
    assert w.rows == ZERO
    assert (again["lat"], again["lng"]) == (33.9, 35.5)


# -- 2. refusals write nothing -------------------------------------------------------------


@pytest.fixture(scope="module")
def refusals(shared: HubProcess) -> HubProcess:
    """``ref-rest`` with its menu, and the customer Sara."""
    with httpx.Client(base_url=shared.url, timeout=timeout(30), trust_env=False) as c:
        restaurant(c, "ref-rest")
    return shared


MENU_PATH = "/api/restaurants/ref-rest/menu/{}"
STATUS_PATH = "/api/restaurants/ref-rest/status"
KITCHEN = auth("ref-rest", "restaurant")
OTHER_KITCHEN = auth("zaatar", "restaurant")
SARA_AUTH = auth("sara", "customer")


def tenant(**changes: Any) -> Json:
    return {k: v for k, v in {**ZAATAR, "id": "new-rest", **changes}.items() if v is not None}


@pytest.mark.parametrize(
    ("method", "path", "who", "body", "status", "code"),
    [
        pytest.param("PUT", MENU_PATH.format("manoushe"), OTHER_KITCHEN, {"qty": 1}, 403,
                     "forbidden", id="another restaurant's menu"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), SARA_AUTH, {"qty": 1}, 403, "forbidden",
                     id="a customer puts a product"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), {}, {"qty": 1}, 401, None,
                     id="no token"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, {"price": -1}, 422,
                     "invalid_body", id="negative price"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, {"qty": -3}, 422,
                     "invalid_body", id="negative qty"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, {"qty": 2.5}, 422,
                     "invalid_body", id="fractional qty"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, {"price": 3.505}, 422,
                     "invalid_body", id="price with 3 decimals"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, {"price": "3.50"}, 422,
                     "invalid_body", id="price a string"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, {"availability": "sold-out"},
                     422, "invalid_body", id="unknown availability"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, {"quantity": 3}, 422,
                     "invalid_body", id="unknown field"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, {"title": "  "}, 422,
                     "invalid_body", id="blank title"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, b"{qty: 3", 400,
                     "invalid_json", id="not JSON"),
        pytest.param("PUT", MENU_PATH.format("manoushe"), KITCHEN, [1], 422, "invalid_body",
                     id="a list"),
        pytest.param("PUT", MENU_PATH.format("new-dish"), KITCHEN, {"title": "Falafel"}, 422,
                     "invalid_body", id="new product without a price"),
        pytest.param("PUT", MENU_PATH.format("new-dish"), KITCHEN, {"price": 2}, 422,
                     "invalid_body", id="new product without a title"),
        pytest.param("PUT", MENU_PATH.format("ref-rest"), KITCHEN, {"title": "X", "price": 1},
                     409, "not_a_product", id="the restaurant's own node"),
        pytest.param("PUT", MENU_PATH.format("-dash"), KITCHEN, MANOUSHE, 400,
                     "invalid_product_id", id="product id outside the pattern"),
        pytest.param("PUT", MENU_PATH.format("a%20b"), KITCHEN, MANOUSHE, 400,
                     "invalid_product_id", id="product id with a space"),
        pytest.param("PUT", MENU_PATH.format("x" * 129), KITCHEN, MANOUSHE, 400,
                     "invalid_product_id", id="product id too long"),
        pytest.param("PUT", "/api/restaurants/no-such-rest/menu/x", PLATFORM, MANOUSHE, 404,
                     "not_found", id="a restaurant that does not exist"),
        pytest.param("PUT", "/api/restaurants/sara/menu/x", PLATFORM, MANOUSHE, 404,
                     "not_found", id="a tenant that is no restaurant"),
        pytest.param("PUT", "/api/restaurants/Bad_Id/menu/x", PLATFORM, MANOUSHE, 400,
                     "invalid_tenant_id", id="tenant id outside the pattern"),
        pytest.param("POST", STATUS_PATH, OTHER_KITCHEN, {"open": False}, 403, "forbidden",
                     id="another restaurant closes it"),
        pytest.param("POST", STATUS_PATH, auth("ref-rest", "customer"), {"open": False}, 403,
                     "forbidden", id="its id with another role"),
        pytest.param("POST", STATUS_PATH, KITCHEN, {"open": "no"}, 422, "invalid_body",
                     id="open a string"),
        pytest.param("POST", STATUS_PATH, KITCHEN, {}, 422, "invalid_body", id="open missing"),
        pytest.param("POST", STATUS_PATH, KITCHEN, b"open", 400, "invalid_json",
                     id="status not JSON"),
        pytest.param("POST", "/api/restaurants/no-such-rest/status", PLATFORM, {"open": True},
                     404, "not_found", id="status of a restaurant that does not exist"),
        pytest.param("POST", "/api/tenants", KITCHEN, tenant(), 403, "forbidden",
                     id="a restaurant creates a tenant"),
        pytest.param("POST", "/api/tenants", SARA_AUTH, tenant(), 403, "forbidden",
                     id="a customer creates a tenant"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(id="Bad_Id"), 400,
                     "invalid_tenant_id", id="tenant id outside the pattern"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(id="../etc"), 400,
                     "invalid_tenant_id", id="tenant id a path"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(id=None), 422, "invalid_body",
                     id="tenant id missing"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(currency="XYZ"), 422,
                     "unknown_currency", id="unknown currency"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(currency="usd"), 422,
                     "unknown_currency", id="lower-case currency"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(currency=None), 422,
                     "invalid_body", id="restaurant without a currency"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(address=None), 422,
                     "invalid_body", id="restaurant without an address"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(lat=91), 422, "invalid_body",
                     id="lat out of range"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(lng=-180.5), 422, "invalid_body",
                     id="lng out of range"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(role="admin"), 422, "invalid_body",
                     id="unknown role"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(name=""), 422, "invalid_body",
                     id="empty name"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(open=True), 422, "invalid_body",
                     id="unknown field"),
        pytest.param("POST", "/api/tenants", PLATFORM, b"[", 400, "invalid_json",
                     id="tenant not JSON"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(id="ref-rest", name="Other"), 409,
                     "tenant_exists", id="same id, another name"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(id="ref-rest", currency="EUR"),
                     409, "tenant_exists", id="same id, another currency"),
        pytest.param("POST", "/api/tenants", PLATFORM, tenant(id="sara"), 409, "tenant_exists",
                     id="a customer's id for a restaurant"),
        pytest.param("POST", "/api/tenants", PLATFORM, {**SARA, "address": None}, 422,
                     "invalid_body", id="customer with a null address"),
    ],
)  # fmt: skip
def test_a_refused_request_writes_nothing(
    refusals: HubProcess, method: str, path: str, who: dict[str, str], body: Any, status: int,
    code: str | None,
) -> None:  # fmt: skip
    """Bad input, the wrong caller, a conflict: the 4xx and its error body, and no row or
    file changed anywhere."""
    data = refusals.data_dir
    with httpx.Client(base_url=refusals.url, timeout=timeout(30), trust_env=False) as c:
        before = snapshot(data)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        with Written(c) as w:
            r = c.request(method, path, content=content,
                          headers={**who, "content-type": "application/json"})  # fmt: skip
        refused(r, status, code)
        assert w.rows == ZERO
        assert snapshot(data) == before


# -- 3. hub seed ---------------------------------------------------------------------------


def test_seed_goes_through_the_api_code_and_writes_exactly_step_0(tmp_path: Path) -> None:
    """``hub seed`` twice: the seed's rows exactly, nothing changed the second time; the
    seed's tenants posted again are the same tenants (200, nothing written)."""
    data = tmp_path / "data"
    run_seed(data)
    first = snapshot(data)
    run_seed(data)
    assert snapshot(data) == first

    kitchen = tenant_db(data, "bab-hara")
    assert rows(kitchen, "SELECT id, parentId, nodeType, title, createdAt, payload FROM nodes"
                " ORDER BY id") == [
        ("prod-lbn", "menu-01", "product", "Laban", "2026-11-27T12:00:00.000Z",
         '{"desc": "Traditional buttermilk"}'),
        ("prod-shw", "menu-01", "product", "Chicken Shawarma", "2026-11-27T12:00:00.000Z",
         '{"desc": "Grilled chicken wrap"}'),
        ("rest-01", None, "restaurant", "Bab Al Hara", "2026-11-27T12:00:00.000Z",
         '{"address": "Al Rigga, Dubai"}'),
    ]  # fmt: skip
    columns = "id, nodeId, qty, price, currency, availability, lat, lng, openNow, applied"
    assert rows(kitchen, f"SELECT {columns} FROM points ORDER BY id") == [
        ("pt-lbn", "prod-lbn", 150, 5.0, "AED", "in-stock", None, None, 1, None),
        ("pt-rest-loc", "rest-01", None, None, None, "open", 25.2650, 55.3320, 1, None),
        ("pt-shw", "prod-shw", 200, 18.0, "AED", "in-stock", None, None, 1, None),
    ]
    rami = tenant_db(data, "rami")
    assert rows(rami, "SELECT id, parentId, nodeType, title, payload FROM nodes") == [
        ("rami", None, "driver", "Rami", '{"vehicle": "Motorcycle"}')]  # fmt: skip
    assert rows(rami, "SELECT id, nodeId, availability, lat, lng, openNow FROM points") == [
        ("pt-rami-loc", "rami", "idle", 25.2640, 55.3310, 1)]  # fmt: skip
    public = data / "public.db"
    assert rows(public, "SELECT id, workspaceId, parentId, nodeType, title, payload"
                " FROM nodes") == [
        ("rami", "rami", None, "driver", "Rami", '{"vehicle": "Motorcycle"}')]  # fmt: skip
    assert rows(public, "SELECT id, workspaceId, nodeId, availability, lat, lng, openNow, claim"
                " FROM points") == [
        ("pt-rami-loc", "rami", "rami", "idle", 25.2640, 55.3310, 1, None)]  # fmt: skip
    assert rows(tenant_db(data, "ali"), "SELECT id, nodeType, title, payload FROM nodes") == [
        ("ali", "customer", "Ali",
         '{"address": "Marina Walk, Dubai", "lat": 25.0805, "lng": 55.1403}')]  # fmt: skip
    assert rows(tenant_db(data, "ali"), "SELECT COUNT(*) FROM points") == [(0,)]

    hub = HubProcess(data).start()
    try:
        with httpx.Client(base_url=hub.url, timeout=timeout(30), trust_env=False) as c:
            shown = ok(c.get("/api/restaurants/bab-hara", headers=auth("ali", "customer")), 200)
            assert (shown["open"], shown["currency"], shown["nodeId"]) == (True, "AED", "rest-01")
            with Written(c) as w:
                for body in (
                    {"id": "bab-hara", "role": "restaurant", "name": "Bab Al Hara",
                     "lat": 25.2650, "lng": 55.3320, "address": "Al Rigga, Dubai",
                     "currency": "AED"},
                    {"id": "ali", "role": "customer", "name": "Ali", "lat": 25.0805,
                     "lng": 55.1403, "address": "Marina Walk, Dubai"},
                    {"id": "rami", "role": "driver", "name": "Rami", "lat": 25.2640,
                     "lng": 55.3310},
                ):  # fmt: skip
                    made = create_tenant(c, body, 200)
                    assert made["id"] == body["id"]
                seeded = put(c, "bab-hara", "prod-shw", {"price": 18}, PLATFORM, 200)
            assert w.rows == ZERO
            assert (made["nodeId"], made["pointId"]) == ("rami", "pt-rami-loc")
            assert seeded["pointId"] == "pt-shw"
    finally:
        hub.stop()
    after = snapshot(data)
    del after["streams.db"]  # the hub's own (the seed writes none)
    assert after == first
