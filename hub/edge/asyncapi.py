"""The hub's WebSocket protocol as an AsyncAPI 3.0 document (served at ``GET /asyncapi.json``).

Two channels, ``/ws/streams/{streamId}`` and ``/ws/inbox`` (docs/protocol.md §5). The document is
written from the hub's point of view: ``send`` operations are the frames the hub sends,
``receive`` operations the frames it takes from clients. Every message's payload schema
is generated from the frame Structs of :mod:`hub.edge.wire.frames`; the close codes
(``x-close-codes`` on each channel: AsyncAPI has no field for them) come from
:class:`hub.errors.CloseCode`, with what each means and whether to reconnect.

The same subscriptions as Server-Sent Events (``GET /sse/streams/{streamId}``, ``GET
/sse/inbox``, :mod:`hub.edge.sse`) are one more ``send`` operation on each channel, with
an HTTP binding (GET and its query) and the channel's ``x-sse`` (the address, the
framing): the same frames (less the answers to a client's frames: an event stream takes
none) and a ``close`` message, the last of a response.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from hub.edge.wire.frames import (
    CLIENT_FRAMES,
    CLOSE_MEANINGS,
    INBOX_FRAMES,
    STREAM_FRAMES,
    TRACKING_FRAMES,
    Connect,
    Frame,
)
from hub.errors import CloseCode

TOKEN_TEXT = ("A JWT with sub (tenant id) and role: HS256 with HUB_SECRET, or"
              " RS256/ES256/EdDSA from HUB_JWKS_URL.")

__all__ = ["asyncapi_document"]

SCHEMAS = "#/components/schemas/{name}"
AUTH = "A token as `Authorization: Bearer T`, or `?token=T` (browsers)."
# What an event stream does not carry: the answers to a client's frames (it takes none).
ANSWERS = frozenset({"error", "pong", "auth"})
SSE_PATHS = {"stream": "/sse/streams/{streamId}", "inbox": "/sse/inbox"}
SSE_FRAMING = (
    "Server-Sent Events (`text/event-stream`): each frame is one SSE message whose `data` is"
    " the WebSocket frame's JSON, whose `event` is the frame's `type`, and, for `event` frames"
    " only, whose `id` is the event's seq (a stream) or pos (an inbox): EventSource's"
    " `Last-Event-ID` on a reconnect is the cursor to resume from, and wins over `?since=`. A"
    " comment line (`: keepalive`) goes out when nothing else has for 15 s (HUB_SSE_KEEPALIVE)."
    " A refusal before"
    " the stream starts is an HTTP status with the error body (400 a bad cursor, 401, 403 a"
    " non-member or a stream that does not exist, 429 too many sessions); an end after it"
    " is a `close` message whose `code` is the WebSocket close code (1000 archived, 4403 no"
    " longer a member, 4008 stalled, 4401 the token expired, 1012 the hub is shutting down,"
    " 1011 a hub fault),"
    " then the response ends."
)


class EventStreamQuery(Struct):
    """The query of an event stream's URL."""

    since: Annotated[int, Meta(
        ge=0, le=10**18 - 1,
        description="Resume after this seq (a stream) or pos (an inbox); 0 when absent. The"
        " `Last-Event-ID` header wins over it. A bad value of either: 400 (`invalid_since`,"
        " `invalid_last_event_id`) before the stream starts.",
    )] = 0  # fmt: skip
    token: Annotated[str, Meta(
        description="The token, for EventSource (which cannot set the Authorization header).",
    )] | UnsetType = UNSET  # fmt: skip


class CloseEvent(Struct):
    """The last message of an event stream (SSE `event: close`): the WebSocket close code
    it stands for. The response ends after it; reconnect as after that close."""

    code: int


def _summary(cls: type) -> str:
    return " ".join((cls.__doc__ or cls.__name__).split())


def _close_codes() -> list[dict[str, Any]]:
    return [
        {"code": int(code), "name": code.name, "meaning": CLOSE_MEANINGS[code],
         "reconnect": code.reconnect}
        for code in sorted(CloseCode)
    ]  # fmt: skip


def _sse_frames(frames: tuple[type[Frame], ...]) -> tuple[type[Frame], ...]:
    return tuple(f for f in frames if f.__struct_config__.tag not in ANSWERS)


def _channel(address: str, title: str, description: str, frames: tuple[type[Frame], ...],
             query: dict[str, Any], sse: str) -> dict[str, Any]:  # fmt: skip
    channel: dict[str, Any] = {
        "address": address,
        "title": title,
        "description": description,
        "messages": {
            **{f.__name__: {"$ref": f"#/components/messages/{f.__name__}"}
               for f in (*frames, *CLIENT_FRAMES)},
            CloseEvent.__name__: {"$ref": f"#/components/messages/{CloseEvent.__name__}"},
        },
        "bindings": {"ws": {"method": "GET", "query": query, "bindingVersion": "0.1.0"}},
        "x-close-codes": _close_codes(),
        "x-sse": {"address": sse, "method": "GET", "contentType": "text/event-stream",
                  "description": SSE_FRAMING},
    }
    if "{streamId}" in address:
        channel["parameters"] = {
            "streamId": {"description": "The stream (an order's id); close 4403 otherwise."}
        }
    return channel


def _operations(channel: str, frames: tuple[type[Frame], ...], what: str,
                sse_query: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    def refs(group: tuple[type[Any], ...]) -> list[dict[str, str]]:
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
        f"{channel}Events": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "title": f"The hub sends over Server-Sent Events: GET {SSE_PATHS[channel]}",
            "summary": "The same frames as the WebSocket's, in the same order (not the"
            " answers to client frames), as SSE messages; then a `close` message when the"
            " hub ends the response.",
            "description": SSE_FRAMING,
            "security": security,
            "bindings": {"http": {"method": "GET", "query": sse_query,
                                  "bindingVersion": "0.3.0"}},
            "messages": refs((*_sse_frames(frames), CloseEvent)),
        },
    }


@cache
def _document() -> dict[str, Any]:
    frames = tuple(dict.fromkeys((*STREAM_FRAMES, *TRACKING_FRAMES, *INBOX_FRAMES,
                                  *CLIENT_FRAMES)))  # fmt: skip
    schemas, components = msgspec.json.schema_components(
        [*frames, CloseEvent, Connect, EventStreamQuery], ref_template=SCHEMAS)
    query = dict(components["Connect"])  # the binding takes the schema itself, not a $ref
    sse_query = dict(components.pop("EventStreamQuery"))
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
    messages[CloseEvent.__name__] = {
        "name": "close",
        "title": CloseEvent.__name__,
        "summary": _summary(CloseEvent),
        "contentType": "application/json",
        "payload": schemas[len(frames)],
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
            + " The same subscriptions are served as Server-Sent Events (GET"
            " /sse/streams/{streamId}, GET /sse/inbox: each channel's `x-sse` and `...Events`"
            " operation), with the same guarantee (`Last-Event-ID` is the cursor)."
            " The HTTP API is described at /openapi.json.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "stream": _channel(
                "/ws/streams/{streamId}", "One order's stream",
                "Every event of the stream with seq > since, then `live` {streamId, seq},"
                " then new events; `location` frames while its driver moves (one right after"
                " `live` when his position is known), `presence` and `arriving`; `archived` and"
                " close 1000 when the stream is archived. Members and the platform (which may"
                " subscribe before the stream exists).",
                (*STREAM_FRAMES, *TRACKING_FRAMES), query, SSE_PATHS["stream"],
            ),
            "inbox": _channel(
                "/ws/inbox", "A tenant's inbox",
                "Every event with pos > since of the streams the tenant is a member of, from"
                " the event that made it one (the platform: every stream), then `live` {pos},"
                " then new events. Replays from the streams DB only: archived streams are"
                " read with GET /api/streams/{id}.",
                INBOX_FRAMES, query, SSE_PATHS["inbox"],
            ),
        },
        "operations": {
            **_operations("stream", (*STREAM_FRAMES, *TRACKING_FRAMES), "on a stream socket",
                          sse_query),
            **_operations("inbox", INBOX_FRAMES, "on an inbox socket", sse_query),
        },
        "components": {
            "schemas": components,
            "messages": messages,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": TOKEN_TEXT},
                "token": {"type": "httpApiKey", "in": "query", "name": "token",
                          "description": "The same token in the URL (browsers)."},
            },
        },
    }  # fmt: skip


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 description of the hub's WebSocket protocol (a fresh copy)."""
    return copy.deepcopy(_document())
