"""``POST /api/streams/{streamId}/events`` as a raw ASGI endpoint: the hub's hot write path.

Every event a platform writes comes through here, so it skips what a Starlette route
costs per request (the middleware stack, ``Request``, ``Response``; about a third of
the loop's time per one-event append in bench scenario E), and the body's bytes go
straight to msgspec (:func:`hub.events.parse_body`), never through :func:`json.loads`.
It answers exactly as the other routes do: the same validation order (stream id, token,
body size, JSON, events), the contract's error body, and ``hub_http_errors_total`` by code.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from hub.config import Settings
from hub.domain.node import Node
from hub.errors import HubError, PayloadTooLarge
from hub.events import check_stream_id, parse_body
from hub.refusals import loads_json

__all__ = ["AppendEndpoint", "bearer_token", "read_body", "read_json"]

log = logging.getLogger("hub")

JSON_HEADERS = [(b"content-type", b"application/json")]
INTERNAL = b'{"error":{"code":"internal","message":"internal error"}}'


def bearer_token(scope: Scope) -> str | None:
    """The ``Authorization: Bearer`` token of a request, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytearray:
    """A request body, refusing (413) more than ``limit`` bytes before reading it all."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not (value.isascii() and value.isdigit()) or int(value) > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes", code="body_too_large")
            break
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes", code="body_too_large")
        if not message.get("more_body", False):
            break
    return body


async def read_json(scope: Scope, receive: Receive, limit: int) -> Any:
    """A JSON body (413 over ``limit`` bytes, 400 ``invalid_json`` when it is not JSON)."""
    return loads_json(await read_body(scope, receive, limit))


class AppendEndpoint:
    """Validate, commit, answer 201 with the stored events (200 when all were stored before)."""

    def __init__(self, node: Node, settings: Settings) -> None:
        self.node = node
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.settings
        try:
            stream_id = check_stream_id(scope["path_params"]["stream_id"])
            who = self.node.tokens.principal(bearer_token(scope))
            body = await read_body(scope, receive, settings.max_body_bytes)
            events = parse_body(body, stream_id=stream_id, max_batch=settings.max_batch,
                                max_payload_bytes=settings.max_payload_bytes)  # fmt: skip
            result = await self.node.append(who, stream_id, events)
            status = 201 if result.new else 200
            answer = ('{"events":[' + ",".join(e.json for e in result.events) + "]}").encode()
        except ClientDisconnect:
            return  # nothing to answer
        except HubError as exc:
            self.node.metrics.http_errors.labels(exc.code).inc()
            status, answer = exc.status, json.dumps(exc.body()).encode()
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            self.node.metrics.http_errors.labels("internal").inc()
            status, answer = 500, INTERNAL
        headers = [*JSON_HEADERS, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
