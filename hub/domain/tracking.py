"""Live tracking of an order's driver (docs/protocol.md §5, "Tracking frames").

What the GPS (:mod:`hub.domain.gps`) hands over, fix by fix, becomes on the order's
stream:

- ``location`` frames with ``etaSeconds`` and ``distanceM`` to the driver's next stop
  (the restaurant before pickup, the drop-off after it, as ``GET /api/orders/{id}``
  gives them: :meth:`Orders.details <hub.domain.orders.Orders.details>`), from the
  great-circle distance and the driver's recent speed (:class:`Speed`);
- one ``location`` frame right after ``live`` on every stream socket opened while the
  driver is assigned (:meth:`Tracking.opened`): the freshest fix of this instance's
  memory or of the driver's tenant DB (``seenAt``, which every instance shares);
- ``presence`` frames: ``unreachable`` when the assigned driver's fixes stop for
  ``HUB_PRESENCE_TIMEOUT`` seconds, ``online`` when they resume;
- one ``arriving`` frame when the driver first comes within :data:`ARRIVING_M` of the
  drop-off.

None of them is stored; they travel as broker notices, so they reach every instance.

**Who announces, once.** ``online`` and ``arriving`` are decided by the instance that
takes the fix; ``unreachable`` by every instance with subscribers on the order (it
watches the order while they are there: :meth:`Tracking.opened`), by the driver's
``seenAt`` in his tenant DB, so the state is right after a restart too. Each
announcement is claimed first (:class:`~hub.infra.claims.Claims`: a Redis ``SET NX``
key per order, driver and change; in one process a table), and each subscriber drops a
presence frame that changes nothing and a second ``arriving`` (:func:`once`): so a
change reaches each subscriber once, even when two instances notice it together or
Redis is down.

**Impossible fixes** (:func:`check_jump`): a position farther from the driver's last one
than :data:`MAX_SPEED` allows in the time between them (and more than
:data:`JUMP_FLOOR_M` away: simulated rides teleport) is refused with 422
``impossible_position`` while the driver is on an order; it is neither written nor sent
nor fed into the speed. Positions out of range or not finite never get here
(:func:`hub.domain.gps.check_position`: 422 ``invalid_position``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from hub.domain.auth import Principal, Role
from hub.domain.gps import check_position
from hub.domain.node import Node
from hub.domain.orders.rules import KMH, distance_m
from hub.domain.orders.steps import Orders
from hub.errors import HubError, Unavailable, Unprocessable
from hub.events import Opcode, format_ts
from hub.infra.broker import Broker, Notice
from hub.infra.claims import Claims, MemoryClaims
from hub.infra.tenants import Tenants
from hub.timing import DueQueue

__all__ = [
    "ARRIVING_M",
    "JUMP_FLOOR_M",
    "MAX_SPEED",
    "ONCE_PREFIXES",
    "Fix",
    "Speed",
    "Tracking",
    "check_jump",
    "eta_seconds",
    "once",
    "vehicle_speed",
]

log = logging.getLogger("hub.tracking")

# -- the numbers ------------------------------------------------------------------------

ARRIVING_M = 200.0  # an `arriving` frame when the driver first comes this near the drop-off
# A fix farther than MAX_SPEED allows from the last one (and farther than JUMP_FLOOR_M:
# simulated rides and a GPS that wakes up hop kilometres) is impossible: 422.
MAX_SPEED = 100.0  # m/s (360 km/h)
JUMP_FLOOR_M = 50_000.0
# The speed estimate (Speed): an exponentially weighted mean of the speeds between fixes,
# starting from the vehicle's default as if it were PRIOR samples (a running mean, so the
# first fixes move it gently), then each new sample weighs ALPHA.
ALPHA = 0.2
PRIOR = 2
SAMPLE_MIN_S = 1.0  # fixes closer than this are measured from an earlier one
SAMPLE_MAX_S = 300.0  # a longer gap says nothing of the speed
SAMPLE_MAX_SPEED = 60.0  # m/s; faster samples (teleports, GPS glitches) are ignored
SPEED_FLOOR = 0.3  # of the vehicle's default: a driver standing still still arrives
# Average city speeds by vehicle (km/h); others: KMH (the hub's pickup ETA figure).
VEHICLE_KMH: dict[str, float] = {
    "motorcycle": 30, "motorbike": 30, "moped": 25, "scooter": 25, "car": 25, "van": 22,
    "truck": 20, "bike": 15, "bicycle": 15, "cycle": 15, "e-bike": 20, "ebike": 20,
    "walk": 5, "walking": 5, "foot": 5, "on foot": 5,
}  # fmt: skip

VIEW_TTL = 1.0  # seconds an order's view is used before its stream is asked again
READ_TTL = 0.5  # seconds a driver's fix read from his DB is used again (greetings, checks)
MAX_DRIVERS = 100_000  # drivers remembered at once (the least recently seen forgotten)
MAX_VIEWS = 20_000  # orders remembered at once
PRESENCE_TTL = 3600.0  # seconds a presence claim is kept
ARRIVING_TTL = 86_400.0  # an order is arriving once a day at most
# The opcodes that change what tracking shows of an order.
TRACKED_OPS = (Opcode.ORDER_CREATE, Opcode.TASK_ASSIGN, Opcode.TASK_UNASSIGN,
               Opcode.ORDER_SHIP, Opcode.ORDER_DELIVER, Opcode.ORDER_CANCEL)  # fmt: skip
PLATFORM = Principal("hub", Role.PLATFORM)
_SEEN_SQL = "SELECT lat, lng, seenAt FROM points WHERE nodeId = ? LIMIT 1"


def ts_of(at: float) -> str:
    return format_ts(datetime.fromtimestamp(at, UTC))


def epoch(ts: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 time; None when it is none."""
    if not isinstance(ts, str) or not ts:
        return None
    try:
        then = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return then.timestamp()


@dataclass(frozen=True, slots=True)
class Fix:
    """A driver's position and when it arrived (``at``: epoch seconds; ``ts``: ISO)."""

    lat: float
    lng: float
    at: float
    ts: str

    @property
    def point(self) -> tuple[float, float]:
        return self.lat, self.lng


# -- what is impossible ------------------------------------------------------------------


def check_jump(last: Fix, new: Fix) -> None:
    """422 ``impossible_position`` when ``new`` is farther from ``last`` than a driver can
    go in the time between them (:data:`MAX_SPEED`, at least :data:`JUMP_FLOOR_M`)."""
    away = distance_m(last.point, new.point)
    dt = max(0.0, new.at - last.at)
    if away > max(JUMP_FLOOR_M, MAX_SPEED * dt):
        raise Unprocessable(f"impossible position: {away / 1000:.0f} km from the last one,"
                            f" {dt:.1f} s earlier", code="impossible_position")  # fmt: skip


# -- speed and ETA -------------------------------------------------------------------------


def vehicle_speed(vehicle: Any) -> float:
    """The default speed (m/s) of a vehicle, by its name (``Motorcycle``: 30 km/h)."""
    name = vehicle.strip().lower() if isinstance(vehicle, str) else ""
    return VEHICLE_KMH.get(name, KMH) / 3.6


@dataclass(slots=True)
class Speed:
    """A driver's recent speed (m/s): the vehicle's ``default`` until fixes tell more.

    Each sample is the distance between two fixes at least :data:`SAMPLE_MIN_S` apart
    over the time between them. A gap (up to :data:`SAMPLE_MAX_S`) is one sample like
    any other, so a driver keeping his speed through it keeps his ETA.
    """

    default: float = KMH / 3.6
    value: float | None = None
    samples: int = 0
    anchor: Fix | None = None

    def add(self, fix: Fix) -> None:
        anchor = self.anchor
        if anchor is None or fix.at < anchor.at:
            self.anchor = fix
            return
        dt = fix.at - anchor.at
        if dt < SAMPLE_MIN_S:
            return  # measured from the anchor once far enough apart in time
        self.anchor = fix
        if dt > SAMPLE_MAX_S:
            return
        sample = distance_m(anchor.point, fix.point) / dt
        if sample > SAMPLE_MAX_SPEED:
            return
        self.samples += 1
        alpha = max(ALPHA, 1 / (self.samples + PRIOR))
        current = self.default if self.value is None else self.value
        self.value = current + alpha * (sample - current)

    def current(self) -> float:
        value = self.default if self.value is None else self.value
        return max(value, SPEED_FLOOR * self.default)


def eta_seconds(distance: float, speed: float) -> int:
    """Whole seconds to cover ``distance`` metres at ``speed`` m/s; never negative."""
    if distance <= 0 or speed <= 0:
        return 0
    return max(0, round(distance / speed))


# -- frames -------------------------------------------------------------------------------

PRESENCE_PREFIX = '{"type": "presence"'
ARRIVING_PREFIX = '{"type": "arriving"'
ONCE_PREFIXES = (PRESENCE_PREFIX, ARRIVING_PREFIX)  # the frames a subscriber gets once


def location_frame(stream_id: str, driver: str, fix: Fix,
                   stop: tuple[str, tuple[float, float]] | None, speed: float) -> str:  # fmt: skip
    frame: dict[str, Any] = {"type": "location", "streamId": stream_id, "driver": driver,
                             "lat": fix.lat, "lng": fix.lng, "ts": fix.ts}  # fmt: skip
    if stop is not None:
        away = distance_m(fix.point, stop[1])
        frame.update(etaSeconds=eta_seconds(away, speed), distanceM=round(away), stop=stop[0])
    return json.dumps(frame)


def presence_frame(stream_id: str, driver: str, state: str, last_seen: str | None) -> str:
    return json.dumps({"type": "presence", "streamId": stream_id, "driver": driver,
                       "state": state, "lastSeen": last_seen})  # fmt: skip


def arriving_frame(stream_id: str, driver: str, away: float) -> str:
    return json.dumps({"type": "arriving", "streamId": stream_id, "driver": driver,
                       "distanceM": round(away)})  # fmt: skip


def once(frame: str, seen: dict[str, tuple[str, str]]) -> bool:
    """Whether a subscriber that was sent what ``seen`` records should get ``frame`` too.

    ``presence`` frames that change nothing (the state last sent for that driver) or come
    late (a ``lastSeen`` before the last one sent) are dropped, and every ``arriving``
    after the first; ``seen`` is the subscriber's record, updated. Other frames pass.
    """
    if frame.startswith(PRESENCE_PREFIX):
        o = json.loads(frame)
        key, state, last = "p:" + str(o.get("driver")), str(o.get("state")), o.get("lastSeen") or ""
        before = seen.get(key)
        if before is not None and (before[0] == state or last < before[1]):
            return False
        seen[key] = (state, last)
    elif frame.startswith(ARRIVING_PREFIX):
        key = "a:" + str(json.loads(frame).get("driver"))
        if key in seen:
            return False
        seen[key] = ("arriving", "")
    return True


# -- what tracking knows --------------------------------------------------------------------


@dataclass(slots=True)
class _Driver:
    last: Fix | None = None  # the latest fix this instance took
    speed: Speed = field(default_factory=Speed)
    read: tuple[float, Fix | None] | None = None  # (monotonic time, his DB's fix) lately


@dataclass(slots=True)
class _View:
    """An order as tracking sees it (``ops``: its tracked opcodes' last seq, as read)."""

    ops: dict[int, int]
    checked: float  # monotonic time the stream was last asked
    driver: str | None = None
    vehicle: Any = None
    assigned: float | None = None  # epoch of the driver's TASK_ASSIGN
    assigned_ts: str | None = None
    picked_up: bool = False
    restaurant: tuple[float, float] | None = None
    drop_off: tuple[float, float] | None = None

    @property
    def tracked(self) -> bool:
        return self.driver is not None

    def stop(self) -> tuple[str, tuple[float, float]] | None:
        """The driver's next stop: ("restaurant" | "dropoff", (lat, lng)), when known."""
        if self.picked_up:
            return ("dropoff", self.drop_off) if self.drop_off is not None else None
        return ("restaurant", self.restaurant) if self.restaurant is not None else None


def _point(where: Any) -> tuple[float, float] | None:
    if not isinstance(where, dict):
        return None
    try:
        return float(where["lat"]), float(where["lng"])
    except (KeyError, TypeError, ValueError):
        return None


class Watcher(Protocol):
    """A stream subscription as tracking sees it (:class:`~hub.domain.subscription.
    Subscription`)."""

    @property
    def stream_id(self) -> str | None: ...

    def offer(self, message: Notice) -> None: ...


_TRACKERS: weakref.WeakKeyDictionary[Node, Tracking] = weakref.WeakKeyDictionary()


class Tracking:
    """One instance's tracking: the drivers' last fixes and speeds, the open orders'
    next stops, the presence watch of the orders with subscribers here. Owns one task
    (the watch) and the short tasks that greet new subscribers; ``close()`` ends them."""

    def __init__(self, node: Node, tenants: Tenants, broker: Broker, *,
                 claims: Claims | None = None, presence_timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.node = node
        self.tenants = tenants
        self.broker = broker
        self.claims: Claims = claims if claims is not None else MemoryClaims()
        self.timeout = presence_timeout
        self.clock = clock
        self._orders = Orders(node, tenants)  # for details(): the order's places
        self._drivers: OrderedDict[str, _Driver] = OrderedDict()
        self._views: OrderedDict[str, _View] = OrderedDict()
        self._arrived: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._watched: dict[str, set[Watcher]] = {}  # stream -> its subscriptions here
        self._said: dict[str, str] = {}  # stream -> the last unreachable claimed here
        self._due: DueQueue[str] = DueQueue()
        self._queued: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        _TRACKERS[node] = self

    @staticmethod
    def of(node: Node) -> Tracking | None:
        """The tracking of ``node``'s instance, if it has one."""
        try:
            return _TRACKERS.get(node)
        except TypeError:  # a node that cannot be referenced weakly (a test's stand-in)
            return None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="hub-tracking-watch")

    async def close(self) -> None:
        """Stop the watch and the greetings (each awaited), release the claims."""
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self.claims.close()

    # -- the GPS's fixes -----------------------------------------------------------------

    async def fix(self, driver: str, lat: float, lng: float,
                  streams: Sequence[str]) -> tuple[Fix, list[Notice]]:  # fmt: skip
        """Take a fix of ``driver`` (on ``streams``, his undelivered orders): the fix (its
        time is the driver's ``seenAt``) and the notices it makes, in order: a location
        frame per stream, then ``presence`` ``online`` and ``arriving`` where due.

        Raises :class:`~hub.errors.Unprocessable` for an impossible fix, which then
        changes nothing."""
        check_position(lat, lng)
        at = self.clock()
        new = Fix(float(lat), float(lng), at, ts_of(at))
        known = self._driver(driver)
        views = [(s, await self._view(s, driver)) for s in streams]
        mine = [(s, v) for s, v in views if v is not None and v.driver == driver]
        prev = known.last
        if mine and (prev is None or at - prev.at >= self.timeout):
            stored = await self._stored(driver)  # another instance's, or before a restart
            if stored is not None and (prev is None or stored.at > prev.at):
                prev = stored
        if mine and prev is not None:
            check_jump(prev, new)
        if known.last is None or at >= known.last.at:
            known.last = new
        if mine:
            known.speed.default = vehicle_speed(mine[0][1].vehicle)
        known.speed.add(new)
        speed = known.speed.current()
        notices = [Notice(s, location_frame(s, driver, new, v.stop() if v is not None and
                                            v.driver == driver else None, speed))
                   for s, v in views]  # fmt: skip
        for s, v in mine:
            ref = max(((prev.at, prev.ts) if prev is not None else (0.0, "")),
                      ((v.assigned, v.assigned_ts or "") if v.assigned is not None else (0.0, "")))
            if ref[1] and at - ref[0] >= self.timeout and await self.claims.claim(
                    f"presence:{s}:{driver}:online:{ref[1]}", PRESENCE_TTL):  # fmt: skip
                notices.append(Notice(s, presence_frame(s, driver, "online", new.ts)))
        for s, v in mine:
            if v.drop_off is None or (s, driver) in self._arrived:
                continue
            away = distance_m(new.point, v.drop_off)
            if away > ARRIVING_M:
                continue
            self._remember_arrival(s, driver)
            if await self.claims.claim(f"arriving:{s}:{driver}", ARRIVING_TTL):
                notices.append(Notice(s, arriving_frame(s, driver, away)))
        return new, notices

    def _driver(self, driver: str) -> _Driver:
        known = self._drivers.get(driver)
        if known is None:
            known = self._drivers[driver] = _Driver()
            while len(self._drivers) > MAX_DRIVERS:
                self._drivers.popitem(last=False)
        else:
            self._drivers.move_to_end(driver)
        return known

    def _remember_arrival(self, stream_id: str, driver: str) -> None:
        self._arrived[(stream_id, driver)] = None
        while len(self._arrived) > MAX_VIEWS:
            self._arrived.popitem(last=False)

    async def _stored(self, driver: str) -> Fix | None:
        """The driver's last fix as his tenant DB keeps it (None: none, or unreadable)."""
        try:
            if not self.tenants.exists(driver):
                return None
            r = await self.tenants.tenant(driver).execute(_SEEN_SQL, [driver])
        except Exception as exc:
            log.warning("reading the last fix of %s failed: %s", driver, exc)
            return None
        if not r.rows:
            return None
        lat, lng, seen = r.rows[0]
        at = epoch(seen)
        if at is None or lat is None or lng is None:
            return None
        return Fix(float(lat), float(lng), at, str(seen))

    async def _latest(self, driver: str) -> Fix | None:
        """The freshest fix of ``driver``: this instance's, or his tenant DB's (read at
        most every :data:`READ_TTL` seconds: a thousand sockets opened at once on his
        order read it once)."""
        known = self._driver(driver)
        last = known.last
        if last is not None and self.clock() - last.at < min(self.timeout, 5.0):
            return last  # fresh: the DB has nothing newer worth a read
        now = time.monotonic()
        if known.read is not None and now - known.read[0] < READ_TTL:
            stored = known.read[1]
        else:
            stored = await self._stored(driver)
            known.read = (now, stored)
        if stored is not None and (last is None or stored.at > last.at):
            return stored
        return last

    # -- the orders -----------------------------------------------------------------------

    async def _view(self, stream_id: str, driver: str | None = None) -> _View | None:
        """What tracking needs of an order: its driver (None: none assigned, or delivered,
        cancelled, not an order), his vehicle and the next stops; asked of the stream at
        most every :data:`VIEW_TTL` seconds, read again (details) when it changed.

        For a fix of ``driver`` the stream is asked every time until it shows his pickup
        (one indexed read): the next stop changes then, and the fix right after a pickup
        must be measured to the drop-off. Later changes (delivered, unassigned) take the
        order out of the driver's list (:class:`~hub.domain.gps.Gps`) anyway."""
        now = time.monotonic()
        view = self._views.get(stream_id)
        if view is not None and now - view.checked < VIEW_TTL and (
                driver is None or (view.driver == driver and view.picked_up)):  # fmt: skip
            return view
        try:
            ops = await self.node.stream_opcodes(stream_id, TRACKED_OPS)
        except Exception as exc:
            log.warning("reading the state of %s failed: %s", stream_id, exc)
            return view
        if view is not None and view.ops == ops:
            view.checked = now
            return view
        view = _View(ops, now)
        assigned = ops.get(Opcode.TASK_ASSIGN, 0)
        live = (Opcode.ORDER_CREATE in ops and assigned > ops.get(Opcode.TASK_UNASSIGN, 0)
                and Opcode.ORDER_DELIVER not in ops and Opcode.ORDER_CANCEL not in ops)  # fmt: skip
        if live:
            try:
                d = await self._orders.details(PLATFORM, stream_id)
            except (Unavailable, OSError) as exc:  # for now (a busy DB): ask again next time
                log.warning("reading order %s for tracking failed: %s", stream_id, exc)
                return None
            except HubError:
                d = None  # not an order the steps know (no such restaurant, say)
            driver = d.get("driver") if d is not None else None
            if d is not None and isinstance(driver, dict) and isinstance(driver.get("id"), str):
                view.driver = driver["id"]
                view.vehicle = driver.get("vehicle")
                view.assigned_ts = driver.get("assignedAt")
                view.assigned = epoch(view.assigned_ts)
                view.picked_up = Opcode.ORDER_SHIP in ops
                view.restaurant = _point(d.get("restaurantLocation"))
                view.drop_off = _point(d.get("deliveryLocation"))
        self._views[stream_id] = view
        self._views.move_to_end(stream_id)
        while len(self._views) > MAX_VIEWS:
            self._views.popitem(last=False)
        return view

    # -- subscribers: the position on open, the presence watch ---------------------------------

    def opened(self, sub: Watcher) -> None:
        """A stream subscription opened here: greet it (the driver's position, and his
        presence when unreachable, right after ``live``) and watch the order while it
        is open."""
        stream_id = sub.stream_id
        if stream_id is None:
            return
        self._watched.setdefault(stream_id, set()).add(sub)
        task = asyncio.get_running_loop().create_task(self._greet(stream_id, sub))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def closed(self, sub: Watcher) -> None:
        stream_id = sub.stream_id
        if stream_id is None or stream_id not in self._watched:
            return
        subs = self._watched[stream_id]
        subs.discard(sub)
        if not subs:
            del self._watched[stream_id]
            self._said.pop(stream_id, None)

    async def _greet(self, stream_id: str, sub: Watcher) -> None:
        try:
            view = await self._view(stream_id)
            if view is not None and view.driver is not None:
                driver = view.driver
                last = await self._latest(driver)
                if last is not None and sub in self._watched.get(stream_id, ()):
                    speed = self._driver(driver).speed
                    speed.default = vehicle_speed(view.vehicle)
                    sub.offer(Notice(stream_id, location_frame(stream_id, driver, last,
                                                               view.stop(), speed.current())))
                quiet = self._quiet(view, last)
                if (quiet is not None and quiet >= self.timeout
                        and sub in self._watched.get(stream_id, ())):  # fmt: skip
                    sub.offer(Notice(stream_id, presence_frame(
                        stream_id, driver, "unreachable", last.ts if last is not None else None)))
        except Exception:
            log.exception("greeting a subscriber of %s failed", stream_id)
        self._schedule(stream_id, 0.0)

    def _quiet(self, view: _View, last: Fix | None) -> float | None:
        """Seconds since the driver's last fix (or his assignment, if later); None when
        neither is known."""
        times = [t for t in (last.at if last is not None else None, view.assigned)
                 if t is not None]  # fmt: skip
        return self.clock() - max(times) if times else None

    def _schedule(self, stream_id: str, delay: float) -> None:
        if stream_id in self._watched and stream_id not in self._queued:
            self._queued.add(stream_id)
            self._due.put(stream_id, time.monotonic() + delay)

    async def _watch(self) -> None:
        """Check each watched order when its driver would be silent for the timeout."""
        while True:
            stream_id = await self._due.next()
            self._queued.discard(stream_id)
            if stream_id not in self._watched:
                continue
            try:
                delay = await self._check(stream_id)
            except Exception:
                log.exception("checking the driver of %s failed", stream_id)
                delay = self._idle()
            self._schedule(stream_id, delay)

    def _idle(self) -> float:
        """Seconds between two looks at an order without a silent driver to time."""
        return min(15.0, max(0.2, self.timeout / 2))

    async def _check(self, stream_id: str) -> float:
        """Announce ``unreachable`` when the order's driver is silent for the timeout;
        the delay until the next check."""
        view = await self._view(stream_id)
        if view is None or view.driver is None:
            return self._idle()
        driver = view.driver
        last = await self._latest(driver)
        quiet = self._quiet(view, last)
        if quiet is None:
            return self._idle()
        if quiet < self.timeout:
            return self.timeout - quiet + 0.05
        ref = last.ts if last is not None and (view.assigned is None or last.at >= view.assigned) \
            else view.assigned_ts  # fmt: skip
        key = f"presence:{stream_id}:{driver}:unreachable:{ref}"
        if self._said.get(stream_id) != key:
            self._said[stream_id] = key
            if await self.claims.claim(key, PRESENCE_TTL):
                seen = last.ts if last is not None else None
                self.broker.publish_notice(
                    Notice(stream_id, presence_frame(stream_id, driver, "unreachable", seen)))
        return self._idle()

    def watched(self) -> Iterable[str]:
        """The orders watched here (those with subscribers on this instance)."""
        return tuple(self._watched)

