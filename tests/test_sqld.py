"""The seed's order flow, end to end, with the hub's shared databases on a real libSQL
server (``sqld``, :mod:`tests.sqld`), as hub instances on several machines share them.

``HUB_STREAMS_DB`` is one sqld (over ``ws://``) and ``HUB_PUBLIC_DB`` another (over
``http://``); ``hub seed`` and ``hub serve`` run on them as users run them. The tenant
DBs stay embedded (``HUB_TENANT_DB``'s default under the data dir): ``HUB_TENANT_DB`` is
a template naming one database per tenant, and sqld without namespaces serves a single
database whatever the path or host of a request (a ``ws://`` URL with a path is
refused with 404; an ``http://`` one is served the same database), so the tenants'
``nodes`` and ``points`` would collide in one set of tables. Serving a database per
tenant is what sqld's namespaces are for.

The durability of acknowledged appends on sqld (SIGKILL of a hub mid-stream, two
processes sharing one stream) is in :mod:`tests.test_durability`; the store's
conformance suite on sqld is in :mod:`tests.test_store`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.infra.db import DatabaseError, open_database
from tests.conftest import HubProcess, timeout
from tests.sqld import Sqld, ed25519_keypair, jwt, query
from tests.test_orders import (
    ALI,
    DEST,
    KITCHEN,
    ORDER,
    PLATFORM,
    RAMI,
    TARGETS,
    Rider,
    check_seed_table,
    diff,
    driver_point,
    http,
    place,
    run_seed,
    step,
    stock,
    stream,
    subscribe,
    tenant_db,
    until,
    writes,
)

DRIVER_POINT = "SELECT availability, openNow, lat, lng FROM points WHERE id = 'pt-rami-loc'"


async def test_seed_order_end_to_end_on_sqld(
    hub_factory: Callable[..., HubProcess],
    sqld_factory: Callable[..., Sqld],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``hub seed``, then the seed's Steps 1-11 over HTTP with the streams DB and the
    public DB on sqld: the 12-event table, each socket its events once, the writes, the
    rows each database is left with, and nothing written to an embedded file instead."""
    streams, public = sqld_factory("streams"), sqld_factory("public")
    monkeypatch.setenv("HUB_STREAMS_DB", streams.ws_url)  # read by `hub seed` and the hub
    monkeypatch.setenv("HUB_PUBLIC_DB", public.http_url)
    data = tmp_path / "data"

    def on_streams(sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return query(streams.http_url, sql, *args)

    run_seed(data)  # Step 0
    assert query(public.http_url, DRIVER_POINT) == [("idle", 1, 25.2640, 55.3310)]
    assert stock(data) == {"pt-shw": 200, "pt-lbn": 150}

    hub = hub_factory(data_dir=data)
    statuses: list[str] = []
    async with http(hub) as c, AsyncExitStack() as stack:
        kitchen = await stack.enter_async_context(subscribe(hub, "/ws/inbox", KITCHEN))
        inbox = await stack.enter_async_context(subscribe(hub, "/ws/inbox", RAMI))
        await until(lambda: kitchen.of("live") and inbox.of("live"), 10, "the inboxes' live frames")
        before = await writes(c)

        created = await place(c, ORDER)  # Step 1
        assert (created["total"], created["currency"]) == (46, "AED"), created
        ali = await stack.enter_async_context(subscribe(hub, f"/ws/streams/{ORDER}", ALI))
        statuses.append((await stream(c, ORDER))["orderStatus"])
        statuses += [(await step(c, ORDER, name))["orderStatus"]
                     for name in ("pay", "accept", "ready")]  # Steps 2-6  # fmt: skip
        assert query(public.http_url, "SELECT claim FROM points") == [(ORDER,)]

        rider = Rider(c, data, inbox, ali)
        await rider.ride([(25.2643, 55.3313)])  # Step 7
        statuses.append((await step(c, ORDER, "pickup"))["orderStatus"])  # Step 8
        await rider.ride([(25.1000, 55.1600)])  # Step 9
        assert [op for (op,) in on_streams(
            "SELECT opcode FROM events WHERE streamId = ? ORDER BY seq", ORDER
        )] == [501, 203, 301, 303, 102, 102, 305, 302, 502]  # fmt: skip
        statuses.append((await step(c, ORDER, "deliver"))["orderStatus"])  # Step 10

        await until(lambda: ali.closed, 10, "Ali's socket closed after archiving (Step 11)")
        after = await writes(c)
        final = await stream(c, ORDER)
        events = final["events"]
        await until(lambda: len(kitchen.of("event")) >= 12 and len(inbox.of("event")) >= 5, 10,
                    "the inboxes' events")  # fmt: skip
        await asyncio.sleep(0.3)  # anything extra would arrive now

    assert statuses == ["placed", "paid", "preparing", "assigned", "picked_up", "delivered"]
    assert (final["status"], final["orderStatus"]) == ("archived", "delivered"), final
    check_seed_table(events, ORDER)
    assert ali.events() == events
    assert ali.frames[-1] == {"type": "archived", "streamId": ORDER}
    assert [(f["lat"], f["lng"]) for f in ali.of("location")] == rider.sent
    assert kitchen.events() == events
    assert inbox.events() == events[7:]  # from TASK_ASSIGN (seq 8) on
    for sock in (kitchen, inbox, ali):
        assert not sock.of("error"), sock.frames

    order_writes = {t: diff(before, after)[t] - rider.writes[t] for t in TARGETS}
    assert order_writes == {"streams": 12, "tenant": 7, "public": 2}
    assert rider.writes == {"streams": 0, "tenant": 2, "public": 0}

    # What each database is left with: the stream archived out of sqld (its seq kept),
    # the driver idle at the destination in both his tenant DB and the public DB on sqld.
    assert on_streams("SELECT COUNT(*) FROM events") == [(0,)]
    assert on_streams("SELECT lastSeq, archived FROM streams WHERE streamId = ?", ORDER) == [
        (12, 1)
    ]
    assert stock(data) == {"pt-shw": 198, "pt-lbn": 149}
    dest = (DEST["lat"], DEST["lng"])
    assert driver_point(tenant_db(data, "rami")) == ("idle", 1, *dest)
    assert query(public.http_url, DRIVER_POINT) == [("idle", 1, *dest)]
    assert not (data / "streams.db").exists()
    assert not (data / "public.db").exists()


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_tenant_and_public_dbs_name_a_refused_token(
    sqld_factory: Callable[..., Sqld], transport: str
) -> None:
    """A remote tenant/public DB refusing HUB_DB_AUTH_TOKEN says so (503 naming the token),
    over ws:// too, where libsql-client reported a write to a closed socket instead."""
    seed, public_key = ed25519_keypair()
    server = sqld_factory(jwt_key=public_key)
    url = server.ws_url if transport == "ws" else server.http_url
    pool = ThreadPoolExecutor(1)
    try:
        good = open_database(url, pool=pool, schema=("CREATE TABLE IF NOT EXISTS t (x)",),
                             auth_token=jwt(seed))  # fmt: skip
        await good.execute("INSERT INTO t VALUES (1)")
        await good.close()
        for token in (jwt(ed25519_keypair()[0]), "wrong-token", None):
            bad = open_database(url, pool=pool, schema=(), auth_token=token)
            with pytest.raises(DatabaseError, match="auth token"):
                await bad.execute("SELECT 1")
            await bad.close()
    finally:
        pool.shutdown()


async def test_an_append_waiting_on_a_stalled_db_at_shutdown_is_answered_stopped(
    tmp_path: Path, sqld: Sqld, hub_factory: Callable[..., HubProcess]
) -> None:
    """SIGTERM while an append waits on a streams DB that stopped answering (sqld stopped
    with SIGSTOP): when the graceful timeout runs out the client gets 503 ``stopped`` with
    the hub's error body and ``retry-after``, not uvicorn's plain-text 500, and the hub's
    log holds no traceback. Sent again to another instance once the DB answers, the
    append is stored exactly once."""
    path = "/api/streams/ord-stall/events"

    def batch(event_id: str) -> dict[str, Any]:
        return {"events": [{"id": event_id, "opcode": 501, "payload": {"n": event_id}}]}

    hub = HubProcess(tmp_path / "a", {"HUB_STREAMS_DB": sqld.ws_url})
    hub.graceful_timeout = 1
    hub.start()
    assert sqld.proc is not None
    try:
        async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(60)) as c:
            r = await c.post(path, json=batch("e1"), headers=PLATFORM)
            assert r.status_code == 201, r.text
            sqld.proc.send_signal(signal.SIGSTOP)
            try:
                pending = asyncio.create_task(c.post(path, json=batch("e2"), headers=PLATFORM))
                await asyncio.sleep(0.5)
                assert not pending.done(), "the append did not wait on the stopped sqld"
                assert hub.proc is not None
                hub.proc.send_signal(signal.SIGTERM)
                r = await pending
            finally:
                sqld.proc.send_signal(signal.SIGCONT)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "stopped", r.text
        assert r.headers["retry-after"] == "1"
        assert hub.proc is not None
        assert hub.proc.wait(timeout(30)) in (0, -signal.SIGTERM)  # (uvicorn re-raises it)
        hub.check_clean_shutdown()  # no traceback, no leaked task
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.kill()

    other = hub_factory(data_dir=tmp_path / "b", env={"HUB_STREAMS_DB": sqld.ws_url})
    async with httpx.AsyncClient(base_url=other.url, timeout=timeout(30)) as c:
        r = await c.post(path, json=batch("e2"), headers=PLATFORM)
        assert r.status_code in (200, 201), r.text
        got = await stream(c, "ord-stall")
    assert [e["id"] for e in got["events"]] == ["e1", "e2"], got
