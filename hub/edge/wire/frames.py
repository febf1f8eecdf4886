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

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from hub.edge.wire.events import ErrorDetail, StoredEvent, StreamId, TenantId, Timestamp
from hub.errors import CloseCode

__all__ = [
    "CLIENT_FRAMES",
    "CLOSE_MEANINGS",
    "INBOX_FRAMES",
    "STREAM_FRAMES",
    "TRACKING_FRAMES",
    "ArchivedFrame",
    "ArrivingFrame",
    "AuthFrame",
    "ClientAuthFrame",
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
    "PresenceFrame",
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
    """The position of the stream's driver (never stored in the streams DB); one right
    after ``live`` when it is known. ``ts`` is the fix's time (the driver's ``seenAt``)."""

    stream_id: StreamId
    driver: TenantId
    lat: float
    lng: float
    ts: Timestamp
    eta_seconds: Annotated[int, Meta(
        ge=0, description="Seconds to the next stop at the driver's recent speed; when"
        " that stop's position is known.")] | UnsetType = UNSET  # fmt: skip
    distance_m: Annotated[int, Meta(
        ge=0, description="Metres to the next stop, great-circle.")] | UnsetType = UNSET
    stop: Annotated[Literal["restaurant", "dropoff"], Meta(
        description="The next stop: the restaurant before pickup, the drop-off after.",
    )] | UnsetType = UNSET  # fmt: skip


class PresenceFrame(Frame, tag="presence", rename="camel"):
    """The stream's driver sent no position for ``HUB_PRESENCE_TIMEOUT`` seconds
    (``unreachable``), or sends them again (``online``); once per change."""

    stream_id: StreamId
    driver: TenantId
    state: Literal["unreachable", "online"]
    last_seen: Annotated[Timestamp | None, Meta(
        description="When the driver's last position arrived (null: never).")]


class ArrivingFrame(Frame, tag="arriving", rename="camel"):
    """The driver came within 200 m of the drop-off: once per order."""

    stream_id: StreamId
    driver: TenantId
    distance_m: Annotated[int, Meta(ge=0, description="Metres from the drop-off.")]


class ArchivedFrame(Frame, tag="archived", rename="camel"):
    """The stream was archived: its last frame, before a 1000 close."""

    stream_id: StreamId


class ErrorFrame(Frame, tag="error"):
    """A frame the hub could not use (the socket stays open), or a refused ``since``
    (then a 1008 close)."""

    error: ErrorDetail


class PongFrame(Frame, tag="pong"):
    """The answer to a ``ping``."""


class AuthFrame(Frame, tag="auth"):
    """The answer to an ``auth`` frame: the socket now runs on the new token, until its
    ``exp``. A socket whose token expires is closed with 4401 within 1 s of ``exp``."""

    exp: Annotated[float, Meta(
        ge=0, description="The new token's `exp` (unix seconds); null: it never expires.",
    )] | None  # fmt: skip


# -- client to hub ---------------------------------------------------------------------


class PingFrame(Frame, tag="ping"):
    """Asks for a ``pong``."""


class ClientLocationFrame(Frame, tag="location"):
    """A driver's position: the same as ``POST /api/motion`` (422-style ``invalid_frame``
    error frame when out of range)."""

    lat: Annotated[float, Meta(ge=-90, le=90)]
    lng: Annotated[float, Meta(ge=-180, le=180)]


class ClientAuthFrame(Frame, tag="auth"):
    """Token refresh without a reconnect: the token replaces the socket's (answered with
    ``auth``). One that does not verify closes the socket with 4401; one of another
    ``sub`` or ``role`` with 4403. Without a token (or not a string): an ``invalid_frame``
    error frame, and the socket keeps its token."""

    token: Annotated[str, Meta(min_length=1)]


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
    EventFrame, LiveFrame, LocationFrame, ArchivedFrame, ErrorFrame, PongFrame, AuthFrame,
)  # fmt: skip
INBOX_FRAMES: tuple[type[Frame], ...] = (
    EventFrame, InboxLiveFrame, ErrorFrame, PongFrame, AuthFrame,
)  # fmt: skip
# Stream sockets also carry the tracking frames (docs/protocol.md §5 "Tracking frames").
TRACKING_FRAMES: tuple[type[Frame], ...] = (PresenceFrame, ArrivingFrame)
CLIENT_FRAMES: tuple[type[Frame], ...] = (PingFrame, ClientLocationFrame, ClientAuthFrame)

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
    CloseCode.UNAUTHORIZED: "No token or a bad one (signature, expiry, subject, role), the"
    " socket's token expired without a refresh, or a refresh with a token that does not"
    " verify; do not reconnect with the same token.",
    CloseCode.FORBIDDEN: "Not allowed: not a member (the same for a stream that does not"
    " exist), an origin not allowed, or a refresh with another tenant's or role's token;"
    " do not reconnect.",
    CloseCode.STALLED: "The socket drained nothing for too long; reconnect with `since`.",
    CloseCode.TOO_MANY: "Too many sockets for this tenant and role; back off, then reconnect.",
}
