"""The ASGI app: the parts of one hub instance, the route table, and the lifespan.

``create_app(settings)`` builds the app around one :class:`~hub.domain.node.Node`;
``hub.app:app`` builds it from the environment on first use, so importing this
module reads nothing. Every route, HTTP and WebSocket, is in :func:`routes`; the few
hot ones are served ahead of Starlette's router (see :class:`_Hub`), matched from the
same table.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.config import Settings
from hub.domain.archiver import Archiver
from hub.domain.auth import TokenCache
from hub.domain.gps import Gps
from hub.domain.node import Node
from hub.domain.orders import Orders
from hub.domain.orders.timers import Timers
from hub.domain.sessions import Sessions
from hub.domain.tracking import Tracking
from hub.edge.append import AppendEndpoint, bearer_token
from hub.edge.conn import inbox_channel, stream_channel
from hub.edge.http import StaticPages, error_handlers
from hub.edge.logs import adopt_server_logging, install_filters, log_startup
from hub.edge.ops import OpsHttp, timed
from hub.edge.orders import STEPS, OrdersHttp
from hub.edge.restaurants import RestaurantsHttp
from hub.edge.sse import Events
from hub.edge.streams import StreamsHttp
from hub.edge.ws import Endpoint
from hub.errors import Stopped
from hub.infra.archive import open_archive
from hub.infra.broker import Broker, MemoryBroker
from hub.infra.claims import Claims, MemoryClaims, RedisClaims
from hub.infra.store import open_store
from hub.infra.tenants import Tenants
from hub.metrics import Metrics

__all__ = ["app", "create_app"]

log = logging.getLogger("hub")

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"  # the web UI, package data


@dataclass(frozen=True, slots=True)
class Parts:
    """One hub instance's parts, built once, each given what it uses (the composition
    root: nothing is attached to a part after it is made)."""

    node: Node
    tenants: Tenants
    gps: Gps
    archiver: Archiver
    orders: Orders
    sessions: Sessions
    timers: Timers

    @classmethod
    def build(cls, settings: Settings) -> Parts:
        metrics = Metrics()
        store = open_store(settings.streams_db, auth_token=settings.db_auth_token,
                           read_url=settings.streams_read_db)  # fmt: skip
        broker: Broker
        if settings.redis_url:
            from hub.infra.broker.redis import RedisBroker  # the redis extra

            broker = RedisBroker(settings.redis_url, sharded=settings.redis_sharded,
                                 cluster=settings.redis_cluster, prefix=settings.redis_prefix,
                                 metrics=metrics)  # fmt: skip
        else:
            broker = MemoryBroker()
        archive = open_archive(settings.archive_url)
        node = Node(settings, store=store, broker=broker, archive=archive, metrics=metrics)
        tenants = Tenants(settings.tenant_db, settings.public_db,
                          auth_token=settings.db_auth_token, metrics=metrics,
                          max_open=settings.tenant_max_open,
                          admin_url=settings.tenant_admin_url,
                          other_dbs=(settings.streams_db,))  # fmt: skip
        claims: Claims
        if settings.redis_url:
            claims = RedisClaims(settings.redis_url, prefix=settings.redis_prefix,
                                 cluster=settings.redis_cluster and settings.redis_sharded)
        else:
            claims = MemoryClaims()
        tracking = Tracking(node, tenants, broker, claims=claims,
                            presence_timeout=settings.presence_timeout)  # fmt: skip
        gps = Gps(tenants, store, broker, metrics, tracker=tracking)
        archiver = Archiver(store, archive, broker, metrics, delay=settings.archive_delay)
        orders = Orders(node, tenants, archiver=archiver, gps=gps)
        sessions = Sessions(max_per_subject=settings.ws_max_per_token,
                            stall_timeout=settings.ws_stall_timeout,
                            read_budget=settings.tenant_read_budget)  # fmt: skip
        timers = Timers(orders, node, settings)
        return cls(node, tenants, gps, archiver, orders, sessions, timers)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start every part in dependency order; stop them in reverse, each awaited."""
        node = self.node
        await node.start()
        try:
            await self.sessions.start()
            await self.gps.start()
            try:
                await self.orders.recover()
            except Exception:
                log.exception("start-up recovery failed; it runs again at the next start")
            await self.archiver.start()
            await self.timers.start()
            # What start-up allocated lives as long as the process: keep the cyclic GC
            # from walking it again and again, and collect the young generation less
            # eagerly (each socket holds ~140 tracked objects; with Python's default
            # thresholds full collections of 0.3 s came every few seconds at 3,000
            # sockets, measured in bench/fanout.py). Pauses: hub_gc_pause_seconds.
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 10, 10)
            node.metrics.watch_gc()
            yield
        finally:
            node.metrics.unwatch_gc()
            await self.timers.close()
            await self.archiver.close()
            await self.gps.close()
            await self.sessions.close()
            await node.close()  # the store, the broker and the archive
            await self.tenants.close()


def routes(parts: Parts, settings: Settings) -> list[BaseRoute]:
    """The hub's route table: every HTTP and WebSocket path, in one list."""
    node, tokens = parts.node, parts.node.tokens
    streams = StreamsHttp(node, parts.archiver, tokens, budget=parts.sessions.budget,
                          wait=settings.ws_stall_timeout)  # fmt: skip
    orders = OrdersHttp(parts.orders, parts.gps, tokens, body_limit=settings.max_body_bytes,
                        budget=parts.sessions.budget, wait=settings.ws_stall_timeout)  # fmt: skip
    ops = OpsHttp(node, parts.tenants)
    restaurants = RestaurantsHttp(parts.tenants, tokens, body_limit=settings.max_body_bytes)
    return timed(node.metrics, [
        # The event log (docs/protocol.md §4-5).
        Route("/api/streams/{stream_id}/events", AppendEndpoint(node, settings), methods=["POST"]),
        Route("/api/streams/{stream_id}", streams.read, methods=["GET"]),
        Route("/api/streams/{stream_id}/archive", streams.archive, methods=["POST"]),
        WebSocketRoute("/ws/streams/{stream_id}",
                       Endpoint(node, parts.sessions, parts.gps, settings, stream_channel)),
        WebSocketRoute("/ws/inbox",
                       Endpoint(node, parts.sessions, parts.gps, settings, inbox_channel)),
        # The same subscriptions as Server-Sent Events (docs/protocol.md §5). A Mount: they
        # are the WebSocket protocol on another transport, described with it in
        # /asyncapi.json, not operations of /openapi.json (whose fuzzing cannot read a
        # response that never ends).
        Mount("/sse", routes=[
            Route("/streams/{stream_id}", Events(node, parts.sessions, settings, stream_channel),
                  methods=["GET"]),
            Route("/inbox", Events(node, parts.sessions, settings, inbox_channel),
                  methods=["GET"]),
        ]),
        # The order flow (the seed's Steps 1-10), menus and drivers.
        Route("/api/orders", orders.create, methods=["POST"]),
        *(Route(f"/api/orders/{{order_id}}/{name}", orders.step(name), methods=["POST"])
          for name in STEPS),
        Route("/api/orders/{order_id}", orders.details, methods=["GET"]),
        Route("/api/restaurants/{restaurant}", orders.menu, methods=["GET"]),
        Route("/api/motion", orders.motion, methods=["POST"]),
        Route("/api/drivers/status", orders.driver_status, methods=["POST"]),
        Route("/api/drivers/me", orders.driver_me, methods=["GET"]),
        # Menus, restaurant status and tenants as data (docs/protocol.md §4.5).
        Route("/api/restaurants/{restaurant}/menu/{product_id}", restaurants.put_product,
              methods=["PUT"]),
        Route("/api/restaurants/{restaurant}/status", restaurants.set_status, methods=["POST"]),
        Route("/api/tenants", restaurants.create_tenant, methods=["POST"]),
        # Operations (docs/protocol.md §9): probes, metrics, documents, the platform console.
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/livez", ops.livez, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/openapi.json", ops.openapi, methods=["GET"]),
        Route("/asyncapi.json", ops.asyncapi, methods=["GET"]),
        Route("/api/config", ops.app_config, methods=["GET"]),  # the web apps' settings
        Route("/api/ops/instance", ops.instance, methods=["GET"]),
        Route("/api/ops/drivers", ops.drivers, methods=["GET"]),
    ])  # every HTTP route timed into hub_http_request_duration_seconds{route, method}


# Served ahead of the router (see _Hub), by method ("websocket" for a socket): appends
# (every write), the WebSocket paths and the event streams (GET, and its HEAD).
FAST_PATHS = {
    ("POST", "/api/streams/{stream_id}/events"),
    ("websocket", "/ws/streams/{stream_id}"),
    ("websocket", "/ws/inbox"),
    ("GET", "/sse/streams/{stream_id}"),
    ("GET", "/sse/inbox"),
}


def create_app(settings: Settings, *, static_dir: Path | None = STATIC_DIR) -> Starlette:
    """Build the hub's ASGI app around one node."""
    install_filters()
    parts = Parts.build(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        adopt_server_logging(settings.log_format)  # under plain uvicorn (hub.edge.logs)
        log_startup(settings)  # the streams DB, Redis, the archive (docs/protocol.md §9)
        async with parts.running():
            yield

    table = routes(parts, settings)
    application = _Hub(routes=table, lifespan=lifespan, tokens=parts.node.tokens,
                       exception_handlers=error_handlers(parts.node.metrics))  # fmt: skip
    application.router.redirect_slashes = False  # a path is found as it is written, or not
    if static_dir is not None and static_dir.is_dir():
        application.router.default = StaticPages(static_dir)
    application.state.node = parts.node
    application.state.settings = settings
    return application


@dataclass(frozen=True, slots=True)
class _FastRoute:
    """A route of the table with a one-segment parameter (or none), matched by slicing."""

    kind: str
    prefix: str
    suffix: str
    param: str | None
    app: ASGIApp

    @classmethod
    def of(cls, kind: str, path: str, route: Route | WebSocketRoute) -> _FastRoute:
        if "{" not in path:
            return cls(kind, path, "", None, route.app)
        prefix, rest = path.split("{", 1)
        param, suffix = rest.split("}", 1)
        return cls(kind, prefix, suffix, param, route.app)

    def match(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if self.param is None:
            return path == self.prefix
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return False
        value = path[len(self.prefix) : len(path) - len(self.suffix)]
        if not value or "/" in value:
            return False
        scope["path_params"] = {self.param: value}
        return True


def _flat(table: list[BaseRoute], prefix: str = "") -> list[tuple[str, BaseRoute]]:
    """Every route of ``table`` with its full path, those of its mounts included."""
    found: list[tuple[str, BaseRoute]] = []
    for route in table:
        if isinstance(route, Mount):
            found += _flat(route.routes, prefix + route.path)
        elif isinstance(route, Route | WebSocketRoute):
            found.append((prefix + route.path, route))
    return found


class _Hub(Starlette):
    """Starlette, with the hot paths served straight from ``__call__``.

    Appending events (every write), the two WebSocket paths and the two event streams (a
    socket or a response lives for hours) go around the router and the middleware stack:
    that is a third of an append's CPU (bench scenario E) and ~2 KB of every socket's
    memory (scenario D); an event stream gets uvicorn's own ``send`` (hub.edge.sse).
    Everything else, including other methods on those paths, goes through Starlette.
    """

    def __init__(self, *, routes: list[BaseRoute], tokens: TokenCache,
                 **options: Any) -> None:  # fmt: skip
        super().__init__(routes=routes, **options)
        # With HUB_JWKS_URL, a request whose token names a key not fetched yet waits for
        # the JWKS here (in a thread, hub.domain.auth.Jwks), before any handler verifies
        # the token synchronously. WebSockets do it themselves (hub.edge.ws).
        self._jwks_tokens = tokens if tokens.jwks is not None else None
        # By HTTP method, or "websocket": a GET route's HEAD goes with it.
        self._fast: dict[str, list[_FastRoute]] = {}
        for path, route in _flat(routes):
            assert isinstance(route, Route | WebSocketRoute)
            kinds = {"websocket"} if isinstance(route, WebSocketRoute) else route.methods or set()
            for kind in sorted(kinds):
                if ("GET" if kind == "HEAD" else kind, path) in FAST_PATHS:
                    self._fast.setdefault(kind, []).append(_FastRoute.of(kind, path, route))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            for route in self._fast.get(kind, ()):
                if route.match(scope):
                    return await route.app(scope, receive, send)
            return await super().__call__(scope, receive, send)
        try:
            if self._jwks_tokens is not None:
                await self._jwks_tokens.prepare(_offered_token(scope))
            for route in self._fast.get(scope["method"], ()):
                if route.match(scope):
                    return await route.app(scope, receive, send)
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # uvicorn's graceful shutdown ran out (``--graceful-timeout``) while this request
            # still waited, on a database that stopped answering: the client is told to
            # retry (elsewhere), not given uvicorn's plain-text 500 and the log a traceback.
            if not await _answer_stopped(send):
                raise


# What a request still waiting when the server stops is answered (its outcome is unknown).
STOPPED = Stopped("the hub stopped before this request was done, which may or may not have "
                  "been carried out: send it again (a repeat is never carried out twice)")
_STOPPED_BODY = json.dumps(STOPPED.body()).encode()


async def _answer_stopped(send: Send) -> bool:
    """Answer 503 :data:`STOPPED` (connection: close); False if the response had started."""
    try:
        await send({"type": "http.response.start", "status": STOPPED.status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_STOPPED_BODY)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})  # fmt: skip
    except RuntimeError:  # uvicorn: a response already under way cannot be replaced
        return False
    await send({"type": "http.response.body", "body": _STOPPED_BODY})
    return True


def _offered_token(scope: Scope) -> str | None:
    """The token a request offers: ``Authorization: Bearer``, else ``?token=`` (SSE)."""
    found = bearer_token(scope)
    if found is None and b"token=" in scope.get("query_string", b""):
        query = parse_qs(scope["query_string"].decode("latin-1"))
        found = query.get("token", [None])[-1]
    return found


class _FromEnvironment:
    """``hub.app:app``: builds the real app from the environment on its first call."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = create_app(Settings.from_env())
        await self._app(scope, receive, send)


app = _FromEnvironment()
