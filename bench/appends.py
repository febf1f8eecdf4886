"""Committed appends/s on the embedded streams store, against libsql-client's ``file:`` mode.

What it measures, for each writer count (default 1, 16 and 256):

- **hub**: ``hub.infra.store.file.FileStore`` on a fresh temp DB file. Each writer is an
  asyncio task that appends single events to *its own stream* (``order-0000``,
  ``order-0001``, ...; ``--streams K`` makes writer ``w`` share stream ``w % K``
  instead), awaiting each ``append`` (so every event counted is committed) before
  sending the next.
- **libsql-client**: the same events, the same schema (``hub.infra.store.SCHEMA``), through
  ``libsql_client.create_client("file:...")`` on another fresh file; each writer awaits
  one ``client.execute("INSERT INTO events ...")`` per event, ``seq`` computed in the
  statement (``MAX(seq) + 1`` of the stream). That client runs sqlite3 synchronously
  inside its coroutines (a connection per statement, rollback journal, busy timeout 0),
  so concurrency cannot help it and the event loop is blocked while it writes.
- **max loop gap**: a ticker task sleeps 1 ms in a loop during each run and records the
  longest time between two of its wake-ups (so ~1 ms is the floor): how long the event
  loop, which also serves every WebSocket of the hub, was stalled.

Events are made beforehand (outside the timing) with ``hub.events.parse_draft``: opcodes
that add no members (task/ship/deliver), a ~200-byte JSON payload, generated id and ts;
they are then ``gc.freeze()``-d so the cyclic GC does not stall the loop walking them.
Each run ends after ``--events`` events or ``--max-seconds``, whichever comes first;
afterwards the DB must hold exactly the events that were acknowledged, each stream with
``seq`` 1..n without gaps (and, for the hub, ``streams.lastSeq`` = n). Temp files are
removed after each run.

Usage: ``python bench/appends.py [--events N] [--writers 1,16,256]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import libsql_client

from hub.events import NewEvent, Opcode, parse_draft
from hub.infra.store import SCHEMA
from hub.infra.store.file import FileStore

PAYLOAD_BYTES = 200
TARGET_WRITERS = 256
TARGET_EVENTS_PER_S = 10_000
OPCODES = (
    Opcode.TASK_CREATE,
    Opcode.TASK_START,
    Opcode.ORDER_SHIP,
    Opcode.TASK_DONE,
    Opcode.ORDER_DELIVER,
)
LIBSQL_INSERT = (
    "INSERT INTO events (id, streamId, opcode, nodeId, pointId, delta, payload, ts, seq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
    " (SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE streamId = ?))"
)


@dataclass(frozen=True, slots=True)
class RunResult:
    """One timed run of one store at one writer count."""

    events: int  # appends acknowledged (committed)
    seconds: float
    max_gap_ms: float
    commits: int | None = None  # group commits (hub only)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def make_payload(i: int) -> dict[str, object]:
    """A JSON object of about ``PAYLOAD_BYTES`` bytes once encoded."""
    body: dict[str, object] = {
        "driver": "driver-17",
        "lat": 48.8566 + i * 1e-6,
        "lng": 2.3522,
        "status": "en-route",
        "note": "",
    }
    size = len(json.dumps(body, separators=(",", ":")).encode())
    body["note"] = "x" * max(0, PAYLOAD_BYTES - size)
    return body


def stream_of(writer: int, streams: int) -> str:
    return f"order-{writer % streams if streams else writer:04d}"


def make_events(writers: int, per_writer: int, streams: int) -> list[list[NewEvent]]:
    """Each writer's events, validated by ``parse_draft`` as the hub does."""
    out: list[list[NewEvent]] = []
    for w in range(writers):
        sid = stream_of(w, streams)
        out.append(
            [
                parse_draft(
                    {
                        "opcode": OPCODES[i % len(OPCODES)],
                        "nodeId": f"node-{w}",
                        "delta": 1,
                        "payload": make_payload(i),
                    },
                    stream_id=sid,
                )
                for i in range(per_writer)
            ]
        )
    return out


async def ticker(stop: asyncio.Event, gaps: list[float]) -> None:
    """Sleep 1 ms at a time; keep the longest wall time between two wake-ups."""
    last = time.perf_counter()
    worst = 0.0
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst = max(worst, now - last)
        last = now
    gaps.append(worst)


async def idle_loop_gap(seconds: float) -> float:
    """The ticker's max gap (ms) on an otherwise idle loop: the machine's noise floor."""
    stop = asyncio.Event()
    gaps: list[float] = []
    tick = asyncio.create_task(ticker(stop, gaps))
    await asyncio.sleep(seconds)
    stop.set()
    await tick
    return gaps[0] * 1000


async def timed(
    writers: int, write_one: Callable[[int], Awaitable[bool]]
) -> tuple[list[int], float, float]:
    """Run ``writers`` tasks calling ``write_one(w)`` until it returns False.

    Returns events acknowledged per writer, seconds, and the max loop gap in ms.
    """
    done = [0] * writers

    async def writer(w: int) -> None:
        while await write_one(w):
            done[w] += 1

    stop = asyncio.Event()
    gaps: list[float] = []
    tick = asyncio.create_task(ticker(stop, gaps))
    await asyncio.sleep(0.01)  # the ticker is running before the writers start
    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    seconds = time.perf_counter() - t0
    stop.set()
    await tick
    return done, seconds, gaps[0] * 1000


def verify(path: Path, expected: Counter[str], *, hub: bool) -> None:
    """The DB holds exactly the acknowledged events, ``seq`` 1..n per stream."""
    conn = sqlite3.connect(path)
    try:
        total = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        if total != sum(expected.values()):
            raise AssertionError(f"{path.name}: {total} rows, expected {sum(expected.values())}")
        rows = conn.execute(
            "SELECT streamId, COUNT(*), MIN(seq), MAX(seq) FROM events GROUP BY streamId"
        ).fetchall()
        found = {sid: (n, lo, hi) for sid, n, lo, hi in rows}
        for sid, n in expected.items():
            # UNIQUE (streamId, seq) makes the seqs distinct: n of them in 1..n = no gap.
            if found.get(sid) != (n, 1, n):
                raise AssertionError(f"{path.name}: stream {sid} has {found.get(sid)}, want n={n}")
        if len(found) != len(expected):
            raise AssertionError(f"{path.name}: unexpected streams {set(found) - set(expected)}")
        if hub:
            last = dict(conn.execute("SELECT streamId, lastSeq FROM streams").fetchall())
            if last != dict(expected):
                raise AssertionError(f"{path.name}: streams.lastSeq differs from the events")
    finally:
        conn.close()


def tally(done: Sequence[int], streams: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for w, n in enumerate(done):
        if n:
            counts[stream_of(w, streams)] += n
    return counts


async def run_hub(
    events: list[list[NewEvent]], streams: int, deadline_s: float, tmp: Path
) -> RunResult:
    path = tmp / "hub.infra.db"
    store = FileStore(f"file:{path}")
    await store.open()
    writers = len(events)
    own = streams == 0
    deadline = 0.0
    done_so_far = [0] * writers

    async def write_one(w: int) -> bool:
        i = done_so_far[w]
        if i >= len(events[w]) or time.perf_counter() > deadline:
            return False
        res = await store.append(stream_of(w, streams), [events[w][i]])
        if own and res.events[0].seq != i + 1:
            raise AssertionError(f"writer {w}: seq {res.events[0].seq}, want {i + 1}")
        done_so_far[w] = i + 1
        return True

    try:
        deadline = time.perf_counter() + deadline_s
        done, seconds, gap = await timed(writers, write_one)
        commits = store.commits
    finally:
        await store.close()
    verify(path, tally(done, streams), hub=True)
    return RunResult(sum(done), seconds, gap, commits)


async def run_libsql(
    events: list[list[NewEvent]], streams: int, deadline_s: float, tmp: Path
) -> RunResult:
    path = tmp / "libsql.db"
    client = libsql_client.create_client(f"file://{path}")
    writers = len(events)
    deadline = 0.0
    done_so_far = [0] * writers
    try:
        for ddl in SCHEMA:
            await client.execute(ddl)

        async def write_one(w: int) -> bool:
            i = done_so_far[w]
            if i >= len(events[w]) or time.perf_counter() > deadline:
                return False
            e = events[w][i]
            sid = stream_of(w, streams)
            await client.execute(
                LIBSQL_INSERT,
                [e.id, sid, e.opcode, e.node_id, e.point_id, e.delta, e.payload, e.ts, sid],
            )
            done_so_far[w] = i + 1
            return True

        deadline = time.perf_counter() + deadline_s
        done, seconds, gap = await timed(writers, write_one)
    finally:
        await client.close()
    verify(path, tally(done, streams), hub=False)
    return RunResult(sum(done), seconds, gap)


def fmt_rate(r: RunResult) -> str:
    return f"{r.rate:,.0f}"


async def main_async(args: argparse.Namespace) -> int:
    writer_counts = [int(x) for x in args.writers.split(",") if x.strip()]
    print(
        f"appends: {args.events} events per run (split over the writers), stop after"
        f" {args.max_seconds:g} s, payload ~{PAYLOAD_BYTES} B, "
        + (f"writers share {args.streams} streams" if args.streams else "one stream per writer")
        + f"; python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}"
    )
    idle_gap = await idle_loop_gap(1.0)
    print(f"  idle loop (no store) max gap over 1 s: {idle_gap:.1f} ms (the machine's floor)")
    rows: list[tuple[int, RunResult, RunResult]] = []
    for writers in writer_counts:
        per_writer = max(1, args.events // writers)
        events = make_events(writers, per_writer, args.streams)
        # Keep the cyclic GC from walking the pre-made events (a benchmark artifact: the
        # hub never holds them all); unfrozen, gen-2 passes over them stall the loop
        # ~25 ms at 256 writers.
        gc.collect()
        gc.freeze()
        with tempfile.TemporaryDirectory(prefix="hub-bench-", dir=args.dir) as d:
            hub = await run_hub(events, args.streams, args.max_seconds, Path(d))
        with tempfile.TemporaryDirectory(prefix="hub-bench-", dir=args.dir) as d:
            lib = await run_libsql(events, args.streams, args.max_seconds, Path(d))
        del events
        gc.unfreeze()
        rows.append((writers, hub, lib))
        per_commit = hub.events / hub.commits if hub.commits else 0.0
        print(
            f"  {writers:>4} writers: hub {hub.events} events in {hub.seconds:.2f} s"
            f" ({hub.commits} commits, {per_commit:.1f} events/commit);"
            f" libsql-client {lib.events} events in {lib.seconds:.2f} s; verified"
        )

    print()
    head = (
        f"{'writers':>7}  {'hub ev/s':>10}  {'libsql ev/s':>11}  {'hub/libsql':>10}"
        f"  {'hub max gap':>11}  {'libsql max gap':>14}"
    )
    print(head)
    print("-" * len(head))
    for writers, hub, lib in rows:
        ratio = hub.rate / lib.rate if lib.rate else float("inf")
        print(
            f"{writers:>7}  {fmt_rate(hub):>10}  {fmt_rate(lib):>11}  {ratio:>9.1f}x"
            f"  {hub.max_gap_ms:>8.1f} ms  {lib.max_gap_ms:>11.1f} ms"
        )
    for writers, hub, _ in rows:
        if writers == TARGET_WRITERS:
            verdict = "met" if hub.rate >= TARGET_EVENTS_PER_S else "MISSED"
            print(
                f"\ntarget: hub >= {TARGET_EVENTS_PER_S:,} events/s with {TARGET_WRITERS}"
                f" writers: {verdict} ({fmt_rate(hub)})"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--events", type=int, default=50_000, help="events per run, split over the writers"
    )
    parser.add_argument("--writers", default="1,16,256", help="comma-separated writer counts")
    parser.add_argument(
        "--streams",
        type=int,
        default=0,
        help="writers share this many streams (default 0: one stream per writer)",
    )
    parser.add_argument("--max-seconds", type=float, default=8.0, help="stop a run after this long")
    parser.add_argument("--dir", default=None, help="where to put the temp DB files")
    args = parser.parse_args(argv)
    if args.events < 1 or args.streams < 0 or args.max_seconds <= 0:
        parser.error("--events must be >= 1, --streams >= 0, --max-seconds > 0")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
