"""Durability of the streams log (docs/protocol.md §3): gap-free seq under concurrency, across
processes and across a SIGKILL, and appends that never stall the event loop.

The tests across processes and across a SIGKILL run on both kinds of streams DB: the
embedded SQLite file and a real libSQL server (sqld, :mod:`tests.sqld`), which is what
several hub instances on several machines share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.events import NewEvent, parse_draft
from hub.infra.store.file import FileStore
from tests.conftest import HubProcess, auth, timeout
from tests.sqld import Sqld, query

PLATFORM = auth("ops", "platform")
ROOT = Path(__file__).resolve().parent.parent

# One OS process appending to a shared stream through its own store (open_store: a
# FileStore on the file, a RemoteStore on sqld). It says "ready", waits for a line on
# stdin (so both processes open the store and append at the same moment), opens the
# store, appends N single events with C concurrent tasks, closes, and prints a JSON
# report of the seqs it was given and every error it saw.
APPENDER = r"""
import asyncio, json, sys
from hub.events import parse_draft
from hub.infra.store import open_store

async def main(url, stream, tag, n, concurrency):
    drafts = iter(
        parse_draft({"id": f"{tag}-{i}", "opcode": 303, "payload": {"w": tag, "i": i}},
                    stream_id=stream)
        for i in range(n)
    )
    seqs, errors = [], []

    async def worker():
        for event in drafts:
            try:
                result = await store.append(stream, [event])
            except Exception as exc:
                errors.append(f"append: {exc!r}")
            else:
                seqs.append(result.events[0].seq)

    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    store = open_store(url)
    try:
        await store.open()
    except Exception as exc:
        errors.append(f"open: {exc!r}")
    else:
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await store.close()
    print(json.dumps({"seqs": seqs, "errors": errors}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


class StreamsDb:
    """Where a test's streams DB lives: ``file`` (a SQLite file under ``tmp_path``) or
    ``sqld`` (a real sqld over ``ws://``)."""

    def __init__(self, kind: str, tmp_path: Path, sqld_factory: Callable[..., Sqld]) -> None:
        self.path = tmp_path / "streams.db"
        self.server = sqld_factory("streams") if kind == "sqld" else None

    @property
    def url(self) -> str:
        return self.server.ws_url if self.server is not None else f"file:{self.path}"

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows of a query, read with plain SQL as a seed-style reader would."""
        if self.server is not None:
            return query(self.server.http_url, sql, *args)
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as conn:
            return conn.execute(sql, args).fetchall()


@pytest.fixture(params=["file", "sqld"])
def streams_db(
    request: pytest.FixtureRequest, tmp_path: Path, sqld_factory: Callable[..., Sqld]
) -> StreamsDb:
    """The streams DB, once embedded and once on a real sqld."""
    return StreamsDb(request.param, tmp_path, sqld_factory)


def stored_events(db: StreamsDb, stream_id: str) -> list[tuple[int, str, int]]:
    """(seq, id, pos) of the stream's rows, read with plain SQL as a seed-style reader would."""
    rows = db.rows("SELECT seq, id, pos FROM events WHERE streamId = ? ORDER BY seq", stream_id)
    return [(int(s), str(i), int(p)) for s, i, p in rows]


def test_two_processes_share_one_stream_without_gaps(streams_db: StreamsDb) -> None:
    """Two processes appending to one stream in one database: no errors, seq exactly 1..n."""
    db = streams_db
    stream, per_process, concurrency = "shared-order", 500, 16
    with contextlib.ExitStack() as stack:
        procs = []
        for tag in ("p1", "p2"):
            argv = [sys.executable, "-c", APPENDER, db.url, stream, tag]
            argv += [str(per_process), str(concurrency)]
            pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            procs.append(stack.enter_context(subprocess.Popen(argv, cwd=ROOT, text=True, **pipes)))
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n", p.communicate(timeout=timeout(10))
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=timeout(60)) for p in procs]
    reports = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert err == ""
        reports.append(json.loads(out.splitlines()[-1]))
    for report in reports:
        assert report["errors"] == []
        assert len(report["seqs"]) == per_process
    total = 2 * per_process
    acknowledged = reports[0]["seqs"] + reports[1]["seqs"]
    assert sorted(acknowledged) == list(range(1, total + 1))
    rows = stored_events(db, stream)
    assert [seq for seq, _, _ in rows] == list(range(1, total + 1))
    assert {event_id for _, event_id, _ in rows} == {
        f"{tag}-{i}" for tag in ("p1", "p2") for i in range(per_process)
    }
    positions = [pos for _, _, pos in rows]
    assert positions == sorted(set(positions))


async def test_opening_waits_for_another_writers_lock(tmp_path: Path) -> None:
    """Opening a file another process is writing waits (busy timeout) instead of failing."""
    db = tmp_path / "streams.db"
    with contextlib.closing(
        sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    ) as other:
        # A connection standing in for another process that reached the new file first
        # and is mid-transaction (a second hub converting it to WAL, a seed-style writer).
        other.execute("CREATE TABLE seed_style (x)")
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO seed_style VALUES (1)")
        release = asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
        store = FileStore(f"file:{db}")
        try:
            await store.open()
            event = parse_draft({"opcode": 303}, stream_id="after-lock")
            result = await store.append("after-lock", [event])
            assert [e.seq for e in result.events] == [1]
        finally:
            release.cancel()
            await store.close()


async def test_acknowledged_appends_survive_sigkill(tmp_path: Path, streams_db: StreamsDb) -> None:
    """Every append acknowledged over HTTP is still there, gap-free, after SIGKILL + restart."""
    data_dir = tmp_path / "data"
    env = {"HUB_STREAMS_DB": streams_db.url}
    stream, writers, target = "durable-order", 6, 300
    acked: list[str] = []
    enough = asyncio.Event()
    hub = HubProcess(data_dir, env).start()
    restarted: HubProcess | None = None
    try:

        async def writer(w: int, client: httpx.AsyncClient) -> int:
            """Append until the hub dies; return how many requests went unanswered."""
            for i in range(10 * target):
                event_id = f"w{w}-{i}"
                try:
                    r = await client.post(
                        f"/api/streams/{stream}/events",
                        json={"id": event_id, "opcode": 303, "payload": {"w": w, "i": i}},
                    )
                except httpx.TransportError:
                    return 1
                assert r.status_code == 201, r.text
                acked.append(event_id)
                if len(acked) >= target:
                    enough.set()
            return 0

        async with httpx.AsyncClient(
            base_url=hub.url, headers=PLATFORM, timeout=timeout(10)
        ) as client:
            tasks = [asyncio.create_task(writer(w, client)) for w in range(writers)]
            await asyncio.wait_for(enough.wait(), timeout(30))
            hub.kill()  # SIGKILL while the other writers' requests are in flight
            unanswered = sum(await asyncio.gather(*tasks))
        assert len(acked) >= target

        restarted = HubProcess(data_dir, env).start()
        async with httpx.AsyncClient(base_url=restarted.url, timeout=timeout(10)) as client:
            r = await client.get(f"/api/streams/{stream}", headers=PLATFORM)
        assert r.status_code == 200, r.text
        events = r.json()["events"]
        ids = [e["id"] for e in events]
        assert set(acked) <= set(ids)
        assert len(ids) == len(set(ids))
        # At most the requests in flight at the kill may have committed without an answer.
        assert len(ids) - len(acked) <= unanswered
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        positions = [e["pos"] for e in events]
        assert positions == sorted(set(positions))
        assert [i for _, i, _ in stored_events(streams_db, stream)] == ids  # where it was put
    finally:
        for h in (hub, restarted):
            if h is not None and h.proc is not None and h.proc.poll() is None:
                h.stop()


async def test_appends_never_block_the_event_loop(tmp_path: Path) -> None:
    """5,000 concurrent appends commit while the loop never stalls for 20 ms or more."""
    total, tasks, streams = 5_000, 64, 8
    store = FileStore(f"file:{tmp_path / 'streams.db'}")
    await store.open()
    try:
        batches: list[list[tuple[str, NewEvent]]] = [[] for _ in range(tasks)]
        for i in range(total):
            sid = f"loop-{i % streams}"
            draft = {"id": f"e-{i}", "opcode": 303, "payload": {"i": i, "pad": "x" * 200}}
            batches[i % tasks].append((sid, parse_draft(draft, stream_id=sid)))

        done = asyncio.Event()

        async def ticker() -> float:
            worst, last = 0.0, time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                worst, last = max(worst, now - last), now
            return worst

        async def append_all(items: list[tuple[str, NewEvent]]) -> int:
            for sid, event in items:
                result = await store.append(sid, [event])
                assert [e.id for e in result.new] == [event.id]
            return len(items)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.005)
        started = time.perf_counter()
        committed = sum(await asyncio.gather(*(append_all(b) for b in batches)))
        elapsed = time.perf_counter() - started
        done.set()
        worst = await tick
        assert committed == total
        assert worst < 0.020, f"loop stalled {worst * 1000:.1f} ms ({elapsed:.2f} s of appends)"

        seen: set[str] = set()
        for k in range(streams):
            events = await store.read_stream(f"loop-{k}", 0, total)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            seen.update(e.id for e in events)
        assert seen == {f"e-{i}" for i in range(total)}
    finally:
        await store.close()
