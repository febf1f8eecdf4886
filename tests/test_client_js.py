"""hub-client.js in Debian's Chromium against a real hub (``hub serve``), as tests/test_ui.py
drives the pages: the transport fallback (docs/protocol.md §5, contract §7) and token refresh.

The page reaches the hub through :class:`Proxy`, a TCP proxy in this process (asyncio, in a
thread of its own) that passes everything on, but can refuse WebSocket upgrades (403, as a
corporate proxy does) and cut the WebSockets it carries; it also serves the blank test page
the client is imported into (``/__test``, same origin as the hub), and, on a port of its
own, short-lived tokens (``GET /`` on :attr:`Proxy.token_url`: a token endpoint, as an app's
backend would run one).

- 1,000 events appended while WebSockets are refused then allowed again: the client falls
  back to Server-Sent Events, comes back to WebSockets, and delivers each event once, in order.
- A token function with 3-second tokens: the socket stays open (WebSocket: the ``auth``
  frame; event stream: a new one at the cursor) with no reconnect and no gap.
- A 4401 gets one fresh token and a reconnect; a second one in a row ends in ``denied``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hub.domain.auth import issue_token
from hub.errors import CloseCode
from tests.conftest import SECRET, HubProcess, auth, timeout, token
from tests.test_ui import Browser, Page, browser, sync_api  # noqa: F401 (the fixture)

PLATFORM = ("ops", "platform")
UNAUTHORIZED = int(CloseCode.UNAUTHORIZED)
WAIT_MS = timeout(20) * 1000
TEST_PAGE = b"<!doctype html><meta charset=utf-8><title>hub-client.js</title><body>hub-client.js"
UPGRADE = re.compile(rb"(?im)^upgrade:[ \t]*websocket[ \t]*\r?$")


# -- the proxy --------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to ``upstream`` (127.0.0.1) that can refuse WebSocket upgrades.

    A connection is classified by its first request (Chromium opens a connection of its own
    for each WebSocket): an upgrade is refused with 403 while :meth:`block_websockets` is
    on, and the WebSockets it passed are cut when it is turned on.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.blocked = False
        self.ws_passed = 0  # WebSocket upgrades passed to the hub
        self.ws_refused = 0
        self.ws_delay = 0.0  # seconds the hub's first bytes on a new WebSocket are held back
        self.tokens: list[str] = []  # the tokens the token endpoint gave out
        self.token_for: tuple[str, str, float] = (*PLATFORM, 3)  # tenant, role, ttl
        self.port = self.token_port = 0
        self._ws: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.token_port}/"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout(10))

    def start(self) -> Proxy:
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        proxy = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        tokens = await asyncio.start_server(self._token, "127.0.0.1", 0)
        self._servers = [proxy, tokens]
        self.port = proxy.sockets[0].getsockname()[1]
        self.token_port = tokens.sockets[0].getsockname()[1]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout(10))
        self.loop.close()

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._conns):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    def block_websockets(self, blocked: bool) -> None:
        """Refuse (and cut) WebSockets, or let them through again."""

        async def apply() -> None:
            self.blocked = blocked
            if blocked:
                for a, b in list(self._ws):
                    a.transport.abort()
                    b.transport.abort()

        self._run(apply())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conns.add(writer)
        upstream: asyncio.StreamWriter | None = None
        pair = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            upgrade = UPGRADE.search(head) is not None
            if path.startswith(b"/__test"):
                await _respond(writer, "200 OK", "text/html", TEST_PAGE)
                return
            if upgrade and self.blocked:
                self.ws_refused += 1
                await _respond(writer, "403 Forbidden", "text/plain", b"WebSockets blocked\n")
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
            self._conns.add(upstream)
            upstream.write(head)
            if upgrade:
                self.ws_passed += 1
                pair = (writer, upstream)
                self._ws.add(pair)
            delay = self.ws_delay if upgrade else 0.0
            pipes = [asyncio.create_task(_pipe(reader, upstream)),
                     asyncio.create_task(_pipe(up_reader, writer, delay))]  # fmt: skip
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            if pair is not None:
                self._ws.discard(pair)
            for w in (writer, upstream):
                if w is not None:
                    self._conns.discard(w)
                    w.close()

    async def _token(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """``GET /``: a fresh token of :attr:`token_for`, to any origin (CORS)."""
        try:
            await reader.readuntil(b"\r\n\r\n")
            tenant, role, ttl = self.token_for
            value = issue_token(SECRET, tenant, role, ttl=ttl)
            self.tokens.append(value)
            await _respond(writer, "200 OK", "text/plain", value.encode())
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()


async def _respond(writer: asyncio.StreamWriter, status: str, kind: str, body: bytes) -> None:
    """A whole response, then the end of the connection (any origin may read it)."""
    head = (f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncache-control: no-store\r\n"
            f"access-control-allow-origin: *\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")  # fmt: skip
    writer.write(head.encode() + body)
    await writer.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float = 0.0) -> None:
    with contextlib.suppress(OSError):
        if delay:
            await asyncio.sleep(delay)  # what comes meanwhile waits in the socket, in order
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()


@pytest.fixture
def proxy(hub: HubProcess) -> Iterator[Proxy]:
    p = Proxy(hub.port).start()
    yield p
    p.stop()


@pytest.fixture
def page(browser: Browser, proxy: Proxy) -> Iterator[Page]:  # noqa: F811
    """A blank page on the proxy's origin (the hub's, seen through the proxy)."""
    ctx = browser.new_context()
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(proxy.url + "/__test")
    yield pg
    ctx.close()
    assert errors == [], errors


# -- the page's side --------------------------------------------------------------------

# Subscribe to a stream with hub-client.js; `window.log` records what it does: each event
# delivered ([seq, the transport then]), the transports it moved to, its states.
SUBSCRIBE = """
async ({ streamId, token, tokenUrl, options }) => {
  const m = await import("/hub-client.js");
  const log = { got: [], transports: [], states: [], tokenCalls: 0 };
  window.log = log;
  const fresh = async () => {
    log.tokenCalls += 1;
    const res = await fetch(tokenUrl, { cache: "no-store" });
    if (!res.ok) throw new Error(`token endpoint: ${res.status}`);
    return (await res.text()).trim();
  };
  const tokens = Array.isArray(token) ? [...token] : null;
  const next = () => {
    log.tokenCalls += 1;
    return tokens.length > 1 ? tokens.shift() : tokens[0];
  };
  const sock = m.HubSocket.stream(streamId, {
    ...options, token: tokenUrl ? fresh : tokens ? next : token,
  });
  sock.on("event", (e) => log.got.push([e.seq, sock.transport]));
  sock.on("transport", (d) => log.transports.push(d.transport));
  sock.on("state", (d) => log.states.push([d.state, d.code ?? null, d.transport]));
  window.sock = sock;
  sock.start();
}
"""

# Quick reconnects, and a WebSocket probe every second while on SSE.
FAST: dict[str, Any] = {"minDelay": 200, "maxDelay": 2000, "probeInterval": 1000,
                        "probeMaxInterval": 1000}  # fmt: skip


def subscribe(page: Page, stream_id: str, *, token: str | list[str] | None = None,
              token_url: str | None = None, **options: Any) -> None:  # fmt: skip
    page.evaluate(SUBSCRIBE, {"streamId": stream_id, "token": token, "tokenUrl": token_url,
                              "options": options})  # fmt: skip


def wait(page: Page, condition: str, ms: float = WAIT_MS) -> None:
    """Wait until the JavaScript expression ``condition`` (on window.sock / window.log) holds."""
    try:
        page.wait_for_function(f"() => {condition}", timeout=ms, polling=50)
    except sync_api.TimeoutError:
        got = log(page)
        got["got"] = f"{len(got['got'])} events, the last {got['got'][-3:]}"
        raise AssertionError(f"timed out waiting for {condition}: {got}") from None


def log(page: Page) -> dict[str, Any]:
    value: dict[str, Any] = page.evaluate(
        "({...window.log, transport: sock.transport, state: sock.state,"
        " connects: sock.connects, refreshes: sock.refreshes})"
    )
    return value


def new_stream() -> str:
    return f"cjs-{uuid.uuid4().hex[:12]}"


class Appender(threading.Thread):
    """Appends events 1..total to a stream over HTTP (the platform's generic event API),
    ``batch`` at a time every ``pause`` seconds; before the event numbered by a key of
    ``gates`` it waits for that gate (a threading.Event) to be set."""

    def __init__(
        self, hub: HubProcess, stream_id: str, total: int, *, batch: int = 1,
        pause: float = 0.0, gates: dict[int, threading.Event] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name="appender", daemon=True)
        self.hub, self.stream_id, self.total = hub, stream_id, total
        self.batch, self.pause, self.gates = batch, pause, gates or {}
        self.done = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.hub.url, headers=auth(*PLATFORM), timeout=timeout(30),
                              trust_env=False) as c:  # fmt: skip
                n = 1
                while n <= self.total and not self.stop.is_set():
                    for at, gate in self.gates.items():
                        if n <= at < n + self.batch and not gate.wait(timeout(60)):
                            raise TimeoutError(f"gate before event {at} was never opened")
                    drafts = [{"opcode": 102, "payload": {"n": k}}
                              for k in range(n, min(n + self.batch, self.total + 1))]  # fmt: skip
                    r = c.post(f"/api/streams/{self.stream_id}/events", json={"events": drafts})
                    assert r.status_code == 201, r.text
                    assert [e["seq"] for e in r.json()["events"]] == list(range(n, n + len(drafts)))
                    n += len(drafts)
                    self.done = n - 1
                    if self.pause:
                        time.sleep(self.pause)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> None:
        self.join(timeout(120))
        assert not self.is_alive(), "the appender did not finish"
        if self.error is not None:
            raise self.error


def exactly_once(page: Page, total: int) -> dict[str, Any]:
    """Every event 1..total delivered once, in order (and nothing more after a moment)."""
    wait(page, f"window.log.got.length >= {total}")
    page.wait_for_timeout(300)  # a duplicate that would come late
    got = log(page)
    seqs = [seq for seq, _ in got["got"]]
    assert seqs == list(range(1, total + 1)), (len(seqs), _first_problem(seqs))
    return got


def _first_problem(seqs: list[int]) -> str:
    for i, seq in enumerate(seqs):
        if seq != i + 1:
            return f"at index {i}: {seqs[max(0, i - 3) : i + 3]}"
    return "more events than expected"


# -- tests ------------------------------------------------------------------------------


def test_falls_back_to_sse_and_back_to_websockets_delivering_every_event_once(
    hub: HubProcess, proxy: Proxy, page: Page
) -> None:
    """WebSockets refused (and the open one cut) while 1,000 events are appended: the client
    goes on over SSE, returns to WebSockets once they are allowed, and delivers each event
    once and in order across both switches."""
    sid = new_stream()
    subscribe(page, sid, token=token(*PLATFORM), **FAST)
    wait(page, "sock.state === 'live' && sock.transport === 'websocket'")
    on_sse, back_on_ws = threading.Event(), threading.Event()
    # 1-400 flow while it is on the WebSocket and then switches; 401-900 on SSE and while it
    # switches back; 901-1000 once it is back on a WebSocket. About 100 a second.
    appender = Appender(hub, sid, 1000, batch=5, pause=0.05, gates={401: on_sse, 901: back_on_ws})
    appender.start()
    try:
        wait(page, "window.log.got.length >= 200")
        proxy.block_websockets(True)
        wait(page, "sock.transport === 'sse' && sock.state === 'live'")
        assert proxy.ws_refused >= 1
        on_sse.set()
        wait(page, "window.log.got.length >= 550")
        # The probe's frames come 0.5 s late: it replays events that came over SSE meanwhile,
        # which the client must not deliver twice.
        proxy.ws_delay = 0.5
        proxy.block_websockets(False)
        wait(page, "sock.transport === 'websocket'")
        back_on_ws.set()
        appender.finish()
    finally:
        on_sse.set()
        back_on_ws.set()
        appender.stop.set()
    got = exactly_once(page, 1000)
    assert got["transports"] == ["sse", "websocket"], got["transports"]
    by = [transport for _, transport in got["got"]]
    first_sse, last_sse = by.index("sse"), len(by) - 1 - by[::-1].index("sse")
    # Over the WebSocket up to 200 at least; over SSE from 401 at the latest to 550 at least
    # (the last events before the WebSockets came back); over a WebSocket from 901 at least.
    assert 200 <= first_sse <= 400, first_sse
    assert 549 <= last_sse < 900, last_sse
    assert by[:first_sse] == ["websocket"] * first_sse
    assert by[first_sse : last_sse + 1] == ["sse"] * (last_sse + 1 - first_sse)
    assert by[last_sse + 1 :] == ["websocket"] * (999 - last_sse)
    states = [state for state, _, _ in got["states"]]
    assert not {"denied", "closed"} & set(states), got["states"]
    assert states[-1] == "live"
    assert got["state"] == "live"
    assert proxy.ws_passed >= 2  # the first socket, and the one it came back on


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_token_function_keeps_the_socket_open_on_three_second_tokens(
    hub: HubProcess, proxy: Proxy, page: Page, transport: str
) -> None:
    """Tokens that live 3 s, from a token endpoint: refreshed before they expire, on the open
    WebSocket (`auth` frames) or by an event stream's handover, with no reconnect and no gap."""
    seconds = 9 if transport == "websocket" else 8
    sid = new_stream()
    subscribe(page, sid, token_url=proxy.token_url, transports=[transport])
    wait(page, f"sock.state === 'live' && sock.transport === '{transport}'")
    appender = Appender(hub, sid, seconds * 4, pause=0.25)
    appender.start()
    started = time.monotonic()
    try:
        page.wait_for_timeout(seconds * 1000)  # the page runs (and refreshes) meanwhile
        appender.finish()
    finally:
        appender.stop.set()
    assert time.monotonic() - started >= seconds
    got = exactly_once(page, seconds * 4)
    assert [state for state, _, _ in got["states"]] == ["connecting", "live"], got["states"]
    assert got["state"] == "live"
    assert got["transports"] == []
    # A 3-second token is refreshed at half its life: 1.5 s before it expires.
    assert got["refreshes"] >= seconds // 3, got
    assert got["tokenCalls"] >= got["refreshes"] + 1, got
    assert len(proxy.tokens) >= got["refreshes"] + 1
    if transport == "websocket":
        assert got["connects"] == 1, got  # one WebSocket, never reopened
        assert proxy.ws_passed == 1
    else:  # one event stream per token (the next one may be opening right now)
        assert got["refreshes"] + 1 <= got["connects"] <= got["refreshes"] + 2, got
        assert proxy.ws_passed == 0


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_4401_gets_one_fresh_token_and_a_second_one_ends_in_denied(
    hub: HubProcess, proxy: Proxy, page: Page, transport: str
) -> None:
    """An expired token (4401, or 401 on an event stream) makes the client ask its function
    for a fresh one and reconnect at once; when that one is refused too, it stops: denied."""
    expired = token(*PLATFORM, ttl=-10)
    good = token(*PLATFORM)
    sid = new_stream()
    appender = Appender(hub, sid, 3)
    appender.run()
    assert appender.error is None, appender.error
    subscribe(page, sid, token=[expired, good], transports=[transport])
    wait(page, "sock.state === 'live' && window.log.got.length === 3")
    got = log(page)
    assert got["tokenCalls"] == 2
    assert [s[:2] for s in got["states"]] == [
        ["connecting", None],
        ["reconnecting", UNAUTHORIZED],
        ["live", None],
    ], got["states"]

    page.evaluate("sock.close()")
    subscribe(page, sid, token=[expired, expired, good], transports=[transport])
    wait(page, "sock.state === 'denied'")
    page.wait_for_timeout(500)
    got = log(page)
    assert got["tokenCalls"] == 2, got
    assert got["got"] == [], got
    assert [s[:2] for s in got["states"]] == [
        ["connecting", None],
        ["reconnecting", UNAUTHORIZED],
        ["denied", UNAUTHORIZED],
    ], got["states"]

    page.evaluate("sock.close()")
    subscribe(page, sid, token=expired, transports=[transport])  # a plain string: no retry
    wait(page, "sock.state === 'denied'")
    assert [s[:2] for s in log(page)["states"]] == [["connecting", None], ["denied", UNAUTHORIZED]]
