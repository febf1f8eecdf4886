"""Wire shapes of the event log: what ``POST /api/streams/{id}/events`` takes and gives,
``GET /api/streams/{id}``, the platform's archive call, and the error body of every route.

The request shapes (:class:`EventDraft`, :class:`EventBatch`) are declared in
:mod:`hub.events`, which validates appends and sits below the edge; they are re-exported
here so that every wire shape can be found in :mod:`hub.edge.wire`. The response shapes
describe what :class:`hub.events.Event` encodes by hand (once per event, for speed);
tests/unit/test_wire.py holds the two together.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from hub.events import (
    STREAM_ID_PATTERN,
    TENANT_ID_PATTERN,
    EventBatch,
    EventDraft,
    Opcode,
    OpcodeName,
    anchored,
)

__all__ = [
    "Archived",
    "Error",
    "ErrorDetail",
    "EventBatch",
    "EventDraft",
    "Events",
    "StoredEvent",
    "Stream",
    "StreamId",
    "TenantId",
    "Timestamp",
]

StreamId = Annotated[str, Meta(pattern=anchored(STREAM_ID_PATTERN))]
TenantId = Annotated[str, Meta(pattern=anchored(TENANT_ID_PATTERN))]
Timestamp = Annotated[
    str,
    Meta(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
        description="ISO 8601 UTC with milliseconds, e.g. 2026-11-27T12:30:00.000Z.",
    ),
]


class StoredEvent(Struct, forbid_unknown_fields=True, rename="camel"):
    """A committed event (docs/protocol.md §3)."""

    id: str
    stream_id: str
    seq: Annotated[int, Meta(ge=1, description="1, 2, 3 ... within its stream, no gaps.")]
    pos: Annotated[int, Meta(ge=1, description="Orders every event of the streams DB.")]
    opcode: Opcode
    name: OpcodeName
    node_id: str | None
    point_id: str | None
    delta: float
    payload: dict[str, Any]
    ts: Timestamp


class Events(Struct, forbid_unknown_fields=True):
    """Events an append stored (201) or found stored already (200, a retry)."""

    events: list[StoredEvent]


class Stream(Struct, forbid_unknown_fields=True, rename="camel"):
    """A stream's events after ``since``, live or read back from the archive."""

    stream_id: StreamId
    status: Literal["active", "archived"]
    order_status: Annotated[
        str | None, Meta(description="The order's status; null when it is not an order.")
    ]
    last_seq: Annotated[int, Meta(ge=0)]
    events: list[StoredEvent]


class Archived(Struct, forbid_unknown_fields=True, rename="camel"):
    """A stream archived, then deleted from the streams DB."""

    stream_id: StreamId
    status: Literal["archived"]
    archived_events: Annotated[int, Meta(ge=0)]


class ErrorDetail(Struct, forbid_unknown_fields=True):
    """What went wrong: a stable ``code`` and words for people."""

    code: Annotated[str, Meta(min_length=1)]
    message: Annotated[str, Meta(min_length=1)]


class Error(Struct, forbid_unknown_fields=True):
    """The error body of every refusal (docs/protocol.md §4)."""

    error: ErrorDetail
