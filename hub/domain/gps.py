"""Driver positions (seed Steps 7 and 9): coalesced writes and live ``location`` frames.

A ping updates only the driver's point in the driver's own tenant DB, never the
streams DB: its position and ``seenAt``, the fix's time (the ``ts`` of its ``location``
frames), on the same row. Pings less than ``interval`` apart are coalesced: the first is
written at once, later ones wait in memory and the latest lands when the interval is up,
so a driver costs at most one write per second. Every accepted ping also reaches the
subscribers of the driver's undelivered orders as a ``location`` frame (through the
broker, so on every instance). Pings over ``max_rate`` per second per driver are
dropped and counted, not queued.

The ``location`` frame goes out before the write is waited for: the write starts at once
and runs beside the fan-out. Writes go to the tenant-DB threads in batches: the writer
sends every position queued while the previous batch ran (up to :data:`WRITE_BATCH`) in
one job, each still its own transaction in its driver's DB, so a thousand drivers cost a
few hops to a thread a second rather than a thousand. A position is committed without
waiting for its fsync (docs/protocol.md §4.3: a power cut may lose the last ones). A
driver has at most one write in flight; a position due while one is (a disk slower than
``interval``) stays pending and is written, latest only, when it completes.

With a :class:`Tracker` (:class:`hub.domain.tracking.Tracking`) each fix is first handed
to it: it refuses an impossible one (422, nothing written or sent), and makes the
frames the fix sends (``location`` with the ETA to the next stop, ``presence``,
``arriving``). Without one the ``location`` frames carry the position only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from hub.errors import Unavailable, Unprocessable
from hub.events import Opcode, now_ts
from hub.infra.broker import Broker, Notice
from hub.infra.store import Store
from hub.infra.tenants import Tenants
from hub.metrics import Metrics
from hub.timing import DueQueue

__all__ = ["Gps", "Tracker"]

log = logging.getLogger("hub.gps")

STREAMS_TTL = 1.0  # seconds a driver's list of open orders is cached
MAX_TRACKED = 100_000  # drivers remembered at once (oldest forgotten first)
WRITE_BATCH = 512  # positions sent to the tenant-DB threads in one job, at most
LOOKUP_BATCH = 500  # drivers whose open orders one streams-DB query finds, at most
# How long the writer and the finder wait for more work once woken: a hop to a thread
# costs the loop ~150 µs whatever it carries (the GIL changing hands, the wake-up), so
# pings spread over the second are gathered into a few hops rather than one each.
WRITE_LINGER = 0.02
LOOKUP_LINGER = 0.005
# seenAt: the fix's time, on the same row, so a ping still writes one row.
POSITION_SQL = "UPDATE points SET lat = ?, lng = ?, seenAt = ? WHERE nodeId = ?"


@dataclass(slots=True)
class _Queued:
    """A position waiting for the writer (``done``: its write's future, if anyone's)."""

    lat: float
    lng: float
    ts: str
    done: asyncio.Future[None] | None


class Stamped(Protocol):
    @property
    def ts(self) -> str: ...


class Tracker(Protocol):
    """What the GPS tells of each fix (:class:`hub.domain.tracking.Tracking`); its
    lifecycle follows the GPS's."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def fix(self, driver: str, lat: float, lng: float,
                  streams: Sequence[str]) -> tuple[Stamped, list[Notice]]:  # fmt: skip
        """The fix (its ``ts``) and the notices it sends; raises
        :class:`~hub.errors.Unprocessable` for an impossible one."""
        ...


def check_position(lat: float, lng: float) -> None:
    """422 ``invalid_position`` unless (lat, lng) is a finite position on Earth."""
    for name, value, limit in (("lat", lat, 90.0), ("lng", lng, 180.0)):
        if not (isinstance(value, int | float) and math.isfinite(value)
                and -limit <= value <= limit):  # fmt: skip
            raise Unprocessable(f"{name} must be a number from {-limit:g} to {limit:g}",
                                code="invalid_position")  # fmt: skip


class Gps:
    """Coalesces GPS writes per driver and fans positions out; owns two tasks: the flusher
    (pending positions, when due) and the writer (the batches).

    Positions are written to the driver's DB in ``tenants``; the driver's open orders are
    found in the ``store`` and their subscribers reached through the ``broker``.
    """

    def __init__(self, tenants: Tenants, store: Store, broker: Broker, metrics: Metrics, *,
                 interval: float = 1.0, max_rate: float = 20.0,
                 tracker: Tracker | None = None) -> None:  # fmt: skip
        self.tracker = tracker
        self.tenants = tenants
        self.store = store
        self.broker = broker
        self.metrics = metrics
        self.interval = interval
        self.max_rate = max_rate
        self._last_write: dict[str, float] = {}
        self._pending: dict[str, tuple[float, float, str]] = {}  # lat, lng, seenAt
        self._due: DueQueue[str] = DueQueue()
        self._streams: dict[str, tuple[float, list[str]]] = {}
        self._window: dict[str, deque[float]] = {}  # driver -> times of pings in the last 1 s
        self._writing: dict[str, asyncio.Future[None]] = {}  # driver -> his write under way
        self._queue: dict[str, _Queued] = {}  # writes waiting for the writer's next batch
        self._wake = asyncio.Event()
        self._lookups: dict[str, asyncio.Future[list[str] | Exception]] = {}  # not yet asked
        self._looked = asyncio.Event()  # set when a lookup is waiting
        self._stale: set[str] | None = None  # forgotten while the query in flight ran
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.tracker is not None:
            await self.tracker.start()
        self._tasks = [asyncio.create_task(self._flusher(), name="hub-gps-flusher"),
                       asyncio.create_task(self._writer(), name="hub-gps-writer"),
                       asyncio.create_task(self._finder(), name="hub-gps-finder")]  # fmt: skip

    async def close(self) -> None:
        """Stop the flusher and the writer, then write what is queued or pending (best
        effort); then the tracker."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lookups, self._lookups = self._lookups, {}
        for waiting in lookups.values():
            waiting.cancel()
        queued, self._queue = list(self._queue.items()), {}
        pending, self._pending = self._pending, {}
        for driver, (lat, lng, ts) in pending.items():
            if not any(d == driver for d, _ in queued):
                queued.append((driver, _Queued(lat, lng, ts, None)))
        with contextlib.suppress(Exception):
            await self._write_batch(queued)
        await asyncio.gather(*self._writing.values(), return_exceptions=True)
        if self.tracker is not None:
            await self.tracker.close()

    def _allowed(self, driver: str, now: float) -> bool:
        """A sliding one-second window: at most ``max_rate`` pings in any second."""
        window = self._window.get(driver)
        if window is None:
            window = self._window[driver] = deque()
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= self.max_rate:
            return False
        window.append(now)
        return True

    async def ping(self, driver: str, lat: float, lng: float) -> bool:
        """Take one position of ``driver``; False when dropped by the rate limit. Raises
        :class:`~hub.errors.Unprocessable` for an impossible one (nothing written)."""
        check_position(lat, lng)
        now = time.monotonic()
        if not self._allowed(driver, now):
            self.metrics.gps_dropped.inc()
            return False
        streams = await self._streams_of(driver)
        if self.tracker is not None:
            fix, notices = await self.tracker.fix(driver, lat, lng, streams)
            ts = fix.ts
        else:
            ts = now_ts()
            notices = [Notice(stream_id, json.dumps({
                "type": "location", "streamId": stream_id, "driver": driver,
                "lat": lat, "lng": lng, "ts": ts})) for stream_id in streams]  # fmt: skip
        self.metrics.gps_pings.inc()
        now = time.monotonic()
        last = self._last_write.get(driver)
        write = None
        if (last is None or now - last >= self.interval) and driver not in self._writing:
            self._last_write[driver] = now
            self._pending.pop(driver, None)
            write = self._start_write(driver, lat, lng, ts)
        else:
            if driver not in self._pending and driver not in self._writing:
                self._due.put(driver, (now if last is None else last) + self.interval)
            self._pending[driver] = (lat, lng, ts)  # a write in flight flushes it when done
        self._forget_old(now)
        try:
            for notice in notices:
                self.broker.publish_notice(notice)
        finally:
            if write is not None:
                try:
                    await asyncio.shield(write)  # the caller hears of a failed write
                finally:
                    # A failed write's task keeps the error, and the error this frame (in
                    # its traceback) and the caller's (a socket's connection): without the
                    # task here that is no cycle, and all is freed with the error.
                    del write
        return True

    def _forget_old(self, now: float) -> None:
        if len(self._last_write) <= MAX_TRACKED:
            return
        for d, t in list(self._last_write.items()):
            if now - t > self.interval and d not in self._pending and d not in self._writing:
                del self._last_write[d]
                self._window.pop(d, None)
                self._streams.pop(d, None)

    def _start_write(self, driver: str, lat: float, lng: float, ts: str) -> asyncio.Future[None]:
        """Queue a write of ``driver`` (none of his is under way) for the next batch."""
        done = asyncio.get_running_loop().create_future()
        self._writing[driver] = done
        done.add_done_callback(partial(self._written, driver))
        self._queue[driver] = _Queued(lat, lng, ts, done)
        self._wake.set()
        return done

    def _written(self, driver: str, done: asyncio.Future[None]) -> None:
        if self._writing.get(driver) is done:
            del self._writing[driver]
        if not done.cancelled() and (exc := done.exception()) is not None:
            log.warning("GPS write for %s failed: %s", driver, exc)
        if driver in self._pending:  # came while this write was in flight
            due = self._last_write.get(driver, 0.0) + self.interval
            self._due.put(driver, max(time.monotonic(), due))

    async def _writer(self) -> None:
        """Write the queued positions, in batches of those queued meanwhile."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(WRITE_LINGER)
            self._wake.clear()
            while self._queue:
                batch = []
                for driver in self._queue:
                    batch.append(driver)
                    if len(batch) >= WRITE_BATCH:
                        break
                await self._write_batch([(d, self._queue.pop(d)) for d in batch])

    async def _write_batch(self, batch: list[tuple[str, _Queued]]) -> None:
        """Each position into its driver's DB (not durable: a position may be lost, the
        next one replaces it); each write's future told how it went."""
        if not batch:
            return
        try:
            outcomes = await self.tenants.execute_each(
                [(d, (POSITION_SQL, [q.lat, q.lng, q.ts, d])) for d, q in batch], durable=False
            )
        except BaseException:
            for _, q in batch:
                if q.done is not None and not q.done.done():
                    q.done.cancel()
            raise
        for (_, q), exc in zip(batch, outcomes, strict=True):
            if q.done is None or q.done.done():
                continue
            if exc is None:
                q.done.set_result(None)
            else:
                q.done.set_exception(exc)

    async def _streams_of(self, driver: str) -> list[str]:
        """The driver's undelivered orders (cached for :data:`STREAMS_TTL` seconds; asked
        of the streams DB together with the other drivers' due then: :meth:`_finder`)."""
        cached = self._streams.get(driver)
        if cached is not None and cached[0] >= time.monotonic():
            return cached[1]
        waiting = self._lookups.get(driver)
        if waiting is None:
            waiting = self._lookups[driver] = asyncio.get_running_loop().create_future()
            self._looked.set()
        found = await asyncio.shield(waiting)
        if isinstance(found, Exception):  # each caller its own error (one shared would
            raise Unavailable(f"finding the orders of {driver} failed: {found}")  # grow)
        return found

    async def _finder(self) -> None:
        """Find the open orders of the drivers waiting for theirs, up to
        :data:`LOOKUP_BATCH` per query: those that came while the last query ran go in the
        next, so a thousand drivers pinging cost a few queries a second, not a thousand."""
        while True:
            await self._looked.wait()
            await asyncio.sleep(LOOKUP_LINGER)
            self._looked.clear()
            while self._lookups:
                batch = list(itertools.islice(self._lookups, LOOKUP_BATCH))
                waiting = [self._lookups.pop(d) for d in batch]
                stale: set[str] = set()
                self._stale = stale
                try:
                    found: dict[str, list[str]] | Exception = await self.store.streams_of_members(
                        batch, having=Opcode.TASK_ASSIGN, lacking=Opcode.ORDER_DELIVER, limit=20
                    )
                except asyncio.CancelledError:
                    for w in waiting:
                        w.cancel()
                    raise
                except Exception as exc:
                    found = exc
                finally:
                    self._stale = None
                expires = time.monotonic() + STREAMS_TTL
                for driver, w in zip(batch, waiting, strict=True):
                    if isinstance(found, Exception):
                        outcome: list[str] | Exception = found
                    else:
                        outcome = found.get(driver, [])
                        if driver not in stale:  # else found before his assignment
                            self._streams[driver] = (expires, outcome)
                    if not w.done():
                        w.set_result(outcome)

    def forget(self, driver: str) -> None:
        """Drop the cached order list of ``driver`` (after an assignment or delivery)."""
        self._streams.pop(driver, None)
        if self._stale is not None:  # a query is under way: its answer for him is old
            self._stale.add(driver)

    async def _flusher(self) -> None:
        while True:
            driver = await self._due.next()
            pos = self._pending.pop(driver, None)
            if pos is None:
                continue
            if driver in self._writing:  # _written puts it back when that write is done
                self._pending[driver] = pos
                continue
            now = time.monotonic()
            last = self._last_write.get(driver)
            if last is not None and now - last < self.interval:  # written since it was due
                self._pending[driver] = pos
                self._due.put(driver, last + self.interval)
                continue
            self._last_write[driver] = now
            self._start_write(driver, *pos)
