"""One WebSocket connection: authenticate, subscribe, replay, go live, never lose an event.

The order of work (CONTRACT §5) is what makes resume exact:

1. accept, then authenticate (a refusal is a 4401/4403 close a browser can read);
2. subscribe to the live channel first, buffering what arrives;
3. replay from the store every event after ``since``, page by page;
4. send the ``live`` frame, then the buffered and new events, dropping anything at or
   below the last ``seq``/``pos`` sent.

Each connection has one bounded queue and one writer task; the reader, the writer and a
stall check (one sweeper task per node looks at every socket) end together: when one
ends the others are cancelled and awaited.
Overflow policy: a subscriber whose queue fills has its queued live events dropped and
is fed from the store at the pace its socket drains (it loses nothing). A gap in the
live feed (a ``seq`` jump) is filled from the store the same way. A socket that drains
nothing for ``ws_stall_timeout`` seconds is closed with 4008 (reconnect with ``since``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from hub.domain.archiver import archived_frame
from hub.domain.auth import Principal
from hub.domain.node import Node
from hub.edge.append import bearer_token
from hub.errors import CloseCode, HubError
from hub.events import Event, check_stream_id
from hub.infra.broker import Message, Notice, inbox_channel, stream_channel

__all__ = ["Feed", "InboxEndpoint", "StreamEndpoint", "origin_allowed"]

log = logging.getLogger("hub.ws")


REPLAY_PAGE = 500  # events read from the store per page while replaying
CONTROL_MAX = 64  # pongs and error frames waiting to be sent
NOTICE_MAX = 64  # location frames waiting (oldest dropped first)
MAX_CLIENT_FRAME = 64 << 10  # bytes (UTF-8) of one client frame
CLOSE_WAIT = 60.0  # seconds a close may wait behind a full send buffer (4008 must get through)


class Feed:
    """One subscription's delivery state: a stream (by ``seq``) or an inbox (by ``pos``).

    An idle feed holds no buffers: its queues are made on the first event and dropped
    when the writer has drained them (most sockets wait far longer than they send).
    """

    __slots__ = ("_archived", "_waiter", "fallback", "final", "hints_only", "last", "node",
                 "notices", "pending", "queue", "queue_max", "resynced", "stream_id",
                 "tenant")  # fmt: skip

    def __init__(
        self,
        node: Node,
        *,
        stream_id: str | None,
        tenant: str | None,
        since: int,
        queue_max: int,
    ) -> None:
        self.node = node
        self.stream_id = stream_id  # None: an inbox
        self.tenant = tenant  # inbox owner; None with stream_id None: the platform's inbox
        self.last = since
        self.queue: deque[Event] | None = None
        self.queue_max = queue_max
        self.notices: deque[Notice] | None = None  # location frames (oldest dropped first)
        self.final: Notice | None = None
        self.fallback = True  # start by reading the store (the replay)
        self.pending = False  # something for the writer to look at
        self._waiter: asyncio.Future[None] | None = None  # only while the writer waits
        self._archived: list[Event] | None = None
        self.resynced = False
        # Inbox events of several instances may arrive out of pos order: read them
        # from the store (in pos order) instead of trusting the live order.
        self.hints_only = stream_id is None and not node.broker.ordered

    @property
    def channel(self) -> str:
        if self.stream_id is not None:
            return stream_channel(self.stream_id)
        return inbox_channel(self.tenant)

    def key(self, event: Event) -> int:
        return event.seq if self.stream_id is not None else event.pos

    # Subscriber protocol (called by Channels; never blocks).
    def offer(self, message: Message) -> None:
        if isinstance(message, Notice):
            if message.final:
                self.final = message
            else:
                if self.notices is None:
                    self.notices = deque(maxlen=NOTICE_MAX)
                self.notices.append(message)
        elif self.fallback:
            return  # the writer will read it from the store
        elif self.hints_only:
            if self.key(message) <= self.last:
                return
            self.fallback = True
        elif self.queue is None:
            self.queue = deque((message,))
        elif len(self.queue) >= self.queue_max:
            self.queue = None
            self.fallback = True
            self.node.metrics.slow_fallbacks.inc()
        else:
            self.queue.append(message)
        self.wake()

    def resync(self) -> None:
        self.queue = None
        self.fallback = True
        self.resynced = True
        self.wake()

    def wake(self) -> None:
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

    def drop_buffers(self) -> None:
        """Called by the writer once drained: an idle feed holds no buffers."""
        self.queue = self.notices = None

    async def read(self) -> list[Event]:
        if self.stream_id is None:
            return await self.node.store.read_inbox(self.tenant, self.last, REPLAY_PAGE)
        rows = await self.node.store.read_stream(self.stream_id, self.last, REPLAY_PAGE)
        if rows or self.final is None:
            return rows
        # Archived: what the store no longer holds is in the archive.
        if self._archived is None:
            archive = self.node.archive
            got = await archive.get(self.stream_id) if archive is not None else None
            self._archived = got or []
        return [e for e in self._archived if e.seq > self.last][:REPLAY_PAGE]

    def live_frame(self) -> str:
        if self.stream_id is not None:
            return json.dumps({"type": "live", "streamId": self.stream_id, "seq": self.last})
        return json.dumps({"type": "live", "pos": self.last})


class _Closed(Exception):
    """End the connection with ``code``."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def error_frame(code: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"code": code, "message": message}})


YIELD_EVERY = 64  # frames a writer sends before letting other tasks run


class Connection:
    """A subscribed socket: the reader runs in the socket's own task, the writer in a second.

    The node's sweeper checks it for stalls. When either side ends, the other is stopped:
    the writer is cancelled and awaited; a writer that ends interrupts the reader.
    """

    __slots__ = ("_interrupted", "_reading", "_receive", "_send", "_sent", "_task", "_writer",
                 "control", "feed", "node", "sending_since", "stall_timeout", "stalled",
                 "who")  # fmt: skip

    def __init__(self, node: Node, who: Principal, feed: Feed, send: Send, receive: Receive):
        self.node = node
        self.who = who
        self.feed = feed
        self._send = send
        self._receive = receive
        self.control: deque[str] | None = None  # pongs and error frames (made on demand)
        self.sending_since: float | None = None
        self.stall_timeout = node.settings.ws_stall_timeout
        self.stalled = False
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._reading = False
        self._interrupted = False
        self._sent = 0

    async def send(self, frame: str) -> None:
        self.sending_since = time.monotonic()
        await self._send({"type": "websocket.send", "text": frame})
        self.sending_since = None
        self.node.metrics.frames_sent += 1
        self._sent += 1
        if self._sent % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a hot stream must not hold the loop for a whole pass

    def check_stall(self, now: float) -> None:
        """Called by the node's sweeper: close a socket that drained nothing for too long."""
        started = self.sending_since
        if started is not None and now - started > self.stall_timeout and not self.stalled:
            self.stalled = True
            self.node.metrics.stalled_closes.inc()
            if self._writer is not None:
                self._writer.cancel()

    def push_control(self, frame: str) -> None:
        if self.control is None:
            self.control = deque()
        elif len(self.control) >= CONTROL_MAX:
            raise _Closed(CloseCode.STALLED, "replies not being read")
        self.control.append(frame)
        self.feed.wake()

    async def catch_up(self) -> None:
        """Send from the store until caught up; live events buffer meanwhile."""
        feed = self.feed
        while True:
            feed.fallback = False
            backfill, feed.resynced = feed.resynced, False
            rows = await feed.read()
            if backfill and rows:
                self.node.metrics.backfilled.inc(len(rows))
            if backfill and not rows and feed.stream_id is not None and feed.final is None:
                # The "archived" notice may be what was lost: ask the store.
                info = await self.node.store.stream_info(feed.stream_id)
                if info is not None and info.archived:
                    feed.final = Notice(feed.stream_id, archived_frame(feed.stream_id), final=True)
            for event in rows:
                await self.send(event.frame)
                feed.last = feed.key(event)
            if len(rows) < REPLAY_PAGE and not feed.fallback:
                return

    async def writer(self) -> None:
        feed = self.feed
        await self.catch_up()
        if feed.final is None:
            await self.send(feed.live_frame())
        while True:
            await feed.wait()
            while True:
                if self.control:
                    await self.send(self.control.popleft())
                elif feed.fallback:
                    await self.catch_up()
                elif feed.queue:
                    event = feed.queue.popleft()
                    key = feed.key(event)
                    if key <= feed.last:
                        continue
                    if feed.stream_id is not None and key != feed.last + 1:
                        feed.resync()  # a gap: fill it from the store
                        continue
                    await self.send(event.frame)
                    feed.last = key
                elif feed.notices:
                    await self.send(feed.notices.popleft().frame)
                elif feed.final is not None:
                    await self.catch_up()
                    await self.send(feed.final.frame)
                    raise _Closed(CloseCode.NORMAL, "archived")
                else:
                    self.control = None
                    feed.drop_buffers()
                    break

    async def reader(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                self.push_control(error_frame("binary_frame", "frames must be JSON text"))
                continue
            size = len(text) if len(text) > MAX_CLIENT_FRAME else len(text.encode(errors="replace"))
            if size > MAX_CLIENT_FRAME:
                self.push_control(error_frame("frame_too_large", "frame over 64 KiB"))
                continue
            try:
                frame = json.loads(text)
            except (ValueError, RecursionError):
                self.push_control(error_frame("invalid_json", "frame is not valid JSON"))
                continue
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "ping":
                self.push_control('{"type":"pong"}')
            elif kind == "location":
                try:
                    await self.node.location(self.who, frame)
                except HubError as exc:
                    self.push_control(error_frame(exc.code, exc.message))
            else:
                self.push_control(
                    error_frame("unknown_frame", "expected a JSON object with type ping|location")
                )

    def _writer_ended(self, _: asyncio.Task[None]) -> None:
        if self._reading and self._task is not None:
            self._interrupted = True
            self._task.cancel()  # interrupt the reader (see run)

    async def run(self) -> int | None:
        """Serve until the client leaves or a close is due; returns the close code to send.

        The reader runs here, in the socket's own task, not in a task of its own: one task
        and one wait less per socket.
        """
        task = self._task = asyncio.current_task()
        writer = self._writer = asyncio.create_task(self.writer(), name="ws-writer")
        writer.add_done_callback(self._writer_ended)
        self.node.watch(self)
        code: int | None = None
        self._reading = True
        try:
            await self.reader()
        except _Closed as exc:
            code = exc.code
        except asyncio.CancelledError:
            if not self._interrupted or (task is not None and task.uncancel() > 0):
                raise  # cancelled from outside (shutdown), not (only) by the writer's end
        except Exception as exc:
            code = self._failed(exc)
        finally:
            self._reading = False
            self.node.unwatch(self)
            writer.remove_done_callback(self._writer_ended)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self.stalled:
            return int(CloseCode.STALLED)
        if code is None and writer.done() and not writer.cancelled():
            ended = writer.exception()
            if isinstance(ended, _Closed):
                return ended.code
            if ended is not None:
                return self._failed(ended)
        return code

    @staticmethod
    def _failed(exc: BaseException) -> int | None:
        if _client_gone(exc):
            return None
        log.error("connection task failed", exc_info=exc)
        return int(CloseCode.INTERNAL_ERROR)


def _client_gone(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or type(exc).__name__ in {
        "ClientDisconnected",
        "WebSocketDisconnect",
    }


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def origin_allowed(scope: Scope, allowed: tuple[str, ...]) -> bool:
    """Cross-site WebSocket hijacking guard: a browser's ``Origin`` must be allowed.

    Clients that send no ``Origin`` (servers, mobile apps) are not browsers and pass.
    With no allow-list, only the hub's own origin (same host and port) passes.
    """
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin")
    if origin is None:
        return True
    value = origin.decode("latin-1").rstrip("/")
    if "*" in allowed or value in allowed:
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    return bool(host) and value.split("://", 1)[-1] == host


class _Endpoint:
    """Raw ASGI WebSocket endpoint shared by the stream and inbox paths."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def open_feed(self, who: Principal, scope: Scope, since: int) -> Feed:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One flat coroutine for the socket's whole life (each nested one would stay in
        # memory as long as the socket: bench scenario D).
        node = self.node
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        node.metrics.connections.inc()
        try:
            admitted = await self._admit(scope, send)
            if isinstance(admitted, int):
                code: int | None = admitted
            else:
                who, feed, subject = admitted
                try:
                    channel = feed.channel
                    await node.channels.add(channel, feed)
                    node.metrics.subscriptions.inc()
                    try:
                        code = await Connection(node, who, feed, send, receive).run()
                    finally:
                        node.metrics.subscriptions.dec()
                        await node.channels.remove(channel, feed)
                finally:
                    self._release(subject)
        finally:
            node.metrics.connections.dec()
        if code is not None:
            # A stalled socket's buffer is full: the close frame waits its turn, so a
            # client that reads again (before the keepalive gives up) still sees the code.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(send({"type": "websocket.close", "code": code}), CLOSE_WAIT)

    async def _admit(self, scope: Scope, send: Send) -> tuple[Principal, Feed, str] | int:
        """Who is asking, and their feed; or the close code refusing them.

        Admitted sockets count against their subject's cap until :meth:`_release`.
        """
        node = self.node
        if not origin_allowed(scope, node.settings.allowed_origins):
            return int(CloseCode.FORBIDDEN)
        query = _query(scope)
        try:
            who = node.tokens.principal(bearer_token(scope) or query.get("token") or None)
        except HubError:
            return int(CloseCode.UNAUTHORIZED)
        subject = f"{who.role}:{who.tenant}"
        open_now = node.sockets_by_subject.get(subject, 0)
        if open_now >= node.settings.ws_max_per_token:
            return int(CloseCode.TOO_MANY)
        raw_since = query.get("since", "0") or "0"
        if not (raw_since.isascii() and raw_since.isdigit()) or len(raw_since) > 18:
            frame = error_frame("invalid_since", "since must be an integer >= 0")
            await send({"type": "websocket.send", "text": frame})
            return int(CloseCode.POLICY_VIOLATION)
        node.sockets_by_subject[subject] = open_now + 1
        try:
            feed = await self.open_feed(who, scope, int(raw_since))
        except HubError as exc:
            self._release(subject)
            refused = exc.status in (400, 403, 404)
            return int(CloseCode.FORBIDDEN if refused else CloseCode.INTERNAL_ERROR)
        except BaseException:
            self._release(subject)
            raise
        return who, feed, subject

    def _release(self, subject: str) -> None:
        left = self.node.sockets_by_subject[subject] - 1
        if left:
            self.node.sockets_by_subject[subject] = left
        else:
            del self.node.sockets_by_subject[subject]


class StreamEndpoint(_Endpoint):
    """``/ws/streams/{streamId}?since=N``: one order's channel."""

    async def open_feed(self, who: Principal, scope: Scope, since: int) -> Feed:
        stream_id = check_stream_id(scope.get("path_params", {}).get("stream_id"))
        if who.is_platform:  # the platform may watch a stream before it exists
            info = await self.node.store.stream_info(stream_id)
        else:
            info = await self.node.read(who, stream_id)
        feed = Feed(
            self.node,
            stream_id=stream_id,
            tenant=None,
            since=since,
            queue_max=self.node.settings.ws_queue_frames,
        )
        if info is not None and info.archived:
            feed.offer(Notice(stream_id, archived_frame(stream_id), final=True))
        return feed


class InboxEndpoint(_Endpoint):
    """``/ws/inbox?since=P``: every event of every stream the tenant is a member of."""

    async def open_feed(self, who: Principal, scope: Scope, since: int) -> Feed:
        return Feed(
            self.node,
            stream_id=None,
            tenant=None if who.is_platform else who.tenant,
            since=since,
            queue_max=self.node.settings.ws_queue_frames,
        )
