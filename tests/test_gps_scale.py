"""GPS at fleet scale against a real hub: tenant DBs kept open, the fd limit, fan-out first.

Each hub is a real ``hub serve`` process; the assertions read its /metrics, its process
limits (``/proc``) and its tenant DB files.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import signal
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hub.config import Settings, SettingsError
from tests.conftest import HubProcess, auth
from tests.test_orders import (
    ALI,
    ORDER,
    RAMI,
    advance,
    diff,
    http,
    place,
    position,
    run_seed,
    subscribe,
    tenant_db,
    until,
    writes,
)

FDS_PER_DB = 3  # what the hub budgets per open tenant DB (the file, -wal, -shm)


def fd_cap(wanted: int) -> int:
    """The cap a hub started from this process keeps: within half of the hard fd limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    return min(wanted, limit // 2 // FDS_PER_DB)


async def metric(c: httpx.AsyncClient, name: str) -> float:
    r = await c.get("/metrics")
    assert r.status_code == 200, r.text
    m = re.search(rf"^{name} (\S+)$", r.text, re.M)
    assert m, f"no {name} in /metrics"
    return float(m.group(1))


def point_of(data: Path, driver: str) -> tuple[float, float]:
    path = tenant_db(data, driver)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        got = conn.execute("SELECT lat, lng FROM points WHERE nodeId = ?", (driver,)).fetchall()
    assert len(got) == 1, (driver, got)
    return got[0]


async def each(n: int, fn: Callable[[int], Awaitable[None]]) -> None:
    """Run ``fn(i)`` for i in range(n), 16 at a time."""
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.parametrize(
    ("drivers", "env", "cap"),
    [
        pytest.param(300, {}, 4096, id="300 drivers, default cap (the old one was 256)"),
        pytest.param(30, {"HUB_TENANT_MAX_OPEN": "20"}, 20, id="30 drivers, cap 20"),
    ],
)
async def test_drivers_pinging_in_turn(
    hub_factory: Callable[..., HubProcess], drivers: int, env: dict[str, str], cap: int
) -> None:
    """Drivers pinging in turn, twice 1 s apart, write exactly 1 row per ping to their own
    DB; up to HUB_TENANT_MAX_OPEN DBs stay open (no reopening), past it the LRU one closes."""
    hub = hub_factory(env=env)
    assert "tenant DBs open, not" not in hub.log()  # no warning at the default
    data = hub.data_dir
    names = [f"drv-{i:03d}" for i in range(drivers)]
    heads = {d: auth(d, "driver") for d in names}
    async with http(hub) as c:

        async def online(i: int) -> None:
            body = {"status": "online", "lat": 25.0, "lng": 55.0}
            r = await c.post("/api/drivers/status", json=body, headers=heads[names[i]])
            assert r.status_code == 200, r.text

        await each(drivers, online)
        assert await metric(c, "hub_tenant_dbs_max_open") == fd_cap(cap)
        before = await writes(c)
        sent: dict[str, float] = {}

        async def ping(i: int, lap: int) -> None:
            d = names[i]
            if lap == 2:
                await asyncio.sleep(max(0.0, sent[d] + 1.05 - time.monotonic()))
            r = await c.post("/api/motion", json={"lat": lap + i / 1000, "lng": 55.0 + lap},
                             headers=heads[d])  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] is True, r.text
            sent[d] = time.monotonic()

        for lap in (1, 2):
            await each(drivers, lambda i, lap=lap: ping(i, lap))
        await asyncio.sleep(1.2)  # a coalesced write would land by now; there is none
        assert diff(before, await writes(c)) == {"streams": 0, "tenant": 2 * drivers, "public": 0}
        opened = await metric(c, "hub_tenant_db_opens_total")
        still_open = await metric(c, "hub_tenant_dbs_open")

    wal = [d for d in names if tenant_db(data, d).with_name(f"{d}.db-wal").exists()]
    for i, d in enumerate(names):
        assert point_of(data, d) == (2 + i / 1000, 57.0), d
    if drivers <= cap:
        # Every DB was opened once and is open still (closing a WAL DB removes its -wal).
        assert (opened, still_open) == (drivers, drivers)
        assert len(wal) == drivers
    else:
        assert still_open == cap
        assert opened > drivers, "drivers past the cap reopen their DB"
        assert len(wal) <= cap


@contextlib.contextmanager
def soft_fd_limit(soft: int) -> Iterator[None]:
    """Lower this process's soft RLIMIT_NOFILE (inherited by hubs started meanwhile)."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, old_soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def open_files_limit(pid: int) -> tuple[str, str]:
    text = Path(f"/proc/{pid}/limits").read_text()
    m = re.search(r"^Max open files\s+(\S+)\s+(\S+)", text, re.M)
    assert m, text
    return m.group(1), m.group(2)


async def test_fd_limit_raised_and_caps_open_dbs(hub_factory: Callable[..., HubProcess]) -> None:
    """The hub raises its soft open-file limit to the hard one, and keeps the tenant DBs
    open within half of it however high HUB_TENANT_MAX_OPEN is set (with a warning)."""
    with soft_fd_limit(256):
        hub = hub_factory(env={"HUB_TENANT_MAX_OPEN": "100000000"})
    assert hub.proc is not None
    soft_now, hard_now = open_files_limit(hub.proc.pid)
    assert soft_now == hard_now, (soft_now, hard_now)
    async with http(hub) as c:
        assert await metric(c, "hub_tenant_dbs_max_open") == fd_cap(100_000_000)
    assert "tenant DBs open, not 100000000: the open-file limit" in hub.log(), hub.log()


@pytest.mark.parametrize("raw", ["0", "-3", "many", "1.5"])
def test_tenant_max_open_must_be_a_positive_whole_number(tmp_path: Path, raw: str) -> None:
    """A malformed HUB_TENANT_MAX_OPEN is a settings error (the CLI exits 2 on it)."""
    with pytest.raises(SettingsError, match="HUB_TENANT_MAX_OPEN"):
        Settings.from_env({"HUB_DATA_DIR": str(tmp_path), "HUB_TENANT_MAX_OPEN": raw})


def test_tenant_max_open_setting(tmp_path: Path) -> None:
    """HUB_TENANT_MAX_OPEN is read as a number; unset, the hub's default applies."""
    base = {"HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": "x"}
    assert Settings.from_env(base).tenant_max_open is None
    assert Settings.from_env({**base, "HUB_TENANT_MAX_OPEN": "512"}).tenant_max_open == 512


async def test_location_frame_does_not_wait_for_the_write(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """While the driver's tenant DB is locked by another writer, his ping still reaches the
    order's watcher at once; its write lands (one row) as soon as the lock is gone."""
    data = tmp_path / "data"
    run_seed(data)
    hub = hub_factory(data_dir=data)
    async with http(hub) as c:
        await place(c, ORDER)
        await advance(c, ORDER, "ready")  # assigned to rami
        async with subscribe(hub, f"/ws/streams/{ORDER}", ALI) as ali, \
                subscribe(hub, "/ws/inbox", RAMI) as inbox:  # fmt: skip
            await until(lambda: ali.of("live") and inbox.of("live"), 10, "the live frames")
            before = await writes(c)
            start = position(data)
            point = (25.2701, 55.3301)
            locker = sqlite3.connect(tenant_db(data, "rami"), isolation_level=None)
            try:
                locker.execute("BEGIN IMMEDIATE")  # the hub's UPDATE now waits (busy timeout)
                await inbox.send({"type": "location", "lat": point[0], "lng": point[1]})
                sent = time.monotonic()
                await until(lambda: ali.of("location"), 1.0, "the location frame, lock held")
                print(f"location frame after {time.monotonic() - sent:.3f}s with rami.db locked")
                frame = ali.of("location")[0]
                assert (frame["lat"], frame["lng"], frame["driver"]) == (*point, "rami"), frame
                assert position(data) == start  # not written yet
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            await until(lambda: position(data) == point, 3, "the ping in rami.db")
            await asyncio.sleep(0.3)
            assert diff(before, await writes(c)) == {"streams": 0, "tenant": 1, "public": 0}
            assert not inbox.of("error"), inbox.frames


POINTS = [(25.2650, 55.3320), (25.2660, 55.3330), (25.2670, 55.3340), (25.2680, 55.3350)]


@contextlib.contextmanager
def syncs_of(pid: int, out: Path) -> Iterator[list[str]]:
    """The fsync/fdatasync calls ``pid`` makes inside the block (strace, every thread; each
    as strace prints it, with the file's path): the list is filled when the block ends."""
    calls: list[str] = []
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(out),
         "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        status = Path(f"/proc/{pid}/status")
        while "TracerPid:\t0" in status.read_text():  # attached once the tracer shows
            assert tracer.poll() is None, "strace did not attach"
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.02)
        time.sleep(0.2)  # the process's other threads are attached after the first
        yield calls
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches; the traced hub runs on
        tracer.wait(timeout=10)
    calls.extend(line for line in out.read_text().splitlines() if "sync(" in line)


async def test_a_position_is_committed_without_an_fsync_and_an_order_row_with_one(
    hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """A GPS position may be lost to a power cut (docs/protocol.md §4.3), so its commit does
    not wait for an fsync; an order's tenant rows still do (a real hub, its syscalls seen by
    strace). Before this, every position cost its driver's DB an fsync."""
    data = tmp_path / "data"
    run_seed(data)
    hub = hub_factory(data_dir=data)
    assert hub.proc is not None
    async with http(hub) as c:
        before = await writes(c)
        with syncs_of(hub.proc.pid, tmp_path / "strace.txt") as calls:
            for i, point in enumerate(POINTS):
                if i:
                    await asyncio.sleep(1.05)  # 1 s apart: each one written (not coalesced)
                r = await c.post("/api/motion", json=dict(zip(("lat", "lng"), point, strict=True)),
                                 headers=RAMI)  # fmt: skip
                assert r.status_code == 200, r.text
                await until(lambda p=point: position(data) == p, 3, "the position in rami.db")
            await place(c, ORDER)  # the customer's and the restaurant's tenant rows, durable
            await asyncio.sleep(0.2)
        assert diff(before, await writes(c)) == {"streams": 1, "tenant": len(POINTS) + 2,
                                                 "public": 0}  # fmt: skip
    rami = [line for line in calls if "/tenants/rami.db" in line]
    ali = [line for line in calls if "/tenants/ali.db" in line]
    assert ali, f"the order's tenant row was committed without an fsync: {calls}"
    # SQLite syncs a WAL's header when it starts the log afresh (here: the first write
    # after the hub opened rami.db), whatever the setting: that one, no more.
    assert len(rami) <= 1, f"positions waited for an fsync: {rami}"
