"""Hub instances linked through a real Redis (docs/protocol.md §5, "The guarantee"): cross-instance
delivery and its latency, concurrent writers on two instances, a Redis outage, killed
pub/sub connections, per-channel subscriptions, resume on another instance, sockets that
come and go while an instance re-subscribes, an overflowing publisher, and archiving seen
from another instance.

Every test starts its own ``redis-server`` and two hubs (A and B) sharing one streams DB
file. The scenarios run with plain pub/sub and with sharded pub/sub (``HUB_REDIS_SHARDED=1``,
SSUBSCRIBE/SPUBLISH), all but the slow last one. Random choices come from one seeded RNG
per test: the seed is printed (shown when a test fails) and ``HUB_TEST_SEED=N`` replays it.
Latency figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import HubProcess, RedisServer, auth, parse_metrics, timeout

Frame = dict[str, Any]

PLATFORM = auth("ops", "platform")
RESTAURANT = "bab-hara"
KITCHEN = auth(RESTAURANT, "restaurant")
NOTE = 'شاورما ✓ "quoted" \\ end'  # non-ASCII and escapes: survives the trip through Redis


# -- fixtures and helpers ----------------------------------------------------------------------


@dataclass
class Pair:
    """Two hubs (A, B) on one streams DB file, linked by one redis-server."""

    redis: RedisServer
    a: HubProcess
    b: HubProcess
    sharded: bool


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("HUB_TEST_SEED") or random.randrange(1 << 32))
    print(f"HUB_TEST_SEED={seed}")
    return random.Random(seed)


def health_of(hub: HubProcess) -> tuple[int, Frame]:
    r = httpx.get(hub.url + "/healthz", timeout=timeout(5), trust_env=False)
    return r.status_code, r.json()


def is_ok(got: tuple[int, Frame]) -> bool:
    """/healthz said 200 "ok" with every check "ok" (the broker linked to Redis)."""
    status, body = got
    checks = body["checks"].values()
    return status == 200 and body["status"] == "ok" and all(v == "ok" for v in checks)


@pytest.fixture(params=[False, True], ids=["pubsub", "sharded"])
def pair(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    hub_factory: Callable[..., HubProcess],
    tmp_path: Path,
) -> Pair:
    """Hubs A and B with ``HUB_REDIS_URL`` (and ``HUB_REDIS_SHARDED``), both linked."""
    env = {"HUB_REDIS_URL": redis_server.url}
    if request.param:
        env["HUB_REDIS_SHARDED"] = "1"
    a = hub_factory(tmp_path / "data", env)
    b = hub_factory(tmp_path / "data", env)
    for hub in (a, b):  # healthy is not enough: wait until the broker is connected
        deadline = time.monotonic() + timeout(10)
        while not is_ok(got := health_of(hub)):
            assert time.monotonic() < deadline, f"hub {hub.port} never linked: {got}"
            time.sleep(0.02)
    return Pair(redis_server, a, b, request.param)


def new_sid(prefix: str = "order") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def order(customer: str, restaurant: str = RESTAURANT) -> Frame:
    """An ORDER_CREATE draft naming ``customer`` and ``restaurant`` (both become members)."""
    return {"opcode": 501, "payload": {"customer": customer, "restaurant": restaurant}}


def note(i: int, **extra: Any) -> Frame:
    return {"opcode": 203, "delta": 12.5, "payload": {"i": i, "note": NOTE, **extra}}


@asynccontextmanager
async def http(hub: HubProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(30), trust_env=False) as c:
        yield c


async def health(c: httpx.AsyncClient) -> tuple[int, Frame]:
    r = await c.get("/healthz")
    return r.status_code, r.json()


async def health_becomes(
    c: httpx.AsyncClient, ok: Callable[[tuple[int, Frame]], bool], seconds: float
) -> tuple[int, Frame]:
    """Poll /healthz until ``ok((status, body))``; returns the answer that satisfied it."""
    deadline = time.monotonic() + timeout(seconds)
    while not ok(got := await health(c)):
        if time.monotonic() > deadline:
            pytest.fail(f"/healthz of {c.base_url} stays {got}")
        await asyncio.sleep(0.05)
    return got


async def metrics(c: httpx.AsyncClient) -> dict[str, float]:
    """GET /metrics as {series: value}."""
    r = await c.get("/metrics")
    assert r.status_code == 200, r.text
    return parse_metrics(r.text)


async def eventually(ok: Callable[[], bool], seconds: float, what: Callable[[], str]) -> float:
    """Wait until ``ok()`` holds; returns how long it took (fails after ``seconds``)."""
    start = time.monotonic()
    deadline = start + timeout(seconds)
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout(seconds):.0f}s: {what()}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class Log:
    """Every event the hubs acknowledged, with when its request was sent and answered."""

    def __init__(self) -> None:
        self.events: dict[str, Frame] = {}
        self.sent: dict[str, float] = {}
        self.acked: dict[str, float] = {}

    async def append(
        self, c: httpx.AsyncClient, stream_id: str, drafts: list[Frame], headers: Any = PLATFORM
    ) -> list[Frame]:
        t0 = time.monotonic()
        r = await c.post(f"/api/streams/{stream_id}/events", json={"events": drafts},
                         headers=headers)  # fmt: skip
        t1 = time.monotonic()
        assert r.status_code == 201, (r.status_code, r.text)
        events: list[Frame] = r.json()["events"]
        assert len(events) == len(drafts)
        for e in events:
            self.events[e["id"]] = e
            self.sent[e["id"]], self.acked[e["id"]] = t0, t1
        return events

    def stream(self, stream_id: str) -> list[Frame]:
        return sorted((e for e in self.events.values() if e["streamId"] == stream_id),
                      key=lambda e: e["seq"])  # fmt: skip

    def by_pos(self, stream_ids: set[str] | None = None) -> list[Frame]:
        """Events of ``stream_ids`` (all when None) in pos order: an inbox's expected feed."""
        return sorted((e for e in self.events.values()
                       if stream_ids is None or e["streamId"] in stream_ids),
                      key=lambda e: e["pos"])  # fmt: skip


def ws(hub: HubProcess, path: str, headers: dict[str, str]) -> connect:
    return connect(hub.ws_url + path, additional_headers=headers, compression=None, proxy=None,
                   open_timeout=timeout(10), close_timeout=timeout(5))  # fmt: skip


class Sub:
    """A subscriber on one hub: a task reads every frame, recording each event and its
    arrival time; ``async with`` returns once the ``live`` frame came."""

    def __init__(
        self, name: str, hub: HubProcess, path: str, headers: dict[str, str], since: int = 0
    ) -> None:
        self.name, self.hub, self.path, self.headers, self.since = name, hub, path, headers, since
        self.key = "seq" if path.startswith("/ws/streams/") else "pos"
        self.events: list[Frame] = []
        self.arrived: dict[str, float] = {}
        self.lives: list[tuple[int, Frame]] = []  # (events before it, the frame)
        self.other: list[Frame] = []
        self.closed = False
        self.close_code: int | None = None
        self.conn: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<{self.name} on :{self.hub.port} {self.key}={self.last} n={len(self.events)}>"

    @property
    def last(self) -> int:
        return int(self.events[-1][self.key]) if self.events else self.since

    async def __aenter__(self) -> Sub:
        self.conn = await ws(self.hub, f"{self.path}?since={self.since}", self.headers)
        self._task = asyncio.create_task(self._read())
        await eventually(lambda: bool(self.lives) or self._task is None or self._task.done(), 10,
                         lambda: f"{self}: no live frame")  # fmt: skip
        assert self.lives, f"{self}: closed ({self.close_code}) before its live frame"
        return self

    async def _read(self) -> None:
        assert self.conn is not None
        try:
            async for raw in self.conn:
                now = time.monotonic()
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "event":
                    self.events.append({k: v for k, v in frame.items() if k != "type"})
                    self.arrived.setdefault(frame["id"], now)
                elif kind == "live":
                    self.lives.append((len(self.events), frame))
                elif kind != "location":
                    self.other.append(frame)
        except websockets.ConnectionClosed:
            pass
        self.close_code = self.conn.close_code  # None: closed without a close frame
        self.closed = True

    async def close(self, *, abort: bool = False) -> None:
        if self.conn is not None:
            if abort:
                self.conn.transport.abort()
            await self.conn.close()
        if self._task is not None:
            await self._task

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def reaches(self, last: int, seconds: float = 15) -> float:
        """Wait until the last key received is ``last``; returns how long it took."""
        return await eventually(lambda: self.last >= last, seconds,
                                lambda: f"{self} still short of {self.key}={last}")  # fmt: skip

    def check(self, expected: list[Frame]) -> None:
        """Received exactly ``expected`` (whole events: seq/pos as committed), once, in order."""
        got = [e["id"] for e in self.events]
        want = [e["id"] for e in expected]
        if got != want:
            counts = Counter(got)
            at = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w),
                      min(len(got), len(want)))  # fmt: skip
            pytest.fail(
                f"{self}: got {len(got)} events, want {len(want)}; "
                f"repeated {sum(n > 1 for n in counts.values())}, "
                f"missing {len(set(want) - set(got))}, extra {len(set(got) - set(want))}; "
                f"first difference at #{at}: keys got "
                f"{[e[self.key] for e in self.events[max(0, at - 2) : at + 3]]} want "
                f"{[e[self.key] for e in expected[max(0, at - 2) : at + 3]]}"
            )
        assert self.events == expected, f"{self}: an event differs from the committed one"
        assert not self.other, f"{self}: unexpected frames {self.other[:3]}"
        assert len(self.lives) == 1, f"{self}: live frames {self.lives}"
        before, frame = self.lives[0]
        at_live = int(self.events[before - 1][self.key]) if before else self.since
        assert frame[self.key] == at_live, f"{self}: {frame} after {self.key}={at_live}"


def feed_of(sub: Sub, log: Log, inboxes: dict[str, set[str] | None]) -> list[Frame]:
    """What ``sub`` must receive: its stream by seq, or (an inbox) the events of the streams
    ``inboxes[sub.name]`` (None: every stream) by pos."""
    if sub.key == "seq":
        return log.stream(sub.path.rsplit("/", 1)[1])
    return log.by_pos(inboxes[sub.name])


def expect_all(subs: list[Sub], log: Log, inboxes: dict[str, set[str] | None]) -> None:
    """Every subscriber received exactly its feed (see :func:`feed_of`)."""
    for sub in subs:
        sub.check(feed_of(sub, log, inboxes))


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return f"p50 {q[49]:6.1f} ms  p95 {q[94]:6.1f} ms  max {ms[-1]:6.1f} ms  (n={len(ms)})"


async def store_stream(c: httpx.AsyncClient, stream_id: str) -> list[Frame]:
    """The stream as the store holds it (GET, platform)."""
    r = await c.get(f"/api/streams/{stream_id}", params={"limit": 10_000}, headers=PLATFORM)
    assert r.status_code == 200, r.text
    events: list[Frame] = r.json()["events"]
    return events


async def settle(
    subs: list[Sub], log: Log, inboxes: dict[str, set[str] | None], seconds: float = 15
) -> None:
    """Wait until every subscriber got to the end of its feed, then a little more for strays."""
    for sub in subs:
        await sub.reaches(feed_of(sub, log, inboxes)[-1][sub.key], seconds)
    await asyncio.sleep(0.3)


def channels_of(pair: Pair) -> tuple[dict[str, int], dict[str, int]]:
    """(plain channels, shard channels) named hub:* on the server, with subscriber counts."""
    out: list[dict[str, int]] = []
    for kind in ("", "SHARD"):
        names = pair.redis.command("PUBSUB", f"{kind}CHANNELS", "hub:*")
        assert isinstance(names, list)
        counts: dict[str, int] = {}
        if names:
            reply = pair.redis.command("PUBSUB", f"{kind}NUMSUB", *names)
            assert isinstance(reply, list | dict)
            items = list(reply.items()) if isinstance(reply, dict) else list(
                zip(reply[::2], reply[1::2], strict=True))  # fmt: skip
            counts = {n.decode(): int(c) for n, c in items}
        out.append(counts)
    return out[0], out[1]


def expected_channels(
    pair: Pair, channels: dict[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """What :func:`channels_of` shows when ``channels`` are subscribed (hub:ctl by both hubs;
    stream and inbox channels as shard channels in sharded mode)."""
    ctl = {"hub:ctl": 2}
    return ({**ctl}, channels) if pair.sharded else ({**ctl, **channels}, {})


async def channels_become(pair: Pair, channels: dict[str, int], seconds: float = 5) -> None:
    want = expected_channels(pair, channels)
    await eventually(lambda: channels_of(pair) == want, seconds,
                     lambda: f"subscribed {channels_of(pair)}, want {want}")  # fmt: skip


# -- 1: cross-instance delivery and latency ----------------------------------------------------


async def test_events_reach_every_subscriber_on_the_other_instance(pair: Pair) -> None:
    """Events written on A (some on B) reach B's stream and inbox sockets once, in order, fast."""
    sid = new_sid()
    log = Log()
    inboxes: dict[str, set[str] | None] = {"kitchen@B": None, "platform@B": None, "ali@B": None}
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        await log.append(ca, sid, [order("ali")])
        subs = [
            await stack.enter_async_context(Sub(name, hub, path, headers))
            for name, hub, path, headers in (
                ("stream@B", pair.b, f"/ws/streams/{sid}", auth("ali", "customer")),
                ("kitchen@B", pair.b, "/ws/inbox", KITCHEN),
                ("platform@B", pair.b, "/ws/inbox", PLATFORM),
                ("ali@B", pair.b, "/ws/inbox", auth("ali", "customer")),
                ("stream@A", pair.a, f"/ws/streams/{sid}", PLATFORM),  # baseline: local
            )
        ]
        for i in range(60):
            await log.append(cb if i % 5 == 4 else ca, sid, [note(i)])
            await asyncio.sleep(0.02)
        await settle(subs, log, inboxes)

    expect_all(subs, log, inboxes)
    assert [e["seq"] for e in subs[0].events] == list(range(1, 62))
    mode = "sharded" if pair.sharded else "pubsub"
    written_on_a = [e for i, e in enumerate(log.stream(sid)[1:]) if i % 5 != 4]
    for sub in subs:
        lat = [sub.arrived[e["id"]] - log.sent[e["id"]] for e in written_on_a]
        print(f"latency {mode:7} written on A -> {sub.name:10}: {percentiles(lat)}")
        assert statistics.median(lat) < timeout(0.1), (sub, percentiles(lat))
        assert max(lat) < timeout(1.0), (sub, percentiles(lat))


# -- 2: concurrent writers on two instances ----------------------------------------------------


async def test_writers_on_both_instances_keep_seq_gap_free_and_feeds_exact(
    pair: Pair, rng: random.Random
) -> None:
    """8 writers on two instances: seq stays 1..n; every feed on A and B exact, once, in order."""
    sids = {"ali": new_sid(), "mona": new_sid()}
    log = Log()
    inboxes: dict[str, set[str] | None] = {}
    for at in "AB":
        inboxes |= {f"kitchen@{at}": None, f"platform@{at}": None, f"ali@{at}": {sids["ali"]}}
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        for customer, sid in sids.items():
            await log.append(ca, sid, [order(customer)])
        subs: list[Sub] = []
        for at, hub in (("A", pair.a), ("B", pair.b)):
            for name, path, headers in (
                ("ali-stream", f"/ws/streams/{sids['ali']}", auth("ali", "customer")),
                ("mona-stream", f"/ws/streams/{sids['mona']}", PLATFORM),
                ("kitchen", "/ws/inbox", KITCHEN),
                ("platform", "/ws/inbox", PLATFORM),
                ("ali", "/ws/inbox", auth("ali", "customer")),
            ):
                subs.append(
                    await stack.enter_async_context(Sub(f"{name}@{at}", hub, path, headers))
                )

        async def writer(c: httpx.AsyncClient, w: str) -> None:
            for i in range(50):
                await log.append(c, rng.choice(list(sids.values())), [note(i, w=w)])
                await asyncio.sleep(rng.uniform(0, 0.005))

        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(
            *(writer(ca, f"a{k}") for k in range(4)), *(writer(cb, f"b{k}") for k in range(4))
        ), timeout(60))  # fmt: skip
        took = time.monotonic() - t0
        stored = {sid: await store_stream(ca, sid) for sid in sids.values()}
        await settle(subs, log, inboxes)

    print(f"400 events from 8 writers on 2 instances in {took:.2f}s")
    assert len(log.events) == 402
    for sid, events in stored.items():
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), sid
        assert events == log.stream(sid), f"{sid}: store and acknowledgements differ"
    positions = [e["pos"] for e in log.events.values()]
    assert len(set(positions)) == len(positions)
    expect_all(subs, log, inboxes)


# -- 3: Redis outage ---------------------------------------------------------------------------


async def test_redis_outage_degrades_then_backfills(pair: Pair) -> None:
    """Redis down: A writes, B degraded; Redis back: B backfilled once, in order, ok again."""
    sid = new_sid()
    log = Log()
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        await log.append(ca, sid, [order("ali")])
        on_b = [
            await stack.enter_async_context(Sub(name, pair.b, path, headers))
            for name, path, headers in (
                ("stream@B", f"/ws/streams/{sid}", auth("ali", "customer")),
                ("kitchen@B", "/ws/inbox", KITCHEN),
                ("platform@B", "/ws/inbox", PLATFORM),
            )
        ]
        on_a = [
            await stack.enter_async_context(Sub(name, pair.a, path, headers))
            for name, path, headers in (
                ("stream@A", f"/ws/streams/{sid}", auth("ali", "customer")),
                ("kitchen@A", "/ws/inbox", KITCHEN),
            )
        ]
        subs = on_b + on_a
        inboxes: dict[str, set[str] | None] = {"kitchen@B": None, "platform@B": None,
                                               "kitchen@A": None}  # fmt: skip
        for i in range(5):
            await log.append(ca, sid, [note(i)])
        await settle(subs, log, inboxes)
        before = await metrics(cb)

        pair.redis.stop()
        for c in (cb, ca):
            status, body = await health_becomes(c, lambda got: got[1]["status"] == "degraded", 10)
            assert status == 200, body
            assert body["checks"]["streams_db"] == "ok", body
            assert body["checks"]["broker"].startswith("failing"), body
        seen_by_b = [sub.last for sub in on_b]
        during = [e["id"] for i in range(5, 25) for e in await log.append(ca, sid, [note(i)])]
        await settle(on_a, log, inboxes, 2)  # writes go on; A's own subscribers stay live
        assert [sub.last for sub in on_b] == seen_by_b, "B got events while Redis was down?"

        pair.redis.start()
        t0 = time.monotonic()
        await settle(on_b, log, inboxes, 30)
        recovered = time.monotonic() - t0
        for c in (cb, ca):
            await health_becomes(c, is_ok, 15)
        after = await metrics(cb)

        for i in range(25, 30):  # live delivery across instances is back
            await log.append(ca, sid, [note(i)])
        t1 = time.monotonic()
        await settle(subs, log, inboxes)
        relinked = time.monotonic() - t1 - 0.3

    local = [on_a[0].arrived[i] - log.sent[i] for i in during]
    print(f"outage: A's own stream subscriber {percentiles(local)}; B had all 20 missed events "
          f"{recovered:.2f}s after redis-server restarted; 5 events written on A once both "
          f"hubs said ok reached B in {relinked * 1000:.0f} ms")  # fmt: skip
    expect_all(subs, log, inboxes)
    reconnects = after["hub_redis_reconnects_total"] - before["hub_redis_reconnects_total"]
    backfilled = after["hub_backfilled_events_total"] - before["hub_backfilled_events_total"]
    assert reconnects >= 1, after
    assert backfilled > 0, after
    print(f"B metrics: reconnects +{reconnects:.0f}, backfilled events +{backfilled:.0f}")


# -- 4: pub/sub connections killed under load --------------------------------------------------


async def test_killed_pubsub_connections_lose_and_repeat_nothing(
    pair: Pair, rng: random.Random
) -> None:
    """CLIENT KILL TYPE pubsub again and again under load: no event lost or repeated anywhere."""
    sid = new_sid()
    log = Log()
    inboxes: dict[str, set[str] | None] = {f"{n}@{at}": None for n in ("kitchen", "platform")
                                           for at in "AB"}  # fmt: skip
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        await log.append(ca, sid, [order("ali")])
        subs: list[Sub] = []
        for at, hub in (("A", pair.a), ("B", pair.b)):
            for name, path, headers in (
                ("stream", f"/ws/streams/{sid}", auth("ali", "customer")),
                ("kitchen", "/ws/inbox", KITCHEN),
                ("platform", "/ws/inbox", PLATFORM),
            ):
                subs.append(
                    await stack.enter_async_context(Sub(f"{name}@{at}", hub, path, headers))
                )
        before = [await metrics(c) for c in (ca, cb)]
        writing = True
        kills: list[int] = []

        async def writer(c: httpx.AsyncClient, w: str) -> None:
            for i in range(150):
                await log.append(c, sid, [note(i, w=w)])
                await asyncio.sleep(rng.uniform(0, 0.01))

        async def killer() -> None:
            while writing:
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                killed = await asyncio.to_thread(
                    pair.redis.command, "CLIENT", "KILL", "TYPE", "pubsub"
                )
                assert isinstance(killed, int)
                kills.append(killed)

        kill_task = asyncio.create_task(killer())
        try:
            await asyncio.wait_for(asyncio.gather(
                writer(ca, "a0"), writer(ca, "a1"), writer(cb, "b0"), writer(cb, "b1")
            ), timeout(60))  # fmt: skip
        finally:
            writing = False
            await kill_task
        await settle(subs, log, inboxes, 30)
        after = [await metrics(c) for c in (ca, cb)]

    print(f"CLIENT KILL TYPE pubsub {len(kills)} times, killed {sum(kills)} connections")
    assert sum(k > 0 for k in kills) >= 3, kills
    expect_all(subs, log, inboxes)
    for m0, m1 in zip(before, after, strict=True):
        assert m1["hub_redis_reconnects_total"] > m0["hub_redis_reconnects_total"], m1


# -- 5: subscriptions follow local subscribers -------------------------------------------------


async def test_instance_subscribes_only_while_it_has_local_subscribers(pair: Pair) -> None:
    """An instance holds a stream/inbox channel only while it has a local socket; hub:ctl always."""
    sid = new_sid()
    stream, inbox, everything = f"hub:stream:{sid}", f"hub:inbox:{RESTAURANT}", "hub:inbox:*"

    def subscribed() -> tuple[dict[str, int], dict[str, int]]:
        return channels_of(pair)

    def expected(channels: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        return expected_channels(pair, channels)

    async def becomes(channels: dict[str, int]) -> None:
        await channels_become(pair, channels)

    async with http(pair.a) as ca:
        r = await ca.post(f"/api/streams/{sid}/events", json=order("ali"), headers=PLATFORM)
        assert r.status_code == 201, r.text
    assert subscribed() == expected({})
    ali = auth("ali", "customer")
    async with AsyncExitStack() as stack:

        async def sub(name: str, hub: HubProcess, path: str, headers: dict[str, str]) -> Sub:
            return await stack.enter_async_context(Sub(name, hub, path, headers))

        s1 = await sub("s1@A", pair.a, f"/ws/streams/{sid}", ali)
        # The subscription is live before the replay: no polling needed.
        assert subscribed() == expected({stream: 1})
        s2 = await sub("s2@A", pair.a, f"/ws/streams/{sid}", PLATFORM)
        assert subscribed() == expected({stream: 1}), "one subscription per instance"
        s3 = await sub("s3@B", pair.b, f"/ws/streams/{sid}", ali)
        k1 = await sub("kitchen@B", pair.b, "/ws/inbox", KITCHEN)
        p1 = await sub("platform@A", pair.a, "/ws/inbox", PLATFORM)
        assert subscribed() == expected({stream: 2, inbox: 1, everything: 1})

        await s1.close()
        await asyncio.sleep(0.3)
        assert subscribed() == expected({stream: 2, inbox: 1, everything: 1}), "s2 is still on A"
        await s2.close(abort=True)  # a dead connection counts as leaving too
        await becomes({stream: 1, inbox: 1, everything: 1})
        await s3.close()
        await becomes({inbox: 1, everything: 1})
        await k1.close(abort=True)
        await p1.close()
        await becomes({})
        s4 = await sub("s4@B", pair.b, f"/ws/streams/{sid}", ali)
        assert subscribed() == expected({stream: 1}), "subscribes again after the last left"
        await s4.close()
        await becomes({})


# -- 6: resume on another instance -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stream", "inbox"])
async def test_resume_on_the_other_instance_exactly_once(
    pair: Pair, kind: str, rng: random.Random
) -> None:
    """Hopping between A and B with since = last seq/pos gets every event once, in order."""
    sid = new_sid()
    log = Log()
    key = "seq" if kind == "stream" else "pos"
    path = f"/ws/streams/{sid}" if kind == "stream" else "/ws/inbox"
    headers = auth("ali", "customer") if kind == "stream" else KITCHEN
    total = 120
    got: list[Frame] = []
    connections = 0

    async with http(pair.a) as ca, http(pair.b) as cb:
        await log.append(ca, sid, [order("ali")])
        await log.append(ca, sid, [note(i) for i in range(10)])
        done = asyncio.Event()

        async def writer() -> None:
            for i in range(10, total):
                await log.append(rng.choice((ca, cb)), sid, [note(i)])
                await asyncio.sleep(rng.uniform(0, 0.02))
            done.set()

        def final() -> int:
            return int(log.stream(sid)[-1][key])

        async def visit(hub: HubProcess, number: int, since: int) -> list[Frame]:
            """One connection: replay from ``since``, read a few live events, leave."""
            sub = Sub(f"{kind}#{number}", hub, path, headers, since=since)
            async with sub:
                budget = len(sub.events) + rng.randint(5, 20)
                await eventually(
                    lambda: len(sub.events) >= budget or (done.is_set() and sub.last >= final()),
                    15,
                    lambda: f"{sub} stuck",
                )
                await sub.close(abort=rng.random() < 0.5)
            before, frame = sub.lives[0]
            at_live = sub.events[before - 1][key] if before else since
            assert frame[key] == at_live, (sub, frame)
            assert not sub.other, sub.other
            return sub.events  # all of it counts: the client chose to leave

        async def hopper() -> None:
            nonlocal connections
            while not (done.is_set() and got and got[-1][key] >= final()):
                hub = (pair.a, pair.b)[connections % 2]
                connections += 1
                got.extend(await visit(hub, connections, int(got[-1][key]) if got else 0))

        await asyncio.wait_for(asyncio.gather(writer(), hopper()), timeout(60))

    expected = log.stream(sid)  # the kitchen is a member from seq 1: its inbox is the stream
    assert [e[key] for e in got] == [e[key] for e in expected]
    assert got == expected
    assert connections >= 6, connections


# -- 7: subscriptions that change while an instance re-subscribes ------------------------------


async def test_sockets_opened_or_closed_while_resubscribing_keep_their_channels(pair: Pair) -> None:
    """Sockets opened/closed while B re-subscribes get/drop their channel; A's events reach B."""
    fresh_sid, gone_sid = new_sid(), new_sid()
    log = Log()
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        for sid in (fresh_sid, gone_sid):
            await log.append(ca, sid, [order("ali")])
        gone = await stack.enter_async_context(
            Sub("gone@B", pair.b, f"/ws/streams/{gone_sid}", PLATFORM)
        )
        # Drop the hubs' pub/sub connections, then hold their re-subscription (CLIENT PAUSE
        # delays every command, so the new session stays between connect and confirmation).
        assert pair.redis.command("CLIENT", "KILL", "TYPE", "pubsub") == 2
        assert pair.redis.command("CLIENT", "PAUSE", int(timeout(4) * 1000), "ALL") == b"OK"
        # B is re-subscribing (polled: a loaded machine may take a moment to see the kill).
        await health_becomes(cb, lambda got: got[1]["status"] == "degraded", 3)
        fresh = await stack.enter_async_context(
            Sub("fresh@B", pair.b, f"/ws/streams/{fresh_sid}", PLATFORM)
        )
        await gone.close()
        await health_becomes(cb, lambda got: got[1]["status"] == "ok", 10)

        for i in range(5):
            await log.append(ca, fresh_sid, [note(i)])
        await eventually(
            lambda: fresh.last >= 6, 3,
            lambda: f"{fresh} got nothing written on A after B re-subscribed; on Redis: "
                    f"{channels_of(pair)} (fresh {fresh_sid}, gone {gone_sid})",
        )  # fmt: skip
        await asyncio.sleep(0.3)
        fresh.check(log.stream(fresh_sid))
        await channels_become(pair, {f"hub:stream:{fresh_sid}": 1})


# -- 8: a publisher whose outbox overflowed --------------------------------------------------


async def test_outbox_overflow_makes_the_other_instance_backfill(pair: Pair) -> None:
    """A's overflowing outbox (Redis holding publishes) ends in a resync: B's feeds still exact."""
    quiet, flood, first = new_sid(), new_sid(), new_sid()
    log = Log()
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        await log.append(ca, quiet, [order("ali")])  # bab-hara's only stream
        await log.append(ca, flood, [order("mona", "zaatar-house")])
        await log.append(ca, first, [order("omar", "zaatar-house")])
        subs = [
            await stack.enter_async_context(Sub(name, pair.b, path, headers))
            for name, path, headers in (
                ("quiet@B", f"/ws/streams/{quiet}", PLATFORM),
                ("kitchen@B", "/ws/inbox", KITCHEN),
                ("flood@B", f"/ws/streams/{flood}", PLATFORM),
            )
        ]
        before = await metrics(cb)
        assert pair.redis.command("CLIENT", "PAUSE", int(timeout(60) * 1000), "WRITE") == b"OK"
        try:
            await log.append(ca, first, [note(0)])  # the publisher's batch now waits on Redis
            await asyncio.sleep(0.1)
            await log.append(ca, quiet, [note(i) for i in range(5)])  # oldest: dropped
            for k in range(60):  # 6,000 events, 4 messages each (stream, 2 members, platform)
                await log.append(ca, flood, [note(100 * k + i) for i in range(100)])
        finally:
            assert pair.redis.command("CLIENT", "UNPAUSE") == b"OK"
        t0 = time.monotonic()
        await settle(subs, log, {"kitchen@B": {quiet}}, 30)
        took = time.monotonic() - t0
        after = await metrics(cb)

    print(f"overflow: B complete {took:.2f}s after Redis let A publish again")
    expect_all(subs, log, {"kitchen@B": {quiet}})
    assert after["hub_redis_reconnects_total"] == before["hub_redis_reconnects_total"], after
    assert after["hub_backfilled_events_total"] > before["hub_backfilled_events_total"], after


# -- 9: archiving on one instance ends subscriptions on the other ------------------------------


def kill_pubsub_of(pair: Pair, channel: str) -> None:
    """Drop the one pub/sub connection subscribed to ``channel`` besides hub:ctl."""
    listing = pair.redis.command("CLIENT", "LIST", "TYPE", "pubsub")
    assert isinstance(listing, bytes | str)
    text = listing.decode() if isinstance(listing, bytes) else listing
    clients = [dict(f.split("=", 1) for f in line.split()) for line in text.splitlines()]
    ours = [c["id"] for c in clients if int(c["sub"]) + int(c.get("ssub", 0)) > 1]
    assert len(ours) == 1, (channel, text)
    assert pair.redis.command("CLIENT", "KILL", "ID", ours[0]) == 1


@pytest.mark.parametrize("dropped", [False, True], ids=["linked", "b-dropped"])
async def test_archiving_on_one_instance_ends_subscriptions_on_the_other(
    pair: Pair, dropped: bool
) -> None:
    """Archived on A: B's socket gets the events, archived, 1000, even if its link dropped."""
    sid = new_sid()
    log = Log()
    async with http(pair.a) as ca, AsyncExitStack() as stack:
        await log.append(ca, sid, [order("ali")])
        await log.append(ca, sid, [note(i) for i in range(5)])
        sub = await stack.enter_async_context(
            Sub("stream@B", pair.b, f"/ws/streams/{sid}", auth("ali", "customer"))
        )
        await sub.reaches(6)
        if dropped:  # B reconnects after >= 100 ms and resyncs: the notice itself is lost
            kill_pubsub_of(pair, f"hub:stream:{sid}")
        r = await ca.post(f"/api/streams/{sid}/archive", headers=PLATFORM)
        assert r.status_code == 200, r.text
        await eventually(
            lambda: sub.closed, 10,
            lambda: f"{sub} still open after the stream was archived on A; frames {sub.other}",
        )  # fmt: skip

    assert sub.events == log.stream(sid)
    assert sub.other == [{"type": "archived", "streamId": sid}], sub.other
    assert sub.close_code == 1000, sub.close_code


# -- 10: a publisher that Redis refuses ----------------------------------------------------------


async def test_refused_publishes_show_in_healthz(pair: Pair) -> None:
    """Publishes refused by Redis (an ACL) make A's /healthz degraded, broker failing."""
    sid = new_sid()
    log = Log()
    async with http(pair.a) as ca, AsyncExitStack() as stack:
        await log.append(ca, sid, [order("ali")])
        sub = await stack.enter_async_context(
            Sub("stream@B", pair.b, f"/ws/streams/{sid}", PLATFORM)
        )
        assert pair.redis.command("ACL", "SETUSER", "default", "-publish", "-spublish") == b"OK"
        await log.append(ca, sid, [note(0)])  # committed: 201
        status, body = await health_becomes(ca, lambda got: got[1]["status"] != "ok", 5)
        assert status == 200, body
        assert body["checks"]["broker"].startswith("failing"), body
        assert sub.last == 1, "the refused publish cannot have reached B"


@pytest.mark.parametrize("pair", [False], ids=["pubsub"], indirect=True)
async def test_publishing_resumes_promptly_once_redis_is_back(pair: Pair) -> None:
    """After long refused publishes and a Redis restart, A's events reach B within 1 s of ok."""
    sid = new_sid()
    log = Log()

    def rejected() -> int:
        info = pair.redis.command("INFO", "commandstats")
        assert isinstance(info, dict)
        return int(info.get("cmdstat_publish", {}).get("rejected_calls", 0))

    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        await log.append(ca, sid, [order("ali")])
        sub = await stack.enter_async_context(
            Sub("stream@B", pair.b, f"/ws/streams/{sid}", PLATFORM)
        )
        assert pair.redis.command("ACL", "SETUSER", "default", "-publish") == b"OK"
        await log.append(ca, sid, [note(0)])
        # Wait for an attempt refused 7 s or more in: the publisher's backoff is then >= 3.2 s.
        start, seen = time.monotonic(), rejected()
        while (now := rejected()) == seen or time.monotonic() - start < 7:
            seen = now
            assert time.monotonic() - start < timeout(30), "the publisher stopped retrying"
            await asyncio.sleep(0.02)
        pair.redis.stop()
        pair.redis.start()  # a short outage; the restarted server has its default ACL again
        for c in (ca, cb):
            await health_becomes(c, is_ok, 10)
        t0 = time.monotonic()
        await log.append(ca, sid, [note(1)])
        await sub.reaches(3, 15)
        lag = time.monotonic() - t0

    print(f"after refused publishes and a restart, A -> B took {lag * 1000:.0f} ms")
    assert lag < timeout(1.0), f"A's publisher slept {lag:.1f}s after Redis was back"


# -- a subscription Redis takes late ------------------------------------------------------------


class HoldingProxy:
    """A TCP proxy in front of Redis that can hold back what the hub sends (not what Redis
    sends): a SUBSCRIBE held there reaches Redis after publishes made meanwhile."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.passing = asyncio.Event()
        self.passing.set()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()  # both sides of every connection

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, held: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                if held:
                    await self.passing.wait()
                w.write(data)
                await w.drain()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {w, uw}
        pumps = [asyncio.create_task(self._pump(r, uw, True)),
                 asyncio.create_task(self._pump(ur, w, False))]  # fmt: skip
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (w, uw):
                self.writers.discard(writer)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def close(self) -> None:
        """Stop listening and end every proxied connection."""
        assert self.server is not None
        self.server.close()
        for writer in tuple(self.writers):
            writer.close()
        await eventually(lambda: not self.writers, 5, lambda: "proxied connections stay open")
        await self.server.wait_closed()


async def test_a_subscription_redis_takes_late_still_gets_what_was_published_before(
    redis_server: RedisServer, hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """B's SUBSCRIBE reaches Redis only after A published an event (B waited past its 2 s
    confirmation timeout and went live meanwhile): the late confirmation makes B read the
    event from the store, so the subscriber still gets it, once."""
    proxy = HoldingProxy(redis_server.port)
    proxy_port = await proxy.start()
    try:
        a = hub_factory(tmp_path / "data", {"HUB_REDIS_URL": redis_server.url})
        b = hub_factory(tmp_path / "data", {"HUB_REDIS_URL": f"redis://127.0.0.1:{proxy_port}"})
        for hub in (a, b):
            async with http(hub) as c:
                await health_becomes(c, is_ok, 10)
        sid = new_sid("late")
        log = Log()
        async with http(a) as ca:
            await log.append(ca, sid, [order("ali")])
            proxy.passing.clear()  # B's SUBSCRIBE waits in the proxy
            async with Sub("stream@B", b, f"/ws/streams/{sid}", PLATFORM) as sub:
                await log.append(ca, sid, [note(1)])  # published while B is not subscribed
                await asyncio.sleep(0.3)
                proxy.passing.set()
                await eventually(lambda: len(sub.events) == 2, 5,
                                 lambda: f"B got {[e['seq'] for e in sub.events]}")  # fmt: skip
                await asyncio.sleep(0.3)
        assert [e["seq"] for e in sub.events] == [1, 2]
        b.stop()  # before its Redis goes away
    finally:
        await proxy.close()
