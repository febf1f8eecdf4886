"""Memory one tenant can make the hub hold with reads, within the limits (docs/protocol.md
§4.1 and §8): an answer of ``GET /api/streams/{id}`` is bounded in bytes, readers of an
archived stream do not each read (and hold) the whole archive, and a tenant's pages in
flight take from its budget (``HUB_TENANT_READ_BUDGET``) while other tenants go on.

Each test runs a real hub (``hub serve``) with its settings lowered through the
environment, and events of ~60 KiB (the payload limit is 64 KiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import HubProcess, auth, timeout
from tests.test_orders import run_seed

PLATFORM = auth("ops", "platform")
BIG = "x" * 60_000  # a payload of ~60 KiB
BATCH = 15  # events of BIG in one append (the body limit is 1 MiB)
READ_BYTES = 4 << 20  # hub.edge.streams.READ_BYTES: the events of one answer, at most


def new_sid() -> str:
    return f"mem-{uuid.uuid4().hex[:12]}"


async def open_stream(c: httpx.AsyncClient, sid: str, customer: str, big: int,
                      small: int = 0, restaurant: str = "rest-mem") -> int:  # fmt: skip
    """ORDER_CREATE naming ``customer``, then ``big`` events of ~60 KiB and ``small``
    small ones, written by the platform; returns the stream's last seq."""
    r = await c.post(f"/api/streams/{sid}/events", headers=PLATFORM,
                     json={"opcode": 501, "payload": {"customer": customer,
                                                      "restaurant": restaurant}})  # fmt: skip
    assert r.status_code == 201, r.text
    drafts = [{"opcode": 102, "payload": {"pad": BIG}}] * big + [{"opcode": 203}] * small
    for start in range(0, len(drafts), BATCH):
        r = await c.post(f"/api/streams/{sid}/events", headers=PLATFORM,
                         json={"events": drafts[start : start + BATCH]})  # fmt: skip
        assert r.status_code == 201, r.text
    return 1 + big + small


async def deaf(hub: HubProcess, path: str, headers: dict[str, str]) -> ClientConnection:
    """A WebSocket that reads nothing once open: a 4 KiB receive buffer and a client that
    takes no more once one message waits; no keepalive of its own."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", hub.port))
    return await connect(f"{hub.ws_url}{path}", additional_headers=headers, sock=sock,
                         max_queue=1, ping_interval=None, compression=None, proxy=None,
                         open_timeout=timeout(10), close_timeout=timeout(1))  # fmt: skip


async def frames_until_live(conn: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """The frames up to and including ``live`` (or ``archived``)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout(seconds)):
        while not frames or frames[-1]["type"] not in ("live", "archived"):
            frames.append(json.loads(await conn.recv()))
    return frames


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    """The seqs of the event frames; the last frame must be ``live`` or ``archived``."""
    assert frames[-1]["type"] in ("live", "archived"), frames[-1]
    return [f["seq"] for f in frames if f["type"] == "event"]


async def abort_all(conns: list[ClientConnection]) -> None:
    for conn in conns:
        conn.transport.abort()
    for conn in conns:
        with contextlib.suppress(Exception):
            await conn.wait_closed()


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Have the process's peak RSS (VmHWM) start again from its RSS now."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def bytes_read(pid: int) -> int:
    """What the process has read so far, files and sockets (``rchar``)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


# -- (a) an answer of GET /api/streams/{id} is bounded in bytes ---------------------------


async def test_a_read_of_large_events_answers_within_the_byte_cap_and_pages_on(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """``GET ?limit=10000`` over 200 events of 60 KiB (12 MB) answers at most 4 MiB of
    events (it was the whole 12 MB as one string, 640 MB at 10,000 such events); the client
    reads on with ``since`` = the last seq it got until ``lastSeq``, and gets every event
    once, in order."""
    hub = hub_factory()
    sid = new_sid()
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(30)) as c:
        last_seq = await open_stream(c, sid, "cust-mem-a", 200)
        customer = auth("cust-mem-a", "customer")
        seen: list[int] = []
        sizes: list[int] = []
        since = 0
        while True:
            r = await c.get(f"/api/streams/{sid}?since={since}&limit=10000", headers=customer)
            assert r.status_code == 200, r.text[:300]
            sizes.append(len(r.content))
            body = r.json()
            assert body["lastSeq"] == last_seq
            assert body["orderStatus"] == "placed"  # of the whole stream, whatever the page
            assert len(r.content) <= READ_BYTES + 1024, sizes
            seqs = [e["seq"] for e in body["events"]]
            if since < last_seq:
                assert seqs, since
            seen += seqs
            if not seqs or seqs[-1] == body["lastSeq"]:
                break
            since = seqs[-1]
        print(f"answers (bytes): {sizes}")
        assert seen == list(range(1, last_seq + 1))
        assert len(sizes) >= 3  # 12 MB in answers of at most 4 MiB


# -- (b) readers of an archived stream share one reading of it -----------------------------


async def test_many_readers_of_an_archived_stream_do_not_each_read_it_whole(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """30 sockets replaying one archived stream of 18 MB and reading nothing: the archive
    is read whole once (its index) and each page reads only its events' bytes. Before, each
    page of each reader read and parsed the whole object: 30 x 18 MB read, and the hub's
    RSS grew by hundreds of MB."""
    readers = 30
    hub = hub_factory(env={"HUB_TENANT_READ_BUDGET": str(8 << 20)})
    assert hub.proc is not None
    pid = hub.proc.pid
    sid = new_sid()
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(30)) as c:
        await open_stream(c, sid, "cust-mem-b", 300)
        r = await c.post(f"/api/streams/{sid}/archive", headers=PLATFORM)
        assert r.status_code == 200, r.text
        archived = (hub.data_dir / "archive" / f"{sid}.json").stat().st_size
        assert archived > 17_000_000
        reset_peak(pid)
        rss0, read0 = proc_status(pid, "VmRSS"), bytes_read(pid)
        headers = auth("cust-mem-b", "customer")
        conns = await asyncio.gather(*(deaf(hub, f"/ws/streams/{sid}?since=0", headers)
                                       for _ in range(readers)))  # fmt: skip
        try:
            # Until the hub has read what the sockets take (their first pages, stalled).
            last, still = bytes_read(pid), 0
            deadline = time.monotonic() + timeout(15)
            while still < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                now = bytes_read(pid)
                still = still + 1 if now == last else 0
                last = now
            peak, read = proc_status(pid, "VmHWM") - rss0, bytes_read(pid) - read0
            print(f"archive {archived / 1e6:.1f} MB; {readers} readers: read "
                  f"{read / 1e6:.1f} MB, peak RSS +{peak / 1e6:.1f} MB")
            # Before, each reader read the whole object (at least once each: 30 x 18 MB). Now
            # the whole object once, then each reader its first page (64 events: 3.8 MB) and
            # the pages that fit in its socket's buffers (a few MB at most).
            assert read < readers * archived * 3 / 4, read
            assert peak < 160e6, peak
            # A reader that reads gets its events (of another tenant: this one's budget is
            # held by its stalled sockets until the stall timeout).
            async with connect(f"{hub.ws_url}/ws/streams/{sid}?since=290",
                               additional_headers=PLATFORM) as conn:  # fmt: skip
                frames = await frames_until_live(conn, 10)
            assert seqs(frames) == list(range(291, 302))
            assert frames[-1]["type"] == "archived"
        finally:
            await abort_all(conns)


# -- (c) a tenant over its budget waits; other tenants are served ---------------------------


async def test_a_tenant_over_its_read_budget_waits_while_another_is_served(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """A socket that reads nothing holds a page of its tenant's budget (1 MiB here): the
    tenant's next replay waits (it was sent at once: every socket held what it liked),
    while another tenant's replay and reads go on at once. The stalled socket is closed
    after the stall timeout, which gives the budget back: the waiting replay then goes on.
    """
    stall = 4.0
    hub = hub_factory(env={"HUB_TENANT_READ_BUDGET": str(1 << 20),
                           "HUB_WS_STALL_TIMEOUT": str(stall)})  # fmt: skip
    hog_sid, small_sid, other_sid = new_sid(), new_sid(), new_sid()
    tenant_a = auth("cust-mem-c", "customer")
    tenant_b = auth("cust-mem-d", "customer")
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(30)) as c:
        await open_stream(c, hog_sid, "cust-mem-c", 150)  # 9 MB: more than socket buffers
        small_last = await open_stream(c, small_sid, "cust-mem-c", 0, small=3)
        other_last = await open_stream(c, other_sid, "cust-mem-d", 0, small=3)
        hog = await deaf(hub, f"/ws/streams/{hog_sid}?since=0", tenant_a)
        try:
            await asyncio.sleep(1.0)  # the hub fills the socket's buffers and stalls on it
            opened = time.monotonic()
            async with connect(f"{hub.ws_url}/ws/streams/{small_sid}?since=0",
                               additional_headers=tenant_a) as waiting:  # fmt: skip
                # Another tenant: served at once, over WebSocket and HTTP.
                async with connect(f"{hub.ws_url}/ws/streams/{other_sid}?since=0",
                                   additional_headers=tenant_b) as other:  # fmt: skip
                    frames = await frames_until_live(other, 2)
                assert seqs(frames) == list(range(1, other_last + 1))
                t0 = time.monotonic()
                r = await c.get(f"/api/streams/{other_sid}", headers=tenant_b)
                assert r.status_code == 200, r.text
                assert time.monotonic() - t0 < timeout(1.0)
                # The tenant over its budget: its replay waits while the hog holds a page.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.5):
                        frame = json.loads(await waiting.recv())
                        raise AssertionError(f"a replay over the budget was sent {frame}")
                # Then the stalled socket is closed (4008), and the replay goes on.
                frames = await frames_until_live(waiting, stall + 6)
                waited = time.monotonic() - opened
            assert seqs(frames) == list(range(1, small_last + 1))
            print(f"the replay over the budget waited {waited:.1f} s")
            assert waited >= 1.5
        finally:
            await abort_all([hog])


async def test_the_budget_is_first_come_first_served_and_a_cancelled_read_takes_nothing() -> None:
    """The budget itself (hub/domain/sessions.py ReadBudget): another tenant is never kept
    waiting; one tenant's reads go in order; a read bigger than the budget goes alone; a
    read cancelled while it waits, or just after it was let in, holds nothing."""
    from hub.domain.sessions import ReadBudget  # (new: the other tests run on older hubs)

    budget = ReadBudget(100)
    await budget.acquire("a", 80)
    await budget.acquire("b", 100)  # another tenant: at once
    first = asyncio.create_task(budget.acquire("a", 50))
    second = asyncio.create_task(budget.acquire("a", 10))  # would fit, but comes after
    await asyncio.sleep(0)
    assert not first.done()
    assert not second.done()
    assert budget.waiting("a") == 2
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await second  # let in once the one before it left
    assert budget.used("a") == 90
    budget.release("a", 90)
    budget.release("b", 100)
    assert (budget.used("a"), budget.used("b")) == (0, 0)
    await budget.acquire("a", 500)  # more than the budget: alone
    late = asyncio.create_task(budget.acquire("a", 10))
    await asyncio.sleep(0)
    budget.release("a", 500)  # lets the waiting read in ...
    late.cancel()  # ... which is cancelled before it runs: it gives the bytes back
    await asyncio.gather(late, return_exceptions=True)
    assert (budget.used("a"), budget.waiting("a")) == (0, 0)


# -- the order endpoints read an order's stream within the tenant's budget -------------------


async def test_many_reads_of_a_large_order_stay_within_the_tenants_budget(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """12 clients repeating GET /api/orders/{id} on an order padded with 600 events of 60 KiB
    (36 MB): the order flow reads its stream 16 events at a time under the tenant's read
    budget, so the hub's peak RSS rises by a few MB, not by a copy of the stream per
    request at once (before: pages of 1,000 events, unbudgeted: +150 MB here, +400 MB for
    a 63 MB stream)."""
    clients, rounds = 12, 3
    data = tmp_path / "data"
    run_seed(data)  # the order's restaurant must exist for its details
    hub = hub_factory(data_dir=data, env={"HUB_TENANT_READ_BUDGET": str(16 << 20)})
    assert hub.proc is not None
    pid = hub.proc.pid
    sid = new_sid()
    headers = auth("cust-mem-o", "customer")
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(60)) as c:
        await open_stream(c, sid, "cust-mem-o", 600, restaurant="bab-hara")
        reset_peak(pid)
        rss0 = proc_status(pid, "VmRSS")

        async def reader() -> list[int]:
            codes = []
            for _ in range(rounds):
                r = await c.get(f"/api/orders/{sid}", headers=headers)
                assert r.status_code in (200, 503), r.text
                codes.append(r.status_code)
            return codes

        codes = [code for got in await asyncio.gather(*(reader() for _ in range(clients)))
                 for code in got]  # fmt: skip
        peak = proc_status(pid, "VmHWM") - rss0
        print(f"{clients} x {rounds} reads of a 36 MB order: peak RSS +{peak / 1e6:.1f} MB")
        assert set(codes) <= {200, 503}, codes
        assert codes.count(200) >= clients, codes  # waiting for the budget, not refused
        assert peak < 50e6, peak


async def test_a_read_that_waited_while_its_stream_was_archived_answers_from_the_archive(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """``GET /api/streams/{id}`` that read the stream's row (live, lastSeq n), then waited
    for its tenant's read budget (held here by a socket that reads nothing) while Step 11
    moved the events to the archive: it answers every event, from the archive, never an
    empty page of an "active" stream (which a client reading on to lastSeq cannot use)."""
    hub = hub_factory(env={"HUB_TENANT_READ_BUDGET": str(1 << 20),
                           "HUB_WS_STALL_TIMEOUT": "30"})  # fmt: skip
    hog_sid, sid = new_sid(), new_sid()
    tenant = auth("cust-mem-e", "customer")
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(30)) as c:
        await open_stream(c, hog_sid, "cust-mem-e", 150)  # 9 MB: more than socket buffers
        last = await open_stream(c, sid, "cust-mem-e", 0, small=3)
        hog = await deaf(hub, f"/ws/streams/{hog_sid}?since=0", tenant)
        try:
            await asyncio.sleep(1.0)  # the hub fills the socket's buffers and holds a page
            read = asyncio.create_task(c.get(f"/api/streams/{sid}", headers=tenant))
            await asyncio.sleep(0.5)
            assert not read.done(), "the read did not wait for the tenant's budget"
            r = await c.post(f"/api/streams/{sid}/archive", json={}, headers=PLATFORM)
            assert r.status_code == 200, r.text
            assert r.json()["archivedEvents"] == last
        finally:
            await abort_all([hog])  # the hog's page goes back to the budget
        r = await read
    assert r.status_code == 200, r.text
    page = r.json()
    assert [e["seq"] for e in page["events"]] == list(range(1, last + 1)), page
    assert page["status"] == "archived", page
    assert page["lastSeq"] == last
