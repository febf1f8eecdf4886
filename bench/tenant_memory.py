"""Memory one tenant can make a real hub hold with reads, within the limits: RSS per attack.

Prints figures; it is a benchmark, not a test. One ``hub serve`` process on a fresh temp
``HUB_DATA_DIR`` with its default settings (``HUB_TENANT_READ_BUDGET`` 64 MiB, the stall
timeout 30 s, 256 sockets per tenant and role). One tenant, ``mallory`` (a customer), writes
two streams of 1,000 events of ~63 KiB (63 MB each) with its own token; the platform
archives the second (Step 11). Then ``mallory`` attacks, one attack at a time:

- **live**: 256 WebSockets (its cap) on the live stream with ``since=0`` that read nothing
  (a 4 KiB receive buffer), held ``--hold`` seconds (under the stall timeout, so nothing is
  closed for it), then reset;
- **archived**: the same on the archived stream;
- **GET**: ``--getters`` clients each repeating ``GET /api/streams/{id}?limit=10000`` on the
  live stream (reading every answer) for ``--hold`` seconds;
- **all**: 128 sockets on each stream and the getters at once.

Reported per attack: the hub's RSS before (``VmRSS``), at its peak (the highest of
``VmHWM``, reset before each attack, and 20 samples a second of ``VmRSS``), and after (5 s
after the attack ended), against the target: no tenant raises the RSS by more than 256 MiB.
The control: another tenant, ``victor``, has a socket on a stream of its own during every
attack and appends one small event every 0.5 s; its latency (append sent -> frame received)
is reported per attack.

Usage: ``python bench/tenant_memory.py [--rev REV] [--attacks live,archived,GET,all] [--sockets N]
[--getters N] [--hold S] [--json FILE]``
(``--rev``: run that commit of the hub, e.g. the one before a change, instead of the work
tree). About 3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hub.domain.auth import issue_token  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
PAD = "m" * 63_000  # ~63 KiB payloads (the limit is 64 KiB)
BATCH = 15  # events of PAD in one append (the body limit is 1 MiB)
TARGET = 256 << 20
MIB = 1 << 20


class Hub:
    """``python -m hub serve`` on a fresh temp data dir (the work tree, or ``rev``)."""

    def __init__(self, rev: str | None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hub-tenant-memory-"))
        self.src = ROOT
        if rev is not None:
            self.src = self.tmp / "src"
            self.src.mkdir()
            tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                                 capture_output=True, timeout=60).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(self.src)], input=tar, check=True, timeout=60)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.tmp / "hub.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(HUB_DATA_DIR=str(self.tmp / "data"), HUB_SECRET=SECRET, PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(self.src))  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve", "--port", str(self.port),
                 "--log-level", "warning"],
                env=env, cwd=self.src, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited early:\n{self.log()}")
            with (contextlib.suppress(OSError, ValueError),
                  urllib.request.urlopen(self.url + "/healthz", timeout=1) as r):  # fmt: skip
                if json.load(r).get("status") == "ok":
                    return
            time.sleep(0.05)
        raise RuntimeError(f"hub did not become healthy:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def reset_peak(self) -> None:
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Sampler:
    """The hub's VmRSS 20 times a second, in a thread, while running."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.hub.reset_peak()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.hub.status("VmHWM"))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.hub.status("VmRSS"))


def headers(tenant: str, role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {issue_token(SECRET, tenant, role)}"}


MALLORY, VICTOR, PLATFORM = (headers("mallory", "customer"), headers("victor", "customer"),
                             headers("ops", "platform"))  # fmt: skip


async def write_stream(c: httpx.AsyncClient, sid: str, events: int) -> None:
    """ORDER_CREATE naming mallory, then ``events`` - 1 INVOICE_PAYMENTs of PAD: mallory's
    own appends (a customer may append 203 to its order's stream)."""
    r = await c.post(f"/api/streams/{sid}/events", headers=MALLORY,
                     json={"opcode": 501, "payload": {"customer": "mallory",
                                                      "restaurant": "bench-rest"}})  # fmt: skip
    r.raise_for_status()
    left = events - 1
    while left > 0:
        n = min(BATCH, left)
        r = await c.post(f"/api/streams/{sid}/events", headers=MALLORY,
                         json={"events": [{"opcode": 203, "payload": {"pad": PAD}}] * n})  # fmt: skip
        r.raise_for_status()
        left -= n


async def deaf(hub: Hub, path: str) -> ClientConnection:
    """A WebSocket of mallory's that reads nothing once open (4 KiB receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", hub.port))
    return await connect(f"ws://127.0.0.1:{hub.port}{path}", additional_headers=MALLORY,
                         sock=sock, max_queue=1, ping_interval=None, compression=None,
                         proxy=None, open_timeout=30, close_timeout=1)  # fmt: skip


async def reset_all(conns: list[ClientConnection]) -> None:
    for conn in conns:
        sock = conn.transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.transport.abort()
    for conn in conns:
        with contextlib.suppress(Exception):
            await conn.wait_closed()


class Control:
    """victor's socket on its own stream, and one append every 0.5 s: latency per window."""

    def __init__(self, hub: Hub, c: httpx.AsyncClient, sid: str) -> None:
        self.hub, self.c, self.sid = hub, c, sid
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.missing = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        r = await self.c.post(f"/api/streams/{self.sid}/events", headers=VICTOR,
                              json={"opcode": 501, "payload": {"customer": "victor",
                                                               "restaurant": "bench-rest"}})  # fmt: skip
        r.raise_for_status()
        self.conn = await connect(f"ws://127.0.0.1:{self.hub.port}/ws/streams/{self.sid}?since=1",
                                  additional_headers=VICTOR)  # fmt: skip
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._send())]

    async def _receive(self) -> None:
        async for raw in self.conn:
            frame = json.loads(raw)
            sent = self.sent.pop(frame.get("id", ""), None)
            if sent is not None:
                self.latencies.append(time.monotonic() - sent)

    async def _send(self) -> None:
        n = 0
        while True:
            n += 1
            event_id = f"ctl-{n}"
            self.sent[event_id] = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                await self.c.post(f"/api/streams/{self.sid}/events", headers=VICTOR,
                                  json={"id": event_id, "opcode": 203}, timeout=30)  # fmt: skip
            await asyncio.sleep(0.5)

    def window(self) -> dict[str, float]:
        """Latencies since the last call (and appends sent but not received for 5 s)."""
        lat, self.latencies = self.latencies, []
        now = time.monotonic()
        late = [k for k, t in self.sent.items() if now - t > 5]
        for k in late:
            del self.sent[k]
        self.missing += len(late)
        if not lat:
            return {"n": 0, "p50_ms": float("nan"), "max_ms": float("nan"), "late": len(late)}
        return {"n": len(lat), "p50_ms": 1000 * statistics.median(lat),
                "max_ms": 1000 * max(lat), "late": len(late)}  # fmt: skip

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.conn.close()


async def getters(hub: Hub, sid: str, n: int, until: float, stats: dict[str, Any]) -> None:
    async def one() -> None:
        async with httpx.AsyncClient(base_url=hub.url, timeout=120) as c:
            while time.monotonic() < until:
                r = await c.get(f"/api/streams/{sid}?limit=10000", headers=MALLORY)
                stats["requests"] += 1
                stats["status"][r.status_code] = stats["status"].get(r.status_code, 0) + 1
                stats["max_body"] = max(stats["max_body"], len(r.content))

    await asyncio.gather(*(one() for _ in range(n)))


async def attack(hub: Hub, control: Control, name: str, *, live: str, archived: str,
                 sockets: tuple[int, int], get_clients: int, hold: float) -> dict[str, Any]:  # fmt: skip
    await asyncio.sleep(3)  # settle after the last attack
    before = hub.status("VmRSS")
    control.window()
    stats: dict[str, Any] = {"requests": 0, "status": {}, "max_body": 0}
    with Sampler(hub) as sampler:
        t0 = time.monotonic()
        conns = await asyncio.gather(
            *(deaf(hub, f"/ws/streams/{live}?since=0") for _ in range(sockets[0])),
            *(deaf(hub, f"/ws/streams/{archived}?since=0") for _ in range(sockets[1])),
        )
        opened = time.monotonic() - t0
        if get_clients:
            await getters(hub, live, get_clients, t0 + hold, stats)
        await asyncio.sleep(max(0.0, t0 + hold - time.monotonic()))
        ctl = control.window()
        await reset_all(list(conns))
        await asyncio.sleep(5)
    after = hub.status("VmRSS")
    peak = sampler.peak
    row = {"attack": name, "before_mib": before / MIB, "peak_mib": peak / MIB,
           "after_mib": after / MIB, "rise_mib": (peak - before) / MIB,
           "within_target": peak - before <= TARGET, "sockets": sum(sockets),
           "opened_s": opened, "control": ctl, "gets": stats}  # fmt: skip
    print(f"  {name:9} RSS {before / MIB:6.0f} -> peak {peak / MIB:6.0f} (+{(peak - before) / MIB:5.0f} MiB"
          f" {'<=' if row['within_target'] else '>'} 256) -> after {after / MIB:6.0f} MiB;"
          f" control p50 {ctl['p50_ms']:.0f} ms max {ctl['max_ms']:.0f} ms late {ctl['late']}"
          + (f"; GETs {stats['requests']} {stats['status']} largest {stats['max_body'] / MIB:.1f} MiB"
             if get_clients else ""), flush=True)  # fmt: skip
    return row


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    hub = Hub(args.rev)
    try:
        hub.start()
        async with httpx.AsyncClient(base_url=hub.url, timeout=120) as c:
            t0 = time.monotonic()
            live, archived = "bench-live", "bench-archived"
            await asyncio.gather(write_stream(c, live, args.events),
                                 write_stream(c, archived, args.events))  # fmt: skip
            r = await c.post(f"/api/streams/{archived}/archive", headers=PLATFORM)
            r.raise_for_status()
            size = (hub.tmp / "data" / "archive" / f"{archived}.json").stat().st_size
            print(f"setup: 2 streams of {args.events} events, archive object {size / 1e6:.1f} MB,"
                  f" {time.monotonic() - t0:.1f} s; hub RSS {hub.status('VmRSS') / MIB:.0f} MiB",
                  flush=True)  # fmt: skip
            control = Control(hub, c, "bench-victor")
            await control.start()
            rows = []
            half = args.sockets // 2
            for name, socks, gets in (("live", (args.sockets, 0), 0),
                                      ("archived", (0, args.sockets), 0),
                                      ("GET", (0, 0), args.getters),
                                      ("all", (half, args.sockets - half), args.getters)):  # fmt: skip
                if name not in args.attacks.split(","):
                    continue
                rows.append(await attack(hub, control, name, live=live, archived=archived,
                                         sockets=socks, get_clients=gets, hold=args.hold))  # fmt: skip
            await control.stop()
            print(f"control: {control.missing} appends not received within 5 s", flush=True)
            return rows
    finally:
        hub.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", help="run this commit of the hub (git archive) instead of the work tree")
    p.add_argument("--events", type=int, default=1000, help="events of ~63 KiB per stream")
    p.add_argument("--sockets", type=int, default=256, help="sockets per socket attack")
    p.add_argument("--getters", type=int, default=16, help="clients repeating GET ?limit=10000")
    p.add_argument("--hold", type=float, default=20.0, help="seconds each attack lasts")
    p.add_argument("--attacks", default="live,archived,GET,all",
                   help="which attacks, in this order: live,archived,GET,all")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    print(f"hub {'rev ' + args.rev if args.rev else 'work tree'}; target: +256 MiB at most",
          flush=True)
    rows = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print("\n| attack | RSS before | peak | after | rise | within 256 MiB | control p50 / max |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        ctl = r["control"]
        print(f"| {r['attack']} | {r['before_mib']:.0f} MiB | {r['peak_mib']:.0f} MiB | "
              f"{r['after_mib']:.0f} MiB | +{r['rise_mib']:.0f} MiB | "
              f"{'yes' if r['within_target'] else 'NO'} | {ctl['p50_ms']:.0f} / {ctl['max_ms']:.0f} ms |")
    return 0 if all(r["within_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
