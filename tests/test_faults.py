"""Faults under load (docs/protocol.md §3, §5 "The guarantee"; issue 6): real hub processes killed,
stopped, cut off from Redis, locked out of their streams DB and from their archive while
clients write and read.

Each test asserts that every acknowledged event is stored once and reaches every subscriber
exactly once, in order, and that every database ends consistent (``seq`` 1..n per stream,
stock and driver state as the order's steps left them). A crash between the databases of one
order step is covered by tests/test_orders.py ("a crash between databases").

Each test prints one line ``FAULT-FIGURES {json}`` (``pytest -s`` or ``-rP`` shows it): events
written, faults injected, events lost, duplicates; docs/reliability.md quotes them. Random
choices come from one seeded RNG per test: ``HUB_TEST_SEED=N`` replays a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from hub.infra.store.file import BUSY_TIMEOUT_S
from tests.conftest import HubProcess, RedisServer, auth, timeout
from tests.test_archive import ACCESS_KEY, AWS_VARS, BUCKET, SECRET_KEY, seaweed_server
from tests.test_orders import (
    DEST,
    check_seed_table,
    driver_point,
    position,
    rows,
    run_seed,
    stock,
    subscribe,
    tenant_db,
    until,
)
from tests.test_orders import advance as advance_order
from tests.test_orders import place as place_order
from tests.test_orders import stream as get_stream
from tests.test_redis import (
    Log,
    Sub,
    expect_all,
    feed_of,
    health_becomes,
    health_of,
    http,
    is_ok,
    metrics,
    note,
    order,
    settle,
    store_stream,
)

Frame = dict[str, Any]

PLATFORM = auth("ops", "platform")
ALI = auth("ali", "customer")
KITCHEN = auth("bab-hara", "restaurant")
RAMI = auth("rami", "driver")
SHUTDOWN_CODES = {1001, 1012}  # docs/protocol.md §5: the hub is shutting down, reconnect
GRACEFUL_TIMEOUT = 5.0  # HubProcess runs ``hub serve --graceful-timeout 5``
BUSY_TIMEOUT = BUSY_TIMEOUT_S  # how long an append waits for another process's write lock


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("HUB_TEST_SEED") or random.randrange(1 << 32))
    print(f"HUB_TEST_SEED={seed}")
    return random.Random(seed)


@pytest.fixture
def hubs() -> Iterator[list[HubProcess]]:
    """Hubs started by a test (see :func:`launch`); those still running are stopped (SIGTERM,
    clean-log check) at the end."""
    started: list[HubProcess] = []
    yield started
    for hub in started:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.stop()


def launch(hubs: list[HubProcess], data: Path, env: dict[str, str] | None = None,
           *, port: int | None = None) -> HubProcess:  # fmt: skip
    """Start a hub on ``data`` (on ``port``: a restart at the same address clients use)."""
    hub = HubProcess(data, env)
    if port is not None:
        hub.port = port
        hub.log_path = data / f"hub-{port}.log"
    hubs.append(hub)
    return hub.start()


def relaunch(hubs: list[HubProcess], hub: HubProcess) -> HubProcess:
    """The same hub again: same data dir, environment and port."""
    return launch(hubs, hub.data_dir, hub.extra_env, port=hub.port)


def figures(test: str, **values: Any) -> None:
    """The parseable line docs/reliability.md quotes."""
    print("FAULT-FIGURES " + json.dumps({"test": test, **values}, sort_keys=True))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def db_rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the streams DB directly (read-only), as a seed-style SQL reader would."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, args).fetchall()


def check_log(db: Path) -> dict[str, tuple[str, int, int]]:
    """Assert the streams DB is consistent; returns {event id: (streamId, seq, pos)}.

    Every live stream's events have ``seq`` 1..lastSeq with no gap, ``pos`` grows with
    ``seq``, every event belongs to a stream row, every member joined at an event that exists.
    """
    events = db_rows(db, "SELECT id, streamId, seq, pos FROM events ORDER BY streamId, seq")
    streams = dict(db_rows(db, "SELECT streamId, lastSeq FROM streams WHERE archived = 0"))
    by_stream: dict[str, list[tuple[int, int]]] = {}
    for _, sid, seq, pos in events:
        by_stream.setdefault(sid, []).append((seq, pos))
    assert set(by_stream) <= set(streams), set(by_stream) - set(streams)
    for sid, last in streams.items():
        got = by_stream.get(sid, [])
        assert [s for s, _ in got] == list(range(1, last + 1)), f"{sid}: seq not 1..{last}"
        positions = [p for _, p in got]
        assert positions == sorted(set(positions)), f"{sid}: pos does not grow with seq"
    dangling = db_rows(db, "SELECT m.streamId, m.tenant FROM members m JOIN streams s"
                           " USING (streamId) WHERE s.archived = 0 AND NOT EXISTS (SELECT 1"
                           " FROM events e WHERE e.pos = m.fromPos AND e.seq = m.fromSeq"
                           " AND e.streamId = m.streamId)")  # fmt: skip
    assert not dangling, f"members joined at no stored event: {dangling}"
    return {i: (sid, seq, pos) for i, sid, seq, pos in events}


def feed_ids(db: Path, *, stream: str | None = None, tenant: str | None = None) -> list[str]:
    """What a subscriber must have received, from the streams DB: a stream by ``seq``; an
    inbox (``tenant``; None: the platform's) by ``pos`` from the event that made it a member."""
    if stream is not None:
        got = db_rows(db, "SELECT id FROM events WHERE streamId = ? ORDER BY seq", stream)
    elif tenant is None:
        got = db_rows(db, "SELECT id FROM events ORDER BY pos")
    else:
        got = db_rows(db, "SELECT e.id FROM members m JOIN events e ON e.streamId = m.streamId"
                          " AND e.pos >= m.fromPos WHERE m.tenant = ? ORDER BY e.pos", tenant)
    return [r[0] for r in got]


async def stored_events(c: httpx.AsyncClient, stream_ids: list[str]) -> dict[str, Frame]:
    """{event id: event} as the hub serves them (GET /api/streams, platform)."""
    out: dict[str, Frame] = {}
    for sid in stream_ids:
        r = await c.get(f"/api/streams/{sid}", params={"limit": 10_000}, headers=PLATFORM)
        assert r.status_code == 200, r.text
        out.update((e["id"], e) for e in r.json()["events"])
    return out


class Follower:
    """A subscriber that reconnects after every drop with ``since`` = the last seq/pos it saw,
    recording every event frame (nothing deduplicated), live frames and close codes."""

    def __init__(self, name: str, hub: HubProcess, path: str, headers: dict[str, str]) -> None:
        self.name, self.path, self.headers = name, path, headers
        self.ws_url = hub.ws_url  # restarts keep the port
        self.key = "seq" if path.startswith("/ws/streams/") else "pos"
        self.events: list[Frame] = []
        self.lives: list[tuple[int, Frame]] = []  # (events received before it, the frame)
        self.codes: list[int] = []  # close code of each connection the hub ended (1006: none)
        self.other: list[Frame] = []
        self.locations = 0
        self.connections = 0
        self.conn: ClientConnection | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<{self.name} {self.key}={self.last} n={len(self.events)} codes={self.codes}>"

    @property
    def last(self) -> int:
        return int(self.events[-1][self.key]) if self.events else 0

    async def start(self) -> Follower:
        self._task = asyncio.create_task(self._run(), name=f"follower-{self.name}")
        await until(lambda: self.lives or self._task is None or self._task.done(), 10,
                    f"{self.name}: a live frame")  # fmt: skip
        return self

    async def _run(self) -> None:
        while not self._stopping:
            try:
                async with connect(
                    f"{self.ws_url}{self.path}?since={self.last}", additional_headers=self.headers,
                    compression=None, proxy=None, open_timeout=timeout(5),
                    close_timeout=timeout(2),
                ) as conn:  # fmt: skip
                    self.conn = conn
                    self.connections += 1
                    with contextlib.suppress(websockets.ConnectionClosed):
                        async for raw in conn:
                            self._take(json.loads(raw))
                    if not self._stopping:
                        self.codes.append(conn.close_code or 1006)
            except (OSError, TimeoutError, EOFError, websockets.WebSocketException):
                pass  # the hub is down or on its way down: try again
            finally:
                self.conn = None
            if any(f.get("type") == "archived" for f in self.other):
                return
            await asyncio.sleep(0.05)

    def _take(self, frame: Frame) -> None:
        kind = frame.get("type")
        if kind == "event":
            self.events.append({k: v for k, v in frame.items() if k != "type"})
        elif kind == "live":
            self.lives.append((len(self.events), frame))
        elif kind == "location":
            self.locations += 1
        else:
            self.other.append(frame)

    async def send(self, frame: Frame) -> bool:
        """Send a frame on the current connection; False when there is none."""
        conn = self.conn
        if conn is None:
            return False
        try:
            await conn.send(json.dumps(frame))
        except websockets.ConnectionClosed:
            return False
        return True

    async def stop(self) -> None:
        self._stopping = True
        if self.conn is not None:
            await self.conn.close()
        if self._task is not None:
            await self._task

    def audit(self, expected: list[Frame]) -> tuple[int, int]:
        """(events lost, duplicates) against ``expected``, the feed in order."""
        got = Counter(e["id"] for e in self.events)
        lost = sum(1 for e in expected if e["id"] not in got)
        return lost, sum(n - 1 for n in got.values())

    def check(self, expected: list[Frame]) -> None:
        """Exactly ``expected``, once each, in order; each live frame at the last key sent."""
        got = [e["id"] for e in self.events]
        want = [e["id"] for e in expected]
        if got != want:
            lost, dup = self.audit(expected)
            at = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w),
                      min(len(got), len(want)))  # fmt: skip
            pytest.fail(f"{self}: got {len(got)} events, want {len(want)}: lost {lost}, "
                        f"duplicates {dup}, first difference at #{at}")  # fmt: skip
        assert self.events == expected, f"{self}: an event differs from the stored one"
        assert not self.other, f"{self}: unexpected frames {self.other[:3]}"
        assert len(self.lives) == self.connections, (self, self.lives)
        for before, frame in self.lives:
            assert frame[self.key] == (int(self.events[before - 1][self.key]) if before else 0), (
                self, frame)  # fmt: skip


@dataclass
class Tally:
    """What writers were told: acknowledged events, and how the faults showed."""

    acked: dict[str, Frame] = field(default_factory=dict)
    requests: int = 0
    transport_errors: int = 0  # no answer: the hub died or refused the connection
    unavailable: int = 0  # 503 answers
    interrupted: int = 0  # batches that needed more than one request
    replayed: int = 0  # retries answered 200: the batch had been committed, unacknowledged
    abandoned: list[list[str]] = field(default_factory=list)  # ids of batches given up on


async def answers(c: httpx.AsyncClient, seconds: float = 30) -> None:
    """Wait until the hub answers /healthz again."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        with contextlib.suppress(httpx.TransportError):
            if (await c.get("/healthz")).status_code == 200:
                return
        assert time.monotonic() < deadline, "the hub never came back"
        await asyncio.sleep(0.05)


async def append_until_acked(c: httpx.AsyncClient, sid: str, drafts: list[Frame], tally: Tally,
                             *, retry: bool = True, resent: bool = False,
                             seconds: float = 60) -> int | None:  # fmt: skip
    """POST a batch until it is acknowledged, retrying the SAME ids and content after a
    dropped connection or a 503 (docs/protocol.md §3: a retry returns the stored events); returns
    the status that acknowledged it (``resent``: an earlier attempt went unanswered). With
    ``retry=False`` a batch that got no answer is given up on (``tally.abandoned``, returns
    None) and the writer waits for the hub to answer again."""
    deadline = time.monotonic() + timeout(seconds)
    failed = resent
    while True:
        tally.requests += 1
        try:
            r = await c.post(f"/api/streams/{sid}/events", json={"events": drafts},
                             headers=PLATFORM)  # fmt: skip
        except httpx.TransportError:
            tally.transport_errors += 1
        else:
            if r.status_code in (200, 201):
                break
            assert r.status_code == 503, (r.status_code, r.text)
            assert r.json()["error"]["code"], r.text
            tally.unavailable += 1
        failed = True
        if not retry:
            tally.abandoned.append([d["id"] for d in drafts])
            await answers(c, seconds)
            return None
        assert time.monotonic() < deadline, f"{sid}: a batch never acknowledged"
        await asyncio.sleep(0.05)
    events: list[Frame] = r.json()["events"]
    assert [e["id"] for e in events] == [d["id"] for d in drafts], r.text
    tally.interrupted += failed
    if r.status_code == 200:  # every id was stored already: only a retry may see that
        assert failed, f"{sid}: fresh ids answered 200"
        tally.replayed += 1
    for e in events:
        assert e["id"] not in tally.acked, f"{e['id']} acknowledged twice"
        tally.acked[e["id"]] = e
    return int(r.status_code)


async def send_unread(hub: HubProcess, sid: str, drafts: list[Frame]) -> asyncio.StreamWriter:
    """POST a batch on a raw connection and never read the answer (close the writer later)."""
    body = json.dumps({"events": drafts}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(
        f"POST /api/streams/{sid}/events HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n"
        f"Authorization: {PLATFORM['authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    return writer


async def step_until_done(c: httpx.AsyncClient, oid: str, name: str, who: dict[str, str],
                          body: Frame, seconds: float = 30) -> int:  # fmt: skip
    """An order step, retried after a dropped connection or a 503 until it answers; a retry
    may find it done (409 already_done). Returns how many attempts failed."""
    deadline = time.monotonic() + timeout(seconds)
    failures = 0
    while True:
        try:
            r = await c.post(f"/api/orders/{oid}/{name}", json=body, headers=who)
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            return failures
        if r is not None and r.status_code == 409 and failures:
            assert r.json()["error"]["code"] == "already_done", r.text
            return failures
        assert r is None or r.status_code == 503, (name, r.status_code, r.text)
        failures += 1
        assert time.monotonic() < deadline, f"{name} never went through"
        await asyncio.sleep(0.05)


# -- 1: SIGKILL under load ---------------------------------------------------------------------

WRITERS, TOTAL, STREAMS = 32, 5_000, 8


async def test_sigkill_mid_load_loses_no_acknowledged_event(
    hubs: list[HubProcess], tmp_path: Path, rng: random.Random
) -> None:
    """SIGKILL amid 5,000 appends and GPS pings: acked events stored once, resumed feeds exact."""
    data = tmp_path / "data"
    run_seed(data)
    hub = launch(hubs, data, {"HUB_ARCHIVE_DELAY": "3600"})  # the order stays in the streams DB
    db = data / "streams.db"
    oid = new_id("ord")
    sids = [new_id(f"load{k}") for k in range(STREAMS)]
    tally = Tally()
    plans: list[list[tuple[str, list[Frame]]]] = []
    for w in range(WRITERS):
        left, plan = TOTAL // WRITERS + (w < TOTAL % WRITERS), []
        while left:
            n = min(left, rng.randint(1, 10))
            left -= n
            drafts = [{"id": f"w{w}-b{len(plan)}-{i}", "opcode": 203, "delta": 1.5,
                       "payload": {"w": w, "b": len(plan), "i": i}} for i in range(n)]  # fmt: skip
            plan.append((rng.choice(sids), drafts))
        plans.append(plan)

    async with http(hub) as c:
        await place_order(c, oid)
        await advance_order(c, oid, "ready")  # assigned: Rami's pings reach the order's sockets
        for k, sid in enumerate(sids):
            create = {"id": f"{sid}.create", "opcode": 501, "payload": {
                "customer": "ali" if k % 2 else "mona", "restaurant": "bab-hara"}}  # fmt: skip
            await append_until_acked(c, sid, [create], tally)
        followers = {
            name: await Follower(name, hub, path, who).start()
            for name, path, who in (
                ("order", f"/ws/streams/{oid}", ALI),
                ("stream", f"/ws/streams/{sids[0]}", PLATFORM),
                ("kitchen", "/ws/inbox", KITCHEN),
                ("driver", "/ws/inbox", RAMI),
                ("platform", "/ws/inbox", PLATFORM),
            )
        }
        pinging = True
        pings = Counter[str]()
        killed: dict[str, Any] = {}

        async def pinger() -> None:
            """Rami moves: alternately POST /api/motion and a location frame, 10 a second."""
            k = 0
            while pinging:
                k += 1
                where = {"lat": 25.2 + k * 1e-4, "lng": 55.3 + k * 1e-4}
                if k % 2:
                    try:
                        r = await c.post("/api/motion", json=where, headers=RAMI)
                        ok = r.status_code == 200 and r.json()["accepted"]
                    except httpx.TransportError:
                        ok = False
                    pings["http" if ok else "http-failed"] += 1
                else:
                    ok = await followers["driver"].send({"type": "location", **where})
                    pings["ws" if ok else "ws-failed"] += 1
                await asyncio.sleep(0.1)

        async def killer() -> HubProcess:
            """Half-way: unread answers and a pickup in flight, then SIGKILL; restart on the
            same port; resend what went unanswered."""
            await until(lambda: len(tally.acked) >= TOTAL // 2, 60, "half the appends acked")
            # Three batches whose answers the kill swallows: sent, committed, never read.
            late = [(rng.choice(sids), [{"id": f"late{j}-{i}", "opcode": 203,
                                         "payload": {"late": j, "i": i}} for i in range(5)])
                    for j in range(3)]  # fmt: skip
            unread = [await send_unread(hub, sid, drafts) for sid, drafts in late]
            await asyncio.sleep(0.3)
            pickup = asyncio.create_task(
                step_until_done(c, oid, "pickup", RAMI, {"confirmedItems": 3})
            )
            await asyncio.sleep(rng.uniform(0, 0.02))
            killed.update(acked=len(tally.acked), locations=followers["order"].locations)
            t0 = time.monotonic()
            await asyncio.to_thread(hub.kill)
            again = await asyncio.to_thread(relaunch, hubs, hub)
            killed["down_s"] = round(time.monotonic() - t0, 2)
            killed["pickup_failures"] = await pickup
            for conn in unread:  # their hub is gone: reset connections
                conn.close()
                with contextlib.suppress(OSError):
                    await conn.wait_closed()
            # Sent again after the restart, same ids: the stored events come back (200).
            killed["late"] = [await append_until_acked(c, sid, drafts, tally, resent=True)
                              for sid, drafts in late]  # fmt: skip
            return again

        async def writer(w: int) -> None:
            """Every 4th writer gives up on a batch that got no answer; the others retry it."""
            for sid, drafts in plans[w]:
                await append_until_acked(c, sid, drafts, tally, retry=w % 4 != 3)

        t0 = time.monotonic()
        ping_task = asyncio.create_task(pinger())
        kill_task = asyncio.create_task(killer())
        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(WRITERS))), timeout(90))
        hub = await asyncio.wait_for(kill_task, timeout(30))
        load_s = time.monotonic() - t0
        # Location frames flowed before the kill and flow again after the restart.
        await until(lambda: followers["order"].locations > killed["locations"] + 2, 10,
                    "location frames after the restart")  # fmt: skip
        pinging = False
        await ping_task
        assert killed["locations"] > 0, "no location frame before the kill"

        # The last ping lands in rami.db (coalesced pings: within 1 s), then Step 10.
        last = {"lat": 25.4, "lng": 55.5}
        r = await c.post("/api/motion", json=last, headers=RAMI)
        assert r.status_code == 200, r.text
        await until(lambda: position(data) == (last["lat"], last["lng"]), 3, "the last ping")
        await step_until_done(c, oid, "deliver", RAMI, DEST)

        order_events = (await get_stream(c, oid))["events"]
        check_seed_table(order_events, oid)
        everything = await stored_events(c, [oid, *sids])
        expected = {
            "order": feed_ids(db, stream=oid),
            "stream": feed_ids(db, stream=sids[0]),
            "kitchen": feed_ids(db, tenant="bab-hara"),
            "driver": feed_ids(db, tenant="rami"),
            "platform": feed_ids(db),
        }
        for name, f in followers.items():
            want = everything[expected[name][-1]][f.key]
            await until(lambda f=f, want=want: f.last >= want, 20, f"{f} to reach {want}")
        await asyncio.sleep(0.3)  # strays would show now
        for f in followers.values():
            await f.stop()

    stored = check_log(db)
    assert set(stored) == set(everything)
    notes = {i: e for i, e in tally.acked.items() if not i.endswith(".create")}
    lost_acked = [i for i in tally.acked if i not in stored]
    changed = [i for i, e in tally.acked.items()
               if i in stored and stored[i] != (e["streamId"], e["seq"], e["pos"])]  # fmt: skip
    unacked = set(stored) - set(tally.acked) - {e["id"] for e in order_events}
    given_up = {i for ids in tally.abandoned for i in ids}
    committed_unacked = [ids for ids in tally.abandoned if ids[0] in stored]
    half = [ids for ids in tally.abandoned if 0 < sum(i in stored for i in ids) < len(ids)]
    feeds = {name: [everything[i] for i in expected[name]] for name in followers}
    audits = {name: f.audit(feeds[name]) for name, f in followers.items()}
    figures(
        "sigkill",
        events_written=len(stored), appends_acked=len(notes), requests=tally.requests,
        faults={"SIGKILL": 1, "batches_interrupted": tally.interrupted,
                "requests_without_answer": tally.transport_errors,
                "retries_found_committed": tally.replayed,
                "batches_given_up": len(tally.abandoned),
                "of_which_committed_whole": len(committed_unacked), "half_done": len(half)},
        hub_down_s=killed["down_s"], load_s=round(load_s, 2),
        pickup_attempts_failed=killed["pickup_failures"],
        unanswered_then_resent=len(killed["late"]),
        gps_pings=dict(pings), subscribers=len(followers),
        events_delivered=sum(len(f.events) for f in followers.values()),
        reconnects=sum(f.connections - 1 for f in followers.values()),
        lost=len(lost_acked) + sum(a[0] for a in audits.values()),
        duplicates=sum(a[1] for a in audits.values()),
    )  # fmt: skip
    assert len(notes) + len(given_up) == TOTAL + 15  # and the 3 late batches of 5
    assert killed["late"] == [200, 200, 200], killed  # committed before the kill, not twice
    assert not lost_acked, f"acknowledged, then lost: {lost_acked[:5]}"
    assert not changed, f"stored with another seq/pos than acknowledged: {changed[:5]}"
    assert unacked <= given_up, f"stored but never sent: {sorted(unacked - given_up)[:5]}"
    assert not half, f"batches partly stored: {half[:3]}"
    assert tally.interrupted + len(tally.abandoned) > 0, "the kill hit no request in flight"
    for name, f in followers.items():
        f.check(feeds[name])
        assert f.connections >= 2, f  # dropped by the kill, then resumed
        assert f.codes[0] == 1006, f  # no close frame: the process was gone
    # The databases of the order: stock taken once, Rami delivered, idle where he delivered.
    assert stock(data) == {"pt-shw": 198, "pt-lbn": 149}
    at = (DEST["lat"], DEST["lng"])
    assert driver_point(tenant_db(data, "rami")) == ("idle", 1, *at)
    assert driver_point(data / "public.db") == ("idle", 1, *at)
    assert rows(data / "public.db", "SELECT claim FROM points WHERE id = 'pt-rami-loc'") == [
        (None,)]  # fmt: skip
    for tenant in ("ali", "bab-hara", "rami"):
        assert rows(tenant_db(data, tenant), "SELECT COUNT(*) FROM nodes WHERE id = ?", oid) == [
            (1,)], tenant  # fmt: skip
    await asyncio.to_thread(hub.stop)  # SIGTERM, and a clean log


# -- 2: SIGTERM under load ---------------------------------------------------------------------


async def test_sigterm_under_load_commits_or_refuses_whole_batches(
    hubs: list[HubProcess], tmp_path: Path, rng: random.Random
) -> None:
    """SIGTERM amid appends: sockets 1012/1001, batches whole or absent, exit within grace."""
    data = tmp_path / "data"
    hub = launch(hubs, data)
    db = data / "streams.db"
    sids = [new_id(f"term{k}") for k in range(4)]
    tally = Tally()
    batches: list[tuple[list[str], Frame | None]] = []  # (ids, the answer when acknowledged)
    answered_at: list[float] = []
    async with http(hub) as c:
        for k, sid in enumerate(sids):
            await append_until_acked(c, sid, [{"id": f"{sid}.create", **order(f"c{k}")}], tally)
        followers = [
            await Follower(name, hub, path, who).start()
            for name, path, who in (
                ("stream", f"/ws/streams/{sids[1]}", auth("c1", "customer")),
                ("kitchen", "/ws/inbox", KITCHEN),
                ("platform", "/ws/inbox", PLATFORM),
            )
        ]

        async def writer(w: int) -> None:
            """Append until the hub stops answering; the batch that failed is unacknowledged."""
            for b in range(10_000):
                drafts = [note(i, w=w, b=b) | {"id": f"w{w}-b{b}-{i}"}
                          for i in range(rng.randint(1, 10))]  # fmt: skip
                ids = [d["id"] for d in drafts]
                try:
                    r = await c.post(f"/api/streams/{rng.choice(sids)}/events",
                                     json={"events": drafts}, headers=PLATFORM)  # fmt: skip
                except httpx.TransportError:
                    batches.append((ids, None))
                    return
                if r.status_code != 201:
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"], r.text
                    batches.append((ids, None))
                    return
                answered_at.append(time.monotonic())
                batches.append((ids, r.json()))
                for e in r.json()["events"]:
                    tally.acked[e["id"]] = e

        tasks = [asyncio.create_task(writer(w)) for w in range(16)]
        await until(lambda: len(tally.acked) >= 1500, 30, "1,500 events acknowledged")
        t0 = time.monotonic()
        exit_code = await asyncio.to_thread(hub.stop)  # SIGTERM; checks the log is clean
        took = time.monotonic() - t0
        await asyncio.wait_for(asyncio.gather(*tasks), timeout(10))
        await until(lambda: all(f.codes for f in followers), 10, "every socket closed")

        # The hub is gone: read its streams DB as it left it.
        stored = check_log(db)
        whole = [ids for ids, answer in batches if answer is None and ids[0] in stored]
        half = [ids for ids, _ in batches if 0 < sum(i in stored for i in ids) < len(ids)]
        lost = [i for i, e in tally.acked.items()
                if stored.get(i) != (e["streamId"], e["seq"], e["pos"])]  # fmt: skip

        hub = await asyncio.to_thread(relaunch, hubs, hub)  # followers resume by themselves
        for sid in sids:
            await append_until_acked(c, sid, [note(99) | {"id": f"{sid}.after"}], tally)
        everything = await stored_events(c, sids)
        expected = {
            "stream": feed_ids(db, stream=sids[1]),
            "kitchen": feed_ids(db, tenant="bab-hara"),
            "platform": feed_ids(db),
        }
        for f in followers:
            want = everything[expected[f.name][-1]][f.key]
            await until(lambda f=f, want=want: f.last >= want, 20, f"{f} to reach {want}")
        await asyncio.sleep(0.3)
        for f in followers:
            await f.stop()

    check_log(db)
    feeds = {f.name: [everything[i] for i in expected[f.name]] for f in followers}
    audits = [f.audit(feeds[f.name]) for f in followers]
    figures(
        "sigterm",
        events_written=len(everything), appends_acked=len(tally.acked),
        faults={"SIGTERM": 1, "batches_answered_after_sigterm": sum(t > t0 for t in answered_at),
                "batches_unacknowledged": sum(a is None for _, a in batches),
                "of_which_committed_whole": len(whole), "half_done": len(half)},
        exit_s=round(took, 2), exit_code=exit_code,
        close_codes=sorted({f.codes[0] for f in followers}),
        lost=len(lost) + sum(a[0] for a in audits), duplicates=sum(a[1] for a in audits),
    )  # fmt: skip
    assert not half, f"batches partly stored: {half[:3]}"
    assert not lost, f"acknowledged but not stored as acknowledged: {lost[:5]}"
    # uvicorn shuts down, then re-raises the signal it caught: the exit status says SIGTERM.
    assert exit_code in (0, -signal.SIGTERM), (exit_code, hub.log())
    assert took < timeout(GRACEFUL_TIMEOUT) + 1.0, f"SIGTERM to exit took {took:.1f}s"
    for f in followers:
        assert f.codes[0] in SHUTDOWN_CODES, f
        f.check(feeds[f.name])
    await asyncio.to_thread(hub.stop)


# -- 3: Redis stopped, restarted, its pub/sub clients killed -----------------------------------


async def test_redis_killed_restarted_and_pubsub_dropped_under_load(
    hubs: list[HubProcess], redis_server: RedisServer, tmp_path: Path, rng: random.Random
) -> None:
    """Redis SIGKILLed, restarted, pub/sub killed 3x under load on A and B: feeds exact."""
    data = tmp_path / "data"
    env = {"HUB_REDIS_URL": redis_server.url}
    a, b = launch(hubs, data, env), launch(hubs, data, env)
    for hub in (a, b):
        await until(lambda hub=hub: is_ok(health_of(hub)), 10, f"hub {hub.port} linked")
    sids = {"ali": new_id("ali"), "mona": new_id("mona")}
    log = Log()
    inboxes: dict[str, set[str] | None] = {f"{n}@{x}": None for n in ("kitchen", "platform")
                                           for x in "AB"}  # fmt: skip
    kills: list[int] = []
    faults_done = asyncio.Event()
    async with http(a) as ca, http(b) as cb, AsyncExitStack() as stack:
        for customer, sid in sids.items():
            await log.append(ca, sid, [order(customer)])
        subs: list[Sub] = []
        for x, hub in (("A", a), ("B", b)):
            for name, path, who in (
                ("ali-stream", f"/ws/streams/{sids['ali']}", ALI),
                ("kitchen", "/ws/inbox", KITCHEN),
                ("platform", "/ws/inbox", PLATFORM),
            ):
                subs.append(await stack.enter_async_context(Sub(f"{name}@{x}", hub, path, who)))
        before = [await metrics(cx) for cx in (ca, cb)]

        async def writer(cx: httpx.AsyncClient, w: str) -> None:
            i = 0
            while not faults_done.is_set() or i < 20:
                drafts = [note(i, w=w, k=k) for k in range(rng.randint(1, 5))]
                await log.append(cx, rng.choice(list(sids.values())), drafts)
                i += 1
                await asyncio.sleep(rng.uniform(0, 0.01))

        async def faults() -> float:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(redis_server.stop, signal.SIGKILL)
            await asyncio.sleep(1.0)  # writes go on; each hub's own sockets stay live
            await asyncio.to_thread(redis_server.start)
            t0 = time.monotonic()
            for cx in (ca, cb):
                await health_becomes(cx, is_ok, 15)
            relinked = time.monotonic() - t0
            for _ in range(3):
                await asyncio.sleep(rng.uniform(0.2, 0.4))
                killed = await asyncio.to_thread(
                    redis_server.command, "CLIENT", "KILL", "TYPE", "pubsub"
                )
                assert isinstance(killed, int)
                kills.append(killed)
            await asyncio.sleep(0.3)
            faults_done.set()
            return relinked

        t0 = time.monotonic()
        fault_task = asyncio.create_task(faults())
        await asyncio.wait_for(asyncio.gather(
            writer(ca, "a0"), writer(ca, "a1"), writer(cb, "b0"), writer(cb, "b1")
        ), timeout(60))  # fmt: skip
        relinked = await fault_task
        load_s = time.monotonic() - t0
        await settle(subs, log, inboxes, 30)
        after = [await metrics(cx) for cx in (ca, cb)]
        stored = {sid: await store_stream(ca, sid) for sid in sids.values()}

    check_log(data / "streams.db")
    for sid, events in stored.items():
        assert events == log.stream(sid), f"{sid}: the store and the acknowledgements differ"

    def delta(series: str) -> int:
        return round(sum(m1[series] - m0[series] for m0, m1 in zip(before, after, strict=True)))

    lost = sum(len({e["id"] for e in feed_of(s, log, inboxes)} - {e["id"] for e in s.events})
               for s in subs)  # fmt: skip
    dup = sum(len(s.events) - len({e["id"] for e in s.events}) for s in subs)
    figures(
        "redis",
        events_written=len(log.events), subscribers=len(subs), load_s=round(load_s, 2),
        faults={"redis_sigkill_restart": 1, "client_kill_pubsub": len(kills),
                "pubsub_connections_killed": sum(kills)},
        relinked_s=round(relinked, 2), reconnects=delta("hub_redis_reconnects_total"),
        backfilled=delta("hub_backfilled_events_total"), lost=lost, duplicates=dup,
    )  # fmt: skip
    assert all(k >= 2 for k in kills), kills  # both hubs' pub/sub connections each time
    expect_all(subs, log, inboxes)
    assert delta("hub_redis_reconnects_total") >= 2 * (1 + len(kills)), after


# -- 4: the streams DB locked by another process -----------------------------------------------


def hold_write_lock(db: Path, seconds: float) -> float:
    """Another process's long write transaction on the streams DB; returns how long it held."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE streams SET lastSeq = lastSeq")  # dirty pages, like a real writer
        t0 = time.monotonic()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        return time.monotonic() - t0


async def test_streams_db_locked_by_another_process(
    hubs: list[HubProcess], tmp_path: Path, rng: random.Random
) -> None:
    """Locked 2 s: appends wait and succeed; locked past the 5 s busy timeout: a clear 503."""
    data = tmp_path / "data"
    hub = launch(hubs, data)
    db = data / "streams.db"
    sid = new_id("locked")
    tally = Tally()
    answers: list[tuple[float, float, int, Frame]] = []  # (sent, latency, status, body)
    writing = True
    async with http(hub) as c, AsyncExitStack() as stack:
        await append_until_acked(c, sid, [{"id": f"{sid}.create", **order("ali")}], tally)
        subs = [
            await stack.enter_async_context(Sub(name, hub, path, who))
            for name, path, who in (
                ("stream", f"/ws/streams/{sid}", ALI),
                ("kitchen", "/ws/inbox", KITCHEN),
                ("platform", "/ws/inbox", PLATFORM),
            )
        ]

        async def writer(w: int) -> None:
            b = 0
            while writing:
                drafts = [note(i, w=w, b=b) | {"id": f"w{w}-b{b}-{i}"}
                          for i in range(rng.randint(1, 3))]  # fmt: skip
                refused = False
                while True:
                    t = time.monotonic()
                    r = await c.post(f"/api/streams/{sid}/events", json={"events": drafts},
                                     headers=PLATFORM)  # fmt: skip
                    answers.append((t, time.monotonic() - t, r.status_code, r.json()))
                    if r.status_code != 503:
                        break
                    refused = True
                # A refused batch wrote nothing: its retry commits it afresh (201, not 200).
                assert r.status_code == 201, (refused, r.status_code, r.text)
                for e in r.json()["events"]:
                    tally.acked[e["id"]] = e
                b += 1
                await asyncio.sleep(rng.uniform(0.005, 0.02))

        tasks = [asyncio.create_task(writer(w)) for w in range(8)]
        await asyncio.sleep(0.5)
        locks: list[tuple[float, float]] = []  # (start, held)
        health: list[tuple[int, float]] = []
        for seconds in (2.0, BUSY_TIMEOUT + 0.3):
            start = time.monotonic()
            hold = asyncio.create_task(asyncio.to_thread(hold_write_lock, db, seconds))
            await asyncio.sleep(1.0)
            t = time.monotonic()
            r = await c.get("/healthz")  # the streams DB still answers reads
            health.append((r.status_code, time.monotonic() - t))
            locks.append((start, await hold))
            await asyncio.sleep(1.0)
        writing = False
        await asyncio.wait_for(asyncio.gather(*tasks), timeout(15))
        everything = await stored_events(c, [sid])
        feed = [everything[i] for i in feed_ids(db, stream=sid)]
        log = Log()
        log.events = dict(everything)
        await settle(subs, log, {"kitchen": None, "platform": None}, 15)

    stored = check_log(db)
    lost = [i for i, e in tally.acked.items() if stored.get(i) != (e["streamId"], e["seq"],
                                                                    e["pos"])]  # fmt: skip
    refusals = [(lat, body) for _, lat, status, body in answers if status == 503]
    during_short = [lat for t, lat, _, _ in answers if locks[0][0] <= t < locks[0][0] + 2.0]
    worst = max(lat for _, lat, _, _ in answers)
    dup = sum(len(s.events) - len({e["id"] for e in s.events}) for s in subs)
    figures(
        "db_lock",
        events_written=len(stored), appends_acked=len(tally.acked), requests=len(answers),
        faults={"write_lock_held_s": [round(h, 2) for _, h in locks]},
        max_wait_in_2s_lock_s=round(max(during_short), 2), max_latency_s=round(worst, 2),
        refused_503=len(refusals), healthz_during_lock=[s for s, _ in health],
        lost=len(lost), duplicates=dup,
    )  # fmt: skip
    assert not lost, lost[:5]
    assert all(status == 200 and took < 1.0 for status, took in health), health
    second_lock = locks[1][0]
    assert all(s == 201 for t, lat, s, _ in answers if t + lat < second_lock), "503, short lock"
    assert max(during_short) > 1.0, "the 2 s lock made nobody wait"
    assert refusals, "no append outlived the busy timeout"
    for lat, body in refusals:
        assert body["error"]["code"] == "unavailable", body
        assert "locked" in body["error"]["message"], body
        assert BUSY_TIMEOUT - 0.5 < lat < timeout(BUSY_TIMEOUT + 1.0), (lat, body)
    assert worst < timeout(6.0), f"an append waited {worst:.1f}s"
    assert feed == log.stream(sid)
    expect_all(subs, log, {"kitchen": None, "platform": None})


# -- 5: the archive store down during Step 11 --------------------------------------------------


async def test_archive_store_down_at_step_11_deletes_nothing_then_archives(
    hubs: list[HubProcess], tmp_path: Path
) -> None:
    """S3 down at Step 11: events stay, failures counted; S3 back: archived, socket closed 1000."""
    with seaweed_server(tmp_path / "weed") as s3:
        data = tmp_path / "data"
        run_seed(data)
        env = {
            "HUB_ARCHIVE_URL": f"s3://{BUCKET}/faults", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3.endpoint,
            "AWS_ENDPOINT_URL_S3": s3.endpoint, "AWS_ENDPOINT": s3.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }  # fmt: skip
        for name in set(AWS_VARS) - set(env):  # the hub inherits the rest of this environment
            assert name not in os.environ, f"unset {name} to run this test"
        hub = launch(hubs, data, env)
        db = data / "streams.db"
        oid = new_id("ord")

        def in_db() -> int:
            return int(db_rows(db, "SELECT COUNT(*) FROM events WHERE streamId = ?", oid)[0][0])

        async def failures(c: httpx.AsyncClient) -> float:
            return (await metrics(c)).get("hub_archive_failures_total", 0.0)

        async with http(hub) as c, AsyncExitStack() as stack:
            await place_order(c, oid)
            sock = await stack.enter_async_context(subscribe(hub, f"/ws/streams/{oid}", ALI))
            await advance_order(c, oid, "pickup")
            await asyncio.to_thread(s3.kill)
            down_at = time.monotonic()
            await step_until_done(c, oid, "deliver", RAMI, DEST)
            live = (await get_stream(c, oid))["events"]
            check_seed_table(live, oid)

            async def failed_twice() -> bool:
                return await failures(c) >= 2

            await until(failed_twice, 20, "two failed archive attempts")
            got = await get_stream(c, oid)
            assert (got["status"], got["events"]) == ("active", live), got
            assert in_db() == 12
            r = await c.post(f"/api/streams/{oid}/archive", headers=PLATFORM)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "archive_unavailable", r.text
            assert in_db() == 12
            assert not sock.closed, sock.frames[-3:]
            assert not sock.of("archived"), sock.frames[-3:]
            failed = await failures(c)

            await asyncio.to_thread(s3.start)
            up_at = time.monotonic()

            async def archived() -> bool:
                return (await get_stream(c, oid))["status"] == "archived"

            await until(archived, 45, "the archiver's retry")
            archived_after = time.monotonic() - up_at
            await until(lambda: sock.closed, 10, "the socket closed after archiving")
            got = await get_stream(c, oid)
            body = await s3.read_via_filer(f"faults/{oid}.json")

    assert got["events"] == live
    assert body is not None
    assert [(e["id"], e["seq"], e["pos"]) for e in json.loads(body)] == [
        (e["id"], e["seq"], e["pos"]) for e in live]  # fmt: skip
    assert in_db() == 0
    assert db_rows(db, "SELECT lastSeq, archived FROM streams WHERE streamId = ?", oid) == [
        (12, 1)]  # fmt: skip
    check_log(db)
    events = sock.events()
    figures(
        "archive_s3_down",
        events_written=len(live), faults={"s3_server_sigkill": 1, "archive_failures": failed,
                                          "on_demand_503": 1},
        s3_down_s=round(up_at - down_at, 2), archived_after_s3_back_s=round(archived_after, 2),
        lost=len({e["id"] for e in live} - {e["id"] for e in events}),
        duplicates=len(events) - len({e["id"] for e in events}),
    )  # fmt: skip
    assert events == live
    assert sock.frames[-1] == {"type": "archived", "streamId": oid}, sock.frames[-3:]
    assert sock.conn.close_code == 1000
    await asyncio.to_thread(hub.stop)
