"""hub.client, the Python client for backend services, against real hubs (HubProcess).

Subscriptions: replay then live, the inbox, resume after the connection drops (a TCP proxy
the test cuts) and across a hub restart on the same data dir and port while another task
appends, 4403 and 4401 stop, ``archived`` ends the iteration, a slow consumer loses nothing.
HTTP: typed errors by status. Tokens: a provider's short-lived tokens are refreshed on the
open socket (the hub's ``auth`` frame). A small stand-in hub (``websockets`` server) covers
what a real hub does not do on demand: the ``unknown_frame`` answer of an older hub to
``auth``, and scripted close codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from hub.client import (
    Conflict,
    Event,
    Forbidden,
    Frame,
    HubClient,
    NotFound,
    OrderCreated,
    Unauthorized,
    Unprocessable,
    Unreachable,
    token_claims,
)
from tests.conftest import HubProcess, free_port, timeout, token
from tests.test_orders import run_seed

pytestmark = pytest.mark.timeout(180)

FAST: dict[str, Any] = {"min_delay": 0.05, "max_delay": 0.5}  # reconnect quickly in tests


def platform(hub: HubProcess | str, **kw: Any) -> HubClient:
    url = hub if isinstance(hub, str) else hub.url
    return HubClient(url, token=token("ops", "platform"), **{**FAST, **kw})


def as_(hub: HubProcess, tenant: str, role: str, **kw: Any) -> HubClient:
    return HubClient(hub.url, token=token(tenant, role), **{**FAST, **kw})


async def open_stream(c: HubClient, sid: str, customer: str = "cust-a") -> Event:
    """A stream opened by the platform's ORDER_CREATE naming ``customer`` and ``rest-a``."""
    payload = {"customer": customer, "restaurant": "rest-a"}
    created = await c.append(sid, {"id": f"{sid}-create", "opcode": 501, "delta": 10,
                                   "payload": payload})  # fmt: skip
    return created[0]


def draft(sid: str, n: int) -> dict[str, Any]:
    return {"id": f"{sid}-e{n}", "opcode": 301, "payload": {"n": n}}


async def take(sub: AsyncIterator[Any], count: int, seconds: float = 20) -> list[Any]:
    """The next ``count`` items of ``sub``."""
    out: list[Any] = []
    async with asyncio.timeout(timeout(seconds)):
        while len(out) < count:
            out.append(await anext(sub))
    return out


async def drain(sub: AsyncIterable[Any], seconds: float = 10) -> list[Any]:
    """Everything ``sub`` yields until it ends (or raises)."""
    async with asyncio.timeout(timeout(seconds)):
        return [item async for item in sub]


async def appender(c: HubClient, sid: str, numbers: range, pause: float = 0.02) -> None:
    """Append ``draft(sid, n)`` for each n, one at a time, retrying whatever the hub's state:
    the named ids make a retry safe (the stored event comes back)."""
    for n in numbers:
        while True:
            try:
                await c.append(sid, draft(sid, n))
                break
            except Unreachable:
                await asyncio.sleep(0.05)
            except Exception as exc:
                if getattr(exc, "retryable", False):
                    await asyncio.sleep(0.05)
                    continue
                raise
        await asyncio.sleep(pause)


def check_exactly_once(events: list[Event], sid: str, first: int, count: int) -> None:
    """``events`` are seq 2.. of ``sid`` carrying n = first, first+1, … once each, in order."""
    assert [e.seq for e in events] == list(range(2, 2 + count)), [e.seq for e in events]
    assert [e.payload["n"] for e in events] == list(range(first, first + count))
    assert all(e.stream_id == sid for e in events)
    positions = [e.pos for e in events]
    assert positions == sorted(set(positions))


# -- subscriptions against a real hub ------------------------------------------------------


async def test_stream_replays_then_follows_live(hub: HubProcess) -> None:
    async with platform(hub) as c:
        created = await open_stream(c, "s-live")
        stored = await c.append("s-live", [draft("s-live", n) for n in (1, 2)])
        assert [e.seq for e in stored] == [2, 3]
        assert isinstance(created, Event)
        assert (created.seq, created.opcode, created.name, created.stream_id) == (
            1, 501, "ORDER_CREATE", "s-live")  # fmt: skip
        assert created.payload["customer"] == "cust-a"
        assert created.delta == 10
        assert set(created.to_dict()) == {
            "id", "streamId", "seq", "pos", "opcode", "name", "nodeId", "pointId", "delta",
            "payload", "ts",
        }  # fmt: skip

        async with c.stream("s-live", frames=True) as sub:
            items = aiter(sub)
            got = await take(items, 4)
            assert [type(i) for i in got] == [Event, Event, Event, Frame]
            assert [i.seq for i in got[:3]] == [1, 2, 3]
            assert got[:3] == [created, *stored]
            assert got[3].type == "live"
            assert got[3]["seq"] == 3
            await c.append("s-live", draft("s-live", 3))
            (live,) = await take(items, 1)
            assert isinstance(live, Event)
            assert (live.seq, live.payload) == (4, {"n": 3})
            assert sub.cursor == 4
            assert sub.connects == 1

        # since: only what comes after it; events only (the default)
        async with c.stream("s-live", since=2) as sub:
            got = await take(aiter(sub), 2)
            assert [e.seq for e in got] == [3, 4]


async def test_inbox_carries_the_tenants_streams_by_pos(hub: HubProcess) -> None:
    async with platform(hub) as c, as_(hub, "cust-i", "customer") as me:
        first = await open_stream(c, "s-in1", customer="cust-i")
        await open_stream(c, "s-other", customer="cust-z")  # not cust-i's
        await c.append("s-in1", draft("s-in1", 1))
        inbox = me.inbox()
        items = aiter(inbox)
        got = await take(items, 2)
        assert [(e.stream_id, e.seq) for e in got] == [("s-in1", 1), ("s-in1", 2)]
        assert got[0] == first
        second = await open_stream(c, "s-in2", customer="cust-i")
        (live,) = await take(items, 1)
        assert live == second
        assert inbox.cursor == second.pos
        await inbox.aclose()

        # resumed from a pos: the same events after it
        async with me.inbox(since=got[1].pos) as again:
            (resumed,) = await take(aiter(again), 1)
            assert resumed == second


class Proxy:
    """A TCP proxy to a hub whose connections the test can cut (a network failure)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.requests: list[str] = []  # the first line of each connection (the upgrade's)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if log:
                        self.requests.append(data.split(b"\r\n", 1)[0].decode())
                        log = False
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def cut(self) -> None:
        """Reset every connection (no close frame: the client sees 1006)."""
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_resume_after_the_connection_drops(hub: HubProcess) -> None:
    proxy = await Proxy(hub.port).start()
    try:
        async with platform(hub) as writer, platform(proxy.url) as c:
            await open_stream(writer, "s-cut")
            async with c.stream("s-cut", since=1) as sub:
                items = aiter(sub)
                feed = asyncio.create_task(appender(writer, "s-cut", range(1, 41), pause=0.02))
                got = await take(items, 10)
                proxy.cut()
                got += await take(items, 15)
                proxy.cut()
                got += await take(items, 15)
                await feed
            check_exactly_once(got, "s-cut", 1, 40)
            assert sub.connects >= 3
            sinces = [int(r.split("since=")[1].split()[0]) for r in proxy.requests]
            assert sinces[0] == 1
            assert sinces == sorted(sinces)  # each reconnect resumes from the last seq seen
            assert sinces[-1] > 11
    finally:
        await proxy.close()


async def test_every_event_once_across_a_hub_restart(hub: HubProcess) -> None:
    async with platform(hub) as writer, platform(hub) as c:
        await open_stream(writer, "s-restart")
        total = 80
        async with c.stream("s-restart", since=1) as sub:
            items = aiter(sub)
            feed = asyncio.create_task(appender(writer, "s-restart", range(1, total + 1), 0.02))
            got = await take(items, 20)
            # SIGTERM (sockets are closed 1012), then a new process on the same dir and port
            await asyncio.to_thread(hub.stop)
            await asyncio.to_thread(hub.start)
            got += await take(items, total - 20, seconds=60)
            await feed
        check_exactly_once(got, "s-restart", 1, total)
        assert sub.connects >= 2
        page = await c.read("s-restart")
        assert [e.seq for e in page.events] == list(range(1, total + 2))
        assert page.events[1:] == got


async def test_a_slow_consumer_loses_nothing_and_holds_a_bounded_queue(hub: HubProcess) -> None:
    async with platform(hub, queue_size=4) as c:
        await open_stream(c, "s-slow")
        for start in (1, 101, 201):
            await c.append("s-slow", [draft("s-slow", n) for n in range(start, start + 100)])
        async with c.stream("s-slow", since=1) as sub:
            items = aiter(sub)
            got = await take(items, 5)
            await asyncio.sleep(0.5)  # the reader waits on the full queue meanwhile
            assert sub._queue.qsize() <= 4
            got += await take(items, 295)
        check_exactly_once(got, "s-slow", 1, 300)


async def test_4403_stops_with_forbidden(hub: HubProcess) -> None:
    async with platform(hub) as c, as_(hub, "cust-out", "customer") as outsider:
        await open_stream(c, "s-private")
        for sid in ("s-private", "s-missing"):  # a stream that does not exist looks the same
            sub = outsider.stream(sid)
            with pytest.raises(Forbidden) as info:
                await drain(sub)
            assert info.value.close_code == 4403
            assert sub.connects == 1  # not retried


async def test_4401_stops_with_unauthorized(hub: HubProcess) -> None:
    async with HubClient(hub.url, token="not-a-token", **FAST) as c:
        sub = c.stream("s-any")
        with pytest.raises(Unauthorized) as info:
            await drain(sub)
        assert info.value.close_code == 4401
        assert sub.connects == 1

    # with a provider: one more try with a fresh token, then the error
    calls = 0

    def bad() -> str:
        nonlocal calls
        calls += 1
        return "still-not-a-token"

    async with HubClient(hub.url, token_provider=bad, **FAST) as c:
        with pytest.raises(Unauthorized):
            await drain(c.inbox())
    assert calls == 2


async def test_archived_ends_the_iteration(hub: HubProcess) -> None:
    async with platform(hub) as c:
        await open_stream(c, "s-arch")
        await c.append("s-arch", draft("s-arch", 1))
        sub = c.stream("s-arch", frames=True)
        seen: list[Any] = []

        async def follow() -> None:
            async for item in sub:
                seen.append(item)

        task = asyncio.create_task(follow())
        await until(lambda: any(isinstance(i, Frame) and i.type == "live" for i in seen))
        answer = await c.archive("s-arch")
        assert answer["status"] == "archived"
        async with asyncio.timeout(timeout(10)):
            await task  # ends normally
        assert [i.seq for i in seen if isinstance(i, Event)] == [1, 2]
        assert isinstance(seen[-1], Frame)
        assert seen[-1].type == "archived"
        assert sub.archived

        # an archived stream: its events from the archive, then the end
        events = [e async for e in c.stream("s-arch")]
        assert [e.seq for e in events] == [1, 2]
        page = await c.read("s-arch")
        assert page.status == "archived"
        assert page.events == events


async def until(probe: Callable[[], Any], seconds: float = 10) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- HTTP -------------------------------------------------------------------------------


async def test_http_calls_raise_typed_errors(hub_factory: Callable[..., HubProcess],
                                            tmp_path: Path) -> None:  # fmt: skip
    data = tmp_path / "data"
    await asyncio.to_thread(run_seed, data)
    hub = hub_factory(data_dir=data)
    items = [{"productId": "prod-shw", "qty": 2}, {"productId": "prod-lbn", "qty": 1}]
    async with (
        as_(hub, "ali", "customer") as ali,
        as_(hub, "bab-hara", "restaurant") as kitchen,
        as_(hub, "other", "customer") as other,
        platform(hub) as ops,
    ):
        created = await ali.create_order("bab-hara", items, "Marina Walk", notes="Extra garlic")
        assert isinstance(created, OrderCreated)
        assert created.order_status == "placed"
        assert created.stream_id == created.order_id
        assert [e.name for e in created.events] == ["ORDER_CREATE"]
        oid = created.order_id

        with pytest.raises(Conflict) as conflict:  # a step out of turn
            await kitchen.accept(oid)
        assert (conflict.value.status, conflict.value.code) == (409, "out_of_turn")
        assert conflict.value.message
        assert conflict.value.body["error"]["code"] == "out_of_turn"

        with pytest.raises(Forbidden) as forbidden:  # not the order's customer
            await other.pay(oid)
        assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")

        paid = await ali.pay(oid, card_last4="4242")
        assert paid.order_status == "paid"
        assert [e.name for e in paid.events] == ["INVOICE_PAYMENT"]
        with pytest.raises(Conflict) as again:
            await ali.pay(oid)
        assert again.value.code == "already_done"

        with pytest.raises(Unprocessable) as bad:
            await ali.create_order("bab-hara", [{"productId": "prod-nope", "qty": 1}], "Here")
        assert (bad.value.status, bad.value.code) == (422, "unknown_product")
        with pytest.raises(Unprocessable) as opcode:
            await ops.append("s-x", {"opcode": 999})
        assert opcode.value.code == "unknown_opcode"

        with pytest.raises(NotFound):  # the platform reading a stream that does not exist
            await ops.read("s-nothing-here")

        view = await ali.order(oid)
        assert view["orderStatus"] == "paid"
        cancelled = await ali.cancel(oid, reason="changed my mind")
        assert cancelled.order_status == "cancelled"
        assert (await ops.read(oid)).order_status == "cancelled"

    async with HubClient(hub.url, token="bad") as nobody:
        with pytest.raises(Unauthorized) as unauthorized:
            await nobody.order("ord-1")
        assert unauthorized.value.status == 401
        assert unauthorized.value.code == "invalid_token"

    async with HubClient(f"http://127.0.0.1:{free_port()}") as gone:
        with pytest.raises(Unreachable) as unreachable:
            await gone.read("s-1")
        assert unreachable.value.retryable


async def test_http_asks_the_provider_again_once_after_a_401(hub: HubProcess) -> None:
    tokens = [token("ops", "platform", ttl=-60), token("ops", "platform")]  # expired, then good
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return tokens.pop(0)

    async with HubClient(hub.url, token_provider=provider) as c:
        await open_stream(c, "s-retry")
        assert (await c.read("s-retry")).last_seq == 1
    assert calls == 2


# -- tokens --------------------------------------------------------------------------------


async def test_tokens_are_refreshed_on_the_open_socket(hub: HubProcess) -> None:
    """Short-lived tokens (3 s) from a provider: the socket outlives several of them, and the
    hub takes each new one with an ``auth`` frame (contract §7), with no reconnect. (An older
    hub answers ``unknown_frame``: the stand-in test below covers that fallback.)"""
    issued: list[str] = []

    def provider() -> str:
        issued.append(token("ops", "platform", ttl=3))
        return issued[-1]

    async with platform(hub) as writer, HubClient(hub.url, token_provider=provider, **FAST) as c:
        await open_stream(writer, "s-auth")
        async with c.stream("s-auth", since=1, frames=True) as sub:
            items = aiter(sub)
            feed = asyncio.create_task(appender(writer, "s-auth", range(1, 31), pause=0.25))
            got: list[Event | Frame] = []
            async with asyncio.timeout(timeout(30)):
                while sum(isinstance(i, Event) for i in got) < 30:
                    got.append(await anext(items))
            await feed
        events = [i for i in got if isinstance(i, Event)]
        check_exactly_once(events, "s-auth", 1, 30)
        assert len(issued) >= 3  # ~8 s of 3 s tokens
        answers = [i for i in got if isinstance(i, Frame) and i.type == "auth"]
        assert sub.refreshes >= len(answers) >= 2, [i for i in got if isinstance(i, Frame)]
        assert all(isinstance(a["exp"], int | float) for a in answers)
        assert sub.connects == 1  # refreshed in place


# -- a stand-in hub for what a real one does not do on demand ----------------------------


class StandIn:
    """A scripted hub: one stream whose log grows by itself; each connection is served by
    ``script(ws, since, n)`` (n: the connection's number from 0), which may close it."""

    def __init__(self, script: Callable[[ServerConnection, int, int], Awaitable[None]]) -> None:
        self.script = script
        self.log: list[dict[str, Any]] = []
        self.connections: list[tuple[str, str]] = []  # (path, authorization)
        self.client_frames: list[dict[str, Any]] = []

    def event(self, seq: int) -> dict[str, Any]:
        return {"type": "event", "id": f"e{seq}", "streamId": "s", "seq": seq, "pos": seq,
                "opcode": 301, "name": "TASK_CREATE", "nodeId": None, "pointId": None,
                "delta": 0, "payload": {"n": seq}, "ts": "2026-11-27T12:30:00.000Z"}  # fmt: skip

    async def grow(self) -> None:
        while True:
            self.log.append(self.event(len(self.log) + 1))
            await asyncio.sleep(0.02)

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path = ws.request.path
        self.connections.append((path, ws.request.headers.get("Authorization", "")))
        since = int(path.split("since=")[1])
        await self.script(ws, since, len(self.connections) - 1)

    async def send_from(self, ws: ServerConnection, since: int, until: float) -> None:
        """Send the log after ``since`` (and what comes) for ``until`` seconds."""
        i = since
        deadline = time.monotonic() + until
        while time.monotonic() < deadline and ws.close_code is None:
            while i < len(self.log):
                await ws.send(json.dumps(self.log[i]))
                i += 1
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def stand_in(script: Callable[[StandIn, ServerConnection, int, int], Awaitable[None]]
                   ) -> AsyncIterator[tuple[StandIn, str]]:  # fmt: skip
    hub: StandIn

    async def run(ws: ServerConnection, since: int, n: int) -> None:
        await script(hub, ws, since, n)

    hub = StandIn(run)
    grower = asyncio.create_task(hub.grow())
    async with serve(hub.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        try:
            yield hub, f"http://127.0.0.1:{port}"
        finally:
            grower.cancel()
            await asyncio.gather(grower, return_exceptions=True)


async def test_an_older_hub_gets_a_new_connection_with_the_new_token() -> None:
    """``auth`` answered ``unknown_frame``: reconnect with the new token from the last seq."""

    async def script(hub: StandIn, ws: ServerConnection, since: int, n: int) -> None:
        async def read() -> None:
            async for text in ws:
                frame = json.loads(text)
                hub.client_frames.append(frame)
                await ws.send(json.dumps({"type": "error", "error": {
                    "code": "unknown_frame", "message": "expected ping|location"}}))  # fmt: skip

        reader = asyncio.create_task(read())
        try:
            await hub.send_from(ws, since, 30)
        finally:
            reader.cancel()

    issued: list[str] = []

    def provider() -> str:
        issued.append(token("ops", "platform", ttl=3))
        return issued[-1]

    async with stand_in(script) as (hub, url), HubClient(url, token_provider=provider) as c:
        sub = c.stream("s")
        items = aiter(sub)
        got: list[Event] = []
        async with asyncio.timeout(timeout(20)):
            while sub.connects < 2 or len(got) < 150:
                got.append(await anext(items))
        await sub.aclose()
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    assert hub.client_frames[0] == {"type": "auth", "token": issued[1]}
    (first_path, first_auth), (second_path, second_auth) = hub.connections[:2]
    assert first_path == "/ws/streams/s?since=0"
    assert first_auth == f"Bearer {issued[0]}"
    assert second_auth == f"Bearer {issued[1]}"
    assert int(second_path.split("since=")[1]) > 0
    assert token_claims(issued[1])["sub"] == "ops"  # type: ignore[index]


@pytest.mark.parametrize("code", [4008, 1011, 1012, 1001, 4401])
async def test_close_codes_that_resume(code: int) -> None:
    """4008/1011/1012/1001 resume from the last seq; 4401 too, once, with a fresh token."""

    async def script(hub: StandIn, ws: ServerConnection, since: int, n: int) -> None:
        await hub.send_from(ws, since, 0.3)
        await ws.close(code if n < 2 else 1000)

    tokens = iter(token("ops", "platform", ttl=600 + i) for i in range(10))  # all different
    async with (
        stand_in(script) as (hub, url),
        HubClient(url, token_provider=lambda: next(tokens), **FAST) as c,
    ):
        got: list[Event] = []
        sub = c.stream("s")
        async with asyncio.timeout(timeout(20)):
            async for event in sub:
                got.append(event)
                if sub.connects >= 3 and len(got) >= 10:
                    break
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    sinces = [int(p.split("since=")[1]) for p, _ in hub.connections]
    assert sinces[0] == 0
    assert sinces[1] > 0
    if code == 4401:
        assert hub.connections[0][1] != hub.connections[1][1]  # a fresh token


async def test_4401_twice_in_a_row_stops() -> None:
    async def script(hub: StandIn, ws: ServerConnection, since: int, n: int) -> None:
        await ws.close(4401)

    async with (
        stand_in(script) as (hub, url),
        HubClient(url, token_provider=lambda: token("ops", "platform"), **FAST) as c,
    ):
        with pytest.raises(Unauthorized):
            await drain(c.stream("s"))
    assert len(hub.connections) == 2


async def test_max_retries_gives_up_with_unreachable() -> None:
    port = free_port()
    async with HubClient(f"http://127.0.0.1:{port}", token="t", max_retries=2, **FAST) as c:
        sub = c.stream("s")
        with pytest.raises(Unreachable):
            await drain(sub)
        assert sub.connects == 0
