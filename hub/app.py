"""The ASGI app: HTTP routes, WebSocket routes, lifespan and wiring (the edge).

``create_app(settings)`` builds the app around one :class:`~hub.node.Node`;
``hub.app:app`` builds it from the environment on first use, so importing this
module reads nothing.
"""

from __future__ import annotations

import gc
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketClose

from hub.append import AppendEndpoint, bearer_token, read_json
from hub.archive import open_archive
from hub.archiver import Archiver
from hub.auth import Principal, Role
from hub.config import Settings
from hub.errors import BadRequest, Forbidden, HubError, Unavailable
from hub.events import check_stream_id
from hub.gps import Gps
from hub.node import STATUS_OPCODES, Node, order_status, status_of
from hub.orders import Orders, lat_lng
from hub.tenants import Tenants
from hub.ws import InboxEndpoint, StreamEndpoint

__all__ = ["app", "create_app"]

log = logging.getLogger("hub")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
READ_LIMIT_DEFAULT = 1000
READ_LIMIT_MAX = 10_000


class Raw(Response):
    """A JSON response whose body is already encoded (events encode themselves once)."""

    media_type = "application/json"


class QuietClientErrors(logging.Filter):
    """Log a client's protocol error (e.g. invalid UTF-8) as one line, not a traceback.

    Any client can send such frames; the socket is closed with the right code either way,
    and a traceback per frame would let one client flood the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "received from client" in record.getMessage():
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class RedactTokens(logging.Filter):
    """Never write a token to the logs: ``?token=...`` in a logged URL becomes ``[redacted]``."""

    _TOKEN = re.compile(r"((?:^|[?&])token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and "token=" in a for a in record.args
        ):
            record.args = tuple(
                self._TOKEN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = self._TOKEN.sub(r"\1[redacted]", record.msg)
        return True


_QUIET = QuietClientErrors()
_REDACT = RedactTokens()


class StaticPages:
    """What no route matches: the web UI's files for GET and HEAD, else a 404.

    It is the router's fallback, not a route, so a known path asked with another method
    still gets its 405 (with ``Allow``).
    """

    def __init__(self, directory: Path) -> None:
        self.files = StaticFiles(directory=directory, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await WebSocketClose()(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(404, "Not Found")
        await self.files(scope, receive, send)


def int_param(request: Request, name: str, default: int, *, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest(f"{name} must be a non-negative integer", code=f"invalid_{name}")
    value = int(raw)
    if maximum is not None and value > maximum:
        raise BadRequest(f"{name} must be at most {maximum}", code=f"invalid_{name}")
    return value


def create_app(settings: Settings, *, static_dir: Path | None = STATIC_DIR) -> Starlette:
    """Build the hub's ASGI app around one node."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET)  # adding it twice is a no-op
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_REDACT)
    node = Node(settings)
    archive = node.archive = open_archive(settings.archive_url)
    tenants = Tenants(settings.tenant_db, settings.public_db, auth_token=settings.db_auth_token,
                      metrics=node.metrics, max_open=settings.tenant_max_open)  # fmt: skip
    gps = Gps(node, tenants)
    archiver = Archiver(node, archive, delay=settings.archive_delay)
    orders = Orders(node, tenants, archiver=archiver, gps=gps)
    node.location_sink = gps.ping

    append = AppendEndpoint(node, settings)

    async def body_json(request: Request) -> Any:
        return await read_json(request.scope, request.receive, settings.max_body_bytes)

    def principal(request: Request) -> Principal:
        return node.tokens.principal(bearer_token(request.scope))

    async def get_stream(request: Request) -> Response:
        stream_id = check_stream_id(request.path_params["stream_id"])
        since = int_param(request, "since", 0)
        limit = int_param(request, "limit", READ_LIMIT_DEFAULT, maximum=READ_LIMIT_MAX)
        who = principal(request)
        info = await node.read(who, stream_id)
        if info.archived:
            stored = await archive.get(stream_id)
            if stored is None:
                raise Unavailable("the archived stream cannot be read right now")
            events = [e for e in stored if e.seq > since][:limit]
            status = order_status(stored)
        else:
            events = await node.store.read_stream(stream_id, since, limit)
            if since == 0 and len(events) < limit:  # the whole stream
                status = order_status(events)
            else:  # a page of it: ask the store which steps the stream has reached
                status = status_of(await node.store.stream_opcodes(stream_id, STATUS_OPCODES))
        payload = (
            f'{{"streamId":{json.dumps(stream_id)},'
            f'"status":{json.dumps("archived" if info.archived else "active")},'
            f'"orderStatus":{json.dumps(status)},"lastSeq":{info.last_seq},'
            '"events":[' + ",".join(e.json for e in events) + "]}"
        )
        return Raw(payload)

    def ok(body: Any, status: int = 200) -> Response:
        return JSONResponse(body, status_code=status)

    def order_id(request: Request) -> str:
        return check_stream_id(request.path_params["order_id"])

    async def create_order(request: Request) -> Response:
        who = principal(request)
        body = await body_json(request)
        return ok(await orders.create(who, body), 201)

    def step(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            oid = order_id(request)
            who = principal(request)
            body = await body_json(request)
            return ok(await getattr(orders, name)(who, oid, body))

        return endpoint

    async def order_details(request: Request) -> Response:
        oid = order_id(request)
        return ok(await orders.details(principal(request), oid))

    async def menu(request: Request) -> Response:
        who = principal(request)
        return ok(await orders.menu(who, request.path_params["restaurant"]))

    async def motion(request: Request) -> Response:
        who = principal(request)
        if who.role is not Role.DRIVER:
            raise Forbidden("only a driver reports its position")
        lat, lng = lat_lng(await body_json(request))
        accepted = await gps.ping(who.tenant, lat, lng)
        return ok({"driver": who.tenant, "accepted": accepted})

    async def driver_status(request: Request) -> Response:
        who = principal(request)
        body = await body_json(request)
        return ok(await orders.driver_status(who, body))

    async def driver_me(request: Request) -> Response:
        return ok(await orders.driver_me(principal(request)))

    async def archive_stream(request: Request) -> Response:
        stream_id = check_stream_id(request.path_params["stream_id"])
        who = principal(request)
        if not who.is_platform:
            raise Forbidden("only the platform archives streams")
        await node.read(who, stream_id)  # 404 when it does not exist
        count = await archiver.archive_now(stream_id)
        return ok({"streamId": stream_id, "status": "archived", "archivedEvents": count})

    async def healthz(request: Request) -> Response:
        checks = await node.healthy()
        ok = checks.get("streams_db") == "ok"
        degraded = any(v != "ok" for v in checks.values())
        status = "ok" if not degraded else ("degraded" if ok else "failing")
        return JSONResponse({"status": status, "checks": checks}, status_code=200 if ok else 503)

    async def openapi(request: Request) -> Response:
        from hub.openapi import openapi_document

        return JSONResponse(openapi_document())

    async def metrics(request: Request) -> Response:
        return Response(node.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def hub_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HubError)
        node.metrics.http_errors.labels(exc.code).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        node.metrics.http_errors.labels(code).inc()
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        node.metrics.http_errors.labels("internal").inc()
        return JSONResponse(
            {"error": {"code": "internal", "message": "internal error"}}, status_code=500
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        try:
            await gps.start()
            try:
                await orders.recover()
            except Exception:
                log.exception("start-up recovery failed; it runs again at the next start")
            await archiver.start()
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
            await archiver.close()
            await gps.close()
            await node.close()
            await tenants.close()
            await archive.close()

    routes: list[Any] = [
        Route("/api/streams/{stream_id}/events", append, methods=["POST"]),
        Route("/api/streams/{stream_id}", get_stream, methods=["GET"]),
        Route("/api/streams/{stream_id}/archive", archive_stream, methods=["POST"]),
        Route("/api/orders", create_order, methods=["POST"]),
        *(Route(f"/api/orders/{{order_id}}/{name}", step(name), methods=["POST"])
          for name in ("pay", "accept", "ready", "pickup", "deliver")),
        Route("/api/orders/{order_id}", order_details, methods=["GET"]),
        Route("/api/restaurants/{restaurant}", menu, methods=["GET"]),
        Route("/api/motion", motion, methods=["POST"]),
        Route("/api/drivers/status", driver_status, methods=["POST"]),
        Route("/api/drivers/me", driver_me, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HubError: hub_error,
        HTTPException: http_error,
        Exception: internal_error,
    }
    application = _Hub(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    application.router.redirect_slashes = False  # a path is found as it is written, or not
    if static_dir is not None and static_dir.is_dir():
        application.router.default = StaticPages(static_dir)
    application.append = append
    application.stream_socket = StreamEndpoint(node)
    application.inbox_socket = InboxEndpoint(node)
    application.state.node = node
    application.state.settings = settings
    return application


class _Hub(Starlette):
    """Starlette, with the hot paths served straight from ``__call__``.

    Appending events (every write) and the two WebSocket paths (a socket lives for hours)
    go around the router and the middleware stack: that is a third of an append's CPU
    (bench scenario E) and ~2 KB of every socket's memory (scenario D). Everything else,
    including other methods on those paths, goes through Starlette.
    """

    append: AppendEndpoint
    stream_socket: StreamEndpoint
    inbox_socket: InboxEndpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["method"] == "POST":
                stream_id = _segment(scope, "/api/streams/", "/events")
                if stream_id is not None:
                    scope["path_params"] = {"stream_id": stream_id}
                    return await self.append(scope, receive, send)
        elif kind == "websocket":
            if _segment(scope, "/ws/", "") == "inbox":
                return await self.inbox_socket(scope, receive, send)
            stream_id = _segment(scope, "/ws/streams/", "")
            if stream_id is not None:
                scope["path_params"] = {"stream_id": stream_id}
                return await self.stream_socket(scope, receive, send)
        await super().__call__(scope, receive, send)


def _segment(scope: Scope, prefix: str, suffix: str) -> str | None:
    """The one path segment between ``prefix`` and ``suffix``, if the path is that shape."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if not (path.startswith(prefix) and path.endswith(suffix)):
        return None
    value = path[len(prefix) : len(path) - len(suffix)]
    return value if value and "/" not in value else None


class _FromEnvironment:
    """``hub.app:app``: builds the real app from the environment on its first call."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = create_app(Settings.from_env())
        await self._app(scope, receive, send)


app = _FromEnvironment()
