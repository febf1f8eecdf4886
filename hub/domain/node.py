"""The stream node: one hub instance's event log and its fan-out.

An event's way, call by call (each a method a reader can follow):

1. :meth:`Node.append` authorizes (:mod:`hub.domain.auth`) and :meth:`Node.commit` hands
   the events to :meth:`Store.append <hub.infra.store.Store.append>`;
2. the store tells its :class:`~hub.infra.store.CommitListener`, this node, of every
   commit in commit order: :meth:`Node.committed` remembers the stream's members and calls
   :meth:`Broker.publish <hub.infra.broker.Broker.publish>`;
3. the broker (on every instance) calls its :class:`~hub.infra.broker.Receiver`, this
   node's :class:`~hub.domain.channels.Channels`: :meth:`Channels.deliver
   <hub.domain.channels.Channels.deliver>` offers the event to each local subscriber;
4. a :class:`~hub.domain.subscription.Subscription` queues it and wakes its transport
   (:mod:`hub.edge.ws`), which sends it.

Reading a stream, live or archived, is :meth:`Node.read_events` (HTTP reads and
subscriptions alike). Every collaborator is given to the constructor
(:meth:`hub.edge.app.Parts.build` is where they are made); :meth:`Node.start` opens the
store with this node as its listener and starts the broker with the channels as its
receiver.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence

from hub.config import Settings
from hub.domain.auth import (
    Principal,
    Role,
    TokenCache,
    authorize_append,
    authorize_read,
    check_client_ids,
)
from hub.domain.channels import Channels, Subscriber
from hub.errors import Busy, Unavailable
from hub.events import Event, NewEvent
from hub.infra.archive import Archive
from hub.infra.broker import Broker
from hub.infra.db import WriteHealth
from hub.infra.store import AppendResult, Store, StreamInfo
from hub.metrics import Metrics

__all__ = ["Node"]


class Node:
    """One hub instance's event log and fan-out. ``start()``/``close()`` are called by the
    app's lifespan; the node owns the store, the broker and the archive from then on."""

    MEMBERS_CACHED = 10_000  # streams whose members are remembered

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        broker: Broker,
        archive: Archive,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tokens = TokenCache.from_settings(settings)  # HUB_SECRET, HUB_JWKS_URL
        # Read directly by hub.domain.orders until it reads through read_events.
        self.store = store
        self.archive = archive
        self._broker = broker
        self._channels = Channels(broker)  # the broker's receiver on this instance
        self._members: OrderedDict[str, StreamInfo] = OrderedDict()  # known members by stream
        self._streams_written = metrics.db_writes.labels("streams")
        self.writes = WriteHealth()  # appends the streams DB refused lately (for /healthz)

    async def start(self) -> None:
        """Open the store, telling this node of every commit; start the broker,
        delivering to this node's channels."""
        await self.store.open(self)
        await self._broker.start(self._channels)

    async def close(self) -> None:
        """Stop the store (it tells nobody any more), then the broker, then the archive;
        every task awaited. Idempotent."""
        await self.store.close()
        await self._broker.close()
        await self.archive.close()

    @property
    def ordered(self) -> bool:
        """True when live events reach subscribers in commit order across all streams
        (one process); else inbox subscribers read them from the store in ``pos`` order."""
        return self._broker.ordered

    # -- writing: append -> commit -> committed -> broker ---------------------------------

    async def append(
        self, who: Principal, stream_id: str, events: Sequence[NewEvent]
    ) -> AppendResult:
        """Authorize and commit an append through the generic event API."""
        if who.is_platform:
            return await self.commit(stream_id, events)
        check_client_ids(who, stream_id, events)  # before anything the stream holds is read
        # A remembered member needs no read of the store, but a driver's membership ends
        # at a TASK_UNASSIGN that another instance may have written: it is read each time.
        info = self._members.get(stream_id)
        if info is None or who.tenant not in info.members or who.role is Role.DRIVER:
            info = await self.store.stream_info(stream_id)
            if info is not None:
                self._remember(info)
        first = authorize_append(who, info, events)
        return await self.commit(stream_id, events, first=first)

    async def commit(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        first: bool = False,
        expected: int | None = None,
    ) -> AppendResult:
        """Commit already-authorized events and count them; the store reports the commit
        to :meth:`committed` before this returns. ``expected``: see :meth:`Store.append
        <hub.infra.store.Store.append>`."""
        t0 = time.perf_counter()
        try:
            result = await self.store.append(stream_id, events, first=first, expected=expected)
        except Busy:
            raise  # overloaded or locked elsewhere: not a failing database
        except Unavailable as exc:
            self.writes.failed(str(exc))
            raise
        self.writes.succeeded()
        self.metrics.append_latency.observe(time.perf_counter() - t0)
        if result.new:
            self.metrics.events_appended.inc(len(result.new))
            self._streams_written.inc(len(result.new))
        return result

    def committed(self, result: AppendResult) -> None:
        """The store's :class:`~hub.infra.store.CommitListener`: remember the members,
        then publish the events (in commit order) to every instance's channels."""
        last = result.events[-1].seq if result.events else 0
        self._remember(StreamInfo(result.stream_id, last, False, dict(result.members)))
        self._broker.publish(result)

    def _remember(self, info: StreamInfo) -> None:
        self._members[info.stream_id] = info
        self._members.move_to_end(info.stream_id)
        if len(self._members) > self.MEMBERS_CACHED:
            self._members.popitem(last=False)

    # -- subscribing ------------------------------------------------------------------

    async def subscribe(self, channel: str, sub: Subscriber) -> None:
        """Offer ``sub`` every message of ``channel`` from now on (returns once the broker
        delivers it here)."""
        await self._channels.add(channel, sub)
        self.metrics.subscriptions.inc()

    async def unsubscribe(self, channel: str, sub: Subscriber) -> None:
        self.metrics.subscriptions.dec()
        await self._channels.remove(channel, sub)

    # -- reading ------------------------------------------------------------------------

    async def read(self, who: Principal, stream_id: str) -> StreamInfo:
        """Return the stream's info if ``who`` may read it (else Forbidden/NotFound)."""
        info = await self.store.stream_info(stream_id)
        authorize_read(who, info)
        assert info is not None
        return info

    async def stream_info(self, stream_id: str) -> StreamInfo | None:
        """The stream's last ``seq``, members and whether it is archived; None if it never
        existed. Not authorized: for the platform and the node's own checks."""
        return await self.store.stream_info(stream_id)

    async def read_events(
        self, stream_id: str, since: int, limit: int, *, archived: bool
    ) -> list[Event]:
        """Events of ``stream_id`` with ``seq > since``, in order, at most ``limit``: from
        the store while the stream is live, from the archive once it is ``archived`` (the
        same events, with their ``seq`` and ``pos``). An archived stream is read a page at
        a time too: only the bytes of the events asked for (:meth:`Archive.read
        <hub.infra.archive.Archive.read>`), never the whole object per reader.

        Raises :class:`~hub.errors.Unavailable` when an archived stream cannot be read.
        """
        if not archived:
            return await self.store.read_stream(stream_id, since, limit)
        page = await self.archive.read(stream_id, since, limit)
        if page is None:
            raise Unavailable("the archived stream cannot be read right now")
        return page

    async def read_inbox(self, tenant: str | None, since: int, limit: int) -> list[Event]:
        """Events with ``pos > since`` of the streams ``tenant`` is a member of, from the
        event that made it one (every stream for None, the platform); the store only."""
        return await self.store.read_inbox(tenant, since, limit)

    async def stream_opcodes(self, stream_id: str, among: Sequence[int]) -> dict[int, int]:
        """Which of the opcodes ``among`` the stream's stored events have, each with the
        ``seq`` of its last one."""
        return await self.store.stream_opcodes(stream_id, among)

    async def find_streams(self, *, having: int | None = None,
                           lacking: int | Sequence[int] | None = None,
                           member: str | None = None, limit: int = 1000) -> list[str]:  # fmt: skip
        """Ids of live streams with an event of opcode ``having``, none of ``lacking``, and
        ``member`` among their members (each test skipped when None), oldest first."""
        return await self.store.find_streams(
            having=having, lacking=lacking, member=member, limit=limit
        )

    async def healthy(self, timeout: float = 2.0) -> dict[str, str]:
        """Each dependency's state, ``"ok"`` or ``"failing: why"`` (the why is for the log):
        the streams DB must answer and must not have refused recent appends."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.store.ping(), timeout)
            writes = self.writes.state()
            checks["streams_db"] = "ok" if writes == "ok" else f"failing: {self.writes.error}"
        except Exception as exc:
            checks["streams_db"] = f"failing: {exc or type(exc).__name__}"
        checks["broker"] = self._broker.health()
        return checks
