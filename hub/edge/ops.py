"""Operations endpoints: the probes (``/healthz``, ``/livez``, ``/readyz``), ``/metrics``,
the hub's own description (``/openapi.json`` for HTTP, ``/asyncapi.json`` for the
WebSocket protocol, ``/api/config`` for the web apps), and the platform console's reads
(``/api/ops/instance``, ``/api/ops/drivers``). Also :func:`timed`, which puts every HTTP
route of the table under ``hub_http_request_duration_seconds``.

No answer here carries internal error text: a check is ``ok`` or ``failing`` and why it
fails goes to the log (logger ``hub.health``), once per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, Literal, cast

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.domain.node import Node
from hub.edge.http import int_param, principal
from hub.edge.wire.ops import (
    DRIVERS_LIMIT_DEFAULT,
    DRIVERS_LIMIT_MAX,
    AppConfig,
    InstanceState,
    OnlineDriver,
    OnlineDrivers,
    Probe,
)
from hub.errors import Forbidden, Unavailable
from hub.infra.tenants import Tenants
from hub.metrics import HEALTH_CHECKS, Metrics

__all__ = ["OpsHttp", "timed"]

log = logging.getLogger("hub.health")

RATE_WINDOW = 10.0  # seconds the console's rates look back (at most)
RATE_MIN = 1.0  # a shorter window is too noisy: the previous sample is taken instead
SAMPLES_KEPT = 64
READY_TIMEOUT = 2.0  # seconds the streams DB has to answer a probe's ping
METRICS_CHECK_EVERY = 5.0  # seconds: a scrape of /metrics runs the checks at most this often

# Drivers online (idle and discoverable) or claimed for an order, from the public DB.
# A workspaceId that is no tenant id (docs/protocol.md §2) names no database: skipped.
_DRIVERS_ONLINE = (
    "SELECT p.workspaceId, n.title, p.claim, p.lat, p.lng FROM points p"
    " JOIN nodes n ON n.workspaceId = p.workspaceId AND n.id = p.nodeId"
    " WHERE n.nodeType = 'driver'"
    " AND (p.claim IS NOT NULL OR (p.openNow AND p.availability IS NOT 'offline'))"
    " AND p.workspaceId GLOB '[a-z0-9]*' AND p.workspaceId NOT GLOB '*[^a-z0-9-]*'"
    " AND length(p.workspaceId) <= 63"
    " ORDER BY p.workspaceId LIMIT ?"
)
_POSITION = "SELECT lat, lng, seenAt FROM points WHERE nodeId = ? LIMIT 1"


def _json(struct: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(struct), status_code=status,
                    media_type="application/json")  # fmt: skip


class OpsHttp:
    """Probes, metrics, the documents and the platform's operations reads."""

    def __init__(self, node: Node, tenants: Tenants) -> None:
        self.node = node
        self.tenants = tenants
        self._m = node.metrics
        self._said: dict[str, str] = {}  # what the log last said of each check
        self._checked_at = -METRICS_CHECK_EVERY  # when checks() last ran
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.instance_id = f"{self.hostname}:{self.pid}"
        self.started = time.time()
        self._t0 = time.monotonic()
        # (monotonic time, totals) samples for the console's rates; the first is the start.
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=SAMPLES_KEPT)
        self._samples.append((self._t0, self._m.totals()))
        settings = node.settings
        # The settings are frozen: the apps' configuration is encoded once.
        self._app_config = msgspec.json.encode(AppConfig(
            mapTiles=settings.map_tiles, mapAttribution=settings.map_attribution))
        store = node.store
        self._m.commits_source = lambda: getattr(store, "commits", None)

    # -- checks ---------------------------------------------------------------------------

    async def checks(self, timeout: float = READY_TIMEOUT) -> dict[str, str]:
        """Each check ``ok`` or ``failing``; why one fails is logged once per change,
        and ``hub_health_ok`` follows them."""
        self._checked_at = time.monotonic()
        details = await self.node.healthy(timeout)
        for name, health in self.tenants.health().items():
            state = health.state()
            details[name] = state if state == "ok" else f"failing: {health.error}"
        for name, detail in details.items():
            if self._said.get(name, "ok") != detail:
                if detail == "ok":
                    log.warning("health: %s is ok again", name)
                else:
                    log.warning("health: %s is %s", name, detail)
                self._said[name] = detail
        checks = {name: "ok" if d == "ok" else "failing" for name, d in details.items()}
        for name in HEALTH_CHECKS:
            if name in checks:
                self._m.health.labels(name).set(1 if checks[name] == "ok" else 0)
        return checks

    @staticmethod
    def status(checks: dict[str, str]) -> Literal["ok", "degraded", "failing"]:
        if checks["streams_db"] != "ok":
            return "failing"
        return "ok" if all(v == "ok" for v in checks.values()) else "degraded"

    # -- probes -------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """200 while the streams DB answers and takes appends (``degraded`` when something
        else fails: Redis, a tenant or the public DB); 503 when it does not. Each check
        says only ``ok`` or ``failing``: why is written to the log, once per change."""
        checks = await self.checks()
        status = self.status(checks)
        return JSONResponse({"status": status, "checks": checks},
                            status_code=503 if status == "failing" else 200)  # fmt: skip

    async def livez(self, request: Request) -> Response:
        """200 while the process serves: it checks nothing else (a restart would not mend
        a database)."""
        return _json(Probe("ok"))

    async def readyz(self, request: Request) -> Response:
        """200 while the streams DB answers (and has not refused appends in the last 10 s,
        as ``/healthz``'s ``streams_db``); else 503 with a fixed error body."""
        checks = await self.checks()
        if checks["streams_db"] != "ok":
            raise Unavailable("not ready: the streams DB is failing", code="not_ready")
        return _json(Probe("ok"))

    # -- metrics and documents -----------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        # hub_health_ok as of the last few seconds: checked again (a ping of the streams
        # DB) when no probe or scrape did in the last METRICS_CHECK_EVERY seconds.
        if time.monotonic() - self._checked_at >= METRICS_CHECK_EVERY:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.checks(timeout=1.0), 1.5)
        return Response(self._m.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        from hub.edge.openapi import openapi_document

        return JSONResponse(openapi_document())

    async def asyncapi(self, request: Request) -> Response:
        from hub.edge.asyncapi import asyncapi_document

        return JSONResponse(asyncapi_document())

    async def app_config(self, request: Request) -> Response:
        """What the web apps need of this hub's settings (anyone, no token): the street
        map's tile URL template (``HUB_MAP_TILES``, null: the schematic map) and its
        attribution."""
        return Response(self._app_config, media_type="application/json")

    # -- the platform console -------------------------------------------------------------

    def _platform(self, request: Request) -> None:
        if not principal(request, self.node.tokens).is_platform:
            raise Forbidden("only the platform reads operations data")

    def _rates(self) -> tuple[float, dict[str, float]]:
        """(window, per-second rates) from this instance's counters: against the oldest
        sample of the last RATE_WINDOW seconds that is at least RATE_MIN old, else the
        newest older one (the start, at the first call)."""
        now = time.monotonic()
        totals = self._m.totals()
        samples = self._samples
        recent = [s for s in samples if RATE_MIN <= now - s[0] <= RATE_WINDOW]
        older = [s for s in samples if now - s[0] > RATE_WINDOW]
        then, before = recent[0] if recent else (older[-1] if older else samples[0])
        while len(samples) > 1 and now - samples[1][0] > RATE_WINDOW:
            samples.popleft()  # keep one sample older than the window, no more
        if now - samples[-1][0] >= RATE_MIN:
            samples.append((now, totals))
        window = max(now - then, 1e-3)
        rates = {k: max(0.0, (v - before.get(k, 0.0)) / window) for k, v in totals.items()}
        return window, rates

    async def instance(self, request: Request) -> Response:
        """This instance: who it is, its checks, sockets and rates (platform only)."""
        self._platform(request)
        checks = await self.checks()
        window, rates = self._rates()
        totals = self._m.totals()
        m = self._m
        fds = int(_gauge(m.open_fds)) or _count_fds()
        return _json(InstanceState(
            instanceId=self.instance_id, hostname=self.hostname, pid=self.pid,
            startedAt=datetime.fromtimestamp(self.started, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            uptimeSeconds=round(time.monotonic() - self._t0, 3),
            status=self.status(checks),
            checks=cast(dict[str, Literal["ok", "failing"]], checks),
            broker="redis" if self.node.settings.redis_url else "memory",
            websockets=max(0, int(_gauge(m.connections))),
            subscriptions=max(0, int(_gauge(m.subscriptions))),
            connections=max(0, int(_gauge(m.connections_open))),
            openFds=fds,
            rateWindowSeconds=round(window, 3),
            deliveriesPerSecond=round(rates["frames"], 3),
            eventsPerSecond=round(rates["events"], 3),
            dbWritesPerSecond={t: round(rates.get(f"writes.{t}", 0.0), 3)
                               for t in ("streams", "tenant", "public")},
            framesSent=int(totals["frames"]),
            eventsAppended=int(totals["events"]),
            slowConsumerFallbacks=int(totals["fallbacks"]),
        ))  # fmt: skip

    async def drivers(self, request: Request) -> Response:
        """The drivers online or on a delivery, with their last fix (platform only):
        ``limit`` of them (default 100, at most 500), by tenant id."""
        self._platform(request)
        limit = int_param(request, "limit", DRIVERS_LIMIT_DEFAULT, maximum=DRIVERS_LIMIT_MAX)
        rows = (await self.tenants.public.execute(_DRIVERS_ONLINE, [limit + 1])).rows
        more = len(rows) > limit
        drivers = []
        for driver, title, claim, lat, lng in rows[:limit]:
            fix = await self._fix(str(driver))
            seen = None
            if fix is not None:
                lat, lng, seen = fix
            drivers.append(OnlineDriver(
                driver=str(driver), name=None if title is None else str(title),
                status="en-route" if claim is not None else "online",
                orderId=None if claim is None else str(claim),
                lat=_float(lat), lng=_float(lng),
                lastSeen=None if seen is None else str(seen),
            ))  # fmt: skip
        return _json(OnlineDrivers(drivers, more))

    async def _fix(self, driver: str) -> tuple[Any, Any, Any] | None:
        """The driver's freshest position and when it arrived, from its own DB (GPS lands
        there); None when it has no DB (never created by reading) or no position."""
        if not self.tenants.exists(driver):
            return None
        r = await self.tenants.tenant(driver).execute(_POSITION, [driver])
        if r.rows and r.rows[0][0] is not None and r.rows[0][1] is not None:
            return r.rows[0][0], r.rows[0][1], r.rows[0][2]
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _gauge(gauge: Any) -> float:
    """A gauge's value, through the public collect()."""
    return float(sum(s.value for m in gauge.collect() for s in m.samples))


def _count_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


# -- per-route latency ----------------------------------------------------------------------


class _Timed:
    """An HTTP route's app, timed into ``hub_http_request_duration_seconds{route, method}``:
    from the call to the status line (``http.response.start``), or to the end when no
    answer was sent. A few attribute reads and one observe per request."""

    __slots__ = ("app", "children", "histogram", "route")

    def __init__(self, app: ASGIApp, route: str, methods: set[str], metrics: Metrics) -> None:
        self.app = app
        self.route = route
        self.histogram = metrics.http_latency
        self.children = {m: metrics.http_latency.labels(route, m)
                         for m in sorted(methods - {"HEAD"})}  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        method: str = scope["method"]
        child = self.children.get(method)
        if child is None:
            child = self.children[method] = self.histogram.labels(self.route, method)
        timed = False

        async def timed_send(message: Message) -> None:
            nonlocal timed
            if not timed and message["type"] == "http.response.start":
                timed = True
                child.observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not timed:
                child.observe(time.perf_counter() - start)


def timed(metrics: Metrics, table: list[BaseRoute]) -> list[BaseRoute]:
    """The route table with each HTTP route's app timed (see :class:`_Timed`), labelled by
    its path template, never the raw path. WebSocket routes are left as they are."""
    for route in table:
        if isinstance(route, Route) and not isinstance(route.app, _Timed):
            route.app = _Timed(route.app, route.path, set(route.methods or {"GET"}), metrics)
    return table
