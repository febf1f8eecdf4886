"""The WebSocket transport: one connection serving one subscription.

What a subscriber is sent, and when, is the transport-neutral
:class:`~hub.domain.subscription.Subscription` (replay from the log, then live, the
overflow policy, gap fill, the archived end). This module is the WebSocket around it:

1. accept, then authenticate (a refusal is a 4401/4403 close a browser can read) and
   take a place under the principal's cap (:class:`~hub.domain.sessions.Sessions`);
2. open the subscription (:func:`~hub.domain.subscription.open_stream` /
   :func:`~hub.domain.subscription.open_inbox`: it authorizes and subscribes);
3. run a reader (client frames: ``ping``, a driver's ``location``, ``auth``) and a writer
   (the subscription's frames, and pongs and error frames first) until either ends.

A socket lives on its token: one whose token expires is closed with 4401 within 1 s of
``exp`` (a timer per socket, a :class:`asyncio.TimerHandle` that the connection arms when
it starts, re-arms on each refresh and cancels when it ends) unless the client sent a new
one in an ``auth`` frame (same ``sub`` and ``role``; another is closed 4403, one that does
not verify 4401), answered ``{"type": "auth", "exp"}``.

Each connection has one writer task; the reader runs in the socket's own task, and a
stall check (one sweeper for every socket, owned by :class:`Sessions`) closes a socket
that drained nothing for ``ws_stall_timeout`` seconds with 4008 (reconnect with
``since``). When one of them ends, the others are cancelled and awaited.

A client's frames are answered in order (pongs, error frames): while
:data:`CONTROL_MAX` replies wait to be sent the reader takes no more of them
(backpressure), so a burst is answered in full, and a client that never reads stalls
the writer and is closed with 4008 like any other.

A socket holds its place under its tenant's cap until its connection is gone, not only
until the hub has done with it: one closed by the hub (4008, 1000) or by the server
(the keepalive's 1011) whose client takes nothing, not even the close frame, for
:attr:`Endpoint.close_grace` seconds has its transport aborted with a reset (the hub's
buffer and the kernel's are dropped, the file descriptor closed). See
:meth:`Endpoint.reap`.

Nothing of a closed connection may wait for the cyclic garbage collector (it seldom
runs: :mod:`hub.edge.app`): a task that ended with an exception keeps it, and the
exception its traceback's frames, so the connection drops its references to its tasks
once they are done (else the frames, the connection, its subscription and a replay page
of up to 500 events form a cycle kept until a full collection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from starlette.types import Receive, Scope, Send

from hub.config import Settings
from hub.domain.auth import Principal, Role
from hub.domain.gps import Gps
from hub.domain.node import Node
from hub.domain.sessions import Sessions
from hub.domain.subscription import Subscription
from hub.edge.append import bearer_token
from hub.edge.conn import LINGER_RESET, Channel, parse_cursor
from hub.edge.conn import Transport as _Transport
from hub.edge.conn import client_gone as _client_gone
from hub.edge.conn import gone as _gone
from hub.edge.conn import query_params as _query
from hub.edge.conn import transport_of as _transport_of
from hub.errors import CloseCode, Forbidden, HubError, Unavailable, Unprocessable

__all__ = ["Endpoint", "origin_allowed"]

log = logging.getLogger("hub.ws")


CONTROL_MAX = 64  # pongs and error frames waiting to be sent: then the reader waits
CONTROL_LOW = CONTROL_MAX // 2  # the reader goes on once no more than this many wait
# Seconds a closing socket's client has to take what is queued for it, the close frame
# included (4008 must get through to a client that reads again), before the connection
# is reset: twice the stall timeout, within these bounds (60 s at the default 30 s).
CLOSE_WAIT = 60.0
CLOSE_GRACE_MIN = 10.0  # over uvicorn's 10 s wait for the client's answer to a close
REAP_POLL = (0.05, 1.0)  # seconds between two looks at a closing socket: first, at most
YIELD_EVERY = 64  # frames a writer sends before letting other tasks run


class _Closed(Exception):
    """End the connection with ``code``."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def error_frame(code: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"code": code, "message": message}})


def auth_frame(exp: float | None) -> str:
    """The answer to an ``auth`` frame: the new token's ``exp`` (whole seconds as an int)."""
    value = None if exp is None else int(exp) if exp == int(exp) else exp
    return json.dumps({"type": "auth", "exp": value})


def _bytes_text(n: int) -> str:
    return f"{n >> 10} KiB" if n % 1024 == 0 else f"{n} bytes"


def _position(who: Principal, frame: Mapping[str, Any]) -> tuple[float, float]:
    """``lat``/``lng`` of a driver's ``location`` frame (the same as ``POST /api/motion``)."""
    if who.role is not Role.DRIVER:
        raise Forbidden("only a driver sends its location")
    lat, lng = frame.get("lat"), frame.get("lng")
    for name, value, limit in (("lat", lat, 90), ("lng", lng, 180)):
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not -limit <= value <= limit):  # fmt: skip
            raise Unprocessable(f"{name} must be a number in range", code="invalid_frame")
    return float(lat), float(lng)  # type: ignore[arg-type]


class Connection:
    """A subscribed socket: the reader runs in the socket's own task, the writer in a second.

    The sessions' sweeper checks it for stalls. When either side ends, the other is
    stopped: the writer is cancelled and awaited; a writer that ends interrupts the reader.
    """

    __slots__ = ("_drained", "_expiry", "_interrupted", "_reading", "_receive", "_send",
                 "_sent", "_task", "_writer", "control", "endpoint", "expired",
                 "sending_since", "stalled", "sub", "who")  # fmt: skip

    def __init__(self, endpoint: Endpoint, who: Principal, sub: Subscription, send: Send,
                 receive: Receive) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.who = who
        self.sub = sub
        self._send = send
        self._receive = receive
        self.control: deque[str] | None = None  # pongs and error frames (made on demand)
        self._drained: asyncio.Future[None] | None = None  # only while the reader waits
        self.sending_since: float | None = None
        self.stalled = False
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._reading = False
        self._interrupted = False
        self._sent = 0
        self._expiry: asyncio.TimerHandle | None = None  # closes at who.exp (see _arm)
        self.expired = False

    async def send(self, frame: str) -> None:
        self.sending_since = time.monotonic()
        await self._send({"type": "websocket.send", "text": frame})
        self.sending_since = None
        self.endpoint.metrics.frames_sent += 1
        self._sent += 1
        if self._sent % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a hot stream must not hold the loop for a whole pass

    def check_stall(self, cutoff: float) -> None:
        """Called by the sweeper: close a socket stuck in one send since before ``cutoff``;
        end one whose connection the server is closing (the keepalive ping timed out)."""
        writer = self._writer
        if self.stalled or writer is None:
            return
        started = self.sending_since
        if started is not None and started < cutoff:
            self.stalled = True
            self.endpoint.metrics.stalled_closes.inc()
            writer.cancel()
            return
        # uvicorn closes the transport on a keepalive timeout (1011) and tells the app
        # nothing: with unsent data left the transport would wait for a client that reads
        # nothing, for good. End the connection; the endpoint reaps the transport.
        transport = _transport_of(self._send)
        if transport is not None and transport.is_closing():
            writer.cancel()

    def _arm(self) -> None:
        """(Re)start the timer that closes the socket with 4401 at its token's ``exp``."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        exp = self.who.exp
        if exp is not None:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(max(0.0, exp - time.time()), self._expire)

    def _disarm(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        """The token's ``exp`` has come: end the connection (4401, see :meth:`run`)."""
        self._expiry = None
        exp = self.who.exp
        if exp is not None and exp > time.time():  # the loop's clock ran ahead of the wall
            self._arm()
            return
        writer = self._writer
        if exp is None or self.expired or writer is None:
            return
        self.expired = True
        writer.cancel()

    def push_control(self, frame: str) -> None:
        if self.control is None:
            self.control = deque()
        self.control.append(frame)
        self.sub.wake()

    async def _control_sent(self) -> None:
        """Backpressure: wait until the writer has sent all but :data:`CONTROL_LOW` of the
        replies (a client reading them goes on; one that reads nothing stalls the writer,
        and the sweeper closes it with 4008)."""
        self.endpoint.metrics.control_paused.inc()
        waiter = self._drained = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._drained = None

    async def writer(self) -> None:
        """Send what the subscription hands out (see :mod:`hub.domain.subscription`), our
        own replies first."""
        sub = self.sub
        while True:
            await sub.wait()
            while True:
                control = self.control
                if control:
                    await self.send(control.popleft())
                    drained = self._drained
                    if drained is not None and len(control) <= CONTROL_LOW and not drained.done():
                        drained.set_result(None)
                    continue
                frame = sub.next_frame()
                if frame is not None:
                    await self.send(frame)
                    if sub.ended and sub.end_code == CloseCode.FORBIDDEN:
                        raise _Closed(CloseCode.FORBIDDEN, "no longer a member of this stream")
                    if sub.ended:
                        raise _Closed(CloseCode.NORMAL, "archived")
                elif sub.fallback:
                    # A read may wait for its tenant's budget of page bytes: that wait
                    # counts as a send that does not progress (the stall timeout, 4008).
                    self.sending_since = time.monotonic()
                    await sub.read()
                    self.sending_since = None
                else:
                    self.control = None  # idle: hold no buffers
                    break

    async def reader(self) -> None:
        # Only the wait lives here (this frame stays as long as the socket): the work on
        # a client frame is done in a call that ends with it.
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                return
            await self.answer(message.get("text"))
            if self.control is not None and len(self.control) >= CONTROL_MAX:
                await self._control_sent()

    async def answer(self, text: str | None) -> None:
        """Act on one client frame; anything unusable is answered with an error frame."""
        if text is None:
            self.push_control(error_frame("binary_frame", "frames must be JSON text"))
            return
        limit = self.endpoint.max_frame
        size = len(text) if len(text) > limit else len(text.encode(errors="replace"))
        if size > limit:
            self.push_control(error_frame("frame_too_large", f"frame over {_bytes_text(limit)}"))
            return
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            self.push_control(error_frame("invalid_json", "frame is not valid JSON"))
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "ping":
            self.push_control('{"type":"pong"}')
        elif kind == "location":
            try:
                lat, lng = _position(self.who, frame)
                await self.endpoint.gps.ping(self.who.tenant, lat, lng)
            except HubError as exc:
                self.push_control(error_frame(exc.code, exc.message))
        elif kind == "auth":
            await self.refresh(frame.get("token"))
        else:
            self.push_control(
                error_frame("unknown_frame", "expected a JSON object with type ping|location|auth")
            )

    async def refresh(self, token: object) -> None:
        """An ``auth`` frame: run on ``token`` from now on (docs/protocol.md §5).

        Raises :class:`_Closed`: 4401 when it does not verify, 4403 when it is another
        tenant's or role's. Without a usable token the client gets an error frame and the
        socket keeps its token (and its expiry)."""
        if not isinstance(token, str) or not token:
            self.push_control(error_frame("invalid_frame", "auth needs a token (a string)"))
            return
        try:
            who = await self.endpoint.tokens.authenticate(token)
        except HubError:
            raise _Closed(CloseCode.UNAUTHORIZED, "token refused") from None
        if who.tenant != self.who.tenant or who.role is not self.who.role:
            raise _Closed(CloseCode.FORBIDDEN, "a token of another tenant or role")
        self.who = who
        self._arm()
        self.push_control(auth_frame(who.exp))

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
        self.endpoint.sessions.watch(self)
        self._arm()
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
            self._disarm()
            self.endpoint.sessions.unwatch(self)
            writer.remove_done_callback(self._writer_ended)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            ended = None if writer.cancelled() else writer.exception()
            # The writer's exception (its CancelledError too) holds its traceback, whose
            # frames hold this connection: drop every reference to the tasks, so that no
            # cycle keeps the connection, its subscription and its page (module docstring).
            self._writer = self._task = None
            del writer, task
        if self.stalled:
            return int(CloseCode.STALLED)
        if self.expired:
            return int(CloseCode.UNAUTHORIZED)
        if code is None:
            if isinstance(ended, _Closed):
                return ended.code
            if ended is not None:
                return self._failed(ended)
        return code

    @staticmethod
    def _failed(exc: BaseException) -> int | None:
        if _client_gone(exc):
            return None
        if isinstance(exc, Unavailable):
            # A database outage, not a fault of the hub: one line; the client resumes
            # with since (1011) once the store answers again.
            log.warning("closing a socket: %s", exc)
        else:
            log.error("connection task failed", exc_info=exc)
        return int(CloseCode.INTERNAL_ERROR)


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


class Endpoint:
    """Raw ASGI WebSocket endpoint of a channel: ``/ws/streams/{streamId}?since=N``
    (:func:`~hub.edge.conn.stream_channel`) or ``/ws/inbox?since=P``.

    Its collaborators: the ``node`` (subscriptions), the ``sessions`` (caps and the stall
    sweeper) and ``gps`` (where a driver's ``location`` frames go).
    """

    def __init__(self, node: Node, sessions: Sessions, gps: Gps, settings: Settings,
                 channel: Channel) -> None:  # fmt: skip
        self.node = node
        self.channel = channel
        self.sessions = sessions
        self.gps = gps
        self.settings = settings
        self.metrics = node.metrics
        self.metrics.ws_sessions.set_function(sessions.__len__)
        self.tokens = node.tokens
        # A client frame over this is answered with an error frame (the socket stays
        # open); uvicorn's ws_max_size (1 MiB under `hub serve`) closes 1009 above it.
        self.max_frame = settings.ws_max_frame_bytes
        # What a closing socket's client has to take what is queued for it (see CLOSE_WAIT).
        self.close_grace = min(CLOSE_WAIT, max(CLOSE_GRACE_MIN, 2 * settings.ws_stall_timeout))

    async def open(self, who: Principal, scope: Scope, since: int) -> Subscription:
        return await self.channel(self.node, who, scope, since, self.settings.ws_queue_frames,
                                  self.sessions.budget)  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One flat coroutine for the socket's whole life (each nested one would stay in
        # memory as long as the socket: bench scenario D).
        metrics = self.metrics
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        metrics.connections.inc()
        who: Principal | None = None  # holds a place under its cap until the socket is gone
        deadline: float | None = None  # for the client to take the close (loop time)
        try:
            try:
                admitted = await self._admit(scope, send)
                if isinstance(admitted, int):
                    code: int | None = admitted
                else:
                    who, sub = admitted
                    try:
                        code = await Connection(self, who, sub, send, receive).run()
                    finally:
                        await sub.close()
            finally:
                metrics.connections.dec()
                if who is not None:
                    metrics.ws_closing.inc()  # done with, not gone: see reap
            transport = _transport_of(send)
            if code is not None and (transport is None or not transport.is_closing()):
                deadline = asyncio.get_running_loop().time() + self.close_grace
                # A stalled socket's buffer is full: the close frame waits its turn, so a
                # client that reads again (before the keepalive gives up) still sees the code.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(send({"type": "websocket.close", "code": code}),
                                           self.close_grace)  # fmt: skip
        finally:
            if who is not None:
                self.reap(who, _transport_of(send), deadline)

    def reap(self, who: Principal, transport: _Transport | None, deadline: float | None) -> None:
        """Release ``who``'s place under its cap (and out of ``hub_ws_closing``) once the
        socket's connection is gone.

        At once when it is (or when the transport is unknown); else when the server has
        closed it with nothing left to send (after the client's answer to the close, or
        uvicorn's 10 s), or at ``deadline`` (loop time; default: :attr:`close_grace` from
        now): then a client that has taken nothing (not even the close frame) is reset.
        Timers do this, not the socket's task: the server's shutdown waits for tasks.
        """
        if transport is None or _gone(transport):
            self._release(who)
            return
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.close_grace
        loop.call_later(REAP_POLL[0], self._reap, who, transport, deadline, REAP_POLL[0])

    def _reap(self, who: Principal, transport: _Transport, deadline: float, pause: float) -> None:
        if not _gone(transport):
            loop = asyncio.get_running_loop()
            left = deadline - loop.time()
            if left > 0:
                pause = min(2 * pause, REAP_POLL[1])
                loop.call_later(min(pause, left), self._reap, who, transport, deadline, pause)
                return
            if transport.get_write_buffer_size():
                self._reset(transport)
            else:
                transport.close()  # what was queued has reached the kernel: a plain close
        self._release(who)

    def _release(self, who: Principal) -> None:
        self.metrics.ws_closing.dec()
        self.sessions.release(who)

    def _reset(self, transport: _Transport) -> None:
        """Abort a connection whose client takes nothing: abort() drops the hub's buffer
        and closes the descriptor; a zero linger has the kernel drop its own buffer too
        (a reset) instead of keeping an orphaned socket that tries to send it."""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(Exception):  # OSError, or a socket of another kind
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        transport.abort()
        self.metrics.ws_aborted.inc()

    async def _admit(self, scope: Scope, send: Send) -> tuple[Principal, Subscription] | int:
        """Who is asking, and their subscription (subscribed); or the close code refusing
        them. Admitted principals hold a place in :attr:`sessions` until released."""
        if not origin_allowed(scope, self.settings.allowed_origins):
            return int(CloseCode.FORBIDDEN)
        query = _query(scope)
        try:
            who = await self.tokens.authenticate(bearer_token(scope) or query.get("token") or None)
        except HubError:
            return int(CloseCode.UNAUTHORIZED)
        if not self.sessions.admit(who):
            return int(CloseCode.TOO_MANY)
        since = parse_cursor(query.get("since", "0") or "0")
        if since is None:
            self.sessions.release(who)
            frame = error_frame("invalid_since", "since must be an integer >= 0")
            await send({"type": "websocket.send", "text": frame})
            return int(CloseCode.POLICY_VIOLATION)
        try:
            sub = await self.open(who, scope, since)
        except HubError as exc:
            self.sessions.release(who)
            refused = exc.status in (400, 403, 404)
            return int(CloseCode.FORBIDDEN if refused else CloseCode.INTERNAL_ERROR)
        except BaseException:
            self.sessions.release(who)
            raise
        return who, sub
