"""The GPS service on real parts (an embedded streams store, embedded tenant DBs, the
memory broker): many drivers' pings cost a few queries and a few hops to the DB threads, and
an assignment made while a driver's orders are being looked up is not hidden by that
lookup's older answer."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.domain.gps import Gps
from hub.events import Opcode
from hub.infra.broker import MemoryBroker, Notice
from hub.infra.store.file import FileStore
from hub.infra.tenants import Tenants
from hub.metrics import Metrics
from tests.unit.parts import STREAM, event, order_create

DRIVERS = [f"drv-{i}" for i in range(300)]


class CountingStore(FileStore):
    """The embedded store, counting the GPS's lookups; ``hold`` (when set) keeps each
    lookup waiting until it is released (to order a lookup and an assignment)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.lookups: list[list[str]] = []
        self.hold: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def streams_of_members(self, members: Sequence[str], **kw: Any) -> dict[str, list[str]]:
        self.lookups.append(list(members))
        found = await super().streams_of_members(members, **kw)
        self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        return found


class CountingTenants(Tenants):
    """The tenant DBs, counting the jobs the GPS's writes take."""

    jobs = 0

    async def execute_each(self, work: Sequence[Any], **kw: Any) -> list[BaseException | None]:
        self.jobs += 1
        return await super().execute_each(work, **kw)


class Frames(MemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        self.notices: list[Notice] = []

    def publish_notice(self, notice: Notice) -> None:
        self.notices.append(notice)


async def parts(tmp_path: Path) -> tuple[CountingStore, CountingTenants, Frames, Gps]:
    store = CountingStore(f"file:{tmp_path / 'streams.db'}")
    await store.open()
    tenants = CountingTenants(f"file:{tmp_path}/tenants/{{tenant}}.db",
                              f"file:{tmp_path / 'public.db'}")  # fmt: skip
    (tmp_path / "tenants").mkdir()
    for driver in DRIVERS:
        await tenants.tenant(driver).execute(
            "INSERT INTO points (id, nodeId, lat, lng) VALUES (?, ?, 0, 0)",
            [f"pt-{driver}", driver],
        )
    broker = Frames()
    gps = Gps(tenants, store, broker, Metrics())
    await gps.start()
    return store, tenants, broker, gps


async def close(store: FileStore, tenants: Tenants, gps: Gps) -> None:
    await gps.close()
    await store.close()
    await tenants.close()


async def test_many_drivers_pinging_at_once_cost_a_few_queries_and_jobs(tmp_path: Path) -> None:
    """300 drivers' pings in the same instant: one lookup of their orders and one job of
    writes (one each before), and every position written."""
    store, tenants, _, gps = await parts(tmp_path)
    try:
        jobs = tenants.jobs
        accepted = await asyncio.gather(*(gps.ping(d, 25.2, 55.3) for d in DRIVERS))
        assert all(accepted)
        assert len(store.lookups) <= 2, [len(batch) for batch in store.lookups]
        assert sorted(d for batch in store.lookups for d in batch) == sorted(DRIVERS)
        assert tenants.jobs - jobs <= 2
        for driver in DRIVERS[::50]:
            path = tmp_path / "tenants" / f"{driver}.db"
            with sqlite3.connect(path) as conn:
                assert conn.execute("SELECT lat, lng, seenAt IS NOT NULL FROM points").fetchall() \
                    == [(25.2, 55.3, 1)]  # fmt: skip
    finally:
        await close(store, tenants, gps)


async def test_an_assignment_during_a_lookup_is_not_hidden_by_its_answer(tmp_path: Path) -> None:
    """A driver assigned (``forget``) while the lookup of his orders is under way: that
    lookup's answer (no orders) is not kept, so his next ping finds the order and its
    watchers get his position (before, the old answer was kept for a second)."""
    store, tenants, broker, gps = await parts(tmp_path)
    driver = DRIVERS[0]
    try:
        await store.append(STREAM, [order_create()], first=True)
        store.hold = asyncio.Event()  # the lookup answers only when released
        first = asyncio.create_task(gps.ping(driver, 25.2, 55.3))
        await asyncio.wait_for(store.started.wait(), 5)
        await store.append(STREAM, [event(Opcode.TASK_ASSIGN, payload={"driver": driver})])
        gps.forget(driver)  # as the assignment does
        store.hold.set()
        await asyncio.wait_for(first, 5)
        assert [n.stream_id for n in broker.notices] == []  # that ping: before the order
        store.hold = None
        await gps.ping(driver, 25.21, 55.31)
        assert [n.stream_id for n in broker.notices] == [STREAM]
    finally:
        await close(store, tenants, gps)
