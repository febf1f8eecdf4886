"""Server-Sent Events: one HTTP response serving one subscription (docs/protocol.md §5,
"Server-Sent Events"), for networks that block WebSockets.

What a subscriber is sent, and when, is the transport-neutral
:class:`~hub.domain.subscription.Subscription`, the same as a WebSocket's (replay from
the log, then live, the overflow policy, gap fill, the archived end, membership that
ends). This module is the ``text/event-stream`` response around it:

1. authenticate (401), read the cursor (``Last-Event-ID``, which wins, or ``?since=``;
   400 when it is not an integer >= 0), take a place under the principal's cap (the
   WebSockets' :class:`~hub.domain.sessions.Sessions`: one count per tenant and role for
   both transports; 429 when full), open the subscription (403 for a non-member, the
   same for a stream that does not exist): every refusal is an HTTP status with the
   hub's error body, before the stream starts;
2. start the response and run a writer (the subscription's frames) while the request
   task waits for the client to leave (``http.disconnect``);
3. end it, when due, with ``event: close`` ``data: {"code": N}`` (N the WebSocket close
   code: 1000 archived, 4403 membership ended, 4008 stalled, 4401 the token expired,
   1012 the hub is shutting down), then the end of the body.

Each event frame goes out as ``id: <seq>`` (a stream) or ``id: <pos>`` (an inbox),
``event: event``, ``data: <the WebSocket frame>``; every other frame as ``event: <its
type>`` and ``data:``, without an ``id:`` (the client's ``Last-Event-ID`` stays its last
event's). A comment (``: keepalive``) goes out when nothing else has for
``sse_keepalive`` seconds (``HUB_SSE_KEEPALIVE``, 15 s). Frames are written as they come
(a page of the replay coalesced into writes of up to :data:`CHUNK_BYTES`): nothing
buffers or compresses the body.

Backpressure is uvicorn's: its ``send`` waits while the connection's write buffer is
full, so the writer takes the next frame only once the client drains the last ones, and
the subscription falls back to the log (losing nothing, holding nothing) when its live
queue overflows. The stall check is the WebSockets' (the sessions' sweeper): a response
whose send has not progressed for ``ws_stall_timeout`` seconds ends with ``event:
close`` 4008, which its client has :data:`CLOSE_GRACE` seconds to take before the
connection is reset. The same sweeper notices the server's shutdown (uvicorn turns the
request's keep-alive off) and ends the response with 1012; a token's ``exp`` ends it
with 4401 (a timer per response). The client reconnects with ``Last-Event-ID``
(EventSource does by itself) and, for 4401, a fresh token.

The SSE paths are served ahead of Starlette's router, with uvicorn's own ``send`` (see
:mod:`hub.edge.app`): a response lives for hours, and the stall and shutdown checks look
at uvicorn's request cycle through it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from starlette.types import Receive, Scope, Send

from hub.config import Settings
from hub.domain.auth import Principal
from hub.domain.node import Node
from hub.domain.sessions import Sessions
from hub.domain.subscription import Subscription
from hub.edge.append import bearer_token
from hub.edge.conn import Channel, client_gone, parse_cursor, query_params, reset, transport_of
from hub.errors import BadRequest, CloseCode, HubError, Unavailable

__all__ = ["CHUNK_BYTES", "CLOSE_GRACE", "Events", "close_block", "frame_block"]

log = logging.getLogger("hub.sse")

HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each write on at once
]
KEEPALIVE = b": keepalive\n\n"
CHUNK_BYTES = 64 << 10  # frames coalesced into one write, at most (or one frame)
YIELD_EVERY = 16  # writes a writer makes before letting other tasks run
# Seconds the client of a response that is ending (a stall above all) has to take what is
# queued for it and the close event before its connection is reset.
CLOSE_GRACE = 10.0
_TYPE = re.compile(r'\{\s*"type"\s*:\s*"([^"\\\r\n]+)"')
_EVENT = '{"type":"event",'  # how an event's frame begins (hub.events.Event.frame)


class TooMany(HubError):
    """The principal holds as many sessions (WebSockets and event streams) as it may."""

    status, code = 429, "too_many"


class _Closed(Exception):
    """End the response with ``event: close`` and this code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def frame_block(frame: str, event_id: int | None) -> bytes:
    """One SSE message: ``id:`` (events only), ``event: <type>``, ``data: <frame>``."""
    if frame.startswith(_EVENT):
        kind = "event"
    else:
        match = _TYPE.match(frame)
        kind = match.group(1) if match else str(json.loads(frame).get("type", "message"))
    if kind == "event" and event_id is not None:
        head = f"id: {event_id}\nevent: event\n"
    else:
        head = f"event: {kind}\n"
    if "\n" in frame or "\r" in frame:  # the hub's frames are one line; JSON allows more
        data = "".join(f"data: {line}\n" for line in frame.splitlines())
    else:
        data = f"data: {frame}\n"
    return (head + data + "\n").encode()


def close_block(code: int) -> bytes:
    return f'event: close\ndata: {{"code": {code}}}\n\n'.encode()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def cursor(scope: Scope, query: dict[str, str]) -> int:
    """Where the subscriber resumes: ``Last-Event-ID`` (EventSource's reconnect) wins over
    ``?since=``; neither is 0. 400 for one that is not an integer >= 0."""
    last_id = _header(scope, b"last-event-id")
    if last_id:
        value = parse_cursor(last_id)
        if value is None:
            raise BadRequest("Last-Event-ID must be an integer >= 0",
                             code="invalid_last_event_id")  # fmt: skip
        return value
    value = parse_cursor(query.get("since", "0") or "0")
    if value is None:
        raise BadRequest("since must be an integer >= 0", code="invalid_since")
    return value


class EventStream:
    """One subscribed response: the writer runs in a task of its own, the request's task
    waits for the client to leave; when either ends, the other is stopped.

    The sessions' sweeper checks it for stalls and for the server's shutdown.
    """

    __slots__ = ("_cycle", "_expiry", "_interrupted", "_reading", "_receive", "_send", "_task",
                 "_tick", "_writer", "due", "endpoint", "keepalive_due", "sending_since",
                 "stalled", "sub", "who", "written_at")  # fmt: skip

    def __init__(self, endpoint: Events, who: Principal, sub: Subscription, send: Send,
                 receive: Receive) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.who = who
        self.sub = sub
        self._send = send
        self._receive = receive
        self.sending_since: float | None = None  # time.monotonic() of the send under way
        self.stalled = False
        self.due: int | None = None  # a close due (4401, 1012): the writer ends with it
        self.keepalive_due = False
        self.written_at = 0.0  # loop time of the last write
        # uvicorn's request cycle, whose keep_alive the server turns off when it shuts down
        # (None: another server, or a request that asked for no keep-alive: then a shutdown
        # ends the response when the server cancels it, without a close message).
        cycle = getattr(send, "__self__", None)
        self._cycle = cycle if getattr(cycle, "keep_alive", None) is True else None
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._reading = False
        self._interrupted = False
        self._tick: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None

    # -- what ends it (timers and the sweeper; never blocks) ------------------------------

    def end(self, code: int) -> None:
        """Have the writer end the response with ``code`` before its next frame."""
        if self.due is None:
            self.due = code
            self.sub.wake()

    def check_stall(self, cutoff: float) -> None:
        """Called by the sweeper: end a response stuck in one send since before ``cutoff``;
        end one whose server is shutting down (1012, as uvicorn closes its sockets)."""
        writer = self._writer
        if self.stalled or writer is None:
            return
        started = self.sending_since
        if started is not None and started < cutoff:
            self.stalled = True
            self.endpoint.metrics.stalled_closes.inc()
            writer.cancel()
            return
        if self._cycle is not None and not self._cycle.keep_alive:
            self.end(int(CloseCode.SERVICE_RESTART))

    def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.endpoint.keepalive
        left = self.written_at + every - loop.time()
        if left <= 0.01:
            self.keepalive_due = True
            self.sub.wake()
            left = every
        self._tick = loop.call_later(left, self._keepalive)

    def _expired(self) -> None:
        self._expiry = None
        self.end(int(CloseCode.UNAUTHORIZED))

    # -- the writer -----------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        self.sending_since = time.monotonic()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        self.sending_since = None
        self.written_at = asyncio.get_running_loop().time()
        self.keepalive_due = False

    async def writer(self) -> None:
        """Send what the subscription hands out (see :mod:`hub.domain.subscription`), a few
        frames to a write, and a keepalive comment when nothing else went out for long."""
        sub = self.sub
        metrics = self.endpoint.metrics
        writes = 0
        while True:
            await sub.wait()
            while True:
                if self.due is not None:
                    raise _Closed(self.due)
                parts: list[bytes] = []
                size = 0
                ended = False
                while size < CHUNK_BYTES:
                    frame = sub.next_frame()
                    if frame is None:
                        break
                    part = frame_block(frame, sub.last)
                    parts.append(part)
                    size += len(part)
                    if sub.ended:  # the archived frame, or the TASK_UNASSIGN naming it
                        ended = True
                        break
                if parts:
                    await self.write(b"".join(parts) if len(parts) > 1 else parts[0])
                    metrics.frames_sent += len(parts)
                    if ended:
                        raise _Closed(sub.end_code)  # 1000 archived, 4403 no longer a member
                    writes += 1
                    if writes % YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # a replay must not hold the loop
                elif sub.fallback:
                    # A read may wait for its tenant's budget of page bytes: that wait
                    # counts as a send that does not progress (the stall timeout, 4008).
                    self.sending_since = time.monotonic()
                    await sub.read()
                    self.sending_since = None
                elif self.keepalive_due:
                    await self.write(KEEPALIVE)
                else:
                    break

    # -- the request's task ---------------------------------------------------------------

    async def reader(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return

    def _writer_ended(self, _: asyncio.Task[None]) -> None:
        if self._reading and self._task is not None:
            self._interrupted = True
            self._task.cancel()  # interrupt the reader (see run)

    async def run(self) -> int | None:
        """Serve until the client leaves (None) or a close is due (its code)."""
        loop = asyncio.get_running_loop()
        task = self._task = asyncio.current_task()
        self.written_at = loop.time()
        writer = self._writer = asyncio.create_task(self.writer(), name="sse-writer")
        writer.add_done_callback(self._writer_ended)
        sessions = self.endpoint.sessions
        sessions.watch(self)
        self._tick = loop.call_later(self.endpoint.keepalive, self._keepalive)
        exp = self.who.exp
        if exp is not None:
            self._expiry = loop.call_later(max(0.0, exp - time.time()), self._expired)
        failed: BaseException | None = None
        self._reading = True
        try:
            await self.reader()
        except asyncio.CancelledError:
            if not self._interrupted or (task is not None and task.uncancel() > 0):
                raise  # cancelled from outside (the server's), not (only) by the writer's end
        except Exception as exc:
            failed = exc
        finally:
            self._reading = False
            sessions.unwatch(self)
            for timer in (self._tick, self._expiry):
                if timer is not None:
                    timer.cancel()
            self._tick = self._expiry = None
            writer.remove_done_callback(self._writer_ended)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            ended = None if writer.cancelled() else writer.exception()
            # The exceptions' tracebacks hold this object: drop the tasks (see hub.edge.ws).
            self._writer = self._task = None
            del writer, task
        if self.stalled:
            return int(CloseCode.STALLED)
        if isinstance(ended, _Closed):
            return ended.code
        if failed is None:
            failed = ended
        if failed is None or client_gone(failed):
            return None
        if isinstance(failed, Unavailable):  # a database outage: the client resumes
            log.warning("ending an event stream: %s", failed)
        else:
            log.error("event stream failed", exc_info=failed)
        return int(CloseCode.INTERNAL_ERROR)


class Events:
    """Raw ASGI endpoint of a channel (GET and HEAD): ``/sse/streams/{streamId}``
    (:func:`~hub.edge.conn.stream_channel`) or ``/sse/inbox``."""

    def __init__(self, node: Node, sessions: Sessions, settings: Settings,
                 channel: Channel) -> None:  # fmt: skip
        self.node = node
        self.channel = channel
        self.sessions = sessions
        self.settings = settings
        self.metrics = node.metrics
        self.tokens = node.tokens
        self.keepalive = settings.sse_keepalive

    async def open(self, who: Principal, scope: Scope, since: int) -> Subscription:
        return await self.channel(self.node, who, scope, since, self.settings.ws_queue_frames,
                                  self.sessions.budget)  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        query = query_params(scope)
        try:
            who = await self.tokens.authenticate(bearer_token(scope) or query.get("token") or None)
            since = cursor(scope, query)
        except HubError as exc:
            await self._refuse(send, exc)
            return
        if not self.sessions.admit(who):
            await self._refuse(send, TooMany("too many sessions for this tenant and role;"
                                             " retry later"))  # fmt: skip
            return
        try:
            try:
                sub = await self.open(who, scope, since)
            except HubError as exc:
                await self._refuse(send, exc)
                return
            except Exception:
                log.exception("opening an event stream failed")
                await self._refuse(send, HubError("internal error"))
                return
            try:
                await self._serve(scope, receive, send, who, sub)
            finally:
                await sub.close()
        finally:
            self.sessions.release(who)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, who: Principal,
                     sub: Subscription) -> None:  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        code = await EventStream(self, who, sub, send, receive).run()
        if code is None:
            return  # the client left
        end = {"type": "http.response.body", "body": close_block(code), "more_body": False}
        try:
            # A stalled response's buffer is full: the close waits its turn, so a client
            # that reads again in time still learns why.
            await asyncio.wait_for(send(end), CLOSE_GRACE)
        except TimeoutError:
            transport = transport_of(send)
            if transport is not None:
                reset(transport)
                self.metrics.ws_aborted.inc()
                await asyncio.sleep(0)  # uvicorn learns the connection is lost
        except Exception as exc:
            if not client_gone(exc):
                raise

    async def _refuse(self, send: Send, exc: HubError) -> None:
        self.metrics.http_errors.labels(exc.code).inc()
        body = json.dumps(exc.body()).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        if isinstance(exc, TooMany):
            headers.append((b"retry-after", b"5"))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
