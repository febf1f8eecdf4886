"""The node: one hub instance's parts wired together (store, broker, channels, metrics).

The edge (:mod:`hub.edge.app`, :mod:`hub.edge.ws`) calls the node; the node checks access with
:mod:`hub.domain.auth` and commits through the :class:`~hub.infra.store.Store`, whose commit hook
hands every committed append, in commit order, to the :class:`~hub.infra.broker.Broker`,
which delivers to the local :class:`~hub.domain.channels.Channels` of every instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from hub.config import Settings
from hub.domain.auth import Principal, TokenCache, authorize_append, authorize_read
from hub.domain.channels import Channels
from hub.errors import Forbidden, Unprocessable
from hub.events import Event, NewEvent, Opcode
from hub.infra.archive import Archive
from hub.infra.broker import Broker, MemoryBroker
from hub.infra.store import AppendResult, Store, StreamInfo, open_store
from hub.metrics import Metrics

__all__ = ["ORDER_STATUS", "STATUS_OPCODES", "Node", "Watched", "order_status", "status_of"]


class Watched(Protocol):
    """A socket the node's sweeper checks for stalls."""

    def check_stall(self, now: float) -> None: ...


# The order status an opcode moves a stream to (CONTRACT §4), in step order.
ORDER_STATUS: dict[int, str] = {
    Opcode.ORDER_CREATE: "placed",
    Opcode.INVOICE_PAYMENT: "paid",
    Opcode.TASK_CREATE: "preparing",
    Opcode.TASK_START: "preparing",
    Opcode.TASK_DONE: "ready",
    Opcode.TASK_ASSIGN: "assigned",
    Opcode.ORDER_SHIP: "picked_up",
    Opcode.ORDER_DELIVER: "delivered",
}
STATUS_OPCODES = tuple(ORDER_STATUS)  # the opcodes that tell an order's status
_RANK = {s: i for i, s in enumerate(dict.fromkeys(ORDER_STATUS.values()))}


def order_status(events: Sequence[Event]) -> str | None:
    """The furthest order step the events reach; None for a stream with no ORDER_CREATE."""
    return status_of({e.opcode for e in events})


def status_of(opcodes: Collection[int]) -> str | None:
    """The furthest order step a stream holding ``opcodes`` has reached (None: not an order)."""
    if Opcode.ORDER_CREATE not in opcodes:
        return None
    best = "placed"
    for opcode in opcodes:
        status = ORDER_STATUS.get(opcode)
        if status is not None and _RANK[status] > _RANK[best]:
            best = status
    return best


class Node:
    """One hub instance. ``start()``/``close()`` are called by the app's lifespan."""

    def __init__(
        self, settings: Settings, *, store: Store | None = None, broker: Broker | None = None
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._streams_written = self.metrics.db_writes.labels("streams")
        self.store: Store = store or open_store(
            settings.streams_db, auth_token=settings.db_auth_token
        )
        self.broker: Broker = broker or self._default_broker()
        self.channels = Channels(self.broker)
        # Set by the app: where a driver's location frames go (the GPS service).
        self.location_sink: Callable[[str, float, float], Awaitable[bool]] | None = None
        self.tokens = TokenCache(settings.secret)
        self._members: OrderedDict[str, StreamInfo] = OrderedDict()  # known members by stream
        self.sockets_by_subject: dict[str, int] = {}  # "role:tenant" -> open sockets
        self._watched: set[Watched] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.archive: Archive | None = None  # set by the app; where archived streams are read

    def _default_broker(self) -> Broker:
        if self.settings.redis_url:
            from hub.infra.broker.redis import RedisBroker

            return RedisBroker(self.settings.redis_url, sharded=self.settings.redis_sharded,
                               cluster=self.settings.redis_cluster,
                               prefix=self.settings.redis_prefix, metrics=self.metrics)  # fmt: skip
        return MemoryBroker()

    def watch(self, conn: Watched) -> None:
        """Have the sweeper check ``conn`` for stalls until :meth:`unwatch`."""
        self._watched.add(conn)

    def unwatch(self, conn: Watched) -> None:
        self._watched.discard(conn)

    async def _sweep(self) -> None:
        """One task for every socket's stall check (not a timer per socket)."""
        period = max(0.05, min(1.0, self.settings.ws_stall_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in tuple(self._watched):
                conn.check_stall(now)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="hub-stall-sweeper")
        await self.store.open()
        self.store.on_commit = self._committed
        await self.broker.start(self.channels.deliver, self.channels.resync)

    async def close(self) -> None:
        """Stop fan-out, then the store (every task awaited). Idempotent."""
        self.store.on_commit = None
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await self.broker.close()
        await self.store.close()

    async def location(self, who: Principal, frame: Mapping[str, Any]) -> bool:
        """A driver's ``location`` frame: the same as ``POST /api/motion``."""
        if who.role != "driver":
            raise Forbidden("only a driver sends its location")
        lat, lng = frame.get("lat"), frame.get("lng")
        for name, value, limit in (("lat", lat, 90), ("lng", lng, 180)):
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not -limit <= value <= limit):  # fmt: skip
                raise Unprocessable(f"{name} must be a number in range", code="invalid_frame")
        if self.location_sink is None:
            raise Unprocessable("GPS is not enabled on this hub", code="unsupported")
        return await self.location_sink(who.tenant, float(lat), float(lng))  # type: ignore[arg-type]

    async def append(
        self, who: Principal, stream_id: str, events: Sequence[NewEvent]
    ) -> AppendResult:
        """Authorize and commit an append through the generic event API."""
        if who.is_platform:
            return await self.commit(stream_id, events)
        # Membership is never revoked: a remembered member needs no read of the store.
        info = self._members.get(stream_id)
        if info is None or who.tenant not in info.members:
            info = await self.store.stream_info(stream_id)
            if info is not None:
                self._remember(info)
        first = authorize_append(who, info, events)
        return await self.commit(stream_id, events, first=first)

    MEMBERS_CACHED = 10_000  # streams whose members are remembered

    def _remember(self, info: StreamInfo) -> None:
        self._members[info.stream_id] = info
        self._members.move_to_end(info.stream_id)
        if len(self._members) > self.MEMBERS_CACHED:
            self._members.popitem(last=False)

    def _committed(self, result: AppendResult) -> None:
        """The store's commit hook: remember the members, then fan the events out."""
        last = result.events[-1].seq if result.events else 0
        self._remember(StreamInfo(result.stream_id, last, False, dict(result.members)))
        self.broker.publish(result)

    async def commit(
        self, stream_id: str, events: Sequence[NewEvent], *, first: bool = False
    ) -> AppendResult:
        """Commit already-authorized events, count them, and hand them on for fan-out."""
        t0 = time.perf_counter()
        result = await self.store.append(stream_id, events, first=first)
        self.metrics.append_latency.observe(time.perf_counter() - t0)
        if result.new:
            self.metrics.events_appended.inc(len(result.new))
            self._streams_written.inc(len(result.new))
        return result

    async def read(self, who: Principal, stream_id: str) -> StreamInfo:
        """Return the stream's info if ``who`` may read it (else Forbidden/NotFound)."""
        info = await self.store.stream_info(stream_id)
        authorize_read(who, info)
        assert info is not None
        return info

    async def healthy(self, timeout: float = 2.0) -> dict[str, str]:
        """Check each dependency; the streams DB answering is what makes the hub healthy."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.store.ping(), timeout)
            checks["streams_db"] = "ok"
        except Exception as exc:
            checks["streams_db"] = f"failing: {exc}"
        checks["broker"] = self.broker.health()
        return checks
