"""The order's stream: where the order flow reads an order's events and commits a step's.

The stream is the order's truth: every step reads the order's events, checks that it is
its turn, then writes. Event ids derive from the order and the step (``ord-5001.pay``),
so a retried append returns the stored event instead of writing another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from hub.domain.node import Node
from hub.domain.orders.rules import OrderState
from hub.errors import Forbidden
from hub.events import STREAM_ID_RE, Event, NewEvent, now_ts

__all__ = ["append", "load", "read_events", "step_event"]

READ_MAX = 1000  # events of one order read at most


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


async def read_events(node: Node, order_id: str, *, archived: bool = False) -> list[Event]:
    """The order's events (at most :data:`READ_MAX`), live or from the archive."""
    return await node.read_events(order_id, 0, READ_MAX, archived=archived)


async def load(node: Node, order_id: str) -> OrderState:
    """The order as its stream (in the streams DB) tells it; 404 when there is none."""
    if not STREAM_ID_RE.match(order_id):
        raise Forbidden("not a member of this order")
    return OrderState(order_id, await read_events(node, order_id))


async def append(node: Node, order_id: str, events: Sequence[NewEvent], *,
                 first: bool = False) -> list[Event]:  # fmt: skip
    """Commit a step's events (already authorized; ``first``: only as the stream's first
    events); the stored events."""
    return (await node.commit(order_id, events, first=first)).events
