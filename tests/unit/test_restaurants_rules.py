"""Menus, restaurant status and tenants as data without a server: the rules
(hub.domain.restaurants), the wire shapes that refuse bad bodies (hub.edge.wire.restaurants)
and their place in /openapi.json, and the service over real embedded tenant DBs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hub.domain.auth import Principal, Role
from hub.domain.restaurants import (
    CURRENCIES,
    ProductChange,
    Restaurants,
    TenantSpec,
    check_currency,
    check_manages,
    check_platform,
    check_price,
    check_product_id,
    order_currency,
    restaurant_terms,
)
from hub.edge.openapi import OPERATIONS, openapi_document
from hub.edge.wire import restaurants as wire
from hub.errors import BadRequest, Conflict, Forbidden, HubError, NotFound, Unprocessable
from hub.infra.orderdb import OrderDb
from hub.infra.tenants import Tenants

PLATFORM = Principal("ops", Role.PLATFORM)
KITCHEN = Principal("zaatar", Role.RESTAURANT)
ZAATAR = TenantSpec("zaatar", "restaurant", "Zaatar w Zeit", 33.89, 35.50,
                    address="Hamra, Beirut", currency="USD")  # fmt: skip


# -- rules ----------------------------------------------------------------------------------


def test_currencies_are_iso_4217_codes_in_use() -> None:
    assert {"AED", "USD", "EUR", "GBP", "JPY", "KWD", "LBP", "SAR"} <= CURRENCIES
    assert not {"XXX", "XTS", "XAU", "XDR", "BOV", "HRK", "aed", ""} & CURRENCIES
    assert all(len(c) == 3 and c.isascii() and c.isupper() for c in CURRENCIES)
    assert check_currency("USD") == "USD"
    for bad in ("XYZ", "usd", "US", None, 840):
        with pytest.raises(Unprocessable) as refused:
            check_currency(bad)
        assert refused.value.code == "unknown_currency"


@pytest.mark.parametrize("price", [0, 0.5, 3.5, 18, 18.99, 0.1 + 0.2, 1_000_000])
def test_a_price_has_at_most_two_decimals(price: float) -> None:
    assert check_price(price) == float(price)


@pytest.mark.parametrize("price", [-0.01, 3.505, 0.001, 1_000_000.01, float("nan"), True])
def test_other_prices_are_refused(price: float) -> None:
    with pytest.raises(Unprocessable):
        check_price(price)


def test_who_manages_a_restaurant() -> None:
    """The restaurant's own restaurant token, or the platform; the platform alone makes
    tenants."""
    check_manages(KITCHEN, "zaatar")
    check_manages(PLATFORM, "zaatar")
    for who in (Principal("zaatar", Role.CUSTOMER), Principal("zaatar", Role.DRIVER),
                Principal("bab-hara", Role.RESTAURANT)):  # fmt: skip
        with pytest.raises(Forbidden):
            check_manages(who, "zaatar")
    check_platform(PLATFORM)
    with pytest.raises(Forbidden):
        check_platform(KITCHEN)


@pytest.mark.parametrize("product_id", ["prod-shw", "a", "A.b:c_d-e", "x" * 128])
def test_product_ids_are_stream_ids(product_id: str) -> None:
    assert check_product_id(product_id) == product_id


@pytest.mark.parametrize("product_id", ["", "-a", ".a", "a b", "a/b", "x" * 129, "a\n"])
def test_other_product_ids_are_400(product_id: str) -> None:
    with pytest.raises(BadRequest):
        check_product_id(product_id)


# -- wire shapes ----------------------------------------------------------------------------


def refusal(decode: Any, body: Any) -> HubError:
    with pytest.raises(HubError) as refused:
        decode(msgspec.json.encode(body))
    return refused.value


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"price": -1}, 422, "invalid_body"),
        ({"qty": -1}, 422, "invalid_body"),
        ({"qty": 1.5}, 422, "invalid_body"),
        ({"availability": "gone"}, 422, "invalid_body"),
        ({"title": ""}, 422, "invalid_body"),
        ({"title": "x" * 201}, 422, "invalid_body"),
        ({"qty": 1, "extra": 1}, 422, "invalid_body"),
        ([], 422, "invalid_body"),
    ],
)
def test_a_product_body_is_refused_with_its_words(body: Any, status: int, code: str) -> None:
    refused = refusal(wire.decode_put_product, body)
    assert (refused.status, refused.code) == (status, code), refused


def test_a_product_body_keeps_what_was_sent() -> None:
    put = wire.decode_put_product(b'{"qty": 40}')
    assert (put.title, put.desc, put.price, put.qty, put.availability) == (None, None, None, 40,
                                                                           None)  # fmt: skip
    full = wire.decode_put_product(
        msgspec.json.encode(
            {"title": "T", "desc": "D", "price": 3.5, "qty": 0, "availability": "out-of-stock"}
        )
    )
    assert (full.title, full.price, full.availability) == ("T", 3.5, "out-of-stock")
    assert wire.decode_set_open(b'{"open": false}').open is False  # fmt: skip


TENANT = {"id": "zaatar", "role": "restaurant", "name": "Z", "lat": 1, "lng": 2,
          "address": "A", "currency": "USD"}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"id": "Bad"}, 400, "invalid_tenant_id"),
        ({"id": "a" * 64}, 400, "invalid_tenant_id"),
        ({"id": None}, 422, "invalid_body"),
        ({"role": "platform"}, 422, "invalid_body"),
        ({"currency": "usd"}, 422, "unknown_currency"),
        ({"lat": 90.5}, 422, "invalid_body"),
        ({"lng": "55"}, 422, "invalid_body"),
        ({"name": " "}, 422, "invalid_body"),
        ({"openNow": True}, 422, "invalid_body"),
    ],
)
def test_a_tenant_body_is_refused_with_its_words(changes: dict[str, Any], status: int,
                                                 code: str) -> None:  # fmt: skip
    body = {k: v for k, v in {**TENANT, **changes}.items() if v is not None}
    refused = refusal(wire.decode_new_tenant, body)
    assert (refused.status, refused.code) == (status, code), refused


def test_the_operations_are_documented_with_their_structs() -> None:
    """The three routes are operations of /openapi.json with their roles, bodies and
    answers, and every Struct of the module is a component as msgspec describes it."""
    ops = {op.op_id: op for op in OPERATIONS}
    assert ops["putProduct"].roles == ("restaurant", "platform")
    assert ops["restaurantStatus"].roles == ("restaurant", "platform")
    assert ops["createTenant"].roles == ("platform",)
    doc = openapi_document()
    put = doc["paths"]["/api/restaurants/{restaurant}/menu/{product_id}"]["put"]
    assert set(put["responses"]) >= {"200", "201", "400", "403", "404", "409", "422"}
    assert put["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PutProduct"}  # fmt: skip
    components = doc["components"]["schemas"]
    for struct in (wire.PutProduct, wire.SetOpen, wire.NewTenant, wire.RestaurantStatus,
                   wire.Tenant):  # fmt: skip
        _, schema = msgspec.json.schema_components(
            [struct], ref_template="#/components/schemas/{name}"
        )
        assert components[struct.__name__] == schema[struct.__name__], struct
    assert "open" in components["Menu"]["required"]


# -- the service over embedded tenant DBs ---------------------------------------------------


@pytest.fixture
async def tenants(tmp_path: Path) -> AsyncIterator[Tenants]:
    t = Tenants(f"file:{tmp_path}/tenants/{{tenant}}.db", f"file:{tmp_path}/public.db")
    try:
        yield t
    finally:
        await t.close()


async def test_restaurant_terms_open_and_currency(tenants: Tenants, tmp_path: Path) -> None:
    """(open, currency) of a restaurant, from an OrderDb or from Tenants; asking about one
    that does not exist is 422 and creates no database."""
    with pytest.raises(Unprocessable) as refused:
        await restaurant_terms(tenants, "zaatar")
    assert refused.value.code == "unknown_restaurant"
    assert not (tmp_path / "tenants" / "zaatar.db").exists()

    service = Restaurants(tenants)
    await service.create_tenant(ZAATAR)
    assert await restaurant_terms(tenants, "zaatar") == (True, "USD")
    assert await restaurant_terms(OrderDb(tenants), "zaatar") == (True, "USD")
    assert await order_currency(tenants, "zaatar") == "USD"
    assert await service.set_open("zaatar", False) == {"restaurant": "zaatar", "open": False}
    assert await restaurant_terms(OrderDb(tenants), "zaatar") == (False, "USD")
    with pytest.raises(Conflict) as closed:
        await order_currency(tenants, "zaatar")
    assert closed.value.code == "restaurant_closed"

    # AED, the seed's, is the currency of a restaurant whose node names none.
    await service.create_tenant(TenantSpec("souk", "restaurant", "Souk", 1, 2, address="A",
                                           currency="AED"))  # fmt: skip
    assert await restaurant_terms(tenants, "souk") == (True, "AED")
    with pytest.raises(NotFound):
        await service.set_open("nowhere", True)
    assert not (tmp_path / "tenants" / "nowhere.db").exists()


async def test_racing_creations_of_one_tenant_write_it_once(tenants: Tenants) -> None:
    """Two services (two hub processes) creating one tenant at once: one creates it; the
    same content is then 200, another content 409."""
    one, two = Restaurants(tenants), Restaurants(tenants)
    other = TenantSpec("zaatar", "restaurant", "Other", 33.89, 35.50, address="Hamra, Beirut",
                       currency="USD")  # fmt: skip
    results = await asyncio.gather(one.create_tenant(ZAATAR), two.create_tenant(other),
                                   return_exceptions=True)  # fmt: skip
    created = [r for r in results if isinstance(r, tuple)]
    assert len(created) == 1, results
    assert created[0][1] is True
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    winner = other if created[0][0]["name"] == "Other" else ZAATAR
    _, new = await two.create_tenant(winner)
    assert new is False


async def test_racing_creations_of_one_product_write_it_once(tenants: Tenants) -> None:
    """Two services putting one new product at once: one creates it, the other updates it;
    its stock point keeps its id and the stock is the last one put."""
    one, two = Restaurants(tenants), Restaurants(tenants)
    await one.create_tenant(ZAATAR)
    results = await asyncio.gather(
        one.put_product("zaatar", "dish", ProductChange("Dish", None, 2, 5)),
        two.put_product("zaatar", "dish", ProductChange("Dish", None, 2, 7)),
    )
    assert sorted(created for _, created in results) == [False, True]
    assert {product["pointId"] for product, _ in results} == {"pt-dish"}
    db = tenants.tenant("zaatar")
    got = await db.execute("SELECT id, qty FROM points WHERE nodeId = 'dish'")
    assert len(got.rows) == 1
    assert got.rows[0][1] in (5, 7)
