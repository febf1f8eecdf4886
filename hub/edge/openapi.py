"""The hub's HTTP API as an OpenAPI 3.0.3 document (served at ``GET /openapi.json``).

:func:`openapi_document` describes every HTTP route of :mod:`hub.edge.app`: request bodies
with the limits that :mod:`hub.events` and :mod:`hub.domain.orders` enforce, path and query
parameters with the id patterns of CONTRACT §2, bearer-JWT security, and every status a
route can answer. Every 4xx/5xx except ``/healthz``'s 503 carries the contract's error
body ``{"error": {"code", "message"}}``. The WebSocket paths cannot be described in
OpenAPI; they are listed under the ``x-websockets`` extension.

Each operation names the roles that may call it in ``x-roles`` (``anyone`` for the
unauthenticated routes); the hostile test suite reads it to pick tokens.
"""

from __future__ import annotations

import copy
from typing import Any

from hub.events import MAX_DEPTH, OPCODES

__all__ = ["openapi_document"]

JSON = "application/json"
TENANT_PATTERN = "^[a-z0-9][a-z0-9-]{0,62}$"
STREAM_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
ORDER_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"
NON_BLANK = "\\S"  # at least one non-whitespace character (the hub strips before checking)
ORDER_STATUSES = ["placed", "paid", "preparing", "ready", "assigned", "picked_up", "delivered"]
MAX_BODY = 1 << 20
MAX_PAYLOAD = 64 << 10
MAX_BATCH = 100
READ_LIMIT_MAX = 10_000
MAX_ITEMS = 50
MAX_QTY = 1000

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _obj(
    props: dict[str, Schema], required: list[str] | None = None, *, extra: bool = False, **more: Any
) -> Schema:
    schema: Schema = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        schema["required"] = required
    schema.update(more)
    return schema


def _text(max_len: int) -> Schema:
    """A string the hub takes when it is non-blank and at most ``max_len`` characters."""
    return {"type": "string", "minLength": 1, "maxLength": max_len, "pattern": NON_BLANK}


def _coord(limit: int) -> Schema:
    return {"type": "number", "minimum": -limit, "maximum": limit}


LAT_LNG = _obj({"lat": _coord(90), "lng": _coord(180)}, ["lat", "lng"], extra=True)


def _schemas() -> dict[str, Schema]:
    opcodes = sorted(OPCODES)
    location = _obj({"lat": {"type": "number"}, "lng": {"type": "number"}}, ["lat", "lng"])
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": {"type": "string", "minLength": 1},
                        "message": {"type": "string", "minLength": 1},
                    },
                    ["code", "message"],
                )
            },
            ["error"],
            description="The contract's error body (CONTRACT §4).",
        ),
        "TenantId": {"type": "string", "pattern": TENANT_PATTERN},
        "StreamId": {"type": "string", "pattern": STREAM_PATTERN},
        "OrderStatus": {"type": "string", "enum": ORDER_STATUSES},
        "Location": location,
        "Event": _obj(
            {
                "id": {"type": "string"},
                "streamId": {"type": "string"},
                "seq": {"type": "integer", "minimum": 1},
                "pos": {"type": "integer", "minimum": 1},
                "opcode": {"type": "integer", "enum": opcodes},
                "name": {"type": "string", "enum": [OPCODES[o] for o in opcodes]},
                "nodeId": _nullable({"type": "string"}),
                "pointId": _nullable({"type": "string"}),
                "delta": {"type": "number"},
                "payload": {"type": "object"},
                "ts": {
                    "type": "string",
                    "pattern": "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z$",
                },
            },
            [
                "id",
                "streamId",
                "seq",
                "pos",
                "opcode",
                "name",
                "nodeId",
                "pointId",
                "delta",
                "payload",
                "ts",
            ],
            description="A committed event (CONTRACT §3).",
        ),
        "EventDraft": _obj(
            {
                "id": _nullable(
                    {
                        "type": "string",
                        "pattern": STREAM_PATTERN,
                        "description": "Generated when absent; a retry with the same "
                        "id and content returns the stored event.",
                    }
                ),
                "opcode": {"type": "integer", "enum": opcodes},
                "name": {
                    "type": "string",
                    "enum": [OPCODES[o] for o in opcodes],
                    "description": "Must be the opcode's name when given.",
                },
                "streamId": {"type": "string", "description": "Must equal the URL's when given."},
                "nodeId": _nullable({"type": "string", "minLength": 1, "maxLength": 128}),
                "pointId": _nullable({"type": "string", "minLength": 1, "maxLength": 128}),
                "delta": _nullable({"type": "number", "description": "A finite number."}),
                "payload": _nullable(
                    {
                        "type": "object",
                        "description": f"At most {MAX_PAYLOAD} bytes encoded (413 over it) and "
                        f"{MAX_DEPTH} levels deep (422 too_deep over it).",
                    }
                ),
                "ts": _nullable(
                    {
                        "type": "string",
                        "maxLength": 64,
                        "description": "ISO 8601 with a timezone; now when absent.",
                    }
                ),
            },
            ["opcode"],
            description="One event as a client sends it (CONTRACT §4).",
        ),
        "EventBatch": _obj(
            {
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": _ref("EventDraft"),
                }
            },
            ["events"],
            description=f"1..{MAX_BATCH} events, committed all or nothing "
            f"(413 batch_too_large over {MAX_BATCH}, 422 empty_batch when empty).",
        ),
        "Events": _obj({"events": {"type": "array", "items": _ref("Event")}}, ["events"]),
        "Stream": _obj(
            {
                "streamId": _ref("StreamId"),
                "status": {"type": "string", "enum": ["active", "archived"]},
                "orderStatus": _nullable(_ref("OrderStatus")),
                "lastSeq": {"type": "integer", "minimum": 0},
                "events": {"type": "array", "items": _ref("Event")},
            },
            ["streamId", "status", "orderStatus", "lastSeq", "events"],
        ),
        "Archived": _obj(
            {
                "streamId": _ref("StreamId"),
                "status": {"type": "string", "enum": ["archived"]},
                "archivedEvents": {"type": "integer", "minimum": 0},
            },
            ["streamId", "status", "archivedEvents"],
        ),
        "OrderCreate": _obj(
            {
                "restaurant": _ref("TenantId"),
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_ITEMS,
                    "description": "Each productId at most once.",
                    "items": _obj(
                        {
                            "productId": _text(128),
                            "qty": {"type": "integer", "minimum": 1, "maximum": MAX_QTY},
                        },
                        ["productId", "qty"],
                    ),
                },
                "deliveryAddress": _text(300),
                "notes": _nullable(_text(500)),
                "deliveryLocation": _nullable(LAT_LNG),
                "orderId": _nullable({"type": "string", "pattern": ORDER_ID_PATTERN}),
            },
            ["restaurant", "items", "deliveryAddress"],
            extra=True,
        ),
        "OrderCreated": _obj(
            {
                "orderId": _ref("StreamId"),
                "streamId": _ref("StreamId"),
                "orderStatus": _ref("OrderStatus"),
                "total": {"type": "number"},
                "currency": {"type": "string"},
                "events": {"type": "array", "items": _ref("Event")},
            },
            ["orderId", "streamId", "orderStatus", "total", "currency", "events"],
        ),
        "OrderStep": _obj(
            {
                "orderId": _ref("StreamId"),
                "orderStatus": _ref("OrderStatus"),
                "events": {
                    "type": "array",
                    "items": _ref("Event"),
                    "description": "What the step wrote.",
                },
            },
            ["orderId", "orderStatus", "events"],
        ),
        "Pay": _obj(
            {
                "method": _text(32),
                "cardLast4": _nullable({"type": "string", "pattern": "^[0-9]{4}$"}),
            },
            ["method"],
            extra=True,
        ),
        "Accept": _obj(
            {
                "chef": _nullable(_text(100)),
                "station": _nullable(_text(100)),
                "estMinutes": _nullable({"type": "integer", "minimum": 1, "maximum": 600}),
            },
            extra=True,
        ),
        "Ready": _obj(
            {"actualMinutes": _nullable({"type": "integer", "minimum": 0, "maximum": 600})},
            extra=True,
        ),
        "Pickup": _obj(
            {
                "confirmedItems": _nullable(
                    {"type": "integer", "minimum": 0, "maximum": MAX_ITEMS * MAX_QTY}
                )
            },
            extra=True,
        ),
        "LatLng": LAT_LNG,
        "Motion": _obj(
            {
                "driver": _ref("TenantId"),
                "accepted": {"type": "boolean", "description": "False: rate-limited."},
            },
            ["driver", "accepted"],
        ),
        "DriverStatus": {
            "oneOf": [
                _obj(
                    {
                        "status": {"type": "string", "enum": ["online"]},
                        "vehicle": _nullable(_text(50)),
                        "lat": _coord(90),
                        "lng": _coord(180),
                    },
                    ["status", "lat", "lng"],
                    extra=True,
                ),
                _obj(
                    {
                        "status": {"type": "string", "enum": ["offline"]},
                        "vehicle": _nullable(_text(50)),
                    },
                    ["status"],
                    extra=True,
                ),
            ],
            "description": "Online (idle, discoverable at lat/lng) or offline.",
        },
        "DriverMe": _obj(
            {
                "driver": _ref("TenantId"),
                "status": {"type": "string", "enum": ["online", "offline", "en-route"]},
                "lat": _nullable({"type": "number"}),
                "lng": _nullable({"type": "number"}),
                "orderId": _nullable({"type": "string"}),
            },
            ["driver", "status", "lat", "lng", "orderId"],
        ),
        "DriverStatusResult": _obj(
            {
                "driver": _ref("TenantId"),
                "status": {"type": "string", "enum": ["online", "offline"]},
                "pointId": {"type": "string"},
            },
            ["driver", "status", "pointId"],
        ),
        "OrderDetails": _obj(
            {
                "orderId": _ref("StreamId"),
                "orderStatus": _ref("OrderStatus"),
                "status": {"type": "string", "enum": ["active", "archived"]},
                "customer": {"type": "string"},
                "restaurant": {"type": "string"},
                "restaurantName": {"type": "string"},
                "pickupAddress": {"nullable": True, "description": "The restaurant's address."},
                "restaurantLocation": _nullable(location),
                "deliveryAddress": {"description": "As the order was placed."},
                "deliveryLocation": {"nullable": True, "description": "Where it goes, if known."},
                "items": {"type": "array"},
                "total": {"type": "number"},
                "currency": {"type": "string"},
                "driver": _nullable({"type": "string"}),
                "driverLocation": _nullable(location),
                "lastSeq": {"type": "integer", "minimum": 0},
            },
            [
                "orderId",
                "orderStatus",
                "status",
                "customer",
                "restaurant",
                "restaurantName",
                "pickupAddress",
                "restaurantLocation",
                "deliveryAddress",
                "deliveryLocation",
                "items",
                "total",
                "currency",
                "driver",
                "driverLocation",
                "lastSeq",
            ],
        ),
        "Menu": _obj(
            {
                "restaurant": _ref("TenantId"),
                "nodeId": {"type": "string"},
                "name": _nullable({"type": "string"}),
                "address": {"nullable": True},
                "location": _nullable(location),
                "products": {
                    "type": "array",
                    "items": _obj(
                        {
                            "productId": {"type": "string"},
                            "title": _nullable({"type": "string"}),
                            "desc": {"nullable": True},
                            "pointId": {"type": "string"},
                            "stock": _nullable({"type": "number"}),
                            "price": _nullable({"type": "number"}),
                            "currency": _nullable({"type": "string"}),
                            "availability": _nullable({"type": "string"}),
                        },
                        [
                            "productId",
                            "title",
                            "desc",
                            "pointId",
                            "stock",
                            "price",
                            "currency",
                            "availability",
                        ],
                    ),
                },
            },
            ["restaurant", "nodeId", "name", "address", "location", "products"],
        ),
        "Health": _obj(
            {
                "status": {"type": "string", "enum": ["ok", "degraded", "failing"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            ["status", "checks"],
        ),
    }


ERROR_TEXT = {
    "400": "Malformed request: an invalid stream or tenant id, a body that is not JSON.",
    "401": "No token or a bad one (signature, alg, expiry, subject, role).",
    "403": "Not allowed: wrong role, or not a member (the same for a stream that does not exist).",
    "404": "Does not exist (the platform learns it; others get 403).",
    "409": "Conflict: same event id with other content, a step out of turn or already done.",
    "413": f"Request body over {MAX_BODY} bytes, a payload over {MAX_PAYLOAD} bytes encoded, or "
    f"a batch over {MAX_BATCH} events.",
    "422": "Well-formed JSON that is not valid input (wrong types, missing fields, limits).",
    "500": "A hub fault (never expected).",
    "503": "The streams DB (or the archive) is unavailable; retry.",
}


def _error(status: str) -> Schema:
    return {"description": ERROR_TEXT[status], "content": {JSON: {"schema": _ref("Error")}}}


def _ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _responses(ok: dict[str, Schema], errors: str) -> dict[str, Schema]:
    """``ok`` plus the error statuses named in ``errors`` (e.g. ``"400 401 403"``)."""
    out = dict(ok)
    for status in [*errors.split(), "500"]:
        out[status] = _error(status)
    return out


def _body(schema: Schema, description: str) -> Schema:
    return {"required": True, "description": description, "content": {JSON: {"schema": schema}}}


def _path(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _query_int(name: str, description: str, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "minimum": 0, "maximum": maximum or 10**18 - 1}
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


STREAM_PARAM = _path("stream_id", _ref("StreamId"), "The stream (an order's id); 400 otherwise.")
ORDER_PARAM = _path("order_id", _ref("StreamId"), "The order (its stream id); 400 otherwise.")
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
BODY_ERRORS = "400 401 403 413 422 503"  # read_json: 400 not JSON, 413 too large


def _op(
    op_id: str,
    summary: str,
    roles: list[str],
    responses: dict[str, Schema],
    *,
    params: list[Schema] | None = None,
    body: Schema | None = None,
    public: bool = False,
) -> Schema:
    op: Schema = {
        "operationId": op_id,
        "summary": summary,
        "x-roles": roles,
        "security": [] if public else BEARER,
        "responses": responses,
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    return op


def _step(op_id: str, summary: str, role: str, schema: Schema) -> Schema:
    return {
        "post": _op(
            op_id,
            summary,
            [role, "platform"],
            _responses(
                {"200": _ok("The step's writes.", _ref("OrderStep"))},
                "400 401 403 404 409 413 422 503",
            ),
            params=[ORDER_PARAM],
            body=_body(schema, f"The {op_id} step's fields."),
        )
    }


def _paths() -> dict[str, Schema]:
    event_body = {"anyOf": [_ref("EventDraft"), _ref("EventBatch")]}
    return {
        "/api/streams/{stream_id}/events": {
            "post": _op(
                "appendEvents",
                "Append one event or a batch (the generic event API).",
                ["customer", "restaurant", "driver", "platform"],
                _responses(
                    {
                        "201": _ok("Committed.", _ref("Events")),
                        "200": _ok("A retry: the stored events, nothing written.", _ref("Events")),
                    },
                    "400 401 403 409 413 422 503",
                ),
                params=[STREAM_PARAM],
                body=_body(event_body, f"One event or a batch; the body at most {MAX_BODY} bytes."),
            )
        },
        "/api/streams/{stream_id}": {
            "get": _op(
                "readStream",
                "A stream's events after since (members and the platform).",
                ["customer", "restaurant", "driver", "platform"],
                _responses({"200": _ok("The stream.", _ref("Stream"))}, "400 401 403 404 503"),
                params=[
                    STREAM_PARAM,
                    _query_int("since", "Only events with seq > since (default 0)."),
                    _query_int(
                        "limit",
                        f"At most this many events (default 1000, max {READ_LIMIT_MAX}).",
                        READ_LIMIT_MAX,
                    ),
                ],
            )
        },
        "/api/streams/{stream_id}/archive": {
            "post": _op(
                "archiveStream",
                "Archive a stream now, then delete it from the streams DB.",
                ["platform"],
                _responses({"200": _ok("Archived.", _ref("Archived"))}, "400 401 403 404 503"),
                params=[STREAM_PARAM],
            )
        },
        "/api/orders": {
            "post": _op(
                "createOrder",
                "Place an order (seed Step 1).",
                ["customer"],
                _responses(
                    {"201": _ok("Placed.", _ref("OrderCreated"))}, "400 401 403 409 413 422 503"
                ),
                body=_body(_ref("OrderCreate"), "The order."),
            )
        },
        "/api/orders/{order_id}/pay": _step("pay", "Pay (Step 2).", "customer", _ref("Pay")),
        "/api/orders/{order_id}/accept": _step(
            "accept", "Accept and start cooking (Steps 3-4).", "restaurant", _ref("Accept")
        ),
        "/api/orders/{order_id}/ready": _step(
            "ready", "Food ready, assign a driver (Steps 5-6).", "restaurant", _ref("Ready")
        ),
        "/api/orders/{order_id}/pickup": _step(
            "pickup", "Picked up (Step 8).", "driver", _ref("Pickup")
        ),
        "/api/orders/{order_id}/deliver": _step(
            "deliver", "Delivered (Steps 10-11).", "driver", _ref("LatLng")
        ),
        "/api/orders/{order_id}": {
            "get": _op(
                "orderDetails",
                "What the apps show of an order (members and the platform).",
                ["customer", "restaurant", "driver", "platform"],
                _responses(
                    {"200": _ok("The order.", _ref("OrderDetails"))}, "400 401 403 404 422 503"
                ),
                params=[ORDER_PARAM],
            )
        },
        "/api/restaurants/{restaurant}": {
            "get": _op(
                "menu",
                "A restaurant's name, location and products.",
                ["customer", "restaurant", "driver", "platform"],
                _responses({"200": _ok("The menu.", _ref("Menu"))}, "400 401 404 422 503"),
                params=[_path("restaurant", _ref("TenantId"), "The restaurant's tenant id.")],
            )
        },
        "/api/motion": {
            "post": _op(
                "motion",
                "A driver's position (Steps 7 and 9; the driver's tenant DB only).",
                ["driver"],
                _responses({"200": _ok("Taken (or rate-limited).", _ref("Motion"))}, BODY_ERRORS),
                body=_body(_ref("LatLng"), "The position."),
            )
        },
        "/api/drivers/status": {
            "post": _op(
                "driverStatus",
                "A driver comes online or goes offline.",
                ["driver"],
                _responses(
                    {"200": _ok("The new availability.", _ref("DriverStatusResult"))},
                    "400 401 403 409 413 422 503",
                ),
                body=_body(_ref("DriverStatus"), "The availability."),
            )
        },
        "/api/drivers/me": {
            "get": _op(
                "driverMe",
                "A driver's own availability, position and current order.",
                ["driver"],
                _responses({"200": _ok("The driver.", _ref("DriverMe"))}, "401 403 503"),
            )
        },
        "/healthz": {
            "get": _op(
                "healthz",
                "Health: 200 while the streams DB answers, else 503.",
                ["anyone"],
                {
                    "200": _ok("Serving (ok or degraded).", _ref("Health")),
                    "503": _ok("The streams DB does not answer.", _ref("Health")),
                },
                public=True,
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics.",
                ["anyone"],
                {
                    "200": {
                        "description": "Prometheus text exposition.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                public=True,
            )
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "This document.",
                ["anyone"],
                {"200": _ok("OpenAPI 3.0.3.", {"type": "object"})},
                public=True,
            )
        },
    }


WEBSOCKETS: dict[str, Schema] = {
    "/ws/streams/{stream_id}": {
        "summary": "One order's channel: replay after ?since=N, a live frame, then new events.",
        "roles": ["customer", "restaurant", "driver", "platform"],
        "auth": "Authorization: Bearer T, or ?token=T",
        "closeCodes": {
            "1000": "archived",
            "1008": "bad since",
            "1009": "frame over 1 MiB",
            "4008": "stalled",
            "4029": "too many sockets for this tenant and role",
            "4401": "not authenticated",
            "4403": "not allowed (or no such stream)",
        },
    },
    "/ws/inbox": {
        "summary": "Every event of the tenant's streams after ?since=P (pos), then live.",
        "roles": ["customer", "restaurant", "driver", "platform"],
        "auth": "Authorization: Bearer T, or ?token=T",
        "closeCodes": {
            "1008": "bad since",
            "1009": "frame over 1 MiB",
            "4008": "stalled",
            "4029": "too many sockets for this tenant and role",
            "4401": "not authenticated",
        },
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0.3 description of every HTTP route of the hub (a fresh copy)."""
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "hub",
            "version": "0.1.0",
            "description": "A real-time stream hub for delivery platforms (see CONTRACT.md). "
            'Errors are {"error": {"code", "message"}}.',
        },
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 JWT with sub (tenant id) and role.",
                },
            },
            "schemas": _schemas(),
        },
        "x-websockets": WEBSOCKETS,
    }
    return copy.deepcopy(doc)
