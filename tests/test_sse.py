"""Server-Sent Events against a real hub (docs/protocol.md §5 "Server-Sent Events", §7):
``GET /sse/streams/{id}`` and ``GET /sse/inbox`` read with a real HTTP client (httpx,
streaming): replay, live and exactly-once resume with ``Last-Event-ID`` and ``?since=``,
the same JSON as the WebSocket's frames, refusals before the stream starts, every end
(archived, membership ended, stalled, token expired, shutdown) as ``event: close``,
keepalive comments, a slow reader's bounded memory, a restart, and the per-tenant cap.

Every test starts its own hub (``hub serve`` in a subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from hub.edge.sse import CLOSE_GRACE, close_block, frame_block
from tests.conftest import HubProcess, auth, timeout, token
from tests.test_order_unhappy import act
from tests.test_orders import RAMI, advance, place, seeded
from tests.test_ws import (
    KITCHEN,
    PAD,
    PLATFORM,
    RssSampler,
    append,
    http,
    metrics,
    new_sid,
    order,
    poll_metrics,
    ws,
)

__all__ = ["seeded"]  # the fixture, used here

Json = dict[str, Any]
ALI = auth("ali", "customer")
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache",
               "x-accel-buffering": "no"}  # fmt: skip


# -- an SSE client ---------------------------------------------------------------------


@dataclass
class Message:
    """One SSE message as EventSource would dispatch it (``event`` "comment" for a comment
    line, which EventSource ignores), with when it arrived."""

    event: str
    data: str
    id: str | None
    at: float

    def json(self) -> Json:
        value: Json = json.loads(self.data)
        return value


class Sse:
    """A streaming ``text/event-stream`` response, read one message at a time (the SSE
    parsing rules: ``field: value`` lines, a blank line dispatches)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.ended = False

    async def next(self, seconds: float = 10) -> Message | None:
        """The next message (comments included); None when the response has ended."""
        event, data, last_id = "", [], None
        while True:
            try:
                line = await asyncio.wait_for(anext(self._lines), timeout(seconds))
            except StopAsyncIteration:
                self.ended = True
                assert not data, f"the body ended inside a message: {data}"
                return None
            if line == "":
                if data:
                    return Message(event or "message", "\n".join(data), last_id, time.time())
                continue
            if line.startswith(":"):
                assert not data, f"a comment inside a message: {line!r}"
                return Message("comment", line[1:].strip(), None, time.time())
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                last_id = value
            else:
                raise AssertionError(f"unexpected field {line!r}")

    async def frame(self, seconds: float = 10) -> Message:
        """The next message that is not a comment (the response must not end first)."""
        while True:
            msg = await self.next(seconds)
            assert msg is not None, "the response ended"
            if msg.event != "comment":
                return msg

    async def until_end(self, seconds: float = 10) -> list[Message]:
        """Every message (comments left out) until the response ends."""
        out: list[Message] = []
        while (msg := await self.next(seconds)) is not None:
            if msg.event != "comment":
                out.append(msg)
        return out


@asynccontextmanager
async def sse(c: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None,
              **extra: str) -> AsyncIterator[Sse]:  # fmt: skip
    """An event stream on ``path``, checked to have started (200, the SSE headers)."""
    async with c.stream("GET", path, headers={**(headers or {}), **extra}) as r:
        if r.status_code != 200:
            await r.aread()
        assert r.status_code == 200, (r.status_code, r.text)
        for name, value in SSE_HEADERS.items():
            assert r.headers.get(name) == value, (name, r.headers)
        assert "content-encoding" not in r.headers
        yield Sse(r)


async def refused(c: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None,
                  **extra: str) -> tuple[int, str]:  # fmt: skip
    """The status and error code of a refused event stream (the hub's error body)."""
    async with c.stream("GET", path, headers={**(headers or {}), **extra}) as r:
        await r.aread()
        assert r.status_code >= 400, (r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        return r.status_code, body["error"]["code"]


def event_of(msg: Message, key: str, stream_id: str | None = None) -> Json:
    """An ``event`` message: its ``id`` is the event's ``key``; returns the event (the
    frame without ``type``)."""
    assert msg.event == "event", msg
    frame = msg.json()
    assert frame.pop("type") == "event", frame
    assert msg.id == str(frame[key]), (msg.id, frame)
    if stream_id is not None:
        assert frame["streamId"] == stream_id, frame
    return frame


def non_event(msg: Message, kind: str) -> Json:
    """A frame other than an event: ``event: <type>``, no ``id``."""
    assert msg.event == kind, msg
    assert msg.id is None, msg
    frame = msg.json()
    assert frame["type"] == kind, frame
    return frame


async def replay(stream: Sse, key: str, since: int = 0, stream_id: str | None = None) -> list[Json]:
    """Events until the ``live`` frame (checked); returns the events."""
    events: list[Json] = []
    last = since
    while True:
        msg = await stream.frame()
        if msg.event == "live":
            live = non_event(msg, "live")
            expected = {"type": "live", key: last}
            if key == "seq":
                expected["streamId"] = stream_id
            assert live == expected, (live, expected)
            return events
        event = event_of(msg, key, stream_id)
        assert event[key] > last, (event, last)
        if key == "seq":
            assert event[key] == last + 1, (event, last)
        last = event[key]
        events.append(event)


async def next_events(stream: Sse, count: int, key: str,
                      stream_id: str | None = None) -> list[Json]:  # fmt: skip
    return [event_of(await stream.frame(), key, stream_id) for _ in range(count)]


def close_code(msg: Message) -> int:
    """The WebSocket close code an ``event: close`` message carries."""
    assert msg.event == "close", msg
    assert msg.id is None, msg
    body = msg.json()
    assert set(body) == {"code"}, body
    code: int = body["code"]
    return code


def batch(start: int, stop: int, pad: str = "") -> list[Json]:
    return [{"opcode": 102, "payload": {"n": n, "pad": pad}} for n in range(start, stop)]


# -- 1: replay, live, exactly-once resume ----------------------------------------------


async def test_stream_replay_live_and_resume_with_last_event_id_and_since(hub: HubProcess) -> None:
    """Replay, ``live``, live events; every data line is the WebSocket's frame, byte for
    byte; a reconnect with Last-Event-ID (or ?since=) gets what it missed, once."""
    sid = new_sid("order")
    async with http(hub) as c:
        acked = await append(c, sid, [order("ali")], ALI)
        acked += await append(c, sid, batch(0, 9))
        async with ws(hub, f"/ws/streams/{sid}", ALI) as sock, \
                sse(c, f"/sse/streams/{sid}", ALI) as stream:  # fmt: skip
            new = await append(c, sid, batch(9, 14))
            messages = [await stream.frame() for _ in range(len(acked) + 1 + len(new))]
            # The WebSocket got the same frames: the same JSON text, not only equal values.
            texts = [await asyncio.wait_for(sock.recv(), timeout(10)) for _ in messages]
            assert [m.data for m in messages] == texts, "data is the WebSocket frame's text"
            live = non_event(messages[len(acked)], "live")
            assert live == {"type": "live", "streamId": sid, "seq": len(acked)}
            events = [event_of(m, "seq", sid) for m in messages if m.event != "live"]
            acked += new
            assert events == acked

        # Away after seq 8: resume with Last-Event-ID, then with ?since=.
        acked += await append(c, sid, batch(14, 20))
        for path, headers in ((f"/sse/streams/{sid}", {"last-event-id": "8"}),
                              (f"/sse/streams/{sid}?since=8", {}),
                              # the header wins over since
                              (f"/sse/streams/{sid}?since=2", {"last-event-id": "8"})):  # fmt: skip
            async with sse(c, path, ALI, **headers) as stream:
                assert await replay(stream, "seq", since=8, stream_id=sid) == acked[8:]
                more = await append(c, sid, batch(100, 102))
                acked += more
                assert await next_events(stream, 2, "seq", sid) == more
        # Past the end: nothing replayed, live at since.
        async with sse(c, f"/sse/streams/{sid}", ALI, **{"last-event-id": "999"}) as stream:
            assert await replay(stream, "seq", since=999, stream_id=sid) == []


async def test_inbox_replay_live_and_resume_across_streams(hub: HubProcess) -> None:
    """A kitchen's inbox over SSE: its orders' events by pos (``id: <pos>``), resumed with
    Last-Event-ID exactly once; another restaurant's order never shows."""
    async with http(hub) as c:
        ours = [new_sid("in") for _ in range(3)]
        other = new_sid("other")
        acked: list[Json] = []
        for sid in ours:
            acked += await append(c, sid, [order("ali")], ALI)
        await append(c, other, [order("ali", "zaatar")], ALI)
        for sid in ours:
            acked += await append(c, sid, batch(0, 3))
        acked.sort(key=lambda e: e["pos"])
        async with sse(c, "/sse/inbox", KITCHEN) as inbox:
            assert await replay(inbox, "pos") == acked
            live = await append(c, ours[1], batch(3, 6))
            await append(c, other, batch(0, 2))
            live += await append(c, ours[0], batch(3, 5))
            acked += live
            assert await next_events(inbox, len(live), "pos") == live
        cut = acked[4]["pos"]
        acked += await append(c, ours[2], batch(9, 12))
        async with sse(c, "/sse/inbox", KITCHEN, **{"last-event-id": str(cut)}) as inbox:
            assert await replay(inbox, "pos", since=cut) == acked[5:]
        query = f"since={cut}&token={token('bab-hara', 'restaurant')}"
        async with sse(c, f"/sse/inbox?{query}") as inbox:
            assert await replay(inbox, "pos", since=cut) == acked[5:]


# -- 2: refusals before the stream starts ------------------------------------------------


async def test_refusals_are_http_statuses_before_the_stream_starts(hub: HubProcess) -> None:
    """No or bad token 401; a non-member 403, the same as a stream that does not exist; a
    bad cursor 400; an invalid id 400: each with the error body, and nothing changes."""
    sid = new_sid("order")
    async with http(hub) as c:
        await append(c, sid, [order("ali")], ALI)
        before = await metrics(c)
        expired = token("ali", "customer", ttl=-10)
        cases = [
            (f"/sse/streams/{sid}", {}, (401, "unauthorized")),
            (f"/sse/streams/{sid}", {"authorization": "Bearer nope"}, (401, "invalid_token")),
            (f"/sse/streams/{sid}?token=nope", {}, (401, "invalid_token")),
            (f"/sse/streams/{sid}?token={expired}", {}, (401, "token_expired")),
            ("/sse/inbox", {}, (401, "unauthorized")),
            (f"/sse/streams/{sid}", auth("eve", "customer"), (403, "forbidden")),
            (f"/sse/streams/{new_sid('nothing')}", auth("eve", "customer"), (403, "forbidden")),
            (f"/sse/streams/{new_sid('nothing')}", ALI, (403, "forbidden")),
            (f"/sse/streams/{sid}", auth("rami", "driver"), (403, "forbidden")),
            ("/sse/streams/bad%20id", ALI, (400, "invalid_stream_id")),
            (f"/sse/streams/{sid}?since=x", ALI, (400, "invalid_since")),
            (f"/sse/streams/{sid}?since=-1", ALI, (400, "invalid_since")),
            (f"/sse/streams/{sid}?since=1e3", ALI, (400, "invalid_since")),
            (f"/sse/streams/{sid}?since={'9' * 19}", ALI, (400, "invalid_since")),
            (f"/sse/streams/{sid}", {**ALI, "last-event-id": "abc"},
             (400, "invalid_last_event_id")),
            (f"/sse/streams/{sid}?since=3", {**ALI, "last-event-id": "-2"},
             (400, "invalid_last_event_id")),
            ("/sse/inbox?since=%C3%A9", KITCHEN, (400, "invalid_since")),
            ("/sse/inbox", {**KITCHEN, "last-event-id": "1.5"}, (400, "invalid_last_event_id")),
        ]  # fmt: skip
        for path, headers, expected in cases:
            assert await refused(c, path, headers) == expected, (path, headers)
        r = await c.post("/sse/inbox", headers=KITCHEN)
        assert r.status_code == 405
        assert r.json()["error"]["code"] == "method_not_allowed"
        after = await metrics(c)
        assert after["hub_ws_sessions"] == 0
        for series, value in before.items():
            if series.startswith("hub_db_writes_total"):
                assert after[series] == value, series
        # The same hub still serves: an empty since counts as 0, a HEAD starts nothing.
        async with sse(c, f"/sse/streams/{sid}?since=", ALI) as stream:
            assert len(await replay(stream, "seq", stream_id=sid)) == 1
        r = await c.head(f"/sse/streams/{sid}", headers=ALI)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        # The platform may follow a stream that does not exist yet.
        fresh = new_sid("later")
        async with sse(c, f"/sse/streams/{fresh}", PLATFORM) as stream:
            assert await replay(stream, "seq", stream_id=fresh) == []
            created = await append(c, fresh, [order("ali")], ALI)
            assert await next_events(stream, 1, "seq", fresh) == created


# -- 3: how a stream ends ------------------------------------------------------------------


async def test_archived_ends_with_the_archived_frame_then_close_1000(hub: HubProcess) -> None:
    """Archiving sends ``archived`` then ``close`` 1000 and ends the response; a stream
    opened on an archived stream replays from the archive, then the same end, no live."""
    sid = new_sid("arch")
    async with http(hub) as c:
        acked = await append(c, sid, [order("ali")], ALI)
        acked += await append(c, sid, batch(0, 5))
        async with sse(c, f"/sse/streams/{sid}", ALI) as stream:
            assert await replay(stream, "seq", stream_id=sid) == acked
            r = await c.post(f"/api/streams/{sid}/archive", headers=PLATFORM)
            assert r.status_code == 200, r.text
            rest = await stream.until_end()
            assert [m.event for m in rest] == ["archived", "close"], rest
            assert non_event(rest[0], "archived") == {"type": "archived", "streamId": sid}
            assert close_code(rest[1]) == 1000
        async with sse(c, f"/sse/streams/{sid}", ALI, **{"last-event-id": "2"}) as stream:
            rest = await stream.until_end()
            assert [event_of(m, "seq", sid) for m in rest[:-2]] == acked[2:]
            assert [m.event for m in rest[-2:]] == ["archived", "close"]
            assert close_code(rest[-1]) == 1000
        assert (await metrics(c))["hub_ws_sessions"] == 0


async def test_a_declining_driver_is_closed_4403_after_his_unassign(
    seeded: Callable[..., HubProcess],
) -> None:
    """Rami declines: his event stream gets the TASK_UNASSIGN, then ``close`` 4403 within
    1 s; a new one is refused 403 before it starts."""
    hub = seeded()
    oid = "ord-sse"
    async with http(hub) as c:
        await place(c, oid)
        await advance(c, oid, "ready")
        async with sse(c, f"/sse/streams/{oid}", RAMI) as stream:
            await replay(stream, "seq", stream_id=oid)
            r = await act(c, oid, "decline", RAMI, {"reason": "flat tyre"})
            assert r.status_code == 200, r.text
            sent = time.time()
            unassign = r.json()["events"][0]
            assert unassign["opcode"] == 306
            rest = await stream.until_end(5)
            assert rest[-1].at - sent < timeout(1.0), rest[-1].at - sent
            assert close_code(rest[-1]) == 4403
            assert event_of(rest[-2], "seq", oid)["id"] == unassign["id"]
        assert await refused(c, f"/sse/streams/{oid}", RAMI) == (403, "forbidden")


async def test_keepalive_comments_come_while_nothing_else_does(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """With HUB_SSE_KEEPALIVE=0.3, an idle response gets a comment every 0.3 s or so, and
    nothing goes 0.3 s (plus slack) without a line; events do not stop them after."""
    every = 0.3
    hub = hub_factory(env={"HUB_SSE_KEEPALIVE": str(every)})
    sid = new_sid("quiet")
    async with http(hub) as c:
        await append(c, sid, [order("ali")], ALI)
        async with sse(c, f"/sse/streams/{sid}", ALI) as stream:
            await replay(stream, "seq", stream_id=sid)
            start = last = time.time()
            gaps, comments = [], 0
            while time.time() - start < 2.5:
                msg = await stream.next(5)
                assert msg is not None
                gaps.append(msg.at - last)
                last = msg.at
                if msg.event == "comment":
                    assert msg.data == "keepalive"
                    comments += 1
                    if comments == 3:
                        await append(c, sid, batch(0, 1))
                else:
                    assert msg.event == "event", msg
        print(f"{comments} comments; gaps {[round(g, 3) for g in gaps]}")
        assert comments >= 5, comments
        assert max(gaps) < every + timeout(0.25), gaps


async def test_a_token_that_expires_ends_the_stream_4401_within_a_second(
    hub: HubProcess,
) -> None:
    """A token with ``exp`` 2 s ahead: ``close`` 4401 at ``exp`` (not before, within 1 s);
    a reconnect with a fresh token and Last-Event-ID goes on, missing nothing."""
    sid = new_sid("exp")
    async with http(hub) as c:
        await append(c, sid, [order("ali")], ALI)
        for path, key, stream_id in ((f"/sse/streams/{sid}", "seq", sid),
                                     ("/sse/inbox", "pos", None)):  # fmt: skip
            short = token("ali", "customer", ttl=2)
            exp = jwt.decode(short, options={"verify_signature": False})["exp"]
            async with sse(c, f"{path}?token={short}") as stream:
                await replay(stream, key, stream_id=stream_id)
                await append(c, sid, batch(0, 2))
                seen = await next_events(stream, 2, key, stream_id)
                rest = await stream.until_end(5)
                assert [m.event for m in rest] == ["close"], rest
                assert close_code(rest[0]) == 4401
                ended = rest[0].at
                print(f"{path}: closed {ended - exp:+.3f}s from exp")
                assert exp - 0.05 <= ended <= exp + timeout(1.0), (path, ended - exp)
            # A fresh token and Last-Event-ID: nothing missed, nothing twice.
            last = seen[-1][key]
            await append(c, sid, batch(2, 3))
            async with sse(c, path, ALI, **{"last-event-id": str(last)}) as stream:
                again = await replay(stream, key, since=last, stream_id=stream_id)
                assert [e["payload"]["n"] for e in again] == [2]


# -- 4: slow readers ------------------------------------------------------------------------


async def test_a_slow_reader_holds_bounded_memory_and_gets_every_event_once(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """A reader that reads nothing while 2,000 events of 16 KiB (31 MiB) are appended holds
    the hub's memory down (its live queue overflows, it falls back to the log); a fast
    reader meanwhile gets all; then the slow one reads: every event once, in order.

    The live queue is bounded in events (HUB_WS_QUEUE_FRAMES, 1,024): at 16 KiB an event,
    and with each event's frame kept beside it, a full queue is ~45 MiB of RSS, for a
    WebSocket subscriber the same (measured). With 64 the bound is a few MiB, so growth
    near the 31 MiB appended would be the hub holding what the reader did not take."""
    hub = hub_factory(env={"HUB_WS_STALL_TIMEOUT": "60", "HUB_WS_QUEUE_FRAMES": "64"})
    assert hub.proc is not None
    total, size = 2000, 16
    sid = new_sid("bulk")
    pad = PAD * size
    # Its own connection, with the kernel's default buffers: a client that reads nothing
    # has them take a few MiB at most (receive autotuning grows only as the client reads);
    # an 8 KiB SO_RCVBUF would make the reading afterwards crawl (80 KB/s, measured).
    async with http(hub) as c, http(hub) as slow_c:
        warm = new_sid("warm")
        for _ in range(2):
            await append(c, warm, batch(0, 50, pad))
        async with sse(slow_c, f"/sse/streams/{sid}", PLATFORM) as slow, \
                sse(c, f"/sse/streams/{sid}", PLATFORM) as fast:  # fmt: skip
            assert await replay(slow, "seq", stream_id=sid) == []
            assert await replay(fast, "seq", stream_id=sid) == []
            with RssSampler(hub.proc.pid) as rss:
                baseline = rss.read()

                async def read_fast() -> None:
                    last = 0
                    while last < total:
                        event = event_of(await fast.frame(30), "seq", sid)
                        assert event["seq"] == last + 1
                        last = event["seq"]

                async def write() -> None:
                    for start in range(0, total, 50):
                        await append(c, sid, batch(start, start + 50, pad))

                await asyncio.wait_for(asyncio.gather(read_fast(), write()), timeout(120))
                m = await metrics(c)
                grown = rss.peak - baseline
                assert m["hub_ws_sessions"] == 2, "the slow reader was dropped"
                last = 0
                while last < total:
                    event = event_of(await slow.frame(30), "seq", sid)
                    assert event["seq"] == last + 1, (event["seq"], last)
                    last = event["seq"]
    print(f"{total} events of {size} KiB: RSS baseline {baseline / 2**20:.1f} MiB, growth"
          f" {grown / 2**20:.1f} MiB; fallbacks {m['hub_ws_slow_consumer_fallbacks_total']}")
    assert m["hub_ws_slow_consumer_fallbacks_total"] > 0
    assert grown < 16 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"


async def test_a_stalled_reader_is_closed_4008_and_resumes(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """A response whose sends make no progress for HUB_WS_STALL_TIMEOUT ends: the client,
    reading again, gets what was buffered, then ``close`` 4008; it resumes with
    Last-Event-ID and misses nothing; its place under the cap is free again."""
    stall = 2.0
    hub = hub_factory(env={"HUB_WS_STALL_TIMEOUT": str(stall)})
    sid = new_sid("stall")
    # 12 MiB: more than the kernel buffers of a client that reads nothing (the hub's
    # send buffer grows to 4 MiB here) and uvicorn's take, so the hub's sends stop.
    total, pad = 3000, PAD * 4
    async with http(hub) as c, http(hub) as slow_c:
        async with sse(slow_c, f"/sse/streams/{sid}", PLATFORM) as slow:
            assert await replay(slow, "seq", stream_id=sid) == []
            for start in range(0, total, 100):
                await append(c, sid, batch(start, start + 100, pad))
            written = time.monotonic()
            m = await poll_metrics(c, lambda m: m["hub_ws_stalled_closes_total"] >= 1, stall + 5)
            took = time.monotonic() - written
            assert m["hub_ws_stalled_closes_total"] >= 1, "the stalled response was not ended"
            assert took < timeout(stall + 3), took
            rest = await slow.until_end(10)
            events = [event_of(msg, "seq", sid) for msg in rest[:-1]]
            assert close_code(rest[-1]) == 4008
        last = events[-1]["seq"] if events else 0
        assert [e["seq"] for e in events] == list(range(1, last + 1))
        assert 0 < last < total
        async with sse(c, f"/sse/streams/{sid}", PLATFORM, **{"last-event-id": str(last)}) as again:
            rest_events = await replay(again, "seq", since=last, stream_id=sid)
        assert [e["seq"] for e in rest_events] == list(range(last + 1, total + 1))
        m = await poll_metrics(c, lambda m: m["hub_ws_sessions"] == 0, 5)
        assert m["hub_ws_sessions"] == 0


async def test_a_stalled_reader_that_never_reads_again_is_reset(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """A stalled response whose client takes nothing more, not even the close, for the
    close grace has its connection reset: its place under the cap is free, and nothing is
    logged as a failure."""
    hub = hub_factory(env={"HUB_WS_STALL_TIMEOUT": "1"})
    sid = new_sid("deaf")
    async with http(hub) as c, http(hub) as deaf_c, \
            sse(deaf_c, f"/sse/streams/{sid}", PLATFORM) as deaf:  # fmt: skip
        assert await replay(deaf, "seq", stream_id=sid) == []
        for start in range(0, 3000, 100):
            await append(c, sid, batch(start, start + 100, PAD * 4))
        m = await poll_metrics(c, lambda m: m["hub_ws_stalled_closes_total"] >= 1, 6)
        assert m["hub_ws_stalled_closes_total"] >= 1
        assert m["hub_ws_sessions"] == 1, "a place is held until the connection is gone"
        m = await poll_metrics(c, lambda m: m["hub_ws_sessions"] == 0, CLOSE_GRACE + 5)
        assert m["hub_ws_sessions"] == 0
        assert m["hub_ws_aborted_total"] == 1
        with pytest.raises(httpx.HTTPError):  # reset: the rest never comes
            await deaf.until_end()
    assert "ASGI callable" not in hub.log(), hub.log()[-3000:]
    assert "Traceback" not in hub.log(), hub.log()[-3000:]


# -- 5: a restart ---------------------------------------------------------------------------


async def test_streams_resume_across_a_restart_with_last_event_id(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """SIGTERM ends every response with ``close`` 1012; after a restart each reconnects
    with its Last-Event-ID (as EventSource does) and gets every event once, in order."""
    data_dir = tmp_path / "restart"
    hub = hub_factory(data_dir=data_dir)
    sid = new_sid("order")
    subs = {"stream": (f"/sse/streams/{sid}", ALI, "seq", sid),
            "kitchen": ("/sse/inbox", KITCHEN, "pos", None),
            "platform": ("/sse/inbox", PLATFORM, "pos", None)}  # fmt: skip
    seen: dict[str, list[Json]] = {name: [] for name in subs}
    codes: dict[str, int] = {}
    last_ids: dict[str, str] = {}

    async def follow(name: str, stream: Sse) -> None:
        _, _, key, stream_id = subs[name]
        while (msg := await stream.next(30)) is not None:
            if msg.event == "comment":
                continue
            if msg.event == "close":
                codes[name] = close_code(msg)
                continue
            seen[name].append(event_of(msg, key, stream_id))
            assert msg.id is not None
            last_ids[name] = msg.id  # what EventSource sends back as Last-Event-ID

    async with http(hub) as c, contextlib.AsyncExitStack() as stack:
        acked = await append(c, sid, [order("ali")], ALI)
        acked += await append(c, sid, batch(0, 20))
        tasks = []
        for name, (path, headers, key, stream_id) in subs.items():
            stream = await stack.enter_async_context(sse(c, path, headers))
            seen[name] = await replay(stream, key, stream_id=stream_id)
            assert seen[name] == acked, name
            last_ids[name] = str(acked[-1][key])
            tasks.append(asyncio.create_task(follow(name, stream)))
        acked += await append(c, sid, batch(20, 50))
        exit_code = await asyncio.to_thread(hub.stop)  # right away: some may miss some
        await asyncio.wait_for(asyncio.gather(*tasks), timeout(10))
    print(f"close codes {codes}; hub exit code {exit_code}; seen"
          f" {({n: len(s) for n, s in seen.items()})}")
    assert codes == dict.fromkeys(subs, 1012), codes

    hub = hub_factory(data_dir=data_dir)
    async with http(hub) as c, contextlib.AsyncExitStack() as stack:
        acked += await append(c, sid, batch(50, 60))
        streams = {}
        for name, (path, headers, key, stream_id) in subs.items():
            last = int(last_ids[name])
            assert seen[name] == [e for e in acked if e[key] <= last], name
            missed = [e for e in acked if e[key] > last]
            assert len(missed) >= 10, name
            streams[name] = await stack.enter_async_context(
                sse(c, path, headers, **{"last-event-id": last_ids[name]}))
            assert await replay(streams[name], key, since=last, stream_id=stream_id) == missed
            seen[name] += missed
        new = await append(c, sid, batch(60, 75))
        acked += new
        for name, (_, _, key, stream_id) in subs.items():
            seen[name] += await next_events(streams[name], len(new), key, stream_id)
            assert seen[name] == acked, name


# -- 6: the cap -----------------------------------------------------------------------------


async def test_the_per_tenant_cap_counts_event_streams_and_sockets_together(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """With HUB_WS_MAX_PER_TENANT=2, a tenant's third event stream gets 429 (and a third
    WebSocket 4029) while two are open, whichever transport they use; another role of the
    same tenant, or another tenant, is not held back; a closed one frees its place."""
    hub = hub_factory(env={"HUB_WS_MAX_PER_TENANT": "2"})
    sid = new_sid("cap")
    async with http(hub) as c:
        await append(c, sid, [order("ali")], ALI)
        async with sse(c, f"/sse/streams/{sid}", ALI) as one:
            await replay(one, "seq", stream_id=sid)
            async with ws(hub, "/ws/inbox", ALI) as sock:
                while json.loads(await asyncio.wait_for(sock.recv(), timeout(10)))["type"] != (
                        "live"):  # fmt: skip
                    pass
                assert await refused(c, "/sse/inbox", ALI) == (429, "too_many")
                async with ws(hub, "/ws/inbox", ALI) as third:
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await asyncio.wait_for(third.recv(), timeout(10))
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == 4029
                async with sse(c, "/sse/inbox", KITCHEN) as other, \
                        sse(c, "/sse/inbox", auth("ali", "driver")) as other_role:  # fmt: skip
                    await replay(other, "pos")
                    await replay(other_role, "pos")
            # The socket is gone: there is room for one more event stream, not two.
            m = await poll_metrics(c, lambda m: m["hub_ws_sessions"] == 1, 5)
            assert m["hub_ws_sessions"] == 1
            async with sse(c, "/sse/inbox", ALI) as two:
                await replay(two, "pos")
                assert await refused(c, "/sse/inbox", ALI) == (429, "too_many")
        m = await poll_metrics(c, lambda m: m["hub_ws_sessions"] == 0, 5)
        assert m["hub_ws_sessions"] == 0
        async with sse(c, "/sse/inbox", ALI) as again:
            await replay(again, "pos")


async def test_sessions_are_released_when_clients_leave(hub: HubProcess) -> None:
    """Clients that go away (closing the response mid-replay or while idle) release their
    place and their subscription; nothing is logged as a failure."""
    sid = new_sid("leave")
    async with http(hub) as c:
        await append(c, sid, [order("ali")], ALI)
        for start in range(0, 300, 100):
            await append(c, sid, batch(start, start + 100, PAD))
        for _ in range(5):
            async with c.stream("GET", f"/sse/streams/{sid}", headers=ALI) as r:
                assert r.status_code == 200
                async for _chunk in r.aiter_raw():
                    break  # mid-replay
            async with sse(c, "/sse/inbox", ALI) as inbox:
                await replay(inbox, "pos")
        m = await poll_metrics(c, lambda m: m["hub_ws_sessions"] == 0
                               and m["hub_ws_subscriptions"] == 0, 5)  # fmt: skip
        assert m["hub_ws_sessions"] == 0, m
        assert m["hub_ws_subscriptions"] == 0, m
    assert "Traceback" not in hub.log(), hub.log()[-3000:]


# -- the framing, without a hub ----------------------------------------------------------------


def test_frames_are_sse_messages_with_an_id_for_events_only() -> None:
    """``id:`` and ``event: event`` for an event, ``event: <type>`` for the rest; a frame
    of several lines (JSON may have them) is one ``data:`` line each, joined back by the
    client; a close message carries the code."""
    event = '{"type":"event","id":"e1","seq":7,"pos":42}'
    assert frame_block(event, 42) == f"id: 42\nevent: event\ndata: {event}\n\n".encode()
    assert frame_block('{"type": "event", "seq": 7}', 7).startswith(b"id: 7\nevent: event\n")
    live = json.dumps({"type": "live", "pos": 42})
    assert frame_block(live, 42) == f"event: live\ndata: {live}\n\n".encode()
    pretty = json.dumps({"type": "location", "lat": 1.5}, indent=1)
    block = frame_block(pretty, 3).decode()
    assert block.startswith("event: location\ndata: {\n")
    assert json.loads("\n".join(
        line[len("data: "):] for line in block.splitlines() if line.startswith("data: ")
    )) == {"type": "location", "lat": 1.5}  # fmt: skip
    odd = json.dumps({"lat": 1, "type": "presence"})  # type not first
    assert frame_block(odd, 3).startswith(b"event: presence\n")
    assert close_block(4401) == b'event: close\ndata: {"code": 4401}\n\n'
