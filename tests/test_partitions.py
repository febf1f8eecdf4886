"""Several hosts, real partitions (issue 20, point 4).

Two hubs (A, B), a real ``sqld`` and a real ``redis-server`` run as separate hosts on a network
the test builds out of namespaces (:mod:`tests.netns`): every process has its own address in
127.77.R.0/24 and reaches the others through a router, where the test cuts links *silently*
(packets dropped, no RST, no ICMP: only time-outs notice), as a real partition does.

- The streams DB and the public DB are two sqld processes on the host ``sqld``
  (``HUB_STREAMS_DB``, ``HUB_PUBLIC_DB`` over ``ws://``); tenant DBs stay in each hub's data
  dir (the generic event API used here never touches them). ``HUB_REDIS_URL`` names the host
  ``redis``. The test itself is the host ``client`` (the root namespace).
- Writers append orders through both hubs with the generic event API, every event with an
  id; a request answered 503, timed out or broken is sent again, to the same hub, with the
  same ids, until it is acknowledged (the client's part of the contract). Four "watched"
  orders run all along: two written alternately through A and B, one only through A, one only
  through B; short orders come and go besides.
- Subscribers on both hubs (every watched order's stream, the platform's inbox, a kitchen's
  inbox, the inbox of the customer of the order written on the *other* hub) record every frame,
  and reconnect with ``since`` = the last ``seq``/``pos`` they got after any close, as a
  client must.
- While all of this runs: (1) hub A is cut from Redis, (2) hub B is cut from sqld,
  (3) Redis is cut from everyone (its link down), each for ``HUB_PARTITION_CUT`` seconds
  (11 by default), then healed. For each the test records what clients saw during the cut
  (append answers per hub, ``/healthz`` states, socket closes, how late events arrived) and,
  from the heal: ``/healthz`` ok again, appends acknowledged again, every subscriber caught up
  with every event acknowledged before the heal.
- At the end: every acknowledged event is in the streams DB exactly once (``seq`` 1..n in
  each stream, nothing that was not acknowledged), and every subscriber received each event
  of its feed exactly once, in order. Lost, duplicated and out-of-order are counted, printed
  (``-s``) and asserted to be 0; so are appends answered past the hub's own deadlines (10 s
  for a request to the streams DB).

Needs root (``ip netns``) and ``HUB_TEST_SQLD`` (see :mod:`tests.sqld`). About 60 s;
``HUB_PARTITION_CUT`` and ``HUB_PARTITION_ROUNDS`` (how many times the three cuts are made)
make it a longer soak. docs/reliability.md §16 has the figures of a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import HubProcess, RedisServer, auth, timeout
from tests.netns import Net, require_netns
from tests.sqld import Sqld, query, sqld_binary

Frame = dict[str, Any]

# seconds each link stays cut: past the 10 s a silent cut takes to be noticed
CUT = float(os.environ.get("HUB_PARTITION_CUT", "11"))
ROUNDS = int(os.environ.get("HUB_PARTITION_ROUNDS", "1"))  # times the three cuts are made
RECOVER_MAX = 60.0  # a heal must be followed by recovery within this
STEADY = 2.0  # seconds of normal running before the first and after each recovery
PACE = 0.1  # seconds each writer waits between two appends
APPEND_TIMEOUT = 30.0  # the client's own limit for one request (the hub's is 10 s)
HUB_DEADLINE = 10.0  # one request to a remote libSQL DB (docs/protocol.md §8)
DEADLINE_SLACK = 3.0  # what an answer may take beyond it (the 2 s /healthz ping, queueing)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(timeout(180 + 3 * ROUNDS * (CUT + 60))))]
PLATFORM = auth("ops", "platform")
KITCHEN = "bab-hara"
OTHER_KITCHEN = "zaatar"
HOSTS = ["hub-a", "hub-b", "redis", "sqld"]


# -- the hosts ----------------------------------------------------------------------------------


@dataclass
class Cluster:
    net: Net
    streams: Sqld
    public: Sqld
    redis: RedisServer
    hubs: dict[str, HubProcess]  # "A" on host hub-a, "B" on host hub-b


def on_host(net: Net, host: str, thing: Any) -> Any:
    """Make a HubProcess, RedisServer or Sqld listen on ``host``'s address and run there."""
    thing.host = net.addr(host)
    thing.prefix = tuple(net.prefix(host))
    return thing


class NetRedis(RedisServer):
    """redis-server taking clients from other hosts (127.77.x.y is not "loopback" to it)."""

    def extra_args(self) -> list[str]:
        return ["--protected-mode", "no"]


class NetHub(HubProcess):
    """A hub whose log may hold tracebacks of a database outage (see :func:`log_faults`):
    its clean-shutdown check looks for every other marker, and :func:`log_faults` (run
    here after the stop, and by the test) fails on any other traceback."""

    LEAKS = tuple(m for m in HubProcess.LEAKS if not m.startswith("Traceback"))

    def check_clean_shutdown(self) -> None:
        super().check_clean_shutdown()
        log_faults(self.log())


TRACEBACK = "Traceback (most recent call last):"
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\w+) +(.*)")
# The tracebacks a partition from the streams DB makes the hub log (reported, not a crash):
# its last exception is the 503 of a database that does not answer.
OUTAGE = "hub.errors.Unavailable"


def log_faults(text: str) -> Counter[str]:
    """The tracebacks in a hub's log, as "message <- final exception type" with counts;
    fails on any whose final exception is not :data:`OUTAGE`."""
    found: Counter[str] = Counter()
    header, block = "", []
    for line in [*text.splitlines(), "2000-01-01T00:00:00.000Z END"]:
        m = LOG_LINE.match(line)
        if m is None:
            block.append(line)
            continue
        if TRACEBACK in block:
            final = next(x for x in reversed(block) if x.strip()).split(":", 1)[0]
            assert final == OUTAGE, f"the hub logged a crash: {header}\n" + "\n".join(block)
            found[f"{header} <- {final}"] += 1
        header, block = m.group(2), []
    return found


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """sqld (streams and public DBs), Redis and hubs A and B, each on its own host, linked."""
    require_netns()
    sqld_binary()  # fails the test now when there is none
    with Net(HOSTS) as net:
        stops: list[Callable[[], object]] = []

        def start(host: str, thing: Any) -> Any:
            on_host(net, host, thing)
            stops.insert(0, thing.stop)  # stopped in reverse: the hubs before what they use
            return thing.start()

        try:
            streams = start("sqld", Sqld(tmp_path / "sqld-streams"))
            public = start("sqld", Sqld(tmp_path / "sqld-public"))
            redis = start("redis", NetRedis(tmp_path / "redis"))
            env = {"HUB_STREAMS_DB": streams.ws_url, "HUB_PUBLIC_DB": public.ws_url,
                   "HUB_REDIS_URL": redis.url}  # fmt: skip
            hubs = {
                name: start(host, NetHub(tmp_path / f"data-{name}", env))
                for name, host in (("A", "hub-a"), ("B", "hub-b"))
            }
            for name, hub in hubs.items():  # healthy is not enough: linked to Redis too
                deadline = time.monotonic() + timeout(15)
                while (got := health_now(hub))[1] != "ok":
                    assert time.monotonic() < deadline, f"hub {name} never linked: {got}"
                    time.sleep(0.05)
            yield Cluster(net, streams, public, redis, hubs)
        finally:
            net.heal_all()
            errors: list[BaseException] = []
            for stop in stops:  # every one, even after one failed (a hub's unclean log)
                try:
                    stop()
                except Exception as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]


def health_now(hub: HubProcess) -> tuple[int, str]:
    r = httpx.get(hub.url + "/healthz", timeout=timeout(5), trust_env=False)
    return r.status_code, r.json()["status"]


# -- what the clients saw -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


@dataclass
class Attempt:
    """One append request: which hub, when sent and answered, and the outcome."""

    hub: str
    sent: float
    done: float
    outcome: str  # "201", "200", "503", ..., or the exception's name


@dataclass
class Health:
    hub: str
    sent: float
    done: float
    state: str  # "ok", "degraded(broker)", "failing(streams_db)", "503 ...", or an error


@dataclass
class Acked:
    event: Frame
    hub: str
    at: float  # when its acknowledgement arrived


class Ledger:
    """Every acknowledged event and every request made, with times (see :class:`Clock`)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.acked: dict[tuple[str, str], Acked] = {}
        self.attempts: list[Attempt] = []
        self.health: list[Health] = []
        self.customer: dict[str, str] = {}  # stream -> its customer
        self.restaurant: dict[str, str] = {}  # stream -> its restaurant

    def feed(self, who: str) -> Callable[[str], bool]:
        """Which streams' events an inbox receives: ``who`` is "platform", "kitchen" or a
        customer's tenant id (every member from the ORDER_CREATE that names it)."""
        if who == "platform":
            return lambda sid: True
        if who == "kitchen":
            return lambda sid: self.restaurant.get(sid) == KITCHEN
        return lambda sid: self.customer.get(sid) == who


class Writer:
    """Appends with named ids through one hub, again and again until acknowledged."""

    def __init__(self, ledger: Ledger, clients: dict[str, httpx.AsyncClient]) -> None:
        self.ledger = ledger
        self.clients = clients

    async def append(self, hub: str, sid: str, drafts: list[Frame]) -> None:
        clock, backoff = self.ledger.clock, 0.1
        while True:
            sent = clock.now()
            try:
                r = await self.clients[hub].post(
                    f"/api/streams/{sid}/events", json={"events": drafts}, headers=PLATFORM
                )
                outcome = str(r.status_code)
            except httpx.HTTPError as exc:
                r, outcome = None, type(exc).__name__
            self.ledger.attempts.append(Attempt(hub, sent, clock.now(), outcome))
            if r is not None and r.status_code in (200, 201):
                for event in r.json()["events"]:
                    self.ledger.acked[(sid, event["id"])] = Acked(event, hub, clock.now())
                return
            if r is not None and r.status_code != 503:  # the task ends; its result is checked
                raise AssertionError(f"append to {sid} on {hub}: {r.status_code} {r.text}")
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)


OPCODES = [203, 301, 303, 102, 305, 402, 401]  # after ORDER_CREATE; none ends (archives) it


def create(sid: str, customer: str, restaurant: str) -> Frame:
    return {"id": f"{sid}.create", "opcode": 501, "delta": 46,
            "payload": {"customer": customer, "restaurant": restaurant}}  # fmt: skip


def step(sid: str, n: int) -> Frame:
    return {"id": f"{sid}.e{n}", "opcode": OPCODES[n % len(OPCODES)], "delta": 1.5,
            "payload": {"n": n, "note": "شاورما ✓"}}  # fmt: skip


async def watched_order(w: Writer, sid: str, customer: str, hubs: str, stop: asyncio.Event) -> None:
    """One long order, its appends through ``hubs`` in turn ("AB", "A", "B"), until ``stop``;
    every 5th append is a batch of two events."""
    w.ledger.customer[sid], w.ledger.restaurant[sid] = customer, KITCHEN
    await w.append(hubs[0], sid, [create(sid, customer, KITCHEN)])
    n = i = 0
    while not stop.is_set():
        await asyncio.sleep(PACE)
        i += 1
        size = 2 if i % 5 == 0 else 1
        await w.append(hubs[i % len(hubs)], sid, [step(sid, n + k) for k in range(size)])
        n += size


async def short_orders(w: Writer, hub: str, tag: str, stop: asyncio.Event) -> None:
    """Orders of eight events each (one request carries two), one after the other, through
    ``hub``, until ``stop``; every other one from another kitchen."""
    k = 0
    while not stop.is_set():
        sid = f"ord-{tag}-{k}"
        kitchen = KITCHEN if k % 2 == 0 else OTHER_KITCHEN
        w.ledger.customer[sid], w.ledger.restaurant[sid] = f"cust-{tag}", kitchen
        await w.append(hub, sid, [create(sid, f"cust-{tag}", kitchen)])
        for n, size in ((0, 1), (1, 2), (3, 1), (4, 1), (5, 1), (6, 1)):
            await asyncio.sleep(PACE)
            await w.append(hub, sid, [step(sid, n + j) for j in range(size)])
        k += 1


async def poll_health(ledger: Ledger, hub: str, client: httpx.AsyncClient,
                      stop: asyncio.Event) -> None:  # fmt: skip
    clock = ledger.clock
    while not stop.is_set():
        sent = clock.now()
        try:
            r = await client.get("/healthz", timeout=timeout(15))
            body = r.json()
            failing = sorted(k for k, v in body["checks"].items() if v != "ok")
            state = body["status"] + (f"({','.join(failing)})" if failing else "")
            if r.status_code != 200:
                state = f"{r.status_code} {state}"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            state = f"error {type(exc).__name__}"
        ledger.health.append(Health(hub, sent, clock.now(), state))
        await asyncio.sleep(0.2)


@dataclass
class Conn:
    """One WebSocket connection of a subscriber."""

    opened: float
    since: int
    live_key: int | None = None  # the key its live frame carried
    live_expected: int | None = None  # the last key received before it (or since)
    closed: float | None = None
    code: int | None = None  # None: closed without a close frame


class Subscriber:
    """A socket on one hub that reconnects with ``since`` after any close (but 1000, 4401,
    4403), recording every event, every connection and every failed attempt."""

    def __init__(self, name: str, hub: str, hub_proc: HubProcess, path: str, feed: str,
                 clock: Clock, headers: dict[str, str]) -> None:  # fmt: skip
        self.name, self.hub, self.proc, self.path, self.feed = name, hub, hub_proc, path, feed
        self.clock, self.headers = clock, headers
        self.key = "seq" if path.startswith("/ws/streams/") else "pos"
        self.events: list[Frame] = []
        self.arrived: dict[tuple[str, str], float] = {}
        self.conns: list[Conn] = []
        self.failures: list[tuple[float, str]] = []
        self.other: list[Frame] = []
        self.final: int | None = None  # a close code that ends it (1000, 4401, 4403)
        self.stopping = False
        self.conn: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<{self.name} {self.key}={self.last} n={len(self.events)}>"

    @property
    def last(self) -> int:
        return int(self.events[-1][self.key]) if self.events else 0

    @property
    def live(self) -> bool:
        return bool(self.conns) and self.conns[-1].live_key is not None

    async def run(self) -> None:
        backoff = 0.1
        while not self.stopping and self.final is None:
            since = self.last
            try:
                conn = await connect(
                    f"{self.proc.ws_url}{self.path}?since={since}", additional_headers=self.headers,
                    compression=None, proxy=None, open_timeout=timeout(10),
                    close_timeout=timeout(2),
                )  # fmt: skip
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                self.failures.append((self.clock.now(), f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            self.conn = conn
            record = Conn(self.clock.now(), since)
            self.conns.append(record)
            try:
                async for raw in conn:
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "event":
                        event = {k: v for k, v in frame.items() if k != "type"}
                        self.events.append(event)
                        self.arrived.setdefault((event["streamId"], event["id"]), self.clock.now())
                    elif kind == "live":
                        record.live_key, record.live_expected = int(frame[self.key]), self.last
                    elif kind not in ("location", "presence", "arriving"):
                        self.other.append(frame)
            except websockets.ConnectionClosed:
                pass
            record.closed, record.code = self.clock.now(), conn.close_code
            if record.code in (1000, 4401, 4403) and not self.stopping:
                self.final = record.code
            backoff = 0.1
            if not self.stopping:
                await asyncio.sleep(backoff)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run())
        deadline = time.monotonic() + timeout(10)
        while not self.live:
            assert time.monotonic() < deadline, f"{self}: no live frame {self.failures[-3:]}"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.stopping = True
        if self.conn is not None:
            await self.conn.close()
        if self.task is not None:
            await self.task


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    cut: Callable[[Net], None]
    heal: Callable[[Net], None]
    t_cut: float = 0.0
    t_heal: float = 0.0
    recovered: dict[str, float] = field(default_factory=dict)  # what -> seconds after heal


def scenarios() -> list[Scenario]:
    """(1) hub A cut from Redis, (2) hub B cut from sqld, (3) Redis cut from everyone:
    ``HUB_PARTITION_ROUNDS`` times (once by default)."""
    return [
        sc
        for _ in range(ROUNDS)
        for sc in (
            Scenario("hub A cut from Redis", lambda n: n.cut("hub-a", "redis"),
                     lambda n: n.heal("hub-a", "redis")),
            Scenario("hub B cut from sqld", lambda n: n.cut("hub-b", "sqld"),
                     lambda n: n.heal("hub-b", "sqld")),
            Scenario("Redis cut from everyone (its link down)", lambda n: n.isolate("redis"),
                     lambda n: n.rejoin("redis")),
        )
    ]  # fmt: skip


RECOVERIES = [f"{what} {hub}" for hub in "AB" for what in ("healthz", "appends", "caught up")]


def target(ledger: Ledger, sub: Subscriber, before: float) -> int:
    """The last key ``sub`` must reach to have every event of its feed acknowledged before
    ``before``."""
    if sub.key == "seq":
        sid = sub.path.rsplit("/", 1)[1]
        keys = [a.event["seq"] for (s, _), a in ledger.acked.items() if s == sid and a.at < before]
    else:
        wants = ledger.feed(sub.feed)
        keys = [a.event["pos"] for (s, _), a in ledger.acked.items() if wants(s) and a.at < before]
    return max(keys, default=0)


async def recover(sc: Scenario, ledger: Ledger, subs: list[Subscriber]) -> None:
    """Wait until, on each hub, /healthz says ok, an append is acknowledged and every
    subscriber has every event acknowledged before the heal; record how long each took
    (:data:`RECOVERIES`, seconds from the heal)."""
    clock = ledger.clock
    targets = {sub.name: target(ledger, sub, sc.t_heal) for sub in subs}
    seen_health = seen_attempts = 0
    while True:
        now = clock.now()
        for h in ledger.health[seen_health:]:
            if h.sent >= sc.t_heal and h.state == "ok":
                sc.recovered.setdefault(f"healthz {h.hub}", h.done - sc.t_heal)
        seen_health = len(ledger.health)
        for a in ledger.attempts[seen_attempts:]:
            if a.done >= sc.t_heal and a.outcome in ("200", "201"):
                sc.recovered.setdefault(f"appends {a.hub}", a.done - sc.t_heal)
        seen_attempts = len(ledger.attempts)
        for hub in "AB":
            if all(s.last >= targets[s.name] for s in subs if s.hub == hub):
                sc.recovered.setdefault(f"caught up {hub}", now - sc.t_heal)
        if len(sc.recovered) == len(RECOVERIES):
            return
        if now > sc.t_heal + timeout(RECOVER_MAX):
            behind = [f"{s} < {targets[s.name]}" for s in subs if s.last < targets[s.name]]
            print(f"NOT RECOVERED within {timeout(RECOVER_MAX):.0f}s after '{sc.name}': "
                  f"{sc.recovered} behind: {behind}")  # fmt: skip
            return
        await asyncio.sleep(0.02)


async def test_partitions_lose_repeat_and_reorder_nothing(cluster: Cluster) -> None:
    """Links cut and healed while orders run and subscribers watch on both hubs: every
    acknowledged event stored and delivered exactly once, in order; figures printed."""
    net, hubs = cluster.net, cluster.hubs
    clock = Clock()
    ledger = Ledger(clock)
    runs = scenarios()
    stop_writing, stop_polling = asyncio.Event(), asyncio.Event()
    limits = httpx.Limits(max_keepalive_connections=20)
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(httpx.AsyncClient(
                base_url=hub.url, timeout=timeout(APPEND_TIMEOUT), trust_env=False, limits=limits))
            for name, hub in hubs.items()
        }  # fmt: skip
        writer = Writer(ledger, clients)
        # The watched orders: through A and B in turn, through A only, through B only.
        watched = {"w-ab1": "AB", "w-ab2": "BA", "w-a": "A", "w-b": "B"}
        subs: list[Subscriber] = []
        for name, hub in hubs.items():
            for sid in watched:
                subs.append(Subscriber(f"{sid}@{name}", name, hub, f"/ws/streams/{sid}", sid,
                                       clock, PLATFORM))  # fmt: skip
            subs.append(Subscriber(f"platform@{name}", name, hub, "/ws/inbox", "platform",
                                   clock, PLATFORM))  # fmt: skip
            subs.append(Subscriber(f"kitchen@{name}", name, hub, "/ws/inbox", "kitchen",
                                   clock, auth(KITCHEN, "restaurant")))  # fmt: skip
            # The customer of the order written only through the other hub.
            customer = "cust-w-b" if name == "A" else "cust-w-a"
            subs.append(Subscriber(f"{customer}@{name}", name, hub, "/ws/inbox", customer,
                                   clock, auth(customer, "customer")))  # fmt: skip
        for sub in subs:
            await sub.start()
        pollers = [asyncio.create_task(poll_health(ledger, name, clients[name], stop_polling))
                   for name in hubs]  # fmt: skip
        writers = [
            *(asyncio.create_task(watched_order(writer, sid, f"cust-{sid}", via, stop_writing))
              for sid, via in watched.items()),
            *(asyncio.create_task(short_orders(writer, hub, f"{hub.lower()}{k}", stop_writing))
              for hub in hubs for k in range(2)),
        ]  # fmt: skip
        try:
            await asyncio.sleep(STEADY)
            for sc in runs:
                sc.t_cut = clock.now()
                await asyncio.to_thread(sc.cut, net)
                print(f"{sc.t_cut:7.2f}s cut: {sc.name}")
                await asyncio.sleep(CUT)
                sc.t_heal = clock.now()
                await asyncio.to_thread(sc.heal, net)
                print(f"{sc.t_heal:7.2f}s healed: {sc.name}")
                await recover(sc, ledger, subs)
                print(f"{clock.now():7.2f}s recovered: "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in sc.recovered.items()))  # fmt: skip
                await asyncio.sleep(STEADY)
            stop_writing.set()
            done, late = await asyncio.wait(writers, timeout=timeout(2 * APPEND_TIMEOUT))
            assert not late, f"{len(late)} writers still retrying after the last heal"
            for task in done:
                task.result()
            rows = await asyncio.to_thread(
                query, cluster.streams.http_url,
                "SELECT streamId, id, seq, pos FROM events ORDER BY pos")  # fmt: skip
            stored = [dict(zip(("streamId", "id", "seq", "pos"), row, strict=True)) for row in rows]
            for sub in subs:  # let every subscriber reach the end of its feed
                end = max((e[sub.key] for e in expected_of(sub, stored, ledger)), default=0)
                deadline = time.monotonic() + timeout(30)
                while sub.last < end:
                    if time.monotonic() > deadline:
                        break  # counted as lost below
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # anything extra would arrive now
        finally:
            stop_writing.set()
            stop_polling.set()
            await asyncio.to_thread(net.heal_all)
            for task in writers:
                task.cancel()
            await asyncio.gather(*writers, *pollers, return_exceptions=True)
            for sub in subs:
                await sub.stop()

    figures = tally(ledger, stored, subs, runs)
    figures["hub_log_tracebacks"] = {name: dict(log_faults(h.log())) for name, h in hubs.items()}
    print(report(figures))
    print("PARTITION-FIGURES " + json.dumps(figures, sort_keys=True))
    for key in (
        "lost",
        "duplicated",
        "out_of_order",
        "extra",
        "stored_lost",
        "stored_duplicated",
        "stored_unacknowledged",
        "ack_differs",
        "seq_gaps",
        "bad_live",
        "over_deadline",
    ):
        assert figures[key] == 0, (key, figures[key])  # fmt: skip
    for sc in runs:
        assert sorted(sc.recovered) == sorted(RECOVERIES), (sc.name, sc.recovered)
    for sub in subs:
        assert sub.final is None, f"{sub}: closed {sub.final}"
        assert not sub.other, f"{sub}: {sub.other[:3]}"


# -- the figures --------------------------------------------------------------------------------


def expected_of(sub: Subscriber, stored: list[Frame], ledger: Ledger) -> list[Frame]:
    """The events ``sub`` must have received, in order: its stream's by seq, or its inbox's
    by pos (``stored`` is in pos order)."""
    if sub.key == "seq":
        sid = sub.path.rsplit("/", 1)[1]
        return sorted((e for e in stored if e["streamId"] == sid), key=lambda e: e["seq"])
    wants = ledger.feed(sub.feed)
    return [e for e in stored if wants(e["streamId"])]


def tally(
    ledger: Ledger, stored: list[Frame], subs: list[Subscriber], runs: list[Scenario]
) -> dict[str, Any]:
    """Lost, duplicated, out of order: in the store and at every subscriber; and what each
    scenario showed the clients."""
    ident = [(e["streamId"], e["id"]) for e in stored]
    counts = Counter(ident)
    by_id = dict(zip(ident, stored, strict=True))
    deadline = HUB_DEADLINE + timeout(DEADLINE_SLACK)
    out: dict[str, Any] = {
        "acknowledged": len(ledger.acked),
        "stored": len(stored),
        "stored_lost": sum(k not in by_id for k in ledger.acked),
        "stored_duplicated": sum(n - 1 for n in counts.values()),
        "stored_unacknowledged": sum(k not in ledger.acked for k in counts),
        "ack_differs": sum(
            k in by_id and (by_id[k]["seq"], by_id[k]["pos"]) != (a.event["seq"], a.event["pos"])
            for k, a in ledger.acked.items()
        ),
        "requests": len(ledger.attempts),
        "over_deadline": sum(a.done - a.sent > deadline for a in ledger.attempts),
        "slowest_answer_s": round(max((a.done - a.sent for a in ledger.attempts), default=0), 2),
    }
    seqs: dict[str, list[int]] = {}
    for e in stored:
        seqs.setdefault(e["streamId"], []).append(e["seq"])
    out["seq_gaps"] = sum(sorted(v) != list(range(1, len(v) + 1)) for v in seqs.values())
    totals = Counter[str]()
    per_sub: dict[str, dict[str, int]] = {}
    for sub in subs:
        want = [(e["streamId"], e["id"]) for e in expected_of(sub, stored, ledger)]
        got = [(e["streamId"], e["id"]) for e in sub.events]
        keys = [int(e[sub.key]) for e in sub.events]
        s = {
            "received": len(got),
            "lost": len(set(want) - set(got)),
            "duplicated": sum(n - 1 for n in Counter(got).values()),
            "out_of_order": sum(b <= a for a, b in itertools.pairwise(keys)),
            # not of its feed, or not as stored (seq, pos)
            "extra": len(set(got) - set(want)) + sum(
                k in by_id and (by_id[k]["seq"], by_id[k]["pos"]) != (e["seq"], e["pos"])
                for k, e in zip(got, sub.events, strict=True)
            ),
            # a live frame not at the last key sent before it
            "bad_live": sum(c.live_key != c.live_expected for c in sub.conns
                            if c.live_key is not None),
            "connections": len(sub.conns),
        }  # fmt: skip
        per_sub[sub.name] = s
        totals.update({k: v for k, v in s.items() if k != "connections"})
    out.update(
        lost=totals["lost"], duplicated=totals["duplicated"], extra=totals["extra"],
        out_of_order=totals["out_of_order"], bad_live=totals["bad_live"],
        delivered=totals["received"], subscribers=per_sub,
        scenarios=[scenario_figures(sc, ledger, subs) for sc in runs],
    )  # fmt: skip
    return out


def scenario_figures(sc: Scenario, ledger: Ledger, subs: list[Subscriber]) -> dict[str, Any]:
    """What each hub's clients saw from the cut of ``sc`` to its heal, and the recovery."""
    out: dict[str, Any] = {
        "name": sc.name,
        "cut_s": round(sc.t_heal - sc.t_cut, 1),
        "recovered_s": {k: round(v, 2) for k, v in sc.recovered.items()},
    }
    for hub in "AB":
        # Requests in flight at some time during the cut: answered before the heal, or after.
        spans = [a for a in ledger.attempts
                 if a.hub == hub and a.sent < sc.t_heal and a.done >= sc.t_cut]  # fmt: skip
        during = Counter(a.outcome for a in spans if a.done < sc.t_heal)
        after = Counter(a.outcome for a in spans if a.done >= sc.t_heal)
        refusals = [a.done - sc.t_cut for a in spans
                    if a.done < sc.t_heal and a.outcome not in ("200", "201")]  # fmt: skip
        states: list[str] = []
        for h in ledger.health:
            if h.hub != hub or not sc.t_cut <= h.sent < sc.t_heal:
                continue
            if not states or states[-1].split(" @")[0] != h.state:
                states.append(f"{h.state} @{h.done - sc.t_cut:+.1f}s")
        closed = [
            (c.code, round(c.closed - sc.t_cut, 1))
            for sub in subs if sub.hub == hub
            for c in sub.conns if c.closed is not None and sc.t_cut <= c.closed < sc.t_heal
        ]  # fmt: skip
        failed = [f for sub in subs if sub.hub == hub for f in sub.failures
                  if sc.t_cut <= f[0] < sc.t_heal]  # fmt: skip
        # How late the events acknowledged during the cut reached this hub's subscribers.
        lag = {"seq": 0.0, "pos": 0.0}
        for sub in subs:
            if sub.hub == hub:
                for k, arrived in sub.arrived.items():
                    a = ledger.acked.get(k)
                    if a is not None and sc.t_cut <= a.at < sc.t_heal:
                        lag[sub.key] = max(lag[sub.key], arrived - a.at)
        out[hub] = {
            "answered_in_cut": dict(sorted(during.items())),
            "answered_after_heal": dict(sorted(after.items())),
            "first_refusal_s": round(min(refusals), 1) if refusals else None,
            "slowest_answer_s": round(max((a.done - a.sent for a in spans), default=0), 1),
            "healthz": states,
            "socket_closes": closed,
            "failed_connects": len(failed),
            "latest_stream_delivery_s": round(lag["seq"], 1),
            "latest_inbox_delivery_s": round(lag["pos"], 1),
        }
    return out


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{n} x {o}" for o, n in c.items())


def report(f: dict[str, Any]) -> str:
    """The figures as printed (``-s``): totals, then a Markdown table for docs/reliability.md."""
    lines = [
        "",
        f"partitions (each cut {CUT:g} s): {f['acknowledged']} events acknowledged "
        f"({f['requests']} requests), {f['stored']} stored, {f['delivered']} delivered to "
        f"{len(f['subscribers'])} subscribers",
        f"lost {f['lost']} (store {f['stored_lost']}), duplicated {f['duplicated']} "
        f"(store {f['stored_duplicated']}), out of order {f['out_of_order']}, extra "
        f"{f['extra']}, stored but not acknowledged {f['stored_unacknowledged']}, seq gaps "
        f"{f['seq_gaps']}, slowest append answer {f['slowest_answer_s']} s (past the "
        f"deadline: {f['over_deadline']})",
    ]
    for hub, faults in f["hub_log_tracebacks"].items():
        lines += [f"hub {hub} logged {n} traceback(s): {what}" for what, n in faults.items()]
    lines += [
        "",
        "| cut | hub | appends in flight during the cut: answered during it; at the heal "
        "| `/healthz` during the cut | sockets closed during the cut | latest delivery of an "
        "event acked during the cut: streams / inboxes | heal -> `/healthz` ok | heal -> "
        "appends ok | heal -> subscribers caught up |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in f["scenarios"]:
        r = s["recovered_s"]
        for hub in "AB":
            h = s[hub]
            answered = _counts(h["answered_in_cut"]) or "none"
            if h["first_refusal_s"] is not None:
                answered += f" (first refusal at +{h['first_refusal_s']} s)"
            if h["answered_after_heal"]:
                answered += f"; {_counts(h['answered_after_heal'])} after the heal"
            answered += f"; slowest {h['slowest_answer_s']} s"
            codes = Counter(str(c) for c, _ in h["socket_closes"])
            socks = _counts(dict(codes)) or "none"
            if h["failed_connects"]:
                socks += f", {h['failed_connects']} reconnects failed"
            got = [f"{r[k]:.2f} s" if k in r else "never"
                   for k in (f"healthz {hub}", f"appends {hub}", f"caught up {hub}")]  # fmt: skip
            lines.append(
                f"| {s['name'] if hub == 'A' else ''} | {hub} | {answered} "
                f"| {' -> '.join(h['healthz'])} | {socks} "
                f"| {h['latest_stream_delivery_s']} s / {h['latest_inbox_delivery_s']} s "
                f"| {got[0]} | {got[1]} | {got[2]} |"
            )
    lines.append("")
    lines += [f"  {name:16} {s}" for name, s in f["subscribers"].items()]
    return "\n".join(lines)
