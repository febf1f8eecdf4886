"""Real hub parts for the fast tests: a node over an embedded store, the memory broker and
a local archive, all under one temporary directory; and events to commit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hub.config import Settings
from hub.domain.archiver import Archiver
from hub.domain.auth import Principal, Role
from hub.domain.node import Node
from hub.domain.subscription import Subscription
from hub.events import NewEvent, Opcode, parse_draft
from hub.infra.archive import open_archive
from hub.infra.broker import Broker, MemoryBroker
from hub.infra.store import Store
from hub.infra.store.file import FileStore
from hub.metrics import Metrics

STREAM = "ord-1"
CUSTOMER = Principal("cust-1", Role.CUSTOMER)
RESTAURANT = Principal("rest-1", Role.RESTAURANT)
DRIVER = Principal("drv-1", Role.DRIVER)
STRANGER = Principal("cust-2", Role.CUSTOMER)
PLATFORM = Principal("ops", Role.PLATFORM)


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, secret="unit-test-secret", ws_stall_timeout=1.0)


def event(opcode: int = Opcode.INVOICE_PAYMENT, stream_id: str = STREAM, **fields: Any) -> NewEvent:
    """A validated event without an id (the hub draws one)."""
    return parse_draft({"opcode": opcode, **fields}, stream_id=stream_id)


def order_create(stream_id: str = STREAM) -> NewEvent:
    """The ORDER_CREATE that makes CUSTOMER and RESTAURANT members."""
    members = {"customer": CUSTOMER.tenant, "restaurant": RESTAURANT.tenant}
    return event(Opcode.ORDER_CREATE, stream_id, payload=members)


@asynccontextmanager
async def running_node(
    tmp_path: Path, *, store: Store | None = None, broker: Broker | None = None
) -> AsyncIterator[Node]:
    """A started node on ``tmp_path/streams.db`` and ``tmp_path/archive``; closed after."""
    node = Node(
        settings(tmp_path),
        store=store or FileStore(f"file:{tmp_path / 'streams.db'}"),
        broker=broker or MemoryBroker(),
        archive=open_archive(f"file://{tmp_path / 'archive'}"),
        metrics=Metrics(),
    )
    await node.start()
    try:
        yield node
    finally:
        await node.close()


@asynccontextmanager
async def other_instance(tmp_path: Path) -> AsyncIterator[tuple[Node, Archiver]]:
    """A second hub instance on the same streams DB and archive, but not linked by any
    broker: what it commits reaches the first instance's subscribers only through the log
    (as during a Redis outage)."""
    async with running_node(tmp_path) as node:
        archiver = Archiver(node.store, node.archive, MemoryBroker(), node.metrics, delay=0)
        yield node, archiver


def counter(node: Node, name: str) -> float:
    """The value of one of the node's Prometheus counters."""
    return node.metrics.registry.get_sample_value(name + "_total") or 0.0


async def drain(sub: Subscription) -> list[dict[str, Any]]:
    """What a transport's writer sends until the subscription is idle or ended (see
    :mod:`hub.domain.subscription`), decoded."""
    frames: list[dict[str, Any]] = []
    while True:
        frame = sub.next_frame()
        if frame is not None:
            frames.append(json.loads(frame))
            if sub.ended:
                return frames
        elif sub.fallback:
            await sub.read()
        else:
            return frames


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    """The ``seq`` of every event frame, in order."""
    return [f["seq"] for f in frames if f["type"] == "event"]
