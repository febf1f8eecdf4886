"""The hub's connections under uvicorn: read deadlines, a connection cap, the open-file watch.

uvicorn starts its keep-alive timeout only after a first response, so a client that opens
a connection and trickles a request's headers a byte at a time (slowloris), or sends
nothing at all, holds a socket and a file descriptor for as long as it likes. Enough of
them reach the open-file limit; then accept() fails with EMFILE, libuv accepts and resets
every new connection (uvloop logs nothing) and the hub answers nobody, health checks
included. This module bounds every stage of a connection (docs/deploy.md, "Slow clients
and the open-file limit"):

- **Headers**: a request's line and headers must arrive within ``HUB_HEADER_TIMEOUT``
  (10 s) of the connection's opening, or of the first byte after the previous response.
- **Body**: then its body within ``HUB_BODY_TIMEOUT`` (30 s).
- **Idle**: between requests, uvicorn's keep-alive timeout (``HUB_KEEP_ALIVE_TIMEOUT``, 5 s).
- **Cap**: at most ``HUB_MAX_CONNECTIONS`` open connections, HTTP and WebSocket (default:
  half the open-file limit, less 64; the other half is kept for the tenant DBs, see
  :mod:`hub.infra.tenants`). A connection beyond it closes the connection that has waited
  longest on its client (idle, or sending a request), or is closed itself when none
  waits. WebSockets may take nine tenths of the cap: an upgrade beyond that gets 503, so
  plain HTTP (health checks, appends) always has room.
- **Watch**: every second (N/1,000 s with N open, at most 10 s), the open file
  descriptors against the limit (``hub_open_fds``, ``hub_fd_limit``), with a warning above
  90% and an error at the limit, where accept() fails.

Each is counted (``hub_http_read_timeouts``, ``hub_connections_evicted``,
``hub_connections_refused``) and logged at most once a minute per kind, never once per
connection. :func:`uvicorn_options` gives ``hub serve`` and ``hub demo`` these; plain
uvicorn gets them with ``--http hub.edge.server:HttpProtocol`` (settings read from the
environment at the first connection; the counts are logged but not in ``/metrics``).

The protocol classes subclass uvicorn's and hook its parser and response callbacks
(``on_message_begin``, ``on_headers_complete``, ``on_message_complete``,
``on_response_complete``, ``handle_websocket_upgrade``): ``tests/test_slowloris.py`` is
what tells if a uvicorn release changes them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hub.config import Settings, SettingsError
from hub.infra.tenants import FD_SHARE, raise_fd_limit
from hub.metrics import Metrics

__all__ = ["Guard", "HttpProtocol", "default_max_connections", "uvicorn_options"]

log = logging.getLogger("hub.server")

FD_RESERVE = 64  # descriptors kept for everything but sockets and tenant DBs (DBs, logs, Redis)
MIN_CONNECTIONS = 16  # the cap's floor, whatever the open-file limit
WS_SHARE = 0.9  # of the cap, WebSocket upgrades may take this much; the rest is for HTTP
# Seconds between two counts of the open file descriptors: one, or one per WATCH_FDS open
# (at most WATCH_MAX) since a count costs ~0.75 ms per 1,000 descriptors (measured).
WATCH_EVERY, WATCH_FDS, WATCH_MAX = 1.0, 1000, 10.0
FD_WARN = 0.9  # warn when this share of the open-file limit is in use
LOG_EVERY = 60.0  # seconds: at most one log line per kind of event in this time

Phase = Literal["headers", "body"]
_SETTING: dict[Phase, str] = {"headers": "HUB_HEADER_TIMEOUT", "body": "HUB_BODY_TIMEOUT"}

_WS_FULL_BODY = (b'{"error": {"code": "unavailable", "message": "too many WebSockets open on'
                 b' this instance; retry later"}}')  # fmt: skip
_WS_FULL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(_WS_FULL_BODY)).encode() + b"\r\n"
            b"retry-after: 5\r\nconnection: close\r\n\r\n" + _WS_FULL_BODY)  # fmt: skip


def default_max_connections(fd_limit: int) -> int:
    """``HUB_MAX_CONNECTIONS`` when unset: half the open-file limit, less :data:`FD_RESERVE`."""
    return max(MIN_CONNECTIONS, fd_limit // FD_SHARE - FD_RESERVE)


def fd_soft_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` in force (``1 << 20`` where there is none)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 1 << 20
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def count_open_fds(limit: int) -> int | None:
    """The process's open file descriptors; ``limit`` when none is left; None if unknown."""
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path)) - 1  # less the one the listing itself holds
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return limit
            return None
    return None  # pragma: no cover - neither /proc nor /dev/fd


class _RateLog:
    """At most one log line per kind of event per ``every`` seconds, with the count since."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._count: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._text: dict[str, tuple[int, str]] = {}

    def note(self, key: str, level: int, text: str) -> None:
        """Count one event; ``text`` has a ``%d`` for the count."""
        self._count[key] = self._count.get(key, 0) + 1
        self._text[key] = (level, text)
        self._emit(key, time.monotonic())

    def flush(self) -> None:
        """Log what was counted and not yet logged, for the kinds whose time has come."""
        now = time.monotonic()
        for key in list(self._count):
            self._emit(key, now)

    def _emit(self, key: str, now: float) -> None:
        count = self._count.get(key, 0)
        if count and now - self._last.get(key, float("-inf")) >= self.every:
            level, text = self._text[key]
            log.log(level, text + " (at most one such line a minute)", count)
            self._count[key] = 0
            self._last[key] = now


@dataclass(slots=True)
class _Waiting:
    """A connection the hub waits on: the deadline running (None: uvicorn's keep-alive)."""

    transport: asyncio.BaseTransport
    phase: Phase | None = None
    timer: asyncio.TimerHandle | None = None


class Guard:
    """The bounds of one server's connections; its HTTP protocol classes report to it.

    One guard per uvicorn server: it counts the server's connections (uvicorn's
    ``ServerState.connections``, HTTP and WebSocket) against ``max_connections``.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.timeouts: dict[Phase, float] = {
            "headers": settings.header_timeout, "body": settings.body_timeout}  # fmt: skip
        for phase, seconds in self.timeouts.items():
            if not seconds > 0:
                raise SettingsError(f"{_SETTING[phase]} must be more than 0 s, got {seconds}")
        self.fd_limit = raise_fd_limit()
        default = default_max_connections(self.fd_limit)
        self.max_connections = settings.max_connections or default
        if self.max_connections > default:
            log.warning("HUB_MAX_CONNECTIONS=%d is more than half the open-file limit (%d)"
                        " less %d: the process may run out of descriptors first, and then"
                        " new connections are reset", self.max_connections, self.fd_limit,
                        FD_RESERVE)  # fmt: skip
        self.max_websockets = max(1, int(self.max_connections * WS_SHARE))
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.connections_max.set(self.max_connections)
        self.metrics.fd_limit.set(self.fd_limit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[Any] = set()  # uvicorn's, once the first connection is made
        self._http: set[asyncio.Protocol] = set()  # HTTP connections open (not upgraded)
        self._waiting: dict[asyncio.Protocol, _Waiting] = {}  # oldest first
        self._log = _RateLog(LOG_EVERY)

    def protocol(self, http: str = "auto") -> type[asyncio.Protocol]:
        """uvicorn's HTTP protocol (``auto``, ``httptools``, ``h11``) reporting to this guard."""
        bases: dict[str, type[asyncio.Protocol]] = {
            "auto": _HttpTools, "httptools": _HttpTools, "h11": _H11}  # fmt: skip
        if http not in bases:
            raise SettingsError(f"HTTP implementation {http!r}: use one of {sorted(bases)}")
        return type(bases[http].__name__, (bases[http],), {"hub_guard": self})

    # What the protocols report.

    def opened(self, proto: asyncio.Protocol, transport: asyncio.BaseTransport,
               connections: set[Any], loop: asyncio.AbstractEventLoop) -> bool:  # fmt: skip
        """A connection was accepted (and counted in ``connections``): keep it or close it."""
        if self._loop is None:
            self._start(connections, loop)
        self._http.add(proto)
        if len(connections) <= self.max_connections:
            return True
        victim = next(iter(self._waiting), None)
        if victim is None:
            transport.close()
            self.metrics.connections_refused.labels("http").inc()
            self._log.note("refused", logging.WARNING,
                           f"{self.max_connections} connections open (HUB_MAX_CONNECTIONS), none"
                           " of them waiting on its client: refused %d connection(s)")  # fmt: skip
            return False
        waiting = self._waiting.pop(victim)
        if waiting.timer is not None:
            waiting.timer.cancel()
        waiting.transport.close()
        self.metrics.connections_evicted.inc()
        self._log.note("evicted", logging.WARNING,
                       f"{self.max_connections} connections open (HUB_MAX_CONNECTIONS):"
                       " closed %d connection(s) waiting on their clients (the longest"
                       " waiting first) to make room")  # fmt: skip
        return True

    def update(self, proto: asyncio.Protocol, transport: asyncio.BaseTransport,
               phase: Phase | None, *, after_response: bool = False) -> None:  # fmt: skip
        """The connection waits on its client for ``phase`` (None: the hub is answering).

        Just after a response, waiting for the next request's first byte is uvicorn's
        keep-alive timeout; the header deadline starts with that byte.
        """
        if phase is None or transport.is_closing():
            self._forget(proto)
            return
        waiting = self._waiting.get(proto)
        if waiting is None:
            waiting = self._waiting[proto] = _Waiting(transport)
        deadline: Phase | None = None if after_response and phase == "headers" else phase
        if deadline == waiting.phase:
            return
        if waiting.timer is not None:
            waiting.timer.cancel()
        waiting.phase, waiting.timer = deadline, None
        if deadline is not None and self._loop is not None:
            waiting.timer = self._loop.call_later(self.timeouts[deadline], self._expired,
                                                  proto, deadline)  # fmt: skip

    def upgrading(self, proto: asyncio.Protocol, transport: asyncio.Transport,
                  connections: set[Any]) -> bool:  # fmt: skip
        """A WebSocket upgrade: let it through, or answer 503 and close."""
        if len(connections) - len(self._http) >= self.max_websockets:
            transport.write(_WS_FULL)
            transport.close()
            self.metrics.connections_refused.labels("websocket").inc()
            self._log.note("websocket", logging.WARNING,
                           f"{self.max_websockets} WebSockets open (nine tenths of"
                           " HUB_MAX_CONNECTIONS): answered %d upgrade(s) 503")  # fmt: skip
            return False
        self._forget(proto)
        self._http.discard(proto)
        return True

    def closed(self, proto: asyncio.Protocol) -> None:
        self._forget(proto)
        self._http.discard(proto)

    # Inside.

    def _forget(self, proto: asyncio.Protocol) -> None:
        waiting = self._waiting.pop(proto, None)
        if waiting is not None and waiting.timer is not None:
            waiting.timer.cancel()

    def _expired(self, proto: asyncio.Protocol, phase: Phase) -> None:
        waiting = self._waiting.get(proto)
        if waiting is None or waiting.phase != phase:
            return
        del self._waiting[proto]
        waiting.transport.close()
        self.metrics.read_timeouts.labels(phase).inc()
        seconds, name = self.timeouts[phase], _SETTING[phase]
        self._log.note(phase, logging.WARNING,
                       f"closed %d connection(s) whose request {phase} did not arrive within"
                       f" {seconds:g} s ({name}): slow or vanished clients, or a slowloris"
                       " attack")  # fmt: skip

    def _start(self, connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._connections = loop, connections
        self.metrics.connections_open.set_function(lambda: len(self._connections))
        self._watch()

    def _watch(self) -> None:
        """Count the open file descriptors against the limit; log what is due."""
        assert self._loop is not None
        self.fd_limit = limit = fd_soft_limit()
        self.metrics.fd_limit.set(limit)
        fds = count_open_fds(limit)
        every = WATCH_EVERY if fds is None else min(WATCH_MAX, max(WATCH_EVERY, fds / WATCH_FDS))
        self._loop.call_later(every, self._watch)
        if fds is not None:
            self.metrics.open_fds.set(fds)
            if fds >= limit:
                self._log.note("fds", logging.ERROR,
                               f"no file descriptor left (open-file limit {limit}, seen"
                               " %d time(s)): accept() fails with EMFILE and new"
                               " connections are reset; raise the limit or lower"
                               " HUB_MAX_CONNECTIONS")  # fmt: skip
            elif fds >= limit * FD_WARN:
                self._log.note("fds", logging.WARNING,
                               f"{fds} of {limit} file descriptors open (above 90%%, seen"
                               " %d time(s)): at the limit accept() fails and new"
                               " connections are reset")  # fmt: skip
        self._log.flush()


def _guard_of(cls: type[Any]) -> Guard:
    """The guard a protocol class reports to; plain uvicorn's is built from the environment."""
    guard: Guard | None = cls.hub_guard
    if guard is None:
        guard = cls.hub_guard = Guard(Settings.from_env())
    return guard


class _Reporting(asyncio.Protocol):
    """What both protocol classes tell their :class:`Guard`: a connection opened and closed,
    what it waits for after each read and each response. Mixed in before uvicorn's class,
    which provides ``transport``, ``connections`` and ``loop``."""

    hub_guard: ClassVar[Guard | None] = None
    transport: asyncio.Transport
    connections: set[Any]
    loop: asyncio.AbstractEventLoop
    _guard: Guard
    _upgraded: bool

    def _waiting_for(self) -> Phase | None:
        raise NotImplementedError

    def _report(self) -> None:
        self._guard = _guard_of(type(self))
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        stream = cast(asyncio.Transport, transport)  # a TCP transport (uvloop's or asyncio's)
        if self._guard.opened(self, stream, self.connections, self.loop):
            self._guard.update(self, stream, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._upgraded:
            self._guard.update(self, self.transport, self._waiting_for())

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # uvicorn's class has it
        if not self._upgraded:
            self._guard.update(self, self.transport, self._waiting_for(), after_response=True)


class _H11(_Reporting, H11Protocol):
    """uvicorn's h11 protocol, reporting to a :class:`Guard`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._report()

    def _waiting_for(self) -> Phase | None:
        state = self.conn.their_state
        if state is h11.IDLE:
            return "headers"
        return "body" if state is h11.SEND_BODY else None

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        if self._guard.upgrading(self, self.transport, self.connections):
            self._upgraded = True
            super().handle_websocket_upgrade(event)


class _HttpTools(_Reporting, HttpToolsProtocol):
    """uvicorn's httptools protocol, reporting to a :class:`Guard`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._report()
        self._phase: Phase | Literal["done"] = "headers"  # of the request being received

    def _waiting_for(self) -> Phase | None:
        if self._phase != "done":
            return self._phase
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            return None  # a request received and not yet answered
        return "headers"

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "headers"

    def on_headers_complete(self) -> None:
        self._phase = "body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = "done"
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if self._guard.upgrading(self, self.transport, self.connections):
            self._upgraded = True
            super().handle_websocket_upgrade()


# ``uvicorn hub.app:app --http hub.edge.server:HttpProtocol``: the guard from the environment.
HttpProtocol: type[asyncio.Protocol] = _HttpTools


def uvicorn_options(settings: Settings, metrics: Metrics | None = None,
                    http: str = "auto") -> dict[str, Any]:  # fmt: skip
    """The ``uvicorn.run``/``uvicorn.Config`` options that bound the server's connections."""
    return {
        "http": Guard(settings, metrics).protocol(http),
        "timeout_keep_alive": settings.keep_alive_timeout,
    }
