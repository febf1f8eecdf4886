"""WebSockets against a real hub (docs/protocol.md §5, §2): replay, live, exactly-once resume,
membership, slow and stalled subscribers, restarts, garbage frames, auth and metrics.

Every test starts its own hub, so the figures it reads from /metrics are its own.
Random choices come from one seeded RNG per test: the seed is printed (shown when a
test fails) and ``HUB_TEST_SEED=N`` replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import SECRET, HubProcess, auth, parse_metrics, timeout, token

Frame = dict[str, Any]

PLATFORM = auth("ops", "platform")
KITCHEN = auth("bab-hara", "restaurant")
EVENT_FIELDS = {
    "id", "streamId", "seq", "pos", "opcode", "name", "nodeId", "pointId", "delta", "payload", "ts",
}  # fmt: skip
SHUTDOWN_CODES = {1001, 1012}  # hub shutting down: reconnect
STALL_CODES = {4008, 1011}  # stalled (or keepalive timeout): reconnect with since
PAD = "x" * 1000  # ~1 KiB payloads


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("HUB_TEST_SEED") or random.randrange(1 << 32))
    print(f"HUB_TEST_SEED={seed}")
    return random.Random(seed)


def new_sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def order(customer: str, restaurant: str = "bab-hara") -> Frame:
    """An ORDER_CREATE draft naming ``customer`` and ``restaurant``."""
    return {"opcode": 501, "payload": {"customer": customer, "restaurant": restaurant}}


@asynccontextmanager
async def http(hub: HubProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(30), trust_env=False) as c:
        yield c


async def append(
    c: httpx.AsyncClient, stream_id: str, drafts: list[Frame], headers: dict[str, str] = PLATFORM
) -> list[Frame]:
    """Append a batch; returns the stored events (committed: the hub acknowledged them)."""
    r = await c.post(f"/api/streams/{stream_id}/events", json={"events": drafts}, headers=headers)
    assert r.status_code == 201, (r.status_code, r.text)
    events: list[Frame] = r.json()["events"]
    assert len(events) == len(drafts)
    return events


async def metrics(c: httpx.AsyncClient) -> dict[str, float]:
    """GET /metrics as {series: value} (labels kept in the series name)."""
    r = await c.get("/metrics")
    assert r.status_code == 200, r.text
    return parse_metrics(r.text)


async def poll_metrics(
    c: httpx.AsyncClient, ok: Callable[[dict[str, float]], bool], seconds: float
) -> dict[str, float]:
    """Poll /metrics until ``ok`` holds (returns them) or ``seconds`` pass (returns the last)."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        m = await metrics(c)
        if ok(m) or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.05)


def ws(hub: HubProcess, path: str, headers: dict[str, str] | None = None, **kw: Any) -> connect:
    """A WebSocket client for ``path`` (use as ``async with``)."""
    kw.setdefault("open_timeout", timeout(10))
    kw.setdefault("close_timeout", timeout(5))
    return connect(
        hub.ws_url + path, additional_headers=headers, compression=None, proxy=None, **kw
    )


async def recv(conn: ClientConnection, seconds: float = 10) -> Frame:
    raw = await asyncio.wait_for(conn.recv(), timeout(seconds))
    assert isinstance(raw, str), f"expected a JSON text frame, got {raw!r:.80}"
    frame = json.loads(raw)
    assert isinstance(frame, dict), frame
    return frame


async def closed_with(conn: ClientConnection, seconds: float = 10) -> tuple[int, list[Frame]]:
    """Read until the hub closes; returns the close code received (1006: none) and the
    frames that came before it."""
    frames: list[Frame] = []
    try:
        while True:
            frames.append(await recv(conn, seconds))
    except websockets.ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd is not None else 1006), frames


def live_frame(key: str, last: int, stream_id: str | None = None) -> Frame:
    if key == "seq":
        return {"type": "live", "streamId": stream_id, "seq": last}
    return {"type": "live", "pos": last}


def check_event(frame: Frame, stream_id: str | None = None) -> Frame:
    """An ``event`` frame carrying every event field; returns the event (without ``type``)."""
    assert frame.get("type") == "event", frame
    assert set(frame) >= EVENT_FIELDS, frame
    if stream_id is not None:
        assert frame["streamId"] == stream_id, frame
    return {k: v for k, v in frame.items() if k != "type"}


def advance(key: str, last: int, frame: Frame) -> int:
    """The frame's key, checked to follow ``last`` (seq: +1 exactly; pos: strictly larger)."""
    value = frame[key]
    assert isinstance(value, int), frame
    if key == "seq":
        assert value == last + 1, f"seq {value} after {last}"
    else:
        assert value > last, f"pos {value} after {last}"
    return value


async def read_replay(
    conn: ClientConnection, key: str, *, since: int = 0, stream_id: str | None = None
) -> list[Frame]:
    """A fresh connection's replay: events until the live frame (checked); returns the events."""
    events: list[Frame] = []
    last = since
    while True:
        frame = await recv(conn)
        if frame.get("type") == "live":
            assert frame == live_frame(key, last, stream_id)
            return events
        events.append(check_event(frame, stream_id))
        last = advance(key, last, frame)


async def read_events(
    conn: ClientConnection, count: int, key: str, last: int, stream_id: str | None = None
) -> list[Frame]:
    """The next ``count`` frames: events following ``last`` in order."""
    events: list[Frame] = []
    for _ in range(count):
        frame = await recv(conn)
        events.append(check_event(frame, stream_id))
        last = advance(key, last, frame)
    return events


async def stalled_socket(hub: HubProcess) -> socket.socket:
    """A TCP connection to the hub with a small receive buffer (fills fast, drains nothing)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", hub.port))
    return sock


class Resumer:
    """A subscriber that drops its connection at random points (a clean close or a dead
    TCP connection) and resumes with ``since`` = the last key it saw."""

    def __init__(
        self,
        hub: HubProcess,
        path: str,
        headers: dict[str, str],
        key: str,
        rng: random.Random,
        *,
        stream_id: str | None = None,
        max_budget: int = 60,
    ) -> None:
        self.hub, self.path, self.headers, self.key = hub, path, headers, key
        self.rng, self.stream_id, self.max_budget = rng, stream_id, max_budget
        self.events: list[Frame] = []
        self.last = 0
        self.connections = 0
        self.lives = 0

    async def run(self, done: asyncio.Event, committed: Callable[[], int]) -> None:
        """Read until ``done`` is set and every committed key (``committed()``) was seen."""
        idle_deadline = time.monotonic() + timeout(15)
        while not (done.is_set() and self.last >= committed()):
            budget = self.rng.randint(1, self.max_budget)
            before = committed()  # committed before this connection: must come before `live`
            # max_queue=None: unread frames never pause the client's reads, so a close
            # in the middle of a replay still sees the hub's close frame at once.
            path = f"{self.path}?since={self.last}"
            async with ws(self.hub, path, self.headers, max_queue=None) as conn:
                self.connections += 1
                live = False
                got = 0
                while got < budget and not (done.is_set() and self.last >= committed()):
                    try:
                        frame = await asyncio.wait_for(conn.recv(), 0.2)
                    except TimeoutError:
                        assert time.monotonic() < idle_deadline, (
                            f"{self.path}: nothing for {timeout(15)}s at {self.key}={self.last},"
                            f" committed {committed()}"
                        )
                        continue
                    idle_deadline = time.monotonic() + timeout(15)
                    assert isinstance(frame, str)
                    parsed = json.loads(frame)
                    if parsed.get("type") == "live":
                        assert not live, f"second live frame on one connection: {parsed}"
                        assert parsed == live_frame(self.key, self.last, self.stream_id)
                        assert self.last >= before, (
                            f"live at {self.key}={self.last} before the replay reached {before}"
                        )
                        live = True
                        self.lives += 1
                        continue
                    self.events.append(check_event(parsed, self.stream_id))
                    self.last = advance(self.key, self.last, parsed)
                    got += 1
                if self.rng.random() < 0.3:
                    conn.transport.abort()  # the connection just dies


class RssSampler:
    """Samples a process's VmRSS (bytes) every few ms in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        for line in self.path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.read())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


# -- 1-2: replay, live and exactly-once resume -----------------------------------------------


async def test_stream_resume_exactly_once_under_concurrent_writers(
    hub: HubProcess, rng: random.Random
) -> None:
    """A stream subscriber dropping and resuming with since gets seq 1..500 once, in order."""
    stream_id = new_sid("order")
    total, writers = 500, 8
    acked: dict[int, Frame] = {}
    done = asyncio.Event()
    reader = Resumer(hub, f"/ws/streams/{stream_id}", PLATFORM, "seq", rng, stream_id=stream_id)

    async with http(hub) as c:

        async def writer(k: int, quota: int) -> None:
            i = 0
            while i < quota:
                n = min(rng.choice((1, 1, 1, 2, 3, 5)), quota - i)
                drafts = [{"opcode": 102, "payload": {"w": k, "i": i + j}} for j in range(n)]
                for event in await append(c, stream_id, drafts):
                    acked[event["seq"]] = event
                i += n
                await asyncio.sleep(rng.uniform(0, 0.02))

        async def write_all() -> None:
            quotas = [total // writers + (k < total % writers) for k in range(writers)]
            await asyncio.gather(*(writer(k, q) for k, q in enumerate(quotas)))
            done.set()

        await asyncio.wait_for(
            asyncio.gather(write_all(), reader.run(done, lambda: max(acked, default=0))),
            timeout(60),
        )

    assert sorted(acked) == list(range(1, total + 1))
    assert [e["seq"] for e in reader.events] == list(range(1, total + 1))
    assert reader.events == [acked[s] for s in range(1, total + 1)]
    assert reader.connections > 3, reader.connections
    assert reader.lives >= 1


async def test_inbox_resume_exactly_once_across_streams(
    hub: HubProcess, rng: random.Random
) -> None:
    """Inboxes dropping and resuming with since get their streams' events once, in pos order."""
    customers = ["ali", "sara", "omar", "lina", "noor", "ziad"]
    restaurant = {c: ("bab-hara" if i < 4 else "zaatar-house") for i, c in enumerate(customers)}
    per_stream = 60
    acked: list[tuple[str, Frame]] = []  # (customer of the stream, event)
    done = asyncio.Event()
    kitchen = Resumer(hub, "/ws/inbox", KITCHEN, "pos", rng)
    platform = Resumer(hub, "/ws/inbox", PLATFORM, "pos", rng)
    ali = Resumer(hub, "/ws/inbox", auth("ali", "customer"), "pos", rng, max_budget=20)
    watchers: dict[str, tuple[Resumer, Callable[[str], bool]]] = {
        "bab-hara": (kitchen, lambda cust: restaurant[cust] == "bab-hara"),
        "platform": (platform, lambda cust: True),
        "ali": (ali, lambda cust: cust == "ali"),
    }

    def committed(name: str) -> Callable[[], int]:
        member = watchers[name][1]
        return lambda: max((e["pos"] for cust, e in acked if member(cust)), default=0)

    async with http(hub) as c:

        async def writer(customer: str) -> None:
            stream_id = new_sid(f"order-{customer}")
            await asyncio.sleep(rng.uniform(0, 0.5))  # streams appear while inboxes are live
            mine = auth(customer, "customer")
            acked.extend(
                (customer, e)
                for e in await append(c, stream_id, [order(customer, restaurant[customer])], mine)
            )
            i = 1
            while i < per_stream:
                n = min(rng.choice((1, 1, 2, 4)), per_stream - i)
                if rng.random() < 0.3:  # the customer itself (a member) writes
                    drafts, headers = (
                        [{"opcode": 203, "payload": {"i": i + j}} for j in range(n)],
                        mine,
                    )
                else:
                    drafts, headers = (
                        [{"opcode": 102, "payload": {"i": i + j}} for j in range(n)],
                        PLATFORM,
                    )
                acked.extend((customer, e) for e in await append(c, stream_id, drafts, headers))
                i += n
                await asyncio.sleep(rng.uniform(0, 0.02))

        async def write_all() -> None:
            await asyncio.gather(*(writer(cust) for cust in customers))
            done.set()

        await asyncio.wait_for(
            asyncio.gather(
                write_all(),
                *(r.run(done, committed(name)) for name, (r, _) in watchers.items()),
            ),
            timeout(60),
        )

    assert len(acked) == per_stream * len(customers)
    for name, (r, member) in watchers.items():
        expected = sorted((e for cust, e in acked if member(cust)), key=lambda e: e["pos"])
        assert [e["pos"] for e in r.events] == [e["pos"] for e in expected], name
        assert r.events == expected, name
        assert r.connections >= 2, (name, r.connections)
        assert r.lives >= 1, name
    assert len(kitchen.events) == 4 * per_stream
    assert len(ali.events) == per_stream


# -- 3: membership ----------------------------------------------------------------------------


async def test_membership_on_inboxes_and_stream_sockets(hub: HubProcess) -> None:
    """Inboxes follow membership live and on resume; non-members see nothing and get 4403."""
    rami, sami = auth("rami", "driver"), auth("sami", "driver")
    zaatar, sara = auth("zaatar-house", "restaurant"), auth("sara", "customer")
    ali = auth("ali", "customer")
    inboxes = {"bab-hara": KITCHEN, "rami": rami, "sami": sami, "zaatar-house": zaatar}
    stream_id, marker1, marker2 = new_sid("order"), new_sid("mark"), new_sid("mark")

    async with (
        http(hub) as c,
        ws(hub, "/ws/inbox", KITCHEN) as kitchen_ws,
        ws(hub, "/ws/inbox", rami) as rami_ws,
        ws(hub, "/ws/inbox", sami) as sami_ws,
        ws(hub, "/ws/inbox", zaatar) as zaatar_ws,
    ):
        sockets = {
            "bab-hara": kitchen_ws,
            "rami": rami_ws,
            "sami": sami_ws,
            "zaatar-house": zaatar_ws,
        }
        for conn in sockets.values():
            assert await recv(conn) == {"type": "live", "pos": 0}

        # A new order names the kitchen; the kitchen's open inbox gets it at once.
        created = await append(c, stream_id, [order("ali")], ali)
        assert await read_events(kitchen_ws, 1, "pos", 0) == created
        before = created + await append(
            c, stream_id, [{"opcode": 203, "payload": {"method": "card"}}], ali
        )
        before += await append(
            c, stream_id, [{"opcode": op, "payload": {}} for op in (301, 303, 305)], KITCHEN
        )
        # Not yet a member: the driver is refused the stream, like any outsider.
        for headers in (rami, sami, zaatar, sara):
            async with ws(hub, f"/ws/streams/{stream_id}", headers) as conn:
                assert (await closed_with(conn))[0] == 4403
        assign = await append(c, stream_id, [{"opcode": 302, "payload": {"driver": "rami"}}])
        after = assign + await append(
            c, stream_id, [{"opcode": op, "payload": {}} for op in (502, 503)], rami
        )
        everything = before + after
        # Markers (written last) show that nothing else was queued for the other inboxes.
        m1 = await append(
            c, marker1, [order("sara"), {"opcode": 302, "payload": {"driver": "rami"}}]
        )
        m2 = await append(
            c,
            marker2,
            [order("sara", "zaatar-house"), {"opcode": 302, "payload": {"driver": "sami"}}],
        )
        expected = {
            "bab-hara": everything + m1,
            "rami": after + m1[1:],
            "sami": m2[1:],
            "zaatar-house": m2,
        }
        for name, conn in sockets.items():
            todo = expected[name][1:] if name == "bab-hara" else expected[name]  # 501 read above
            since = expected[name][0]["pos"] if name == "bab-hara" else 0
            assert await read_events(conn, len(todo), "pos", since) == todo, name

        # Resuming from 0 replays the same events, and only them.
        for name, headers in inboxes.items():
            async with ws(hub, "/ws/inbox?since=0", headers) as conn:
                assert await read_replay(conn, "pos") == expected[name], name

        # Members read the whole stream, the driver too now that it is assigned.
        for headers in (rami, ali, KITCHEN, PLATFORM):
            async with ws(hub, f"/ws/streams/{stream_id}", headers) as conn:
                assert await read_replay(conn, "seq", stream_id=stream_id) == everything
        # Outsiders stay out; a stream that does not exist looks the same.
        for headers in (sami, zaatar, sara):
            async with ws(hub, f"/ws/streams/{stream_id}", headers) as conn:
                assert await closed_with(conn) == (4403, [])
        ghost = new_sid("ghost")
        for headers in (ali, KITCHEN, rami):
            async with ws(hub, f"/ws/streams/{ghost}", headers) as conn:
                assert await closed_with(conn) == (4403, [])

        # The platform may watch a stream before it exists and gets its events once written.
        async with ws(hub, f"/ws/streams/{ghost}", PLATFORM) as conn:
            assert await recv(conn) == live_frame("seq", 0, ghost)
            await conn.send(json.dumps({"type": "ping"}))
            assert await recv(conn) == {"type": "pong"}
            written = await append(
                c, ghost, [{"opcode": 102, "payload": {"n": n}} for n in range(3)]
            )
            assert await read_events(conn, 3, "seq", 0, ghost) == written


# -- 4-5: slow and stalled subscribers ------------------------------------------------------


async def test_stalled_subscriber_holds_no_memory_and_loses_nothing(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """A stalled subscriber holds little memory, delays nobody, and later gets all once."""
    hub = hub_factory(env={"HUB_WS_STALL_TIMEOUT": "60"})
    assert hub.proc is not None
    total, batch, writers = 20_000, 100, 4
    stream_id = new_sid("bulk")
    acked_at: dict[int, float] = {}
    received: list[tuple[int, float, float]] = []  # (seq, received at, sent at)

    async with http(hub) as c:
        warm = new_sid("warm")  # warm the hub's code paths before the baseline
        for _ in range(2):
            await append(c, warm, [{"opcode": 102, "payload": {"pad": PAD}}] * batch)
        sock = await stalled_socket(hub)
        async with (
            ws(
                hub,
                f"/ws/streams/{stream_id}",
                PLATFORM,
                sock=sock,
                max_queue=1,
                ping_interval=None,
            ) as stalled,
            ws(hub, f"/ws/streams/{stream_id}", PLATFORM) as fast,
        ):
            assert await recv(stalled) == live_frame("seq", 0, stream_id)
            assert await recv(fast) == live_frame("seq", 0, stream_id)
            with RssSampler(hub.proc.pid) as rss:
                baseline = rss.read()

                async def read_fast() -> None:
                    last = 0
                    while last < total:
                        raw = await asyncio.wait_for(fast.recv(), timeout(30))
                        now = time.monotonic()
                        frame = json.loads(raw)
                        assert frame["type"] == "event", frame
                        last = advance("seq", last, frame)
                        received.append((last, now, frame["payload"]["t"]))

                async def writer(k: int) -> None:
                    for b in range(k, total // batch, writers):
                        drafts = [
                            {"opcode": 102, "payload": {"b": b, "t": time.monotonic(), "pad": PAD}}
                            for _ in range(batch)
                        ]
                        events = await append(c, stream_id, drafts)
                        now = time.monotonic()
                        for e in events:
                            acked_at[e["seq"]] = now

                t0 = time.monotonic()
                await asyncio.wait_for(
                    asyncio.gather(read_fast(), *(writer(k) for k in range(writers))), timeout(90)
                )
                elapsed = time.monotonic() - t0
                peak_during = rss.peak
                m = await metrics(c)
                assert m["hub_ws_connections"] == 2, "the stalled subscriber was dropped"

                # Now the stalled one reads: every event once, in order (resuming if closed).
                last, conn, resumed = 0, stalled, 0
                async with contextlib.AsyncExitStack() as stack:
                    while last < total:
                        try:
                            frame = await recv(conn, 30)
                        except websockets.ConnectionClosed as exc:
                            code = exc.rcvd.code if exc.rcvd is not None else 1006
                            assert code in STALL_CODES, code
                            path = f"/ws/streams/{stream_id}?since={last}"
                            conn = await stack.enter_async_context(ws(hub, path, PLATFORM))
                            resumed += 1
                            continue
                        if frame.get("type") == "live":
                            assert conn is not stalled, frame
                            assert frame == live_frame("seq", last, stream_id)
                            continue
                        last = advance("seq", last, check_event(frame, stream_id))
            growth = rss.peak - baseline

    latency = sorted(max(0.0, at - acked_at[seq]) for seq, at, _ in received)
    from_send = sorted(at - sent for _, at, sent in received)
    p99 = latency[int(len(latency) * 0.99) - 1]
    p99_send = from_send[int(len(from_send) * 0.99) - 1]
    print(
        f"appended {total} in {elapsed:.2f}s; RSS baseline {baseline / 2**20:.1f} MiB,"
        f" growth {growth / 2**20:.1f} MiB (during appends {(peak_during - baseline) / 2**20:.1f});"
        f" commit->receipt p99 {p99 * 1000:.1f} ms, max {latency[-1] * 1000:.1f} ms;"
        f" send->receipt p99 {p99_send * 1000:.1f} ms; stalled resumed {resumed}x;"
        f" fallbacks {m.get('hub_ws_slow_consumer_fallbacks_total')}"
    )
    assert [s for s, _, _ in received] == list(range(1, total + 1))
    assert growth < 200 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB"
    assert p99 < 1.0, f"p99 commit->receipt {p99:.3f}s"
    assert m["hub_ws_slow_consumer_fallbacks_total"] > 0


async def test_stalled_subscriber_is_closed_4008_and_resumes(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """A socket draining nothing is closed 4008 in bounded time and resumes with since."""
    stall = 2.0
    hub = hub_factory(env={"HUB_WS_STALL_TIMEOUT": str(stall)})
    stream_id = new_sid("stall")
    total = 6000
    path = f"/ws/streams/{stream_id}"
    results: dict[str, tuple[int, int]] = {}  # name: (close code, last seq before it)

    async def come_back(name: str, conn: ClientConnection, after: float) -> None:
        """The client returns to its socket ``after`` seconds later: it drains what was
        buffered, reads why it was closed, and resumes with since."""
        await asyncio.sleep(after)
        code, frames = await closed_with(conn, 10)
        last = 0
        for frame in frames:
            last = advance("seq", last, check_event(frame, stream_id))
        assert 0 < last < total, (name, last)
        async with ws(hub, f"{path}?since={last}", PLATFORM) as again:
            rest = await read_replay(again, "seq", since=last, stream_id=stream_id)
        assert [e["seq"] for e in rest] == list(range(last + 1, total + 1)), name
        results[name] = (code, last)

    async with (
        http(hub) as c,
        ws(
            hub, path, PLATFORM, sock=await stalled_socket(hub), max_queue=1, ping_interval=None
        ) as prompt,
        ws(
            hub, path, PLATFORM, sock=await stalled_socket(hub), max_queue=1, ping_interval=None
        ) as late,
    ):
        for conn in (prompt, late):
            assert await recv(conn) == live_frame("seq", 0, stream_id)
        for b in range(total // 100):  # far more than the socket buffers hold
            await append(c, stream_id, [{"opcode": 102, "payload": {"b": b, "pad": PAD}}] * 100)
        written = time.monotonic()
        m = await poll_metrics(c, lambda m: m["hub_ws_connections"] == 0, stall + 10)
        took = time.monotonic() - written
        assert m["hub_ws_connections"] == 0, "the stalled sockets were not closed"
        assert took < timeout(stall + 5), took
        await asyncio.gather(come_back("prompt", prompt, 0), come_back("late", late, 6))
        m = await metrics(c)
    print(f"stalled sockets closed {took:.2f}s after the writes; (code, last seq): {results}")
    closes_4008 = sum(code == 4008 for code, _ in results.values())
    assert m["hub_ws_stalled_closes_total"] >= closes_4008
    assert results["prompt"][0] in STALL_CODES, results
    assert results["late"][0] in STALL_CODES, f"{results} (1006: no close frame reached it)"


# -- 6: restart -------------------------------------------------------------------------------


async def test_subscribers_resume_across_a_restart(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """SIGTERM closes sockets 1012/1001; after a restart they resume with since, missing nothing."""
    data_dir = tmp_path / "restart"
    hub = hub_factory(data_dir=data_dir)
    stream_id = new_sid("order")
    ali = auth("ali", "customer")
    subs = {  # name: (path, headers, key, stream id)
        "stream": (f"/ws/streams/{stream_id}", ali, "seq", stream_id),
        "kitchen": ("/ws/inbox", KITCHEN, "pos", None),
        "platform": ("/ws/inbox", PLATFORM, "pos", None),
    }
    seen: dict[str, list[Frame]] = {name: [] for name in subs}
    codes: dict[str, int] = {}

    async def follow(name: str, conn: ClientConnection) -> None:
        _, _, key, sid = subs[name]
        last = seen[name][-1][key] if seen[name] else 0
        try:
            while True:
                frame = await recv(conn, 30)
                seen[name].append(check_event(frame, sid))
                last = advance(key, last, frame)
        except websockets.ConnectionClosed as exc:
            codes[name] = exc.rcvd.code if exc.rcvd is not None else 1006

    def batch(start: int, stop: int) -> list[Frame]:
        return [{"opcode": 102, "payload": {"n": n}} for n in range(start, stop)]

    async with http(hub) as c, contextlib.AsyncExitStack() as stack:
        acked = await append(c, stream_id, [order("ali")], ali)
        acked += await append(c, stream_id, batch(0, 20))
        tasks = []
        for name, (path, headers, key, sid) in subs.items():
            conn = await stack.enter_async_context(ws(hub, path, headers))
            seen[name] = await read_replay(conn, key, stream_id=sid)
            assert seen[name] == acked, name
            tasks.append(asyncio.create_task(follow(name, conn)))
        acked += await append(c, stream_id, batch(20, 50))
        # Stop right away: the subscribers may or may not have had the last batch.
        exit_code = await asyncio.to_thread(hub.stop)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout(10))
    print(f"close codes {codes}; hub exit code {exit_code}")
    assert set(codes) == set(subs)
    assert all(code in SHUTDOWN_CODES for code in codes.values()), codes

    hub = hub_factory(data_dir=data_dir)
    async with http(hub) as c, contextlib.AsyncExitStack() as stack:
        r = await c.get(f"/api/streams/{stream_id}", headers=PLATFORM)
        assert r.status_code == 200, r.text
        assert r.json()["events"] == acked, "acknowledged events must survive the restart"
        acked += await append(c, stream_id, batch(50, 60))
        # Each resumes with the last key it saw: the replay is exactly what it missed,
        # then it is live again.
        conns = {}
        for name, (path, headers, key, sid) in subs.items():
            last = seen[name][-1][key]
            missed = [e for e in acked if e[key] > last]
            assert len(missed) >= 10, name
            conns[name] = await stack.enter_async_context(ws(hub, f"{path}?since={last}", headers))
            assert await read_replay(conns[name], key, since=last, stream_id=sid) == missed, name
            seen[name] += missed
        new = await append(c, stream_id, batch(60, 75))
        acked += new
        for name, (_, _, key, sid) in subs.items():
            last = seen[name][-1][key]
            seen[name] += await read_events(conns[name], len(new), key, last, sid)
            assert seen[name] == acked, name


# -- 7-8: bad frames, auth ------------------------------------------------------------------


def error_frame_problem(frame: Frame, code: str | None = None) -> str | None:
    """What is wrong with ``frame`` as the contract's error frame (with ``code``); None: fine."""
    err = frame.get("error")
    if frame.get("type") != "error" or set(frame) != {"type", "error"} or not isinstance(err, dict):
        return f"not an error frame: {json.dumps(frame)[:200]}"
    if set(err) != {"code", "message"} or not all(isinstance(v, str) for v in err.values()):
        return f"error is not {{code, message}}: {frame}"
    if not err["code"] or (code is not None and err["code"] != code):
        return f"error code {err['code']!r}, expected {code!r}"
    return None


def assert_error_frame(frame: Frame, code: str | None = None) -> None:
    problem = error_frame_problem(frame, code)
    assert problem is None, problem


KIB64, MIB = 64 << 10, 1 << 20


def ping_of(size: int, char: str = "x") -> str:
    """A ping frame of exactly ``size`` bytes UTF-8 encoded (``char``: 1 or 2 bytes)."""
    head, tail = '{"type":"ping","pad":"', '"}'
    n, rest = divmod(size - len(head) - len(tail), len(char.encode()))
    frame = head + char * n + "x" * rest + tail
    assert len(frame.encode()) == size
    return frame


async def test_garbage_frames_get_error_frames_and_keep_the_socket(hub: HubProcess) -> None:
    """Garbage frames get error frames and the socket stays open; over 1 MiB closes 1009."""
    stream_id = new_sid("order")
    ali = auth("ali", "customer")
    garbage: dict[str, tuple[str | bytes, str | None]] = {  # name: (frame, error code)
        "invalid JSON": ("not json {", None),
        "JSON array": ("[1, 2, 3]", None),
        "JSON number": ("42", None),
        "JSON string": ('"ping"', None),
        "JSON null": ("null", None),
        "no type": ("{}", None),
        "unknown type": ('{"type": "dance"}', None),
        "type not a string": ('{"type": 7}', None),
        "binary frame": (b"\x00\x01binary", None),
        "20,000 deep": ("[" * 20_000 + "]" * 20_000, None),  # under 64 KiB
        "100,000 deep": ("[" * 100_000 + "]" * 100_000, None),
        "64 KiB + 1 ping": (ping_of(KIB64 + 1), "frame_too_large"),
        "64 KiB + 1 text": ("y" * (KIB64 + 1), "frame_too_large"),
        "80 KB of 2-byte chars": (ping_of(80_000, "\u00e9"), "frame_too_large"),
        "1 MiB": (ping_of(MIB), "frame_too_large"),
    }
    problems: dict[str, str] = {}
    async with http(hub) as c:
        first = await append(c, stream_id, [order("ali")], ali)
        async with (
            ws(hub, f"/ws/streams/{stream_id}", PLATFORM) as noisy,
            ws(hub, f"/ws/streams/{stream_id}", ali) as quiet,
        ):
            assert await read_replay(noisy, "seq", stream_id=stream_id) == first
            assert await read_replay(quiet, "seq", stream_id=stream_id) == first
            await noisy.send(ping_of(KIB64))  # at the limit: still a frame the hub uses
            assert await recv(noisy) == {"type": "pong"}
            for name, (data, error_code) in garbage.items():
                await noisy.send(data)
                problem = error_frame_problem(await recv(noisy), error_code)
                if problem is not None:
                    problems[name] = problem
                await noisy.send('{"type": "ping"}')  # the socket is still open and in sync
                assert await recv(noisy) == {"type": "pong"}, name
            new = await append(c, stream_id, [{"opcode": 102, "payload": {}}])
            assert await read_events(noisy, 1, "seq", 1, stream_id) == new
            assert await read_events(quiet, 1, "seq", 1, stream_id) == new

            with contextlib.suppress(websockets.ConnectionClosed):
                await noisy.send("z" * (MIB + 1))  # the hub may close while it is sent
            assert await closed_with(noisy) == (1009, [])

            new = await append(c, stream_id, [{"opcode": 102, "payload": {}}])
            assert await read_events(quiet, 1, "seq", 2, stream_id) == new
            await quiet.send('{"type": "ping"}')
            assert await recv(quiet) == {"type": "pong"}
    assert not problems, problems


def forged(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key if alg != "none" else None, algorithm=alg)


BAD_TOKENS = {
    "garbage": "not-a-jwt",
    "bad-signature": forged({"sub": "ali", "role": "customer"}, key="another-secret-" + "x" * 40),
    "alg-none": forged({"sub": "ali", "role": "customer"}, alg="none"),
    "expired": forged({"sub": "ali", "role": "customer", "exp": int(time.time()) - 60}),
    "unknown-role": forged({"sub": "ali", "role": "admin"}),
    "bad-sub": forged({"sub": "Ali!", "role": "customer"}),
}


async def test_socket_auth_and_bad_since(hub: HubProcess) -> None:
    """Sockets: no/bad token closes 4401, header and ?token= work, a bad since is refused."""
    stream_id = new_sid("order")
    async with http(hub) as c:
        first = await append(c, stream_id, [order("ali")], auth("ali", "customer"))
    paths = [f"/ws/streams/{stream_id}", "/ws/inbox"]
    for path in paths:
        async with ws(hub, path) as conn:  # the handshake succeeds: the close code is readable
            assert await closed_with(conn) == (4401, [])
        for name, bad in BAD_TOKENS.items():
            async with ws(hub, path, {"authorization": f"Bearer {bad}"}) as conn:
                assert await closed_with(conn) == (4401, []), name
            async with ws(hub, f"{path}?token={bad}") as conn:
                assert await closed_with(conn) == (4401, []), name
        key, sid = ("seq", stream_id) if "streams" in path else ("pos", None)
        async with ws(hub, path, auth("ali", "customer")) as conn:
            assert await read_replay(conn, key, stream_id=sid) == first
        async with ws(hub, f"{path}?token={token('ali', 'customer')}") as conn:
            assert await read_replay(conn, key, stream_id=sid) == first
        for since in ("-1", "abc", "1.5", "1e3", "%20"):
            async with ws(hub, f"{path}?since={since}", auth("ali", "customer")) as conn:
                code, frames = await closed_with(conn)
            assert len(frames) == 1, (since, frames)
            assert_error_frame(frames[0])
            assert code == 1008, (since, code)


# -- 9: metrics -------------------------------------------------------------------------------


async def test_ws_metrics_track_connections(hub: HubProcess) -> None:
    """/metrics WebSocket connections, subscriptions and frames sent follow the sockets."""
    stream_id = new_sid("order")
    ali = auth("ali", "customer")
    async with http(hub) as c:
        m0 = await metrics(c)
        assert m0["hub_ws_connections"] == 0
        assert m0["hub_ws_subscriptions"] == 0
        assert m0["hub_ws_frames_sent_total"] == 0
        first = await append(c, stream_id, [order("ali")], ali)
        received = 0
        async with (
            ws(hub, f"/ws/streams/{stream_id}", ali) as s1,
            ws(hub, f"/ws/streams/{stream_id}", PLATFORM) as s2,
            ws(hub, "/ws/inbox", KITCHEN) as i1,
            ws(hub, "/ws/inbox", PLATFORM) as i2,
        ):
            conns = [
                (s1, "seq", stream_id),
                (s2, "seq", stream_id),
                (i1, "pos", None),
                (i2, "pos", None),
            ]
            for conn, key, sid in conns:
                assert await read_replay(conn, key, stream_id=sid) == first
                received += 2
            m = await metrics(c)
            assert m["hub_ws_connections"] == 4
            assert m["hub_ws_subscriptions"] == 4
            assert m["hub_ws_frames_sent_total"] == received
            async with ws(hub, f"/ws/streams/{stream_id}") as refused:  # no token
                assert (await closed_with(refused))[0] == 4401
            new = await append(c, stream_id, [{"opcode": 102, "payload": {}} for _ in range(5)])
            for conn, key, sid in conns:
                assert await read_events(conn, 5, key, first[0][key], sid) == new
                received += 5
            await s1.send('{"type": "ping"}')
            assert await recv(s1) == {"type": "pong"}
            received += 1
            m = await metrics(c)
            assert m["hub_ws_connections"] == 4
            assert m["hub_ws_subscriptions"] == 4
            assert m["hub_ws_frames_sent_total"] == received
        m = await poll_metrics(
            c, lambda m: m["hub_ws_connections"] == 0 and m["hub_ws_subscriptions"] == 0, 5
        )
        assert m["hub_ws_connections"] == 0
        assert m["hub_ws_subscriptions"] == 0
        assert m["hub_ws_frames_sent_total"] == received
