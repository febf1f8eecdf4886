"""The hub's HTTP API as an OpenAPI 3.1 document (served at ``GET /openapi.json``).

Every schema in it is generated from the wire Structs of :mod:`hub.edge.wire` (the same
classes that validate requests) by :func:`msgspec.json.schema_components`; nothing here
restates a limit or a pattern. What this module adds is what a Struct cannot know: which
operation takes and answers which Struct (:data:`OPERATIONS`, one per route of
:func:`hub.edge.app.routes`), who may call it (``x-roles``, ``anyone`` for the
unauthenticated routes; the hostile test suite reads it to pick tokens), the statuses it
can answer, and its path and query parameters. Every 4xx/5xx except ``/healthz``'s 503
carries the contract's error body. The WebSocket protocol is the AsyncAPI document at
``/asyncapi.json`` (:mod:`hub.edge.asyncapi`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from hub.config import Settings
from hub.edge.orders import STEPS
from hub.edge.streams import READ_LIMIT_DEFAULT, READ_LIMIT_MAX
from hub.edge.wire.events import (
    Archived,
    Error,
    EventBatch,
    EventDraft,
    Events,
    Stream,
    StreamId,
    TenantId,
)
from hub.edge.wire.ops import (
    DRIVERS_LIMIT_DEFAULT,
    DRIVERS_LIMIT_MAX,
    AppConfig,
    Health,
    InstanceState,
    OnlineDrivers,
    Probe,
)
from hub.edge.wire.orders import (
    STEP_BODIES,
    CreateOrder,
    DriverMe,
    DriverStatus,
    DriverStatusResult,
    LatLng,
    Menu,
    MotionResult,
    OrderCreated,
    OrderDetails,
    OrderStep,
    Product,
)
from hub.edge.wire.restaurants import (
    NewTenant,
    ProductId,
    PutProduct,
    RestaurantStatus,
    SetOpen,
    Tenant,
)
from hub.events import MAX_BATCH, MAX_PAYLOAD_BYTES

__all__ = ["OPERATIONS", "Operation", "openapi_document"]

JSON = "application/json"
COMPONENTS = "#/components/schemas/{name}"
EVERYONE = ("customer", "restaurant", "driver", "platform")
MAX_BODY = next(f.default for f in dataclasses.fields(Settings) if f.name == "max_body_bytes")

Cursor = Annotated[int, Meta(ge=0, le=10**18 - 1)]  # what int_param takes: 18 digits at most
Limit = Annotated[int, Meta(ge=0, le=READ_LIMIT_MAX)]
DriversLimit = Annotated[int, Meta(ge=0, le=DRIVERS_LIMIT_MAX)]

ERROR_TEXT = {
    "400": "Malformed request: an invalid stream or tenant id, a body that is not JSON.",
    "401": "No token or a bad one (signature, alg, expiry, subject, role).",
    "403": "Not allowed: wrong role, or not a member (the same for a stream that does not exist).",
    "404": "Does not exist (the platform learns it; others get 403).",
    "409": "Conflict: same event id with other content, a step out of turn or already done.",
    "413": f"Request body over {MAX_BODY} bytes, a payload over {MAX_PAYLOAD_BYTES} bytes"
    f" encoded, or a batch over {MAX_BATCH} events.",
    "422": "Well-formed JSON that is not valid input (wrong types, missing fields, limits).",
    "500": "A hub fault (never expected).",
    "503": "The streams DB (or the archive) is unavailable; retry.",
}
BODY_ERRORS = "400 401 403 413 422 503"  # a JSON body: 400 not JSON, 413 too large
PATH_PARAMETERS: dict[str, tuple[Any, str]] = {
    "stream_id": (StreamId, "The stream (an order's id); 400 otherwise."),
    "order_id": (StreamId, "The order (its stream id); 400 otherwise."),
    "restaurant": (TenantId, "The restaurant's tenant id."),
    "product_id": (ProductId, "The product (its node id in the restaurant's DB); 400 otherwise."),
}


@dataclass(frozen=True, slots=True)
class Query:
    """A query parameter."""

    name: str
    type: Any
    description: str


@dataclass(frozen=True, slots=True)
class Operation:
    """One route of the hub as the document describes it.

    ``ok`` maps a status to its description and response Struct; ``errors`` names the
    error statuses (``"400 401"``; 500 is always added). Path parameters come from the
    path itself (:data:`PATH_PARAMETERS`).
    """

    method: str
    path: str
    op_id: str
    summary: str
    roles: tuple[str, ...]
    ok: dict[str, tuple[str, Any]]
    errors: str = ""
    body: Any = None
    body_text: str = ""
    query: tuple[Query, ...] = ()
    media_type: str = JSON

    @property
    def public(self) -> bool:
        return self.roles == ("anyone",)


# (summary, the party that takes the step; the platform may take every step)
STEP_DOCS: dict[str, tuple[str, str]] = {
    "pay": ("Pay (seed Step 2).", "customer"),
    "accept": ("Accept and start cooking (seed Steps 3-4).", "restaurant"),
    "ready": ("Food ready, assign a driver (seed Steps 5-6).", "restaurant"),
    "pickup": ("Picked up (seed Step 8).", "driver"),
    "deliver": ("Delivered (seed Steps 10-11).", "driver"),
    "cancel": ("Cancel: the customer while placed or paid, the restaurant until ready (a"
               " rejection), the platform until delivered; refund, stock back, driver off.",
               "customer"),
    "decline": ("The assigned driver gives the order back before pickup; it goes to the"
                " next nearest idle driver.", "driver"),
}


def _step(name: str) -> Operation:
    summary, role = STEP_DOCS.get(name, (f"The {name} step.", "platform"))
    return Operation(
        "POST", f"/api/orders/{{order_id}}/{name}", name, summary,
        ((role, "restaurant", "platform") if name == "cancel"
         else (role, "platform") if role != "platform" else ("platform",)),
        {"200": ("The step's writes.", OrderStep)}, "400 401 403 404 409 413 422 503",
        body=STEP_BODIES.get(name, dict[str, Any]), body_text=f"The {name} step's fields.",
    )  # fmt: skip


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST", "/api/streams/{stream_id}/events", "appendEvents",
        "Append one event or a batch (the generic event API).", EVERYONE,
        {"201": ("Committed.", Events),
         "200": ("A retry: the stored events, nothing written.", Events)},
        "400 401 403 409 413 422 503",
        body=EventDraft | EventBatch,
        body_text=f"One event or a batch; the body at most {MAX_BODY} bytes.",
    ),
    Operation(
        "GET", "/api/streams/{stream_id}", "readStream",
        "A stream's events after since (members and the platform).", EVERYONE,
        {"200": ("The stream.", Stream)}, "400 401 403 404 503",
        query=(Query("since", Cursor, "Only events with seq > since (default 0)."),
               Query("limit", Limit, f"At most this many events (default"
                     f" {READ_LIMIT_DEFAULT}, max {READ_LIMIT_MAX}).")),
    ),
    Operation(
        "POST", "/api/streams/{stream_id}/archive", "archiveStream",
        "Archive a stream now, then delete it from the streams DB.", ("platform",),
        {"200": ("Archived.", Archived)}, "400 401 403 404 503",
    ),
    Operation(
        "POST", "/api/orders", "createOrder", "Place an order (seed Step 1).", ("customer",),
        {"201": ("Placed.", OrderCreated)}, "400 401 403 409 413 422 503",
        body=CreateOrder, body_text="The order.",
    ),
    *(_step(name) for name in STEPS),
    Operation(
        "GET", "/api/orders/{order_id}", "orderDetails",
        "What the apps show of an order (members and the platform).", EVERYONE,
        {"200": ("The order.", OrderDetails)}, "400 401 403 404 422 503",
    ),
    Operation(
        "GET", "/api/restaurants/{restaurant}", "menu",
        "A restaurant's name, location and products.", EVERYONE,
        {"200": ("The menu.", Menu)}, "400 401 404 422 503",
    ),
    Operation(
        "PUT", "/api/restaurants/{restaurant}/menu/{product_id}", "putProduct",
        "Create a product of the restaurant's menu, or change what is given of one.",
        ("restaurant", "platform"),
        {"201": ("Created: the product as the menu lists it.", Product),
         "200": ("Changed (or already so: nothing written): the product.", Product)},
        "400 401 403 404 409 413 422 503",
        body=PutProduct, body_text="What to set; a new product needs title and price.",
    ),
    Operation(
        "POST", "/api/restaurants/{restaurant}/status", "restaurantStatus",
        "Open or close the restaurant for orders.", ("restaurant", "platform"),
        {"200": ("The restaurant's state.", RestaurantStatus)}, "400 401 403 404 413 422 503",
        body=SetOpen, body_text="Open or closed.",
    ),
    Operation(
        "POST", "/api/tenants", "createTenant",
        "Create a tenant (a restaurant, customer or driver) with its database.", ("platform",),
        {"201": ("Created.", Tenant),
         "200": ("The same tenant exists already: nothing written.", Tenant)},
        "400 401 403 409 413 422 503",
        body=NewTenant, body_text="The tenant.",
    ),
    Operation(
        "POST", "/api/motion", "motion",
        "A driver's position (seed Steps 7 and 9; the driver's tenant DB only).", ("driver",),
        {"200": ("Taken (or rate-limited).", MotionResult)}, BODY_ERRORS,
        body=LatLng, body_text="The position.",
    ),
    Operation(
        "POST", "/api/drivers/status", "driverStatus",
        "A driver comes online or goes offline.", ("driver",),
        {"200": ("The new availability.", DriverStatusResult)}, "400 401 403 409 413 422 503",
        body=DriverStatus, body_text="The availability.",
    ),
    Operation(
        "GET", "/api/drivers/me", "driverMe",
        "A driver's own availability, position and current order.", ("driver",),
        {"200": ("The driver.", DriverMe)}, "401 403 503",
    ),
    Operation(
        "GET", "/healthz", "healthz",
        "Health: 200 while the streams DB answers and takes appends, else 503.", ("anyone",),
        {"200": ("Serving (ok or degraded).", Health),
         "503": ("The streams DB does not answer or refused appends lately.", Health)},
    ),
    Operation(
        "GET", "/livez", "livez", "Liveness: 200 while the process serves.", ("anyone",),
        {"200": ("Serving.", Probe)},
    ),
    Operation(
        "GET", "/readyz", "readyz",
        "Readiness: 200 while the streams DB answers, else 503 (the error body, fixed text).",
        ("anyone",), {"200": ("Ready.", Probe)}, "503",
    ),
    Operation(
        "GET", "/metrics", "metrics", "Prometheus metrics.", ("anyone",),
        {"200": ("Prometheus text exposition.", str)}, media_type="text/plain",
    ),
    Operation(
        "GET", "/openapi.json", "openapi", "This document.", ("anyone",),
        {"200": ("OpenAPI 3.1.", dict[str, Any])},
    ),
    Operation(
        "GET", "/asyncapi.json", "asyncapi",
        "The WebSocket protocol (every frame, every close code) as an AsyncAPI 3.0 document.",
        ("anyone",), {"200": ("AsyncAPI 3.0.", dict[str, Any])},
    ),
    Operation(
        "GET", "/api/config", "appConfig",
        "What the web apps learn of the hub's settings: the street map's tiles (HUB_MAP_TILES)"
        " and their attribution.", ("anyone",),
        {"200": ("The apps' configuration.", AppConfig)},
    ),
    Operation(
        "GET", "/api/ops/instance", "opsInstance",
        "This instance: its checks, sockets and rates from its own counters (the console).",
        ("platform",), {"200": ("The instance.", InstanceState)}, "401 403 503",
    ),
    Operation(
        "GET", "/api/ops/drivers", "opsDrivers",
        "The drivers online or on a delivery, with their last fix (the console).",
        ("platform",), {"200": ("The drivers, by tenant id.", OnlineDrivers)},
        "400 401 403 503",
        query=(Query("limit", DriversLimit, f"At most this many drivers (default"
                     f" {DRIVERS_LIMIT_DEFAULT}, max {DRIVERS_LIMIT_MAX})."),),
    ),
)  # fmt: skip


def _types() -> list[Any]:
    """Every type the document names, each once, in a fixed order."""
    found: dict[str, Any] = {}
    for op in OPERATIONS:
        types = [t for _, t in op.ok.values()] + [q.type for q in op.query] + [Error]
        if op.body is not None:
            types.append(op.body)
        for name in re.findall(r"{(\w+)}", op.path):
            types.append(PATH_PARAMETERS[name][0])
        for tp in types:
            found.setdefault(repr(tp), tp)
    return list(found.values())


def _operation(op: Operation, schema: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def content(tp: Any, media_type: str = JSON) -> dict[str, Any]:
        return {media_type: {"schema": schema[repr(tp)]}}

    responses: dict[str, Any] = {
        status: {"description": text, "content": content(tp, op.media_type)}
        for status, (text, tp) in op.ok.items()
    }
    for status in [*op.errors.split(), "500"] if op.errors else []:
        responses[status] = {"description": ERROR_TEXT[status], "content": content(Error)}
    out: dict[str, Any] = {
        "operationId": op.op_id,
        "summary": op.summary,
        "x-roles": list(op.roles),
        "security": [] if op.public else [{"bearerAuth": []}],
        "responses": responses,
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema[repr(tp)],
         "description": text}
        for name in re.findall(r"{(\w+)}", op.path)
        for tp, text in [PATH_PARAMETERS[name]]
    ] + [
        {"name": q.name, "in": "query", "required": False, "schema": schema[repr(q.type)],
         "description": q.description}
        for q in op.query
    ]  # fmt: skip
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": True, "description": op.body_text,
                              "content": content(op.body)}  # fmt: skip
    return out


@cache
def _document() -> dict[str, Any]:
    types = _types()
    # Two Structs without a tag cannot be one msgspec type: the append body is either.
    plain = [t for t in types if t != EventDraft | EventBatch] + [EventDraft, EventBatch]
    schemas, components = msgspec.json.schema_components(plain, ref_template=COMPONENTS)
    schema = {repr(t): s for t, s in zip(plain, schemas, strict=True)}
    schema[repr(EventDraft | EventBatch)] = {"anyOf": [schema[repr(EventDraft)],
                                                       schema[repr(EventBatch)]]}  # fmt: skip
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schema)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hub",
            "version": "0.1.0",
            "description": "A real-time stream hub for delivery platforms (see docs/protocol.md)."
            ' Errors are {"error": {"code", "message"}}. The WebSocket protocol, and the same'
            " subscriptions as Server-Sent Events (GET /sse/streams/{streamId}, GET /sse/inbox),"
            " are described at /asyncapi.json.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": ("A JWT with sub (tenant id) and role: HS256 with"
                                    " HUB_SECRET, or RS256/ES256/EdDSA from HUB_JWKS_URL."),
                },
            },
            "schemas": components,
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every HTTP route of the hub (a fresh copy)."""
    return copy.deepcopy(_document())
