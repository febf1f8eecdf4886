"""One subscription's delivery state, whatever transport carries it (WebSocket, SSE).

A :class:`Subscription` follows one stream (by ``seq``) or one inbox (by ``pos``) and
decides what its subscriber is sent next, so that it gets every committed event exactly
once and in order (docs/protocol.md §5). The order of work is what makes resume exact:

1. :func:`open_stream` / :func:`open_inbox` authorize, then subscribe to the live channel
   first (live events meanwhile are left to the log: ``fallback`` is set);
2. :meth:`Subscription.read` replays from the log every event after ``since``, page by page;
3. then comes the ``live`` frame, then each live event as it is offered, skipping
   anything at or below the last ``seq``/``pos`` sent.

A stream subscription is also made known to the instance's tracking
(:class:`~hub.domain.tracking.Tracking`): it offers the driver's position (and his
presence, when he is unreachable) as notices, which go out right after ``live``, and
watches the order while the subscription is open. ``presence`` and ``arriving`` notices
go out once per change (:func:`~hub.domain.tracking.once`), whichever instance sent them.

Overflow policy: a subscriber whose queue fills (``queue_max`` live events) has its queued
events dropped and is fed from the log at the pace its transport sends (it loses
nothing). A gap in a stream's live events (a ``seq`` jump) and a broker's resync (Redis
reconnected: messages may be lost) are filled from the log the same way. When the stream
is archived (a ``final`` notice), what follows ``last`` is read from the archive, then the
``archived`` frame ends the subscription. A member's stream subscription also ends, after
the event, at a TASK_UNASSIGN that names it (its membership ended: ``end_code`` 4403), on
whichever instance the event was written.

The transport owns the sending and nothing else; its writer is this loop (one writer per
subscription, never two at once)::

    while True:
        await sub.wait()                  # until something was offered
        while True:
            frame = sub.next_frame()      # from memory: a page, the queue, notices
            if frame is not None:
                await send(frame)
                if sub.ended:             # the "archived" frame, or membership ended
                    close(sub.end_code)
            elif sub.fallback:
                await sub.read()          # the next page from the log
            else:
                break                     # idle: the subscription holds no buffers now

and :meth:`Subscription.close` unsubscribes. Offering never blocks: the broker's
delivery calls :meth:`Subscription.offer` for every subscriber of a channel.

Memory: a page holds :data:`PAGE_BYTES` of events at most (or one event), whatever
their size. Its bytes are taken from the subscriber's tenant's
:class:`~hub.domain.sessions.ReadBudget` before it is read (the most the read may
need), and given back once its last frame is sent or the subscription is closed; a
tenant whose budget is used up has its reads wait (the transport counts the wait as a
send that does not progress: the stall timeout bounds it).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

from hub.domain.archiver import archived_frame
from hub.domain.auth import Principal
from hub.domain.node import Node
from hub.domain.sessions import EVENT_MAX, ReadBudget, clip
from hub.domain.tracking import ONCE_PREFIXES, Tracking, once
from hub.events import Event, Opcode
from hub.infra.broker import Message, Notice, inbox_channel, stream_channel

__all__ = ["NOTICE_MAX", "REPLAY_PAGE", "Subscription", "open_inbox", "open_stream"]

REPLAY_PAGE = 500  # events read from the log per page, at most
# A page holds this much at most (or one event), whatever the events' size:
# 500 events of 64 KiB were 32 MB per socket, 1 GB for 30 sockets replaying at once. The
# first page reads FIRST_PAGE events (their size is not known yet), each next one as
# many as make PAGE_BYTES at the last page's mean size.
PAGE_BYTES, FIRST_PAGE = 1 << 20, 64
NOTICE_MAX = 64  # location frames waiting (oldest dropped first)


class Subscription:
    """One subscriber's delivery state: a stream (by ``seq``) or an inbox (by ``pos``).

    An idle subscription holds no buffers: its queues and pages are made when needed and
    dropped once sent (most subscribers wait far longer than they receive).
    """

    __slots__ = ("_announced", "_budget", "_held", "_limit", "_once", "_page", "_tracking",
                 "_waiter", "end_code", "ended", "fallback", "final", "hints_only", "joined",
                 "last", "node", "notices", "owner", "pending", "queue", "queue_max",
                 "resynced", "stream_id", "tenant")  # fmt: skip

    def __init__(
        self,
        node: Node,
        *,
        stream_id: str | None,
        tenant: str | None,
        since: int,
        queue_max: int,
        budget: ReadBudget | None = None,
        owner: str = "",
        joined: int | None = None,
    ) -> None:
        self.node = node
        self._budget = budget  # the bytes of pages read, per tenant (None: unbounded)
        self.owner = owner  # the subscriber's tenant, whose budget its pages take
        self._held = 0  # bytes of the budget the page being sent holds
        self.stream_id = stream_id  # None: an inbox
        self.tenant = tenant  # inbox owner; None with stream_id None: the platform's inbox
        self.last = since  # the last seq (stream) or pos (inbox) sent
        self.queue: deque[Event] | None = None  # live events not sent yet
        self.queue_max = queue_max
        self.notices: deque[Notice] | None = None  # location frames (oldest dropped first)
        self.final: Notice | None = None  # the stream was archived: the last frame
        self.ended = False  # the final frame was handed out
        self.end_code = 1000  # the close code once ended (4403: membership ended)
        # A member's stream subscription: the pos its membership began at. A TASK_UNASSIGN
        # naming the owner from there on ends the subscription (None: the platform's).
        self.joined = joined
        self.fallback = True  # read from the log before anything else (first: the replay)
        self.resynced = False  # the next read fills what the broker may have lost
        self.pending = True  # something for the writer to look at (first: the replay)
        self._announced = False  # the "live" frame was handed out (or skipped: final)
        self._page: list[Event] | None = None  # events read from the log, last first
        self._limit = FIRST_PAGE  # events of the next page (from the size of the last)
        self._waiter: asyncio.Future[None] | None = None  # only while the writer waits
        # Inbox events of several instances may arrive out of pos order: read them
        # from the log (in pos order) instead of trusting the live order.
        self.hints_only = stream_id is None and not node.ordered
        # Tracking (hub.domain.tracking): the instance's, told of this stream subscription's
        # opening and closing; the presence and arriving frames sent (each change once).
        self._tracking: Tracking | None = None
        self._once: dict[str, tuple[str, str]] | None = None

    @property
    def channel(self) -> str:
        if self.stream_id is not None:
            return stream_channel(self.stream_id)
        return inbox_channel(self.tenant)

    async def close(self) -> None:
        """Unsubscribe (the transport is done with it) and drop what was not sent (a page
        of the log, queued events, notices), whatever still refers to the subscription
        (a cancelled writer's frames, until its task is freed); give back the budget."""
        self._page = self.queue = self.notices = None
        self.release()
        tracking, self._tracking = self._tracking, None
        if tracking is not None:
            tracking.closed(self)
        await self.node.unsubscribe(self.channel, self)

    def release(self) -> None:
        """Give back what the last page took of the tenant's budget (it is sent, or
        dropped)."""
        held, self._held = self._held, 0
        if held and self._budget is not None:
            self._budget.release(self.owner, held)

    # -- what arrives (Subscriber, called by the channels; never blocks) ----------------

    def offer(self, message: Message) -> None:
        if isinstance(message, Notice):
            if message.final:
                self.final = message
                self.fallback = True  # the rest is in the archive: read it before the end
            else:
                if self.notices is None:
                    self.notices = deque(maxlen=NOTICE_MAX)
                self.notices.append(message)
        elif self.fallback:
            return  # the next read of the log has it
        elif self.hints_only:
            if message.pos <= self.last:  # an inbox's (only inboxes take hints)
                return
            self.fallback = True
        elif self.queue is None:
            self.queue = deque((message,))
        elif len(self.queue) >= self.queue_max:
            self.queue = None  # overflow: drop what is queued, feed from the log
            self.fallback = True
            self.node.metrics.slow_fallbacks.inc()
        else:
            self.queue.append(message)
        self.wake()

    def resync(self) -> None:
        """Messages may have been lost upstream: read from the log again."""
        self.queue = None
        self.fallback = True
        self.resynced = True
        self.wake()

    # -- what leaves (called by the transport's writer) ---------------------------------

    def wake(self) -> None:
        """Have the writer look again (also for frames of the transport's own)."""
        self.pending = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until there is something for the writer (at once if there already is)."""
        if not self.pending:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        self.pending = False

    def next_frame(self) -> str | None:
        """The next frame to send, from memory; None when there is none: then either
        ``fallback`` is set (call :meth:`read`) or the subscription is idle."""
        page = self._page
        if page:  # a page of the log goes out whole before anything else
            event = page.pop()
            if not page:
                self._page = None
            self.last = event.seq if self.stream_id is not None else event.pos
            self._check_left(event)
            return event.frame
        if self._held:  # the page's last frame has been sent
            self.release()
        if self.fallback:
            return None
        if not self._announced:
            self._announced = True
            if self.final is None:
                return self.live_frame()
        queue = self.queue
        while queue:
            event = queue.popleft()
            if self.stream_id is None:
                key = event.pos
            else:
                key = event.seq
                if key > self.last + 1:
                    self.resync()  # a gap: fill it from the log
                    return None
            if key > self.last:
                self.last = key
                self._check_left(event)
                return event.frame
        while self.notices:
            frame = self.notices.popleft().frame
            if frame.startswith(ONCE_PREFIXES):  # presence, arriving: once per change
                if self._once is None:
                    self._once = {}
                if not once(frame, self._once):
                    continue
            return frame
        if self.final is not None:
            self.ended = True
            return self.final.frame
        self.queue = self.notices = None  # idle: hold no buffers
        return None

    def _check_left(self, event: Event) -> None:
        """End a member's stream subscription after the TASK_UNASSIGN that names it."""
        if (self.joined is not None and event.opcode == Opcode.TASK_UNASSIGN
                and event.pos >= self.joined
                and event.payload_obj.get("driver") == self.owner):  # fmt: skip
            self.ended = True
            self.end_code = 4403
            self._page = self.queue = None

    async def read(self) -> None:
        """Read the next page after ``last`` from the log (the replay, an overflow, a gap,
        a resync, the archive before the final frame); :meth:`next_frame` hands it out."""
        self.fallback = False  # live events offered from now on are queued
        backfill, self.resynced = self.resynced, False
        node = self.node
        limit = self._limit
        self.release()  # the last page is sent
        budget, taken = self._budget, limit * EVENT_MAX  # the most this read may need
        if budget is not None:
            await budget.acquire(self.owner, taken)
        try:
            if self.stream_id is None:
                rows = await node.read_inbox(self.tenant, self.last, limit)
            else:
                archived = self.final is not None
                rows = await node.read_events(self.stream_id, self.last, limit,
                                              archived=archived)  # fmt: skip
        except BaseException:
            if budget is not None:
                budget.release(self.owner, taken)
            raise
        count = len(rows)
        size = clip(rows, PAGE_BYTES)
        if budget is not None:  # keep what the page holds until it is sent
            budget.release(self.owner, taken - size)
            self._held = size
        if count >= limit or len(rows) < count:
            self.fallback = True  # more to read once this page is sent
        if rows:  # the next page: about PAGE_BYTES of events of this page's mean size
            mean = size // len(rows)
            self._limit = max(1, min(REPLAY_PAGE, PAGE_BYTES // mean))
        if backfill and rows:
            node.metrics.backfilled.inc(len(rows))
        elif backfill and self.stream_id is not None and self.final is None:
            # Nothing to fill: the "archived" notice may be what was lost. Ask the store.
            info = await node.stream_info(self.stream_id)
            if info is not None and info.archived:
                self.offer(Notice(self.stream_id, archived_frame(self.stream_id), final=True))
        if rows:
            rows.reverse()
            self._page = rows

    def live_frame(self) -> str:
        if self.stream_id is not None:
            return json.dumps({"type": "live", "streamId": self.stream_id, "seq": self.last})
        return json.dumps({"type": "live", "pos": self.last})


async def open_stream(
    node: Node, who: Principal, stream_id: str, since: int, *, queue_max: int,
    budget: ReadBudget | None = None,
) -> Subscription:
    """Subscribe ``who`` to one stream's events after ``seq`` ``since``.

    Members and the platform only (else :class:`~hub.errors.Forbidden`); the platform may
    subscribe to a stream that does not exist yet. An archived stream's subscription
    sends what follows ``since`` from the archive, then its final frame.
    """
    if who.is_platform:
        info = await node.stream_info(stream_id)
    else:
        info = await node.read(who, stream_id)
    joined = None if who.is_platform or info is None else info.members.get(who.tenant)
    sub = Subscription(node, stream_id=stream_id, tenant=None, since=since, queue_max=queue_max,
                       budget=budget, owner=who.tenant, joined=joined)  # fmt: skip
    if info is not None and info.archived:
        sub.offer(Notice(stream_id, archived_frame(stream_id), final=True))
    await node.subscribe(sub.channel, sub)
    tracking = Tracking.of(node)
    if tracking is not None and (info is None or not info.archived):
        # The driver's position (and presence) right after `live`; the order watched.
        sub._tracking = tracking
        tracking.opened(sub)
    return sub


async def open_inbox(node: Node, who: Principal, since: int, *, queue_max: int,
                     budget: ReadBudget | None = None) -> Subscription:  # fmt: skip
    """Subscribe ``who`` to its inbox after ``pos`` ``since``: every event of the streams
    it is a member of (every stream for the platform)."""
    tenant = None if who.is_platform else who.tenant
    sub = Subscription(node, stream_id=None, tenant=tenant, since=since, queue_max=queue_max,
                       budget=budget, owner=who.tenant)  # fmt: skip
    await node.subscribe(sub.channel, sub)
    return sub
