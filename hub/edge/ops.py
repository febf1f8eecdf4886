"""Operations endpoints: ``/healthz``, ``/metrics`` and the hub's own description
(``/openapi.json`` for HTTP, ``/asyncapi.json`` for the WebSocket protocol)."""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.domain.node import Node
from hub.infra.tenants import Tenants

__all__ = ["OpsHttp"]

log = logging.getLogger("hub.health")


class OpsHttp:
    """Health, metrics, ``/openapi.json`` and ``/asyncapi.json``."""

    def __init__(self, node: Node, tenants: Tenants) -> None:
        self.node = node
        self.tenants = tenants
        self._said: dict[str, str] = {}  # what the log last said of each check

    async def healthz(self, request: Request) -> Response:
        """200 while the streams DB answers and takes appends (``degraded`` when something
        else fails: Redis, a tenant or the public DB); 503 when it does not. Each check
        says only ``ok`` or ``failing``: why is written to the log, once per change."""
        details = await self.node.healthy()
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
        ok = checks["streams_db"] == "ok"
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
