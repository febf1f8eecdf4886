"""What every HTTP endpoint of the hub shares: the caller, the body, query integers,
pre-encoded JSON, the error body of every failure, and the web UI's files.

Errors are raised as :class:`~hub.errors.HubError` anywhere below the edge and become
``{"error": {"code", "message"}}`` here, counted by code in ``hub_http_errors_total``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketClose

from hub.domain.auth import Principal, TokenCache
from hub.edge.append import bearer_token, read_json
from hub.errors import BadRequest, HubError
from hub.metrics import Metrics

__all__ = ["Raw", "StaticPages", "error_handlers", "int_param", "json_body", "ok", "principal"]

log = logging.getLogger("hub")

Handler = Callable[[Request, Exception], Awaitable[Response]]


class Raw(Response):
    """A JSON response whose body is already encoded (events encode themselves once)."""

    media_type = "application/json"


def ok(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status)


def principal(request: Request, tokens: TokenCache) -> Principal:
    """Who is calling (401 without a valid bearer token)."""
    return tokens.principal(bearer_token(request.scope))


async def json_body(request: Request, limit: int) -> Any:
    """The request's JSON body (413 over ``limit`` bytes, 400 when it is not JSON)."""
    return await read_json(request.scope, request.receive, limit)


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


def error_handlers(metrics: Metrics) -> dict[Any, Handler]:
    """Starlette's exception handlers: every failure answers with the hub's error body."""

    async def hub_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HubError)
        metrics.http_errors.labels(exc.code).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.http_errors.labels(code).inc()
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics.http_errors.labels("internal").inc()
        return JSONResponse(
            {"error": {"code": "internal", "message": "internal error"}}, status_code=500
        )

    async def client_gone(request: Request, exc: Exception) -> Response:
        # The client went away before its body arrived: nobody to answer, nothing to log
        # (caught here, not by the Exception handler, which logs and re-raises to uvicorn).
        return Response(status_code=400)

    return {HubError: hub_error, HTTPException: http_error, ClientDisconnect: client_gone,
            Exception: internal_error}  # fmt: skip


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
