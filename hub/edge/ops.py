"""Operations endpoints: ``/healthz``, ``/metrics`` and the hub's own description
(``/openapi.json`` for HTTP, ``/asyncapi.json`` for the WebSocket protocol)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.domain.node import Node

__all__ = ["OpsHttp"]


class OpsHttp:
    """Health, metrics, ``/openapi.json`` and ``/asyncapi.json``."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def healthz(self, request: Request) -> Response:
        checks = await self.node.healthy()
        ok = checks.get("streams_db") == "ok"
        degraded = any(v != "ok" for v in checks.values())
        status = "ok" if not degraded else ("degraded" if ok else "failing")
        return JSONResponse({"status": status, "checks": checks}, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(self.node.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        from hub.edge.openapi import openapi_document

        return JSONResponse(openapi_document())

    async def asyncapi(self, request: Request) -> Response:
        from hub.edge.asyncapi import asyncapi_document

        return JSONResponse(asyncapi_document())
