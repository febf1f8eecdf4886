"""Wire shapes of the operations endpoints: the probes (``/healthz``, ``/livez``,
``/readyz``), the platform's ``/api/ops/*`` and the apps' ``/api/config`` (``/metrics`` is
Prometheus text, ``/openapi.json`` and ``/asyncapi.json`` are the documents themselves)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

__all__ = [
    "DRIVERS_LIMIT_DEFAULT",
    "DRIVERS_LIMIT_MAX",
    "AppConfig",
    "Health",
    "InstanceState",
    "OnlineDriver",
    "OnlineDrivers",
    "Probe",
]

DRIVERS_LIMIT_DEFAULT = 100  # GET /api/ops/drivers?limit=
DRIVERS_LIMIT_MAX = 500

Check = Literal["ok", "failing"]
Count = Annotated[int, Meta(ge=0)]
Rate = Annotated[float, Meta(ge=0)]


class Health(Struct, forbid_unknown_fields=True):
    """The hub's health: ``ok``; ``degraded`` (it still serves, e.g. through a Redis outage
    or a tenant DB failing); ``failing`` (503: the streams DB does not answer, or refused
    appends in the last 10 s)."""

    status: Literal["ok", "degraded", "failing"]
    checks: Annotated[
        dict[str, Check],
        Meta(description="streams_db, broker, tenant_dbs, public_db: ok or failing (why is "
                         "in the hub's log)."),
    ]


class Probe(Struct, forbid_unknown_fields=True):
    """A probe's answer: ``/livez`` while the process serves, ``/readyz`` while the streams
    DB answers (a ``/readyz`` that is not ready is a 503 with the error body)."""

    status: Literal["ok"]


class InstanceState(Struct, forbid_unknown_fields=True):
    """One hub instance as the platform console shows it: who it is, its checks, its
    sockets and its rates, from its own counters (no Prometheus needed)."""

    instanceId: Annotated[str, Meta(description="hostname:pid, stable while it runs.")]
    hostname: str
    pid: Count
    startedAt: Annotated[str, Meta(description="ISO 8601 UTC.")]
    uptimeSeconds: Rate
    status: Literal["ok", "degraded", "failing"]
    checks: Annotated[
        dict[str, Check],
        Meta(description="As /healthz: streams_db, broker, tenant_dbs, public_db."),
    ]
    broker: Annotated[
        Literal["memory", "redis"],
        Meta(description="redis: HUB_REDIS_URL links instances; memory: this process only."),
    ]
    websockets: Annotated[Count, Meta(description="Open WebSockets (hub_ws_connections).")]
    subscriptions: Annotated[Count, Meta(description="Stream and inbox subscriptions.")]
    connections: Annotated[
        Count, Meta(description="Client connections open, HTTP and WebSocket (hub serve).")
    ]
    openFds: Annotated[Count | None, Meta(description="File descriptors open, if known.")]
    rateWindowSeconds: Annotated[
        Rate, Meta(description="The window of the rates: up to the last 10 s (since start at"
                               " the first call).")
    ]
    deliveriesPerSecond: Annotated[Rate, Meta(description="Frames sent to clients per second.")]
    eventsPerSecond: Annotated[Rate, Meta(description="Events committed per second.")]
    dbWritesPerSecond: Annotated[
        dict[str, Rate], Meta(description="Rows written per second: streams, tenant, public.")
    ]
    framesSent: Count
    eventsAppended: Count
    slowConsumerFallbacks: Count


class OnlineDriver(Struct, forbid_unknown_fields=True):
    """A driver online (idle and discoverable) or on a delivery, and its last fix."""

    driver: Annotated[str, Meta(description="The driver's tenant id.")]
    name: str | None
    status: Literal["online", "en-route"]
    orderId: Annotated[str | None, Meta(description="The order it is claimed for, if any.")]
    lat: Annotated[float | None, Meta(description="The last fix (the driver's own DB).")]
    lng: float | None
    lastSeen: Annotated[str | None, Meta(
        description="When that fix arrived (ISO 8601); None before the first GPS fix.")]


class OnlineDrivers(Struct, forbid_unknown_fields=True):
    """The drivers online, by tenant id; ``more`` when ``limit`` cut the list."""

    drivers: list[OnlineDriver]
    more: bool


class AppConfig(Struct, forbid_unknown_fields=True):
    """What the web apps learn of the hub when they open (``GET /api/config``, no token):
    the street map's tiles, or none (the schematic map)."""

    mapTiles: Annotated[str | None, Meta(
        description="HUB_MAP_TILES: an http(s) tile URL template with {z}, {x} and {y};"
                    " null: no street map.")]
    mapAttribution: Annotated[str, Meta(
        description="HUB_MAP_ATTRIBUTION: the tile provider's attribution, plain text.")]
