"""The wire shapes: each declared once, in the documents, matching what the hub sends, and
refusing what the hub always refused with the same status, code and message.

The refusal tables below were taken from the hand-written validation the Structs replaced
(hub/events.py and hub/domain/orders.py before msgspec): every body, its status, code and
message, including which fault wins when a body has several.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.routing import Route

from hub.config import Settings
from hub.domain.auth import issue_token
from hub.edge import wire
from hub.edge.app import create_app
from hub.edge.asyncapi import asyncapi_document
from hub.edge.openapi import OPERATIONS, openapi_document
from hub.edge.wire import events as wire_events
from hub.edge.wire import frames, ops
from hub.edge.wire import orders as wire_orders
from hub.errors import CloseCode, HubError
from hub.events import EventBatch, EventDraft, NewEvent, parse_body, parse_drafts
from hub.refusals import loads_json

with warnings.catch_warnings():  # starlette would rather have httpx2 than httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SECRET = "unit-test-secret-unit-test-secret"
KIB64 = 64 << 10


def j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def ev(**kw: Any) -> bytes:
    return j({"opcode": 203, **kw})


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


P64 = {"x": "a" * (KIB64 - 8)}  # exactly 64 KiB encoded
P64_1 = {"x": "a" * (KIB64 - 7)}
DROP: Any = object()  # a field left out of a body
create_ok = {
    "restaurant": "bab-hara",
    "items": [{"productId": "p", "qty": 1}],
    "deliveryAddress": "x",
}


def c(**changes: Any) -> dict[str, Any]:
    """A valid order body with ``changes`` (DROP: the field removed)."""
    body = {**create_ok, **changes}
    return {k: v for k, v in body.items() if v is not DROP}


def ll(**changes: Any) -> dict[str, Any]:
    return {"lat": 25.1, "lng": 55.2, **changes}


# (case, body, refusal as 'status code message', or None: accepted)
# fmt: off
EVENT_BODIES: list[tuple[str, bytes, str | None]] = [
    ("ok-min", j({"opcode": 203}), None),
    ("ok-full", j({"id": "e-1", "opcode": 203, "name": "INVOICE_PAYMENT", "streamId": "s-1",
                   "nodeId": "n", "pointId": "p", "delta": 5, "payload": {"a": [1, {"b": None}]},
                   "ts": "2026-11-27T12:30:00+04:00"}),
     None),
    ("ok-nulls", j({"id": None, "opcode": 203, "nodeId": None, "pointId": None, "delta": None,
                    "payload": None, "ts": None}),
     None),
    ("ok-batch", j({"events": [{"opcode": 203}, {"opcode": 303, "id": "x"}]}), None),
    ("ok-64k", ev(payload=P64), None),
    ("ok-deep-32", ev(payload=deep(32)), None),
    ("ok-bigint-payload", b'{"opcode": 203, "payload": {"n": 123456789012345678901234567890}}',
     None),
    ("ok-float-delta", ev(delta=-2.5), None),
    ("ok-ts-space", ev(ts="2026-11-27 12:30:00Z"), None),
    ("not-json", b"{not json", "400 invalid_json request body is not valid JSON"),
    ("empty", b"", "400 invalid_json request body is not valid JSON"),
    ("truncated", b'{"opcode": 203', "400 invalid_json request body is not valid JSON"),
    ("not-utf8", b"\xff\xfe{}", "400 invalid_json request body is not valid JSON"),
    ("string-body", b'"203"', "400 bad_request body must be a JSON object"),
    ("number-body", b"203", "400 bad_request body must be a JSON object"),
    ("null-body", b"null", "400 bad_request body must be a JSON object"),
    ("array-body", j([{"opcode": 203}]), "400 bad_request body must be a JSON object"),
    ("deep-json", b"[" * 5000 + b"]" * 5000, "400 invalid_json request body is not valid JSON"),
    ("unknown-opcode", j({"opcode": 999}), "422 unknown_opcode unknown opcode 999"),
    ("opcode-zero", j({"opcode": 0}), "422 unknown_opcode unknown opcode 0"),
    ("missing-opcode", j({"payload": {}}), "422 unknown_opcode unknown opcode None"),
    ("opcode-string", j({"opcode": "203"}), "422 unknown_opcode unknown opcode '203'"),
    ("opcode-bool", j({"opcode": True}), "422 unknown_opcode unknown opcode True"),
    ("opcode-float", j({"opcode": 203.0}), "422 unknown_opcode unknown opcode 203.0"),
    ("opcode-null", j({"opcode": None}), "422 unknown_opcode unknown opcode None"),
    ("opcode-huge", b'{"opcode": 1' + b"0" * 30 + b"}",
     "422 unknown_opcode unknown opcode 1000000000000000000000000000000"),
    ("delta-string", ev(delta="5"), "422 invalid_event delta must be a finite number"),
    ("delta-bool", ev(delta=True), "422 invalid_event delta must be a finite number"),
    ("delta-nan", b'{"opcode": 203, "delta": NaN}',
     "422 invalid_event delta must be a finite number"),
    ("delta-inf", b'{"opcode": 203, "delta": Infinity}',
     "422 invalid_event delta must be a finite number"),
    ("delta-1e400", b'{"opcode": 203, "delta": 1e400}',
     "422 invalid_event delta must be a finite number"),
    ("delta-huge-int", b'{"opcode": 203, "delta": 1' + b"0" * 400 + b"}",
     "422 invalid_event delta must be a finite number"),
    ("payload-list", ev(payload=[1, 2]), "422 invalid_event payload must be a JSON object"),
    ("payload-string", ev(payload="x"), "422 invalid_event payload must be a JSON object"),
    ("payload-number", ev(payload=5), "422 invalid_event payload must be a JSON object"),
    ("payload-nan", b'{"opcode": 203, "payload": {"x": NaN}}',
     "422 invalid_event payload must be plain JSON (no NaN, Infinity, bad text)"),
    ("payload-inf", b'{"opcode": 203, "payload": {"x": -Infinity}}',
     "422 invalid_event payload must be plain JSON (no NaN, Infinity, bad text)"),
    ("payload-1e400", b'{"opcode": 203, "payload": {"x": [1e400]}}',
     "422 invalid_event payload must be plain JSON (no NaN, Infinity, bad text)"),
    ("payload-surrogate", b'{"opcode": 203, "payload": {"a": "\\ud800"}}',
     "422 invalid_event payload must be plain JSON (no NaN, Infinity, bad text)"),
    ("payload-surrogate-key", b'{"opcode": 203, "payload": {"\\ud800": 1}}',
     "422 invalid_event payload must be plain JSON (no NaN, Infinity, bad text)"),
    ("payload-64k+1", ev(payload=P64_1), "413 too_large payload over 65536 bytes encoded"),
    ("payload-deep-33", ev(payload=deep(33)), "422 too_deep payload nested deeper than 32 levels"),
    ("payload-deep-list", ev(payload={"a": json.loads("[" * 34 + "1" + "]" * 34)}),
     "422 too_deep payload nested deeper than 32 levels"),
    ("ts-words", ev(ts="yesterday"), "422 invalid_event ts must be an ISO 8601 string"),
    ("ts-month-13", ev(ts="2026-13-01T00:00:00Z"),
     "422 invalid_event ts must be an ISO 8601 string"),
    ("ts-no-tz", ev(ts="2026-11-27T12:30:00"),
     "422 invalid_event ts must carry a timezone (e.g. a trailing Z)"),
    ("ts-number", ev(ts=1764246600), "422 invalid_event ts must be an ISO 8601 string"),
    ("ts-long", ev(ts="2026-11-27T12:30:00Z" + " " * 60),
     "422 invalid_event ts must be an ISO 8601 string"),
    ("ts-before-1", ev(ts="0001-01-01T00:00:00+00:01"), "422 invalid_event ts is out of range"),
    ("ts-after-9999", ev(ts="9999-12-31T23:59:59-01:00"), "422 invalid_event ts is out of range"),
    ("nodeId-surrogate", b'{"opcode": 203, "nodeId": "\\udfff"}',
     "422 invalid_event nodeId must be a string of 1..128 characters or null"),
    ("pointId-surrogate", b'{"opcode": 203, "pointId": "\\udfff"}',
     "422 invalid_event pointId must be a string of 1..128 characters or null"),
    ("unknown-field", ev(colour="red"), "422 invalid_event unknown field(s): colour"),
    ("unknown-fields", ev(colour="red", alpha=1),
     "422 invalid_event unknown field(s): alpha, colour"),
    ("nodeId-too-long", ev(nodeId="n" * 129),
     "422 invalid_event nodeId must be a string of 1..128 characters or null"),
    ("nodeId-128", ev(nodeId="n" * 128), None),
    ("nodeId-number", ev(nodeId=7),
     "422 invalid_event nodeId must be a string of 1..128 characters or null"),
    ("nodeId-empty", ev(nodeId=""),
     "422 invalid_event nodeId must be a string of 1..128 characters or null"),
    ("pointId-too-long", ev(pointId="p" * 129),
     "422 invalid_event pointId must be a string of 1..128 characters or null"),
    ("pointId-list", ev(pointId=[]),
     "422 invalid_event pointId must be a string of 1..128 characters or null"),
    ("id-invalid", ev(id="-bad"),
     "422 invalid_event id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
    ("id-number", ev(id=12), "422 invalid_event id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
    ("id-too-long", ev(id="e" * 129),
     "422 invalid_event id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
    ("id-newline", ev(id="abc\n"),
     "422 invalid_event id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
    ("id-empty", ev(id=""), "422 invalid_event id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
    ("name-mismatch", ev(name="TASK_CREATE"),
     "422 invalid_event name 'TASK_CREATE' does not match opcode 203"),
    ("name-unknown", ev(name="NOPE"), "422 invalid_event name 'NOPE' does not match opcode 203"),
    ("name-null", ev(name=None), "422 invalid_event name None does not match opcode 203"),
    ("name-number", ev(name=203), "422 invalid_event name 203 does not match opcode 203"),
    ("streamId-mismatch", ev(streamId="elsewhere"),
     "422 invalid_event streamId in the body differs from the URL"),
    ("streamId-null", ev(streamId=None),
     "422 invalid_event streamId in the body differs from the URL"),
    ("streamId-ok", ev(streamId="s-1"), None),
    ("multi-unknown-and-opcode", j({"opcode": 999, "zzz": 1}),
     "422 invalid_event unknown field(s): zzz"),
    ("multi-opcode-missing-and-delta", j({"delta": "x"}), "422 unknown_opcode unknown opcode None"),
    ("multi-delta-then-id", j({"delta": "x", "id": "-bad", "opcode": 203}),
     "422 invalid_event id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
    ("multi-ts-then-nodeid", j({"nodeId": 5, "ts": "x", "opcode": 203}),
     "422 invalid_event ts must be an ISO 8601 string"),
    ("multi-payload-then-name", j({"payload": 5, "name": "X", "opcode": 203}),
     "422 invalid_event name 'X' does not match opcode 203"),
    ("multi-stream-then-name", j({"streamId": "zz", "name": "X", "opcode": 203}),
     "422 invalid_event name 'X' does not match opcode 203"),
    ("multi-payload-size-then-ts", j({"ts": "bad", "payload": P64_1, "opcode": 203}),
     "413 too_large payload over 65536 bytes encoded"),
    ("multi-deep-then-size", j({"payload": {"x": "a" * 70000, "d": deep(40)}, "opcode": 203}),
     "422 too_deep payload nested deeper than 32 levels"),
    ("dup-key-last-wins", b'{"opcode": 999, "opcode": 203}', None),
    ("dup-key-last-bad", b'{"opcode": 203, "opcode": 999}',
     "422 unknown_opcode unknown opcode 999"),
    ("empty-batch", j({"events": []}), "422 empty_batch empty batch"),
    ("batch-101", j({"events": [{"opcode": 203}] * 101}),
     "413 batch_too_large at most 100 events per batch"),
    ("batch-100", j({"events": [{"opcode": 203}] * 100}), None),
    ("batch-not-list", j({"events": {"opcode": 203}}), "422 invalid_event events must be a list"),
    ("batch-null", j({"events": None}), "422 invalid_event events must be a list"),
    ("batch-extra-key", j({"events": [{"opcode": 203}], "x": 1}),
     "422 invalid_event a batch body holds only 'events'"),
    ("batch-extra-key-first", b'{"x": 1, "events": [{"opcode": 203}]}',
     "422 invalid_event a batch body holds only 'events'"),
    ("batch-with-opcode", j({"opcode": 203, "events": [{"opcode": 203}]}),
     "422 invalid_event a batch body holds only 'events'"),
    ("batch-item-not-object", j({"events": [{"opcode": 203}, 5]}),
     "422 invalid_event an event must be a JSON object"),
    ("batch-item-null", j({"events": [None]}), "422 invalid_event an event must be a JSON object"),
    ("batch-one-bad-opcode", j({"events": [{"opcode": 203}, {"opcode": 303}, {"opcode": 999}]}),
     "422 unknown_opcode unknown opcode 999"),
    ("batch-one-big", j({"events": [{"opcode": 203}, {"opcode": 303, "payload": P64_1}]}),
     "413 too_large payload over 65536 bytes encoded"),
    ("batch-dup-ids", j({"events": [{"id": "d", "opcode": 203}, {"id": "d", "opcode": 303}]}),
     "422 invalid_event duplicate event id in batch"),
    ("batch-second-unknown", j({"events": [{"opcode": 203}, {"opcode": 203, "q": 1}]}),
     "422 invalid_event unknown field(s): q"),
    ("batch-101-bad", j({"events": [5] * 101}), "413 batch_too_large at most 100 events per batch"),
    ("batch-empty-extra", j({"events": [], "y": 2}),
     "422 invalid_event a batch body holds only 'events'"),
    ("batch-nan", b'{"events": [{"opcode": 203, "delta": NaN}]}',
     "422 invalid_event delta must be a finite number"),
]
# fmt: on

# (endpoint/case, body, refusal as 'status code message', or None: accepted)
# fmt: off
ORDER_BODIES: list[tuple[str, Any, str | None]] = [
    ("create/ok", create_ok, None),
    ("create/ok-extra", c(extra=1), None),
    ("create/ok-full", c(notes="n", deliveryLocation={"lat": 1, "lng": 2, "x": 0}, orderId="ord-1"),
     None),
    ("create/ok-nulls", c(notes=None, deliveryLocation=None, orderId=None), None),
    ("create/not-object", [1], "422 invalid_body body must be a JSON object"),
    ("create/null", None, "422 invalid_body body must be a JSON object"),
    ("create/string", "x", "422 invalid_body body must be a JSON object"),
    ("create/no-restaurant", c(restaurant=DROP), "422 invalid_body restaurant is required"),
    ("create/restaurant-null", c(restaurant=None), "422 invalid_body restaurant is required"),
    ("create/restaurant-number", c(restaurant=5), "422 invalid_body restaurant is required"),
    ("create/restaurant-bad", c(restaurant="Bad!"), "400 invalid_tenant_id invalid tenant id"),
    ("create/restaurant-newline", c(restaurant="bab\n"), "400 invalid_tenant_id invalid tenant id"),
    ("create/no-address", c(deliveryAddress=DROP), "422 invalid_body deliveryAddress is required"),
    ("create/address-blank", c(deliveryAddress="   "),
     "422 invalid_body deliveryAddress must be a non-empty string of at most 300 characters"),
    ("create/address-empty", c(deliveryAddress=""),
     "422 invalid_body deliveryAddress must be a non-empty string of at most 300 characters"),
    ("create/address-long", c(deliveryAddress="a" * 301),
     "422 invalid_body deliveryAddress must be a non-empty string of at most 300 characters"),
    ("create/address-300", c(deliveryAddress="a" * 300), None),
    ("create/address-number", c(deliveryAddress=5),
     "422 invalid_body deliveryAddress must be a non-empty string of at most 300 characters"),
    ("create/notes-long", c(notes="n" * 501),
     "422 invalid_body notes must be a non-empty string of at most 500 characters"),
    ("create/notes-blank", c(notes=" "),
     "422 invalid_body notes must be a non-empty string of at most 500 characters"),
    ("create/notes-list", c(notes=[]),
     "422 invalid_body notes must be a non-empty string of at most 500 characters"),
    ("create/loc-list", c(deliveryLocation=[1, 2]), "422 invalid_body body must be a JSON object"),
    ("create/loc-string", c(deliveryLocation="here"),
     "422 invalid_body body must be a JSON object"),
    ("create/loc-missing-lat", c(deliveryLocation={"lng": 1}),
     "422 invalid_body lat must be a number"),
    ("create/loc-lat-range", c(deliveryLocation={"lat": 91, "lng": 1}),
     "422 invalid_body lat out of range"),
    ("create/loc-lng-range", c(deliveryLocation={"lat": 1, "lng": -181}),
     "422 invalid_body lng out of range"),
    ("create/loc-lat-bool", c(deliveryLocation={"lat": True, "lng": 1}),
     "422 invalid_body lat must be a number"),
    ("create/loc-lat-str", c(deliveryLocation={"lat": "1", "lng": 1}),
     "422 invalid_body lat must be a number"),
    ("create/loc-lat-nan", c(deliveryLocation={"lat": float("nan"), "lng": 1}),
     "422 invalid_body lat must be a number"),
    ("create/loc-lat-inf", c(deliveryLocation={"lat": float("inf"), "lng": 1}),
     "422 invalid_body lat must be a number"),
    ("create/orderId-bad", c(orderId="-x"),
     "422 invalid_body orderId must match ^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"),
    ("create/orderId-dot", c(orderId="a.b"),
     "422 invalid_body orderId must match ^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"),
    ("create/orderId-num", c(orderId=5),
     "422 invalid_body orderId must match ^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"),
    ("create/orderId-newline", c(orderId="abc\n"),
     "422 invalid_body orderId must match ^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"),
    ("create/orderId-long", c(orderId="a" * 65),
     "422 invalid_body orderId must match ^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"),
    ("create/items-missing", c(items=DROP), "422 invalid_body items must be a list of 1..50"),
    ("create/items-empty", c(items=[]), "422 invalid_body items must be a list of 1..50"),
    ("create/items-51", c(items=[{"productId": f"p{i}", "qty": 1} for i in range(51)]),
     "422 invalid_body items must be a list of 1..50"),
    ("create/items-50", c(items=[{"productId": f"p{i}", "qty": 1} for i in range(50)]), None),
    ("create/items-dict", c(items={"productId": "p", "qty": 1}),
     "422 invalid_body items must be a list of 1..50"),
    ("create/item-not-dict", c(items=[5]), "422 invalid_body each item is {productId, qty}"),
    ("create/item-extra-key", c(items=[{"productId": "p", "qty": 1, "x": 1}]),
     "422 invalid_body each item is {productId, qty}"),
    ("create/item-no-pid", c(items=[{"qty": 1}]), "422 invalid_body productId is required"),
    ("create/item-pid-blank", c(items=[{"productId": " ", "qty": 1}]),
     "422 invalid_body productId must be a non-empty string of at most 128 characters"),
    ("create/item-pid-long", c(items=[{"productId": "p" * 129, "qty": 1}]),
     "422 invalid_body productId must be a non-empty string of at most 128 characters"),
    ("create/item-no-qty", c(items=[{"productId": "p"}]),
     "422 invalid_body qty must be an integer in 1..1000"),
    ("create/item-qty-null", c(items=[{"productId": "p", "qty": None}]),
     "422 invalid_body qty must be an integer in 1..1000"),
    ("create/item-qty-0", c(items=[{"productId": "p", "qty": 0}]),
     "422 invalid_body qty must be an integer in 1..1000"),
    ("create/item-qty-1001", c(items=[{"productId": "p", "qty": 1001}]),
     "422 invalid_body qty must be an integer in 1..1000"),
    ("create/item-qty-float", c(items=[{"productId": "p", "qty": 1.0}]),
     "422 invalid_body qty must be an integer in 1..1000"),
    ("create/item-qty-bool", c(items=[{"productId": "p", "qty": True}]),
     "422 invalid_body qty must be an integer in 1..1000"),
    ("create/item-qty-str", c(items=[{"productId": "p", "qty": "1"}]),
     "422 invalid_body qty must be an integer in 1..1000"),
    ("create/item-dup", c(items=[{"productId": "p", "qty": 1}, {"productId": "p", "qty": 2}]),
     "422 invalid_body product 'p' listed twice"),
    ("create/item-both-bad", c(items=[{"qty": 0, "productId": ""}]),
     "422 invalid_body productId must be a non-empty string of at most 128 characters"),
    ("create/item-second-bad",
     c(items=[{"productId": "p", "qty": 1}, {"productId": "q", "qty": 0}]),
     "422 invalid_body qty must be an integer in 1..1000"),
    ("create/multi-address-and-items", c(deliveryAddress=DROP, items=[]),
     "422 invalid_body deliveryAddress is required"),
    ("create/multi-items-and-orderId", c(orderId="-", items=[]),
     "422 invalid_body orderId must match ^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"),
    ("create/multi-restaurant-and-address", c(restaurant="B A D", deliveryAddress=DROP),
     "400 invalid_tenant_id invalid tenant id"),
    ("pay/ok", {"method": "card"}, None),
    ("pay/ok-last4", {"method": "card", "cardLast4": "1234", "x": 1}, None),
    ("pay/not-object", [], "422 invalid_body body must be a JSON object"),
    ("pay/no-method", {}, "422 invalid_body method is required"),
    ("pay/method-null", {"method": None}, "422 invalid_body method is required"),
    ("pay/method-long", {"method": "m" * 33},
     "422 invalid_body method must be a non-empty string of at most 32 characters"),
    ("pay/method-blank", {"method": "\t"},
     "422 invalid_body method must be a non-empty string of at most 32 characters"),
    ("pay/last4-short", {"method": "card", "cardLast4": "123"},
     "422 invalid_body cardLast4 must be 4 digits"),
    ("pay/last4-num", {"method": "card", "cardLast4": 1234},
     "422 invalid_body cardLast4 must be 4 digits"),
    ("pay/last4-newline", {"method": "card", "cardLast4": "1234\n"},
     "422 invalid_body cardLast4 must be 4 digits"),
    ("pay/last4-letters", {"method": "card", "cardLast4": "12a4"},
     "422 invalid_body cardLast4 must be 4 digits"),
    ("pay/multi", {"cardLast4": "x"}, "422 invalid_body method is required"),
    ("accept/ok", {}, None),
    ("accept/ok-full", {"chef": "c", "station": "s", "estMinutes": 600}, None),
    ("accept/not-object", "x", "422 invalid_body body must be a JSON object"),
    ("accept/chef-blank", {"chef": ""},
     "422 invalid_body chef must be a non-empty string of at most 100 characters"),
    ("accept/chef-long", {"chef": "c" * 101},
     "422 invalid_body chef must be a non-empty string of at most 100 characters"),
    ("accept/station-num", {"station": 1},
     "422 invalid_body station must be a non-empty string of at most 100 characters"),
    ("accept/est-0", {"estMinutes": 0}, "422 invalid_body estMinutes must be an integer in 1..600"),
    ("accept/est-601", {"estMinutes": 601},
     "422 invalid_body estMinutes must be an integer in 1..600"),
    ("accept/est-float", {"estMinutes": 5.5},
     "422 invalid_body estMinutes must be an integer in 1..600"),
    ("accept/est-str", {"estMinutes": "5"},
     "422 invalid_body estMinutes must be an integer in 1..600"),
    ("accept/multi", {"estMinutes": 0, "chef": ""},
     "422 invalid_body chef must be a non-empty string of at most 100 characters"),
    ("ready/ok", {}, None),
    ("ready/ok-0", {"actualMinutes": 0}, None),
    ("ready/not-object", 5, "422 invalid_body body must be a JSON object"),
    ("ready/neg", {"actualMinutes": -1},
     "422 invalid_body actualMinutes must be an integer in 0..600"),
    ("ready/big", {"actualMinutes": 601},
     "422 invalid_body actualMinutes must be an integer in 0..600"),
    ("ready/bool", {"actualMinutes": False},
     "422 invalid_body actualMinutes must be an integer in 0..600"),
    ("pickup/ok", {}, None),
    ("pickup/ok-max", {"confirmedItems": 50000}, None),
    ("pickup/not-object", None, "422 invalid_body body must be a JSON object"),
    ("pickup/over", {"confirmedItems": 50001},
     "422 invalid_body confirmedItems must be an integer in 0..50000"),
    ("pickup/neg", {"confirmedItems": -1},
     "422 invalid_body confirmedItems must be an integer in 0..50000"),
    ("pickup/str", {"confirmedItems": "3"},
     "422 invalid_body confirmedItems must be an integer in 0..50000"),
    ("deliver/ok", ll(), None),
    ("deliver/ok-int", {"lat": 25, "lng": 55, "x": 1}, None),
    ("deliver/not-object", [25, 55], "422 invalid_body body must be a JSON object"),
    ("deliver/no-lat", {"lng": 1}, "422 invalid_body lat must be a number"),
    ("deliver/no-lng", {"lat": 1}, "422 invalid_body lng must be a number"),
    ("deliver/lat-range", ll(lat=90.5), "422 invalid_body lat out of range"),
    ("deliver/lng-range", ll(lng=180.01), "422 invalid_body lng out of range"),
    ("deliver/lat-null", ll(lat=None), "422 invalid_body lat must be a number"),
    ("deliver/lat-bool", ll(lat=False), "422 invalid_body lat must be a number"),
    ("deliver/lng-str", ll(lng="55"), "422 invalid_body lng must be a number"),
    ("deliver/lat-nan", ll(lat=float("nan")), "422 invalid_body lat must be a number"),
    ("deliver/both-bad", {"lat": "x", "lng": "y"}, "422 invalid_body lat must be a number"),
    ("motion/ok", ll(), None),
    ("motion/not-object", "x", "422 invalid_body body must be a JSON object"),
    ("motion/no-lat", {"lng": 1}, "422 invalid_body lat must be a number"),
    ("motion/lat-range", ll(lat=-91), "422 invalid_body lat out of range"),
    ("driver_status/ok-online", {"status": "online", "lat": 1, "lng": 2}, None),
    ("driver_status/ok-offline", {"status": "offline"}, None),
    ("driver_status/ok-offline-vehicle", {"status": "offline", "vehicle": "Bike", "lat": "junk"},
     None),
    ("driver_status/ok-vehicle-null", {"status": "online", "lat": 1, "lng": 2, "vehicle": None},
     None),
    ("driver_status/not-object", [], "422 invalid_body body must be a JSON object"),
    ("driver_status/no-status", {}, "422 invalid_body status must be 'online' or 'offline'"),
    ("driver_status/status-bad", {"status": "busy"},
     "422 invalid_body status must be 'online' or 'offline'"),
    ("driver_status/status-num", {"status": 1},
     "422 invalid_body status must be 'online' or 'offline'"),
    ("driver_status/online-no-lat", {"status": "online"}, "422 invalid_body lat must be a number"),
    ("driver_status/online-lat-range", {"status": "online", "lat": 100, "lng": 1},
     "422 invalid_body lat out of range"),
    ("driver_status/vehicle-long", {"status": "online", "lat": 1, "lng": 2, "vehicle": "v" * 51},
     "422 invalid_body vehicle must be a non-empty string of at most 50 characters"),
    ("driver_status/vehicle-blank", {"status": "offline", "vehicle": " "},
     "422 invalid_body vehicle must be a non-empty string of at most 50 characters"),
    ("driver_status/multi-vehicle-and-lat", {"status": "online", "vehicle": "", "lat": "x"},
     "422 invalid_body vehicle must be a non-empty string of at most 50 characters"),
]
# fmt: on


# -- the documents ---------------------------------------------------------------------


def wire_structs() -> list[type[msgspec.Struct]]:
    """Every Struct the wire modules declare (the abstract Frame base aside)."""
    found: dict[str, type[msgspec.Struct]] = {}
    for module in (wire_events, wire_orders, frames, ops):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, msgspec.Struct) and obj not in (msgspec.Struct, frames.Frame):
                found[obj.__name__] = obj
    return list(found.values())


def test_every_wire_struct_is_in_a_document_as_msgspec_describes_it() -> None:
    """Each Struct's JSON Schema is a component of /openapi.json or /asyncapi.json, unedited."""
    documented = {
        **openapi_document()["components"]["schemas"],
        **asyncapi_document()["components"]["schemas"],
    }
    structs = wire_structs()
    assert EventDraft in structs
    assert EventBatch in structs
    for struct in structs:
        ref = "#/components/schemas/{name}"
        _, components = msgspec.json.schema_components([struct], ref_template=ref)
        assert documented.get(struct.__name__) == components[struct.__name__], struct


def test_the_documents_are_openapi_31_and_asyncapi_30() -> None:
    """The versions, and the append body documented as the two Structs that validate it."""
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    assert asyncapi_document()["asyncapi"] == "3.0.0"
    body = doc["paths"]["/api/streams/{stream_id}/events"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "anyOf": [{"$ref": "#/components/schemas/EventDraft"},
                  {"$ref": "#/components/schemas/EventBatch"}]
    }  # fmt: skip


def test_every_close_code_is_in_the_asyncapi_document_with_its_meaning() -> None:
    """Both channels list every CloseCode, what it means and whether to reconnect."""
    channels = asyncapi_document()["channels"]
    assert set(channels) == {"stream", "inbox"}
    for channel in channels.values():
        listed = {c["code"]: c for c in channel["x-close-codes"]}
        assert set(listed) == {int(code) for code in CloseCode}
        for code in CloseCode:
            assert listed[code]["meaning"] == frames.CLOSE_MEANINGS[code]
            assert listed[code]["reconnect"] is code.reconnect


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, secret=SECRET)


def test_the_openapi_operations_are_the_route_table(app_settings: Settings) -> None:
    """Every HTTP route of the app is one operation of the document, and nothing else is."""
    app = create_app(app_settings, static_dir=None)
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert {(op.method, op.path) for op in OPERATIONS} == routes
    assert {op.op_id for op in OPERATIONS} == {
        o["operationId"] for ops_ in openapi_document()["paths"].values() for o in ops_.values()
    }
    for step in wire_orders.STEP_BODIES:
        assert any(op.path.endswith("/" + step) for op in OPERATIONS), step


# -- what the hub sends ----------------------------------------------------------------


def token(tenant: str, role: str) -> str:
    return issue_token(SECRET, tenant, role)


def bearer(tenant: str, role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(tenant, role)}"}


PLATFORM = bearer("ops", "platform")


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings, static_dir=None)) as test_client:
        yield test_client


class Frames:
    """Checks each frame a socket receives against the Structs of its path."""

    def __init__(self) -> None:
        self.seen: dict[str, set[type[frames.Frame]]] = {"stream": set(), "inbox": set()}

    def check(self, text: str, path: str) -> dict[str, Any]:
        allowed = frames.STREAM_FRAMES if path == "stream" else frames.INBOX_FRAMES
        kind = json.loads(text)["type"]
        (cls,) = [f for f in allowed if f.__struct_config__.tag == kind]
        msgspec.json.decode(text, type=cls)  # every field as declared, and no other
        self.seen[path].add(cls)
        obj: dict[str, Any] = json.loads(text)
        return obj


def check_response(response: Any, status: int, cls: type[msgspec.Struct]) -> dict[str, Any]:
    assert response.status_code == status, response.text
    msgspec.json.decode(response.content, type=cls)
    obj: dict[str, Any] = response.json()
    return obj


def test_every_frame_and_answer_the_hub_sends_is_as_declared(client: TestClient) -> None:
    """A stream's life over real sockets: each frame and HTTP answer decodes as its Struct."""
    sid = "ord-wire-1"
    got = Frames()
    create = {"opcode": 501, "payload": {"customer": "ali", "restaurant": "bab-hara"}}
    check_response(client.post(f"/api/streams/{sid}/events", json=create, headers=PLATFORM),
                   201, wire_events.Events)  # fmt: skip
    with client.websocket_connect(f"/ws/streams/{sid}?token={token('ali', 'customer')}") as ws:
        assert got.check(ws.receive_text(), "stream")["type"] == "event"
        assert got.check(ws.receive_text(), "stream") == {"type": "live", "streamId": sid, "seq": 1}
        for sent, code in [('{"type":"ping"}', None), ("not json", "invalid_json"),
                           ('{"type":"nope"}', "unknown_frame"), ("[1]", "unknown_frame"),
                           ('{"type":"location","lat":1,"lng":2}', "forbidden")]:  # fmt: skip
            ws.send_text(sent)
            frame = got.check(ws.receive_text(), "stream")
            assert frame["type"] == ("pong" if code is None else "error")
            assert code is None or frame["error"]["code"] == code
        ws.send_bytes(b"\x00")
        assert got.check(ws.receive_text(), "stream")["error"]["code"] == "binary_frame"
        ws.send_text(json.dumps({"type": "auth", "token": token("ali", "customer")}))
        assert got.check(ws.receive_text(), "stream") == {"type": "auth", "exp": None}
        assign = {"opcode": 302, "nodeId": "rami", "payload": {"driver": "rami"}}
        check_response(client.post(f"/api/streams/{sid}/events", json=assign, headers=PLATFORM),
                       201, wire_events.Events)  # fmt: skip
        assert got.check(ws.receive_text(), "stream")["opcode"] == 302
        driver = f"/ws/inbox?token={token('rami', 'driver')}"
        with client.websocket_connect(driver) as inbox:
            assert got.check(inbox.receive_text(), "inbox")["opcode"] == 302
            assert set(got.check(inbox.receive_text(), "inbox")) == {"type", "pos"}
            inbox.send_text('{"type":"ping"}')
            assert got.check(inbox.receive_text(), "inbox") == {"type": "pong"}
            inbox.send_text(json.dumps({"type": "auth", "token": token("rami", "driver")}))
            assert got.check(inbox.receive_text(), "inbox") == {"type": "auth", "exp": None}
            inbox.send_text('{"type":"location","lat":91,"lng":55.2}')
            assert got.check(inbox.receive_text(), "inbox")["type"] == "error"
            inbox.send_text('{"type":"location","lat":25.2,"lng":55.3}')
            location = got.check(ws.receive_text(), "stream")
            assert (location["type"], location["driver"]) == ("location", "rami")
        check_response(client.post(f"/api/streams/{sid}/archive", headers=PLATFORM),
                       200, wire_events.Archived)  # fmt: skip
        assert got.check(ws.receive_text(), "stream") == {"type": "archived", "streamId": sid}
    with client.websocket_connect(f"/ws/inbox?since=x&token={token('ali', 'customer')}") as ws:
        assert got.check(ws.receive_text(), "inbox")["error"]["code"] == "invalid_since"
    assert got.seen == {"stream": set(frames.STREAM_FRAMES), "inbox": set(frames.INBOX_FRAMES)}
    read = check_response(client.get(f"/api/streams/{sid}", headers=PLATFORM), 200,
                          wire_events.Stream)  # fmt: skip
    assert read["status"] == "archived"
    check_response(client.get("/healthz"), 200, ops.Health)
    check_response(client.get(f"/api/streams/{sid}", headers=bearer("eve", "customer")), 403,
                   wire_events.Error)  # fmt: skip
    check_response(client.post(f"/api/streams/{sid}/events", content=b"{", headers=PLATFORM),
                   400, wire_events.Error)  # fmt: skip


def test_the_client_frames_are_what_the_hub_takes() -> None:
    """ping and location decode as the client frames; a location out of range does not."""
    assert msgspec.json.decode(b'{"type":"ping"}', type=frames.PingFrame) == frames.PingFrame()
    loc = msgspec.json.decode(
        b'{"type":"location","lat":1,"lng":2}', type=frames.ClientLocationFrame
    )
    assert (loc.lat, loc.lng) == (1, 2)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"type":"location","lat":91,"lng":2}', type=frames.ClientLocationFrame
        )


# -- what the hub refuses --------------------------------------------------------------


def parsed(body: bytes, *, from_bytes: bool) -> list[NewEvent] | tuple[int, str, str]:
    try:
        if from_bytes:
            return parse_body(body, stream_id="s-1")
        return parse_drafts(loads_json(body), stream_id="s-1")
    except HubError as exc:
        return exc.status, exc.code, exc.message


def refusal(text: str | None) -> tuple[int, str, str] | None:
    if text is None:
        return None
    status, code, message = text.split(" ", 2)
    return int(status), code, message


@pytest.mark.parametrize(
    ("case", "body", "expected"), EVENT_BODIES, ids=[c[0] for c in EVENT_BODIES]
)
def test_an_append_body_is_answered_as_it_always_was(
    case: str, body: bytes, expected: str | None
) -> None:
    """msgspec's fast path and the parsed-JSON path give the old status, code and message."""
    fast, slow = parsed(body, from_bytes=True), parsed(body, from_bytes=False)
    refused = refusal(expected)
    if refused is not None:
        assert fast == refused
        assert slow == refused
        return
    assert isinstance(fast, list)
    assert isinstance(slow, list)

    def same(e: NewEvent) -> tuple[Any, ...]:  # the drawn id and the clock aside
        return (e.opcode, e.node_id, e.point_id, e.delta, json.loads(e.payload), e.ts_given,
                e.fresh_id, e.ts if e.ts_given else None, None if e.fresh_id else e.id)  # fmt: skip

    assert [same(e) for e in fast] == [same(e) for e in slow]


DECODERS = {
    "create": wire_orders.decode_create_order,
    "pay": wire_orders.decode_pay,
    "accept": wire_orders.decode_accept,
    "ready": wire_orders.decode_ready,
    "pickup": wire_orders.decode_pickup,
    "deliver": wire_orders.decode_deliver,
    "motion": wire_orders.decode_motion,
    "driver_status": wire_orders.decode_driver_status,
}


def decoded(kind: str, data: Any) -> tuple[int, str, str] | None:
    try:
        DECODERS[kind](data)
    except HubError as exc:
        return exc.status, exc.code, exc.message
    return None


@pytest.mark.parametrize(
    ("case", "body", "expected"), ORDER_BODIES, ids=[c[0] for c in ORDER_BODIES]
)
def test_an_order_body_is_answered_as_it_always_was(
    case: str, body: Any, expected: str | None
) -> None:
    """Each decode_* refuses (bytes or parsed JSON) with the old status, code and message."""
    kind = case.split("/")[0]
    assert decoded(kind, body) == refusal(expected)
    assert decoded(kind, json.dumps(body).encode()) == refusal(expected)


def test_a_decoded_order_body_keeps_what_was_sent() -> None:
    """Bytes and parsed JSON decode to the same Struct, with the JSON names mapped."""
    body = c(notes="no onions", deliveryLocation={"lat": 25, "lng": 55}, orderId="ord-7")
    order = wire_orders.decode_create_order(j(body))
    assert order == wire_orders.decode_create_order(body)
    assert (order.order_id, order.notes, order.items[0].product_id) == ("ord-7", "no onions", "p")
    online = wire_orders.decode_driver_status({"status": "online", "lat": 1, "lng": 2})
    assert isinstance(online, wire_orders.DriverOnline)
    assert wire.decode(b'{"status":"offline"}', wire_orders.DriverStatus) == (
        wire_orders.DriverOffline()
    )
