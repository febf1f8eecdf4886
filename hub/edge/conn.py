"""What the hub's long-lived transports share (WebSockets, :mod:`hub.edge.ws`; Server-Sent
Events, :mod:`hub.edge.sse`): the two channels a subscriber opens (one order's stream, the
tenant's inbox), the cursor it resumes from, the connection's transport under uvicorn, and
how a connection whose client takes nothing is reset.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

from starlette.types import Scope, Send

from hub.domain.auth import Principal
from hub.domain.node import Node
from hub.domain.sessions import ReadBudget
from hub.domain.subscription import Subscription, open_inbox, open_stream
from hub.events import check_stream_id

__all__ = ["LINGER_RESET", "Channel", "Transport", "client_gone", "gone", "inbox_channel",
           "parse_cursor", "query_params", "reset", "stream_channel", "transport_of"]  # fmt: skip

LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
CURSOR_DIGITS = 18  # a cursor (seq, pos) has at most this many digits: it fits an int64


def parse_cursor(raw: str) -> int | None:
    """A ``since`` (or ``Last-Event-ID``) cursor: an integer >= 0 of at most
    :data:`CURSOR_DIGITS` ASCII digits, else None (the caller refuses it)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > CURSOR_DIGITS:
        return None
    return int(raw)


# How an endpoint opens its channel for an admitted ``who`` from ``since`` (the request's
# ``scope`` names it), with ``queue_max`` frames queued at most and the tenant's read budget.
Channel = Callable[[Node, Principal, Scope, int, int, ReadBudget], Awaitable[Subscription]]


async def stream_channel(node: Node, who: Principal, scope: Scope, since: int, queue_max: int,
                         budget: ReadBudget) -> Subscription:  # fmt: skip
    """``…/streams/{streamId}``: one order's channel."""
    stream_id = check_stream_id(scope.get("path_params", {}).get("stream_id"))
    return await open_stream(node, who, stream_id, since, queue_max=queue_max, budget=budget)


async def inbox_channel(node: Node, who: Principal, scope: Scope, since: int, queue_max: int,
                        budget: ReadBudget) -> Subscription:  # fmt: skip
    """``…/inbox``: every event of every stream the tenant is a member of."""
    return await open_inbox(node, who, since, queue_max=queue_max, budget=budget)


def query_params(scope: Scope) -> dict[str, str]:
    """The request's query, one value per name (the last one given)."""
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


class Transport(Protocol):
    """What the hub uses of a connection's transport (asyncio's or uvloop's)."""

    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def transport_of(send: Send) -> Transport | None:
    """The connection's transport under uvicorn, whose ``send`` is a method of its WebSocket
    protocol (websockets, websockets-sansio and wsproto alike keep the transport in
    ``transport``) or of its HTTP request-response cycle (httptools and h11 alike); None
    under another server or a wrapped ``send`` (uvicorn's trace logging): then the hub
    relies on the server to end its connections."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return None
    return cast(Transport, transport)


def gone(transport: Transport) -> bool:
    """Closed with nothing left to send: the descriptor is released at once."""
    return transport.is_closing() and not transport.get_write_buffer_size()


def reset(transport: Transport) -> None:
    """Abort a connection whose client takes nothing: abort() drops the hub's buffer and
    closes the descriptor; a zero linger has the kernel drop its own buffer too (a reset)
    instead of keeping an orphaned socket that tries to send it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(Exception):  # OSError, or a socket of another kind
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    transport.abort()


def client_gone(exc: BaseException) -> bool:
    """``exc`` says the client went away (not a fault of the hub's)."""
    return isinstance(exc, OSError) or type(exc).__name__ in {
        "ClientDisconnected",
        "WebSocketDisconnect",
    }
