"""A city on one machine: a realistic mix against one hub process pinned to one core.

Prints figures; it is a benchmark, not a test. One command runs one level of load (or, with
``--step``, raises it level by level until the service level breaks) against a fresh hub:

- **R restaurants**, each with a kitchen display (``/ws/inbox``) and two products;
- **D drivers** online, each with its driver app's ``/ws/inbox`` socket sending a ``location``
  frame every second (1 Hz, evenly spread);
- **customers** placing orders at **O per minute** (open loop), each watching its order's
  stream (``/ws/streams/{id}``) until the hub archives it, and **many more connected but
  idle** (``/ws/inbox`` of ``idle-N`` customer tenants, as after dinner): ``--sockets`` in all;
- every order goes through every step over HTTP (create, pay, accept, ready with the nearest
  idle driver assigned, pickup, deliver at the drop-off); a share is cancelled by the
  customer after paying (5 %), rejected by the restaurant (5 %), declined by its first driver
  and reassigned (5 %), or left by a driver who goes silent and is unassigned by the hub after
  ``HUB_DRIVER_TIMEOUT`` (here 5 s) and reassigned (2 %).

Measured per run (the generator is ``bench/loadgen/city.js``; how, in its header):

- **step -> screen** p50/p99/max: from a step's HTTP request being sent to each event it wrote
  arriving at the customer's stream socket and at the kitchen's inbox (and from the step's
  answer, which the frame may precede: fan-out starts at the commit);
- **GPS -> screen** p99: a driver's ``location`` frame to the ``location`` frame at the
  customer following the driver's order;
- **rows written** (``hub_db_writes_total``): streams and public rows must equal what the
  paths taken write (21 per delivered order: 12 + 7 + 2, docs/protocol.md §4.2/§4.6), the
  tenant rows beyond the paths' are the GPS rows, at most 1 per driver per second;
- **RSS per socket** (connecting every socket), **CPU** per idle socket, per ping and per
  order (three windows: idle sockets; + GPS; + orders, the GPS share subtracted);
- **every frame checked**: customer sockets get seq 1..n exactly once in order, then
  ``archived`` and close 1000; kitchen and driver inboxes strictly increasing ``pos`` and
  gap-free ``seq`` per stream (kitchens: every event of their orders, n read back after the
  run); every GPS ping of a delivering driver (from 1.5 s after his assignment to his deliver)
  reaches the customer once, in order.

The service level: step -> screen p99 <= 50 ms (customer and kitchen), GPS -> screen p99 <=
100 ms, nothing lost, duplicated or out of order, every order finished, the row counts as
above.

How it runs: ``python -m hub serve`` (uvicorn) on a fresh temp ``HUB_DATA_DIR`` under
``taskset -c 0`` (the hub raises its soft open-file limit to the hard one; ``city.py`` sets
``HUB_TENANT_MAX_OPEN`` and ``HUB_MAX_CONNECTIONS`` to share it, ``HUB_DRIVER_TIMEOUT=5``,
``HUB_ARCHIVE_DELAY=0``); the Node generator under ``taskset -c 1`` (Node raises its own soft
limit), spreading its sockets over 127.0.0.2, .3, ... (20,000 per address: one address gives
~28k ephemeral ports). ``--instances 2``: two hubs on one
data dir linked by a local ``redis-server`` (all three on core 0), every client spread over
both (HTTP to its own), and redis-server's CPU per event. Every load stays on loopback, each
run has a hard time bound, and the servers, Redis and temp dirs are removed whatever happens.

Usage (from the repository root, the project's venv)::

    python bench/city.py --quick                       # ~1.5 min smoke run, small city
    python bench/city.py --sockets 50000 --drivers 5000 --opm 600 --json /tmp/city.json
    python bench/city.py --step --keep-going --json /tmp/city-step.json   # raise the load
    python bench/city.py --instances 2 --sockets 4000 --drivers 500 --opm 120

Wrap full-scale runs in ``flock /tmp/bench.lock`` on a shared machine. Diagnostics:
``--profile PREFIX`` runs py-spy on the (first) hub for the whole run
(``PREFIX-<level>.<format>``; ``BENCH_PYSPY_FLAGS=--gil`` as for ``bench/fanout.py``);
``--gc-freeze S`` and ``--tenant-pool N`` give the hub a ``sitecustomize.py`` that calls
``gc.freeze()`` every S seconds, or sizes its tenant-DB thread pool (``hub/`` is not changed);
``--shares`` sets the paths' shares; ``--markdown JSON`` prints a saved run's table.

This machine's hard open-file limit (20,000, not raisable without ``CAP_SYS_RESOURCE``) is
shared by a hub's sockets and its open tenant DBs: each level's sockets are capped to fit
(:func:`fd_budget`), and one generator process holds every client socket.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fanout  # free_port, wait_quiet, header, the secret and the cores

ROOT = fanout.ROOT
# This machine's hard RLIMIT_NOFILE (20,000 here; raising it needs CAP_SYS_RESOURCE, which the
# container lacks): a hub's sockets and its open tenant DBs (3 descriptors each) share it.
NOFILE = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[1]
SHARES = {"cancel": 0.05, "reject": 0.05, "decline": 0.05, "silent": 0.02}
GAPS_MS = {"pay": 1000, "accept": 1500, "ready": 2000, "decline": 1000, "pickup": 2000,
           "deliver": 3000}  # fmt: skip
DRIVER_TIMEOUT_S = 5
INSTANCES = 1  # --instances
SLO_STEP_P99_MS = 50.0
SLO_GPS_P99_MS = 100.0
# --step: (sockets, drivers, orders per minute)
STEPS = [(2_000, 250, 60), (4_000, 500, 120), (8_000, 1_000, 240), (12_000, 2_000, 360),
         (50_000, 5_000, 600)]  # fmt: skip


def level(sockets: int, drivers: int, opm: int, duration: float, restaurants: int | None = None,
          customers: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The generator's share of a run's config for one level of load."""
    r = restaurants or max(5, drivers // 10)
    c = customers or max(20, opm // 2)
    in_flight = int(opm / 60 * 16) + 10  # customer stream sockets open at once, about
    # the generator is one process under the same limit
    cap = min(max_sockets(r + drivers + c, INSTANCES), NOFILE - 1500)
    if sockets > cap:
        print(f"(sockets {sockets:,} capped at {cap:,} by the open-file limit {NOFILE:,})")
        sockets = cap
    idle = max(0, sockets - r - drivers - in_flight)
    return {"restaurants": r, "drivers": drivers, "customers": c, "idle": idle, "opm": opm,
            "durationS": duration, "gpsHz": 1, "shares": SHARES, "gaps": GAPS_MS}  # fmt: skip


def fd_budget(tenants: int) -> tuple[int, int]:
    """Tenant DBs kept open, and the connection cap, that fit one hub's open-file limit.

    The hub keeps ``HUB_TENANT_MAX_OPEN`` within half the limit at 3 descriptors per DB; the
    connections get what is left (less 300 for the databases, logs and Redis).
    """
    tenant_open = min(tenants + 64, NOFILE // 2 // 3)
    return tenant_open, NOFILE - 3 * tenant_open - 300


def max_sockets(tenants: int, instances: int = 1) -> int:
    """WebSockets a level may hold: nine tenths of the connection cap, less the generator's
    HTTP connections (256 per instance), per instance."""
    return instances * (int(fd_budget(tenants)[1] * 0.9) - 300)


class Redis:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="city-redis-"))
        self.port = fanout.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            ["taskset", "-c", fanout.HUB_CORE, "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.tmp),
             "--maxclients", "20000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                               text=True)  # fmt: skip
            if r.stdout.strip() == "PONG":
                return self
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def cleanup(self) -> None:
        kill(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Hub:
    """``python -m hub serve`` under ``prlimit`` and ``taskset -c 0``."""

    def __init__(self, data_dir: Path, tmp: Path, env: dict[str, str]) -> None:
        self.data_dir, self.tmp, self.env = data_dir, tmp, env
        self.port = fanout.free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / f"hub-{self.port}.log"

    def start(self) -> Hub:
        env = dict(os.environ)
        for k in ("HUB_REDIS_URL", "HUB_STREAMS_DB", "HUB_TENANT_DB", "HUB_PUBLIC_DB"):
            env.pop(k, None)
        env.update(HUB_DATA_DIR=str(self.data_dir), HUB_SECRET=fanout.SECRET,
                   PYTHONUNBUFFERED="1", **self.env)  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["taskset", "-c", fanout.HUB_CORE, sys.executable, "-m", "hub", "serve", "--port", str(self.port),
                 "--log-level", "warning"],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/healthz", timeout=1
                ) as r:
                    if json.load(r).get("status") == "ok":
                        return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"hub did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


def start_profile(pid: int, path: Path) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` as ``bench/fanout.py`` runs it; py-spy from the venv, PATH or
    ``/tmp/pyspy/bin`` (``pip install --target /tmp/pyspy py-spy``)."""
    spy = next((str(p) for p in (Path(sys.executable).parent / "py-spy",
                                 Path(shutil.which("py-spy") or "/nonexistent"),
                                 Path("/tmp/pyspy/bin/py-spy")) if p.exists()), None)  # fmt: skip
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install --target /tmp/pyspy py-spy)")
    return subprocess.Popen(
        [spy, "record", "--nonblocking", "--pid", str(pid), "--rate", fanout.PROFILE_RATE,
         *fanout.PROFILE_FLAGS, "-o", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


GC_FREEZE = 0.0  # --gc-freeze (a diagnostic: hub/ is not changed)
TENANT_POOL = 0  # --tenant-pool (a diagnostic: hub/ is not changed)
POOL_SITECUSTOMIZE = """
import hub.infra.tenants
hub.infra.tenants.POOL_THREADS = %d  # the tenant-DB thread pool's size (4 as shipped)
"""
SITECUSTOMIZE = """
import gc, threading, time
def _freeze(every):
    while True:
        time.sleep(every)
        gc.freeze()  # what is alive now (sockets, subscriptions) leaves the collector's scans
threading.Thread(target=_freeze, args=(%r,), daemon=True, name="bench-gc-freeze").start()
"""


def run_level(
    name: str, gen_cfg: dict[str, Any], instances: int, profile: str | None
) -> dict[str, Any]:
    """One fresh hub (or two and Redis), the generator against it; always cleaned up."""
    tmp = Path(tempfile.mkdtemp(prefix="city-"))
    hubs: list[Hub] = []
    redis: Redis | None = None
    gen: subprocess.Popen[bytes] | None = None
    spy = None
    tenants = gen_cfg["restaurants"] + gen_cfg["drivers"] + gen_cfg["customers"]
    tenant_open, max_conns = fd_budget(tenants)
    env = {
        "HUB_DRIVER_TIMEOUT": str(DRIVER_TIMEOUT_S),
        "HUB_ARCHIVE_DELAY": "0",
        "HUB_TENANT_MAX_OPEN": str(tenant_open),
        "HUB_MAX_CONNECTIONS": str(max_conns),
    }
    site = ""
    if GC_FREEZE > 0:
        site += SITECUSTOMIZE % GC_FREEZE
    if TENANT_POOL > 0:
        site += POOL_SITECUSTOMIZE % TENANT_POOL
    if site:
        (tmp / "site").mkdir()
        (tmp / "site" / "sitecustomize.py").write_text(site)
        env["PYTHONPATH"] = str(tmp / "site")
    try:
        if instances == 2:
            redis = Redis().start()
            env["HUB_REDIS_URL"] = f"redis://127.0.0.1:{redis.port}"
        data = tmp / "data"
        for _ in range(instances):
            hubs.append(Hub(data, tmp, env).start())
        timeout_s = (120 + gen_cfg["drivers"] * 0.01 + gen_cfg["idle"] * 0.004 + 30
                     + gen_cfg["durationS"] + 90)  # fmt: skip
        cfg = dict(gen_cfg, host="127.0.0.1", ports=[h.port for h in hubs],
                   serverPids=[h.proc.pid for h in hubs if h.proc],
                   auxPids=[redis.proc.pid] if redis and redis.proc else [],
                   clkTck=os.sysconf("SC_CLK_TCK"), timeoutS=timeout_s, secret=fanout.SECRET,
                   runId=name, socketsPerAddress=20_000, connectConcurrency=200,
                   idleWindowS=5, gpsWindowS=20, drainS=60, slowMs=50)  # fmt: skip
        path = tmp / "city.json"
        path.write_text(json.dumps(cfg))
        gen = subprocess.Popen(
            ["taskset", "-c", fanout.GEN_CORE, "node",
             "--max-old-space-size=8192", str(fanout.LOADGEN / "city.js"), str(path)],
            stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        if (
            profile
        ):  # the whole run, setup included (the generator's log says when each phase began)
            spy = start_profile(hubs[0].proc.pid, Path(f"{profile}-{name}.{fanout.PROFILE_FORMAT}"))  # type: ignore[union-attr]
        try:
            out, _ = gen.communicate(timeout=timeout_s + 60)
        except subprocess.TimeoutExpired:
            return {"error": "generator exceeded the hard time bound", "level": name}
        result: dict[str, Any] = {"error": f"no result from the generator (exit {gen.returncode})"}
        for line in out.decode(errors="replace").splitlines():
            if line.startswith('{"result"'):
                result = dict(json.loads(line)["result"])
        for h in hubs:
            if h.proc is not None and h.proc.poll() is not None:
                result.setdefault("error", "a hub exited during the run")
        if "error" in result:
            result["serverLog"] = "\n".join(h.log() for h in hubs)
        result["level"] = name
        result["gcFreeze"] = GC_FREEZE
        result["tenantPool"] = TENANT_POOL
        return result
    finally:
        if spy is not None:
            fanout.stop_profile(spy)
        kill(gen)
        for h in hubs:
            kill(h.proc)
        if redis is not None:
            redis.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------ reports


def problems(r: dict[str, Any]) -> list[str]:
    """What breaks the service level in a run (empty: within it)."""
    if "error" in r:
        return ["FAILED: " + r["error"].splitlines()[0][:100]]
    out = []
    s = r["stepToScreen"]
    for who in ("customer", "kitchen"):
        if not s[who]["p99Ms"] <= SLO_STEP_P99_MS:
            out.append(f"step->{who} p99 {s[who]['p99Ms']:.0f} ms > {SLO_STEP_P99_MS:.0f}")
    if not r["gpsToScreen"]["p99Ms"] <= SLO_GPS_P99_MS:
        out.append(f"GPS p99 {r['gpsToScreen']['p99Ms']:.0f} ms > {SLO_GPS_P99_MS:.0f}")
    c = r["check"]
    for k in ("unfinished", "failedOrders", "custDups", "custGaps", "custWrong", "custNotArchived",
              "custShort", "kitchenShort", "kitchenDups", "kitchenGaps", "kitchenWrong",
              "driverDups", "driverGaps", "gpsDups", "gpsOutOfOrder", "socketsClosed"):  # fmt: skip
        if c[k]:
            out.append(f"{k} {c[k]}")
    if c["gpsExpected"] and c["gpsReached"] < c["gpsExpected"]:
        out.append(f"GPS lost {c['gpsExpected'] - c['gpsReached']} of {c['gpsExpected']}")
    if r["gps"]["shed"] or r["gps"]["dropped"]:
        out.append(f"GPS shed {r['gps']['shed']} dropped {r['gps']['dropped']}")
    rows = r["rows"]
    if not (rows["streamsOk"] and rows["publicOk"] and rows["gpsOk"]):
        out.append(
            f"rows {rows['measured']} expected {rows['expectedOrders']} + GPS <= {rows['gpsRowsMax']}"
        )
    return out


def ms(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def print_run(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"level {r.get('level')}: FAILED: {r['error']}\n{r.get('serverLog', '')}")
        return
    cfg, s, g, c, rows, cpu = (
        r["config"],
        r["stepToScreen"],
        r["gpsToScreen"],
        r["check"],
        r["rows"],
        r["cpu"],
    )
    w = r["windows"]["orders"]
    print(f"level {r['level']}: {r['sockets']:,} sockets ({cfg['idle']:,} idle), {cfg['restaurants']} kitchens,"
          f" {cfg['drivers']:,} drivers at {cfg['gpsHz']} Hz, {cfg['opm']} orders/min x {cfg['durationS']:.0f} s,"
          f" {cfg['instances']} instance(s)")  # fmt: skip
    before = " + ".join(f"{x:.0f}" for x in r["rssBeforeMB"])
    after = " + ".join(f"{x:.0f}" for x in r["rssConnectedMB"])
    print(f"  connect {r['connectS']:.0f} s ({r['connectRetries']} retried); RSS {before} -> {after} MB"
          f" = {r['rssPerSocketKB']:.1f} KB/socket")  # fmt: skip
    print(f"  orders {r['ordersPlaced']} ({r['byPath']}): delivered {r['delivered']}, cancelled {r['cancelled']},"
          f" in flight max {r['maxInFlight']}")  # fmt: skip
    print(f"  step->screen ms: customer p50 {ms(s['customer']['p50Ms'])} p99 {ms(s['customer']['p99Ms'])}"
          f" max {ms(s['customer']['maxMs'])}; kitchen p50 {ms(s['kitchen']['p50Ms'])} p99 {ms(s['kitchen']['p99Ms'])}"
          f" max {ms(s['kitchen']['maxMs'])}; answer->customer p99 {ms(s['customerAfterAnswer']['p99Ms'])};"
          f" HTTP step p50 {ms(s['http']['p50Ms'])} p99 {ms(s['http']['p99Ms'])}")  # fmt: skip
    print(f"  GPS->screen ms: p50 {ms(g['p50Ms'])} p99 {ms(g['p99Ms'])} max {ms(g['maxMs'])} (n {g['n']:,});"
          f" pings {r['gps']['perS']:,.0f}/s, reached {c['gpsReached']:,}/{c['gpsExpected']:,}")  # fmt: skip
    m, e = rows["measured"], rows["expectedOrders"]
    print(f"  rows: streams {m['streams']:,} (orders' {e['streams']:,}), public {m['public']:,} ({e['public']:,}),"
          f" tenant {m['tenant']:,} (orders' {e['tenant']:,}, GPS {rows['gpsRows']:,} ="
          f" {rows['gpsRowsPerDriverS']:.2f}/driver/s, max {rows['gpsRowsMax']:,})")  # fmt: skip
    srv = " + ".join(f"{x:.0f} %" for x in w["serverCpuPct"])
    redis = (
        f", redis {w['redisCpuPct']:.0f} % ({cpu['redisPerEventUs']:.1f} us/event)"
        if w["redisCpuPct"] is not None
        else ""
    )
    print(f"  CPU (orders window): hub {srv} (peak 1 s {w['serverCpuPeak1sPct']:.0f} %){redis}, generator"
          f" {w['genCpuPct']:.0f} %, others {w['othersCpuPct']:.0f} %; idle {100 * cpu['idleCoreShare']:.0f} %,"
          f" +GPS {100 * cpu['gpsCoreShare']:.0f} %; per ping {cpu['perPingMs'] * 1000:.0f} us, per order"
          f" {cpu['perOrderMs']:.1f} ms")  # fmt: skip
    h = r["hub"]
    print(f"  hub GC (orders window): {h['gc2Collections']} full collections, {h['gc2PauseS']:.2f} s in all"
          f" ({h['gc2MeanPauseMs']:.0f} ms each); gen 0+1 {h['gc01PauseS']:.2f} s")  # fmt: skip
    print(f"  hub: fallbacks {r['hub']['fallbacks']}, stalled {r['hub']['stalled']}, tenant DB opens"
          f" {r['hub']['tenantOpens']}; failures {r['failures'][:3]}; http {r['httpErrors']}")  # fmt: skip
    p = problems(r)
    print("  service level: " + ("MET" if not p else "BROKEN: " + "; ".join(p)), flush=True)


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per run: the service level's figures and what the run cost."""
    rows = [
        "| sockets | drivers (pings/s) | orders/min | step -> customer p50 / p99 / max ms |"
        " step -> kitchen p99 ms | GPS -> screen p50 / p99 ms | rows: streams + public as the"
        " paths write | GPS rows per driver-s | RSS KB per socket | hub CPU (orders window) |"
        " full GC pauses | others | service level |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if "error" in r:
            rows.append(f"| {r.get('level')} | | | | | | | | | | | | FAILED: {r['error'][:60]} |")
            continue
        cfg, s, g, rw = r["config"], r["stepToScreen"], r["gpsToScreen"], r["rows"]
        w, h = r["windows"]["orders"], r["hub"]
        p = problems(r)
        exact = (
            "exact"
            if rw["streamsOk"] and rw["publicOk"]
            else (
                f"{rw['measured']['streams']:,} + {rw['measured']['public']:,} vs"
                f" {rw['expectedOrders']['streams']:,} + {rw['expectedOrders']['public']:,}"
            )
        )
        gc2 = (
            f"{h['gc2Collections']} x {h['gc2MeanPauseMs']:.0f} ms" if h["gc2Collections"] else "0"
        )
        rows.append(
            f"| {r['sockets']:,} | {cfg['drivers']:,} ({r['gps']['perS']:,.0f}) | {cfg['opm']} |"
            f" {ms(s['customer']['p50Ms'])} / {ms(s['customer']['p99Ms'])} / {ms(s['customer']['maxMs'])} |"
            f" {ms(s['kitchen']['p99Ms'])} | {ms(g['p50Ms'])} / {ms(g['p99Ms'])} | {exact} |"
            f" {rw['gpsRowsPerDriverS']:.2f} | {r['rssPerSocketKB']:.1f} |"
            f" {' + '.join(f'{x:.0f} %' for x in w['serverCpuPct'])} | {gc2} |"
            f" {w['othersCpuPct']:.0f} % | {'**met**' if not p else 'broken: ' + '; '.join(p)[:150]} |"
        )  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a ~1 min smoke run (a small city)")
    ap.add_argument(
        "--step",
        action="store_true",
        help="raise the load level by level until the service level breaks",
    )
    ap.add_argument(
        "--steps", help="--step levels as S:D:O,S:D:O,... (sockets:drivers:orders per minute)"
    )
    ap.add_argument("--instances", type=int, choices=(1, 2), default=1)
    ap.add_argument("--sockets", type=int, default=50_000)
    ap.add_argument("--drivers", type=int, default=5_000)
    ap.add_argument("--opm", type=int, default=600, help="orders per minute")
    ap.add_argument("--restaurants", type=int)
    ap.add_argument("--customers", type=int)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of order arrivals")
    ap.add_argument("--json", help="write every run's result here")
    ap.add_argument("--profile", help="py-spy on the (first) hub: PREFIX-<level>.<format>")
    ap.add_argument(
        "--wait-quiet", type=float, default=60.0, help="wait up to S s for an idle machine first"
    )
    ap.add_argument("--markdown", metavar="JSON", help="print the table of a --json file and exit")
    ap.add_argument(
        "--shares", help="the paths' shares, e.g. cancel=0.05,reject=0.05,decline=0.05,silent=0.02"
    )
    ap.add_argument(
        "--gc-freeze",
        type=float,
        default=0.0,
        metavar="S",
        help="diagnostic: the hub calls gc.freeze() every S s (a sitecustomize.py)",
    )
    ap.add_argument(
        "--tenant-pool",
        type=int,
        default=0,
        metavar="N",
        help="diagnostic: the hub's tenant-DB thread pool gets N threads (a sitecustomize.py)",
    )
    ap.add_argument(
        "--keep-going", action="store_true", help="--step: run every level even after a break"
    )
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    fanout.ensure_loadgen()
    global INSTANCES, GC_FREEZE, TENANT_POOL
    INSTANCES = args.instances
    TENANT_POOL = args.tenant_pool
    if args.shares:
        SHARES.update({k: float(v) for k, v in (x.split("=") for x in args.shares.split(","))})
    GC_FREEZE = args.gc_freeze
    if args.quick:
        levels = [
            (
                "quick",
                level(600, 100, 120, args.duration if args.duration != 60.0 else 20.0, 10, 40),
            )
        ]
    elif args.step:
        steps = STEPS
        if args.steps:
            steps = [tuple(int(x) for x in s.split(":")) for s in args.steps.split(",")]  # type: ignore[misc]
        levels = [(f"{s // 1000}k-{d}-{o}", level(s, d, o, args.duration, args.restaurants, args.customers))
                  for s, d, o in steps]  # fmt: skip
    else:
        levels = [(f"{args.sockets // 1000}k-{args.drivers}-{args.opm}",
                   level(args.sockets, args.drivers, args.opm, args.duration, args.restaurants, args.customers))]  # fmt: skip
    print(fanout.header(None), flush=True)
    results = []
    for name, cfg in levels:
        if args.wait_quiet > 0:
            print(f"level {name}: {fanout.wait_quiet(args.wait_quiet)}", flush=True)
        r = run_level(name, cfg, args.instances, args.profile)
        results.append(r)
        print_run(r)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        if args.step and problems(r) and not args.keep_going:
            print(f"the service level broke at level {name}: stopping")
            break
    print()
    print(markdown(results))
    return 0 if results and not problems(results[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
