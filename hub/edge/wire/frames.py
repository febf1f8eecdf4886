"""Wire shapes of the WebSocket protocol (docs/protocol.md §5): every frame, both directions, and
what each close code means.

Frames are JSON text objects told apart by ``type`` (the Structs' tag). The hub builds the
frames it sends by hand, once per event however many sockets it reaches
(:attr:`hub.events.Event.frame`, the subscription's ``live`` frame, the GPS service's
``location`` frame, ...): these Structs are their declaration, the AsyncAPI document
(:mod:`hub.edge.asyncapi`) is generated from them, and tests/unit/test_wire.py checks
what the hub really sends against them.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import UNSET, Meta, Struct, UnsetType

from hub.edge.wire.events import ErrorDetail, StoredEvent, StreamId, TenantId, Timestamp
from hub.errors import CloseCode

__all__ = [
    "CLIENT_FRAMES",
    "CLOSE_MEANINGS",
    "INBOX_FRAMES",
    "STREAM_FRAMES",
    "ArchivedFrame",
    "ClientLocationFrame",
    "Connect",
    "ErrorFrame",
    "EventFrame",
    "Frame",
    "InboxLiveFrame",
    "LiveFrame",
    "LocationFrame",
    "PingFrame",
    "PongFrame",
]


class Frame(Struct, tag_field="type", forbid_unknown_fields=True):
    """A WebSocket frame: a JSON object whose ``type`` says which."""


# -- hub to client ---------------------------------------------------------------------


class EventFrame(StoredEvent, Frame, tag="event"):
    """A committed event: replayed after ``since``, then live as it is committed."""


class LiveFrame(Frame, tag="live", rename="camel"):
    """A stream's replay is done; ``seq`` is the last one sent (``since`` when none)."""

    stream_id: StreamId
    seq: Annotated[int, Meta(ge=0)]


class InboxLiveFrame(Frame, tag="live"):
    """An inbox's replay is done; ``pos`` is the highest sent (``since`` when none)."""

    pos: Annotated[int, Meta(ge=0)]


class LocationFrame(Frame, tag="location", rename="camel"):
    """The position of the stream's driver (never stored in the streams DB)."""

    stream_id: StreamId
    driver: TenantId
    lat: float
    lng: float
    ts: Timestamp


class ArchivedFrame(Frame, tag="archived", rename="camel"):
    """The stream was archived: its last frame, before a 1000 close."""

    stream_id: StreamId


class ErrorFrame(Frame, tag="error"):
    """A frame the hub could not use (the socket stays open), or a refused ``since``
    (then a 1008 close)."""

    error: ErrorDetail


class PongFrame(Frame, tag="pong"):
    """The answer to a ``ping``."""


# -- client to hub ---------------------------------------------------------------------


class PingFrame(Frame, tag="ping"):
    """Asks for a ``pong``."""


class ClientLocationFrame(Frame, tag="location"):
    """A driver's position: the same as ``POST /api/motion`` (422-style ``invalid_frame``
    error frame when out of range)."""

    lat: Annotated[float, Meta(ge=-90, le=90)]
    lng: Annotated[float, Meta(ge=-180, le=180)]


class Connect(Struct):
    """The query of a socket's URL."""

    since: Annotated[int, Meta(
        ge=0, le=10**18 - 1,
        description="Resume after this seq (a stream) or pos (an inbox); 0 when absent. A"
        " bad value: an `invalid_since` error frame, then close 1008.",
    )] = 0  # fmt: skip
    token: Annotated[str, Meta(
        description="The token, for browsers (which cannot set the Authorization header).",
    )] | UnsetType = UNSET  # fmt: skip


# Which frames each path carries, hub to client and client to hub.
STREAM_FRAMES: tuple[type[Frame], ...] = (
    EventFrame, LiveFrame, LocationFrame, ArchivedFrame, ErrorFrame, PongFrame,
)  # fmt: skip
INBOX_FRAMES: tuple[type[Frame], ...] = (EventFrame, InboxLiveFrame, ErrorFrame, PongFrame)
CLIENT_FRAMES: tuple[type[Frame], ...] = (PingFrame, ClientLocationFrame)

# What each close code tells a client (whether to reconnect is CloseCode.reconnect).
CLOSE_MEANINGS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "Done: the stream was archived (after an `archived` frame).",
    CloseCode.GOING_AWAY: "The hub is shutting down; reconnect with `since`.",
    CloseCode.PROTOCOL_ERROR: "The client broke the WebSocket protocol.",
    CloseCode.UNSUPPORTED_DATA: "A frame the hub cannot take.",
    CloseCode.POLICY_VIOLATION: "A malformed request (a bad `since`); fix it first.",
    CloseCode.TOO_BIG: "A frame over the size limit.",
    CloseCode.INTERNAL_ERROR: "A hub fault or a keepalive timeout; reconnect with `since`.",
    CloseCode.SERVICE_RESTART: "The hub is restarting; reconnect with `since`.",
    CloseCode.UNAUTHORIZED: "No token or a bad one (signature, expiry, subject, role); do not"
    " reconnect with the same token.",
    CloseCode.FORBIDDEN: "Not allowed: not a member (the same for a stream that does not"
    " exist), or an origin not allowed; do not reconnect.",
    CloseCode.STALLED: "The socket drained nothing for too long; reconnect with `since`.",
    CloseCode.TOO_MANY: "Too many sockets for this tenant and role; back off, then reconnect.",
}
