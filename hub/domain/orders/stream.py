"""The order's stream: where the order flow reads an order's events and commits a step's.

The stream is the order's truth: every step reads the order's events, checks that it is
its turn, then writes. Event ids derive from the order and the step (``ord-5001.pay``),
so a retried append returns the stored event instead of writing another. Those ids are
the order flow's alone: ids are unique within their stream, and a party may not choose an
id ``{streamId}.…`` through the generic event API (:func:`hub.domain.auth.check_client_ids`).

The parties may append to the stream through the generic event API without end (a
customer's INVOICE_PAYMENT, a kitchen's TASK_START), so :func:`load` reads the whole
stream, page by page, and keeps only what the order steps look at: however long the
stream grows, no step misses one of its events (a driver whose ORDER_SHIP lay past the
first page could never deliver) and no step holds more than a page in memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from hub.domain.node import Node
from hub.domain.orders.rules import OrderState
from hub.errors import Forbidden
from hub.events import STREAM_ID_RE, Event, NewEvent, Opcode, now_ts

__all__ = ["READ_BYTES", "append", "load", "read_events", "step_event"]

# Events of one order read at once, live or archived (an archive is read a page at a time):
# a page of the largest events is about 1 MiB. What a step holds besides is bounded too
# (see load), and the edge reserves READ_BYTES of the caller's read budget around a step.
READ_MAX = 16
ARCHIVED_READ = READ_MAX
READ_BYTES = 4 << 20  # a page, the events kept, and the answer built from them
# Opcodes kept however many (only the hub and the platform write them).
_EVERY = frozenset({Opcode.TASK_ASSIGN, Opcode.TASK_UNASSIGN, Opcode.ORDER_CANCEL})


def step_event(order_id: str, step: str, opcode: int, payload: Mapping[str, Any], *,
               node_id: str | None = None, point_id: str | None = None,
               delta: float = 0.0) -> NewEvent:  # fmt: skip
    """The event ``step`` of ``order_id`` writes (id ``{order_id}.{step}``)."""
    return NewEvent(
        id=f"{order_id}.{step}",
        opcode=opcode,
        node_id=node_id if node_id is not None else order_id,
        point_id=point_id,
        delta=float(delta),
        payload=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        ts=now_ts(),
        ts_given=False,
    )


async def read_events(node: Node, order_id: str, *, archived: bool = False
                      ) -> tuple[list[Event], int]:  # fmt: skip
    """What the order steps look at of the order's events (see :func:`load`), live or
    from the archive, in ``seq`` order, and the last ``seq`` read.

    A live stream archived while it is being read (Step 11 deletes its events) reads short:
    then the archive, which holds all of it, is read instead.
    """
    kept, last = await _read(node, order_id, archived)
    if not archived:
        info = await node.stream_info(order_id)
        if info is not None and info.archived and last < info.last_seq:
            kept, last = await _read(node, order_id, True)
    return kept, last


async def _read(node: Node, order_id: str, archived: bool) -> tuple[list[Event], int]:
    """The events :func:`load` keeps, and the last ``seq`` read."""
    kept: list[Event] = []
    seen: set[int] = set()
    steps = order_id + "."
    since, page = 0, ARCHIVED_READ if archived else READ_MAX
    while True:
        events = await node.read_events(order_id, since, page, archived=archived)
        for e in events:
            if e.opcode not in seen or e.opcode in _EVERY or e.id.startswith(steps):
                kept.append(e)
                seen.add(e.opcode)
        if events:
            since = events[-1].seq
        if len(events) < page:
            return kept, since


async def load(node: Node, order_id: str, *, archived: bool = False) -> OrderState:
    """The order as its stream tells it; 404 when there is none.

    It keeps the first event of each opcode (the order's status, its ORDER_CREATE), every
    TASK_ASSIGN, TASK_UNASSIGN and ORDER_CANCEL (only the hub and the platform write them)
    and every event of the order steps (ids ``{order_id}.…``): bounded, whatever else the
    parties appended.
    """
    if not STREAM_ID_RE.match(order_id):
        raise Forbidden("not a member of this order")
    events, last = await read_events(node, order_id, archived=archived)
    return OrderState(order_id, events, last)


async def append(node: Node, order_id: str, events: Sequence[NewEvent], *,
                 first: bool = False, onto: OrderState | None = None) -> list[Event]:  # fmt: skip
    """Commit a step's events (already authorized; ``first``: only as the stream's first
    events; ``onto``: only onto the stream as that state read it, else
    :class:`~hub.infra.store.StreamChanged`); the stored events."""
    expected = onto.last_seq if onto is not None else None
    return (await node.commit(order_id, events, first=first, expected=expected)).events
