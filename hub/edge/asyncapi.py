"""The hub's WebSocket protocol as an AsyncAPI 3.0 document (served at ``GET /asyncapi.json``).

Two channels, ``/ws/streams/{streamId}`` and ``/ws/inbox`` (docs/protocol.md §5). The document is
written from the hub's point of view: ``send`` operations are the frames the hub sends,
``receive`` operations the frames it takes from clients. Every message's payload schema
is generated from the frame Structs of :mod:`hub.edge.wire.frames`; the close codes
(``x-close-codes`` on each channel: AsyncAPI has no field for them) come from
:class:`hub.errors.CloseCode`, with what each means and whether to reconnect.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import msgspec

from hub.edge.wire.frames import (
    CLIENT_FRAMES,
    CLOSE_MEANINGS,
    INBOX_FRAMES,
    STREAM_FRAMES,
    Connect,
    Frame,
)
from hub.errors import CloseCode

__all__ = ["asyncapi_document"]

SCHEMAS = "#/components/schemas/{name}"
AUTH = "A token as `Authorization: Bearer T`, or `?token=T` (browsers)."


def _summary(cls: type) -> str:
    return " ".join((cls.__doc__ or cls.__name__).split())


def _close_codes() -> list[dict[str, Any]]:
    return [
        {"code": int(code), "name": code.name, "meaning": CLOSE_MEANINGS[code],
         "reconnect": code.reconnect}
        for code in sorted(CloseCode)
    ]  # fmt: skip


def _channel(address: str, title: str, description: str, frames: tuple[type[Frame], ...],
             query: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    channel: dict[str, Any] = {
        "address": address,
        "title": title,
        "description": description,
        "messages": {
            f.__name__: {"$ref": f"#/components/messages/{f.__name__}"}
            for f in (*frames, *CLIENT_FRAMES)
        },
        "bindings": {"ws": {"method": "GET", "query": query, "bindingVersion": "0.1.0"}},
        "x-close-codes": _close_codes(),
    }
    if "{streamId}" in address:
        channel["parameters"] = {
            "streamId": {"description": "The stream (an order's id); close 4403 otherwise."}
        }
    return channel


def _operations(channel: str, frames: tuple[type[Frame], ...], what: str) -> dict[str, Any]:
    def refs(group: tuple[type[Frame], ...]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{channel}/messages/{f.__name__}"} for f in group]

    security = [{"$ref": "#/components/securitySchemes/bearer"},
                {"$ref": "#/components/securitySchemes/token"}]  # fmt: skip
    return {
        f"{channel}Send": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "title": f"The hub sends {what}",
            "summary": "Every committed event after `since` in order, then `live`, then each"
            " new event as it is committed, with the other frames in between.",
            "security": security,
            "messages": refs(frames),
        },
        f"{channel}Receive": {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "title": "The hub takes from the client",
            "summary": "A frame the hub cannot use is answered with an `error` frame; the"
            " socket stays open.",
            "security": security,
            "messages": refs(CLIENT_FRAMES),
        },
    }


@cache
def _document() -> dict[str, Any]:
    frames = tuple(dict.fromkeys((*STREAM_FRAMES, *INBOX_FRAMES, *CLIENT_FRAMES)))
    schemas, components = msgspec.json.schema_components([*frames, Connect], ref_template=SCHEMAS)
    query = dict(components["Connect"])  # the binding takes the schema itself, not a $ref
    messages = {
        f.__name__: {
            "name": f.__struct_config__.tag,
            "title": f.__name__,
            "summary": _summary(f),
            "contentType": "application/json",
            "payload": schema,
        }
        for f, schema in zip(frames, schemas, strict=False)
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "hub WebSocket protocol",
            "version": "0.1.0",
            "description": "JSON text frames, each an object whose `type` says which"
            " (docs/protocol.md §5). A subscriber that reconnects with the last `seq`"
            " (or `pos`) it saw as `since` receives every committed event exactly once and"
            " in order. " + AUTH
            + " The HTTP API is described at /openapi.json.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "stream": _channel(
                "/ws/streams/{streamId}", "One order's stream",
                "Every event of the stream with seq > since, then `live` {streamId, seq},"
                " then new events; `location` frames while its driver moves; `archived` and"
                " close 1000 when the stream is archived. Members and the platform (which may"
                " subscribe before the stream exists).",
                STREAM_FRAMES, query,
            ),
            "inbox": _channel(
                "/ws/inbox", "A tenant's inbox",
                "Every event with pos > since of the streams the tenant is a member of, from"
                " the event that made it one (the platform: every stream), then `live` {pos},"
                " then new events. Replays from the streams DB only: archived streams are"
                " read with GET /api/streams/{id}.",
                INBOX_FRAMES, query,
            ),
        },
        "operations": {
            **_operations("stream", STREAM_FRAMES, "on a stream socket"),
            **_operations("inbox", INBOX_FRAMES, "on an inbox socket"),
        },
        "components": {
            "schemas": components,
            "messages": messages,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "HS256 JWT with sub (tenant id) and role."},
                "token": {"type": "httpApiKey", "in": "query", "name": "token",
                          "description": "The same token in the URL (browsers)."},
            },
        },
    }  # fmt: skip


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 description of the hub's WebSocket protocol (a fresh copy)."""
    return copy.deepcopy(_document())
