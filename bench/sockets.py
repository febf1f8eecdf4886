"""100,000 WebSockets on one hub process: held idle, then a broadcast on a thousand of them.

Prints figures; it is a benchmark, not a test. One run, on one fresh hub:

1. **Setup.** The streams are opened over HTTP by the platform (embedded DBs in a temp dir).
2. **Connect.** N sockets (default 100,000) from one Node generator
   (``bench/loadgen/sockets.js``, the ``ws`` package), ``--connect-concurrency`` handshakes
   in flight; a socket counts once its ``live`` frame has come.
3. **Hold.** Nothing is sent for ``--hold`` seconds (default 300). The hub's RSS, open
   descriptors (``/proc/PID/fd``) and CPU are sampled every ``--sample-every`` seconds; the
   keepalive pings uvicorn sends (every 20 s per socket) are counted; the generator's
   ``ws`` answers them.
4. **Broadcast.** 1,000 of the N sockets watch 10 streams (100 each: 50 platform tokens of
   50 ops tenants, 25 sockets of the stream's customer, 25 of its restaurant, as
   ``bench/fanout.py``'s A). Events are appended over HTTP to those 10 streams at
   ``--rate`` events/s in total (default 100, so 10,000 frames/s), round robin, one event
   per request, by each stream's restaurant, for ``--broadcast-seconds`` (default 30), and
   that ``--broadcast-rounds`` times, 5 s apart (default 3: the machine is shared, each round
   says how much CPU other processes took in it). Latency = receipt - ``payload.t`` (set
   just before the request is created: it includes the HTTP request and the commit),
   p50/p99/max over every delivery of a round. Every frame is
   checked: each broadcast subscriber must get every event exactly once, in ``seq`` order,
   and nothing of another stream; the other sockets must get nothing.
5. **Check.** Every socket must still be open and answer an application ping
   (``{"type":"ping"}`` -> ``{"type":"pong"}``); the hub's ``hub_ws_connections`` must be N.

**The other N - 1,000 sockets are what the web UI's apps open for orders in flight**
(``hub/static/*.html``): per order, the customer's app holds its inbox and the order's
stream; for every second order (assigned to a driver) the driver's app holds its inbox and
the order's stream, and the kitchen display watches that order's stream (it tracks the
driver coming); each restaurant (20 orders each) has one kitchen inbox. That is 3.55
sockets per order: for 99,000 sockets ~27,900 order streams (watched by 1 or 3 sockets) and
~43,000 inboxes (customers, drivers, kitchens), every tenant within the hub's 256 sockets per
tenant and role. Every socket subscribes with ``since=0``, so it replays its 1-2 events (a
kitchen inbox, its orders') before ``live``.

**Ports.** One source address reaches one listening address:port over at most one socket
per source port, so one machine's ephemeral range (here 32768-60999, 28,232 ports) bounds a
generator to ~28k sockets per source address. The generator spreads the sockets over
``--sources`` addresses 127.0.0.2, 127.0.0.3, ... (default 16) and binds each one to an
explicit port of a band **outside** the ephemeral range (``--ports``, default 20000-27999):
binding ``(address, 0)`` instead would take ephemeral ports as bind()-owned, and the
kernel's connect() skips every such port, for every process on the machine: with 100,000
sockets no other process could open an outgoing connection for the whole run. A port of the
band still held (TIME_WAIT, a listener) is skipped. While the run holds its ports, a
wildcard (``0.0.0.0``) listener on a port of the band cannot bind. At the end the generator
resets its connections (RST), leaving no TIME_WAIT.

**Limits.** The hub is started under ``prlimit --nofile=SOFT:HUB_NOFILE`` (the shell's soft
limit, a hard limit of ``--hub-nofile``, default 262,144) and raises its soft limit to the
hard one itself at start, as it always does; its default connection cap is then half of
that less 64 (131,008), WebSockets nine tenths of it (117,907). The generator runs under
``prlimit --nofile=G:G`` (``--gen-nofile``, default 262,144) with ``--max-old-space-size``.
Raising a hard limit needs ``CAP_SYS_RESOURCE``: without it the script says so and stops
(exit 2); ``--hub-nofile``/``--gen-nofile`` within the limit, and ``--hub-env
HUB_MAX_CONNECTIONS=...``, run what fits (a warning says where the hub's cap will answer
503). The accept backlog is uvicorn's 2,048 (capped by ``net.core.somaxconn``); the script
prints the sysctls that matter and the listen-queue overflows during the connect.

**Kernel memory.** ``Slab`` of ``/proc/meminfo`` and ``/proc/net/sockstat`` before the
connect and after it: both ends of every loopback connection are on this machine, so the
growth is two sockets' worth per connection (the machine's, not the hub's alone).

**Driver timers.** The drivers send no position while the sockets are held idle, so the hub
runs with ``HUB_DRIVER_TIMEOUT`` and ``HUB_PRESENCE_TIMEOUT`` at a day: with the defaults it
would take every assigned driver off his order after 120 s (a TASK_UNASSIGN to the order's
watchers, the driver's stream socket closed 4403).

How it runs: as ``bench/fanout.py`` (whose ``Hub`` it reuses): ``python -m hub serve`` on a
fresh temp ``HUB_DATA_DIR``, log level ``warning``, pinned with ``taskset -c 0``, no Redis;
the generator pinned with ``taskset -c 1``; the script itself stays on core 1. Hard time
bounds everywhere; the hub and the generator are killed and the temp dir removed whatever
happens. Before the run it waits (``--wait-quiet``, up to 300 s) for a quiet machine.

Usage: ``python bench/sockets.py [--quick] [--sockets N] [--hold S] [--json FILE]``
(``--quick``: 5,000 sockets, 20 s hold, 10 s broadcast: ~1 min). The full run takes
~10 minutes and, with 100,000 sockets, ~2.3 GB of memory for the hub (23 KB a socket),
~0.5 GB for the generator and ~0.5 GB in the kernel. The figures, what limited them and the
kernel settings: docs/benchmarks.md, "100,000 sockets on one process".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout
from fanout import GEN_CORE, HUB_CORE, LOADGEN, NOTE, SECRET, Hub, issue_token

RESTAURANT_ORDERS = 20  # orders in flight per restaurant (one kitchen inbox each)
BC_STREAMS, BC_PER_STREAM = 10, 100
# The drivers send no position while the sockets are held idle: without these the hub takes
# every assigned driver off his order after HUB_DRIVER_TIMEOUT (120 s; TASK_UNASSIGN, frames to
# the order's watchers, the driver's socket closed 4403). --hub-env overrides them.
IDLE_ENV = {"HUB_DRIVER_TIMEOUT": "86400", "HUB_PRESENCE_TIMEOUT": "86400"}
SYSCTLS = (
    "net/core/somaxconn",
    "net/ipv4/tcp_max_syn_backlog",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/tcp_mem",
    "net/ipv4/tcp_rmem",
    "net/ipv4/tcp_wmem",
    "net/netfilter/nf_conntrack_max",
    "fs/nr_open",
    "fs/file-max",
)


class LimitedHub(Hub):
    """fanout's hub, started under ``prlimit`` with a raised hard open-file limit."""

    def __init__(self, log_level: str, nofile: int, extra_env: dict[str, str]) -> None:
        super().__init__(log_level, extra_env)
        self.nofile = nofile

    def start(self, wait: float = 60.0) -> Hub:
        env = dict(os.environ)
        env.update(HUB_DATA_DIR=str(self.data_dir), HUB_SECRET=SECRET, PYTHONUNBUFFERED="1")
        for k in ("HUB_REDIS_URL", "HUB_STREAMS_DB", "HUB_MAX_CONNECTIONS"):
            env.pop(k, None)
        env.update(IDLE_ENV)
        env.update(self.extra_env)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # the hub raises it to the hard one
        soft = min(soft, self.nofile)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["prlimit", f"--nofile={soft}:{self.nofile}", "taskset", "-c", HUB_CORE,
                 sys.executable, "-m", "hub", "serve", "--port", str(self.port),
                 "--log-level", self.log_level],
                env=env, cwd=self.src, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=1) as r:
                    if json.load(r).get("status") == "ok":
                        return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"hub did not become healthy:\n{self.log()}")


def can_set_nofile(nofile: int) -> bool:
    """Whether ``prlimit --nofile`` can give a child this hard limit (above ours: CAP_SYS_RESOURCE)."""
    soft = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], nofile)
    return subprocess.run(["prlimit", f"--nofile={soft}:{nofile}", "true"],
                          capture_output=True, timeout=10).returncode == 0  # fmt: skip


def websocket_cap(nofile: int, max_connections: str | None) -> int:
    """The hub's WebSocket cap under that hard limit (``hub/edge/server.py``'s arithmetic)."""
    cap = int(max_connections) if max_connections else max(16, nofile // 2 - 64)
    return max(1, int(cap * 0.9))


def sysctls() -> dict[str, str]:
    out = {}
    for name in SYSCTLS:
        try:
            out[name.replace("/", ".")] = " ".join(Path("/proc/sys", name).read_text().split())
        except OSError:
            out[name.replace("/", ".")] = "n/a"
    return out


def proc_limits(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}:{hard}"
    except OSError:
        pass
    return "?"


def plan(n: int, bc_streams: int, bc_per_stream: int) -> dict[str, Any]:
    """Tenants, tokens, streams and sockets: what the web UI's apps open, and the broadcast."""
    tokens: list[str] = []
    tok_index: dict[tuple[str, str], int] = {}

    def tok(tenant: str, role: str) -> int:
        key = (tenant, role)
        if key not in tok_index:
            tok_index[key] = len(tokens)
            tokens.append(issue_token(SECRET, tenant, role))
        return tok_index[key]

    n_bc = bc_streams * bc_per_stream
    if n_bc > n:
        raise SystemExit(f"--sockets {n} is fewer than the broadcast's {n_bc}")
    streams: list[list[Any]] = []  # [streamId, customer, restaurant, driver or None]
    idle: list[list[int]] = []  # [stream index or -1 for the inbox, token index]
    kinds = {"customer inbox": 0, "customer stream": 0, "driver inbox": 0, "driver stream": 0,
             "kitchen stream": 0, "kitchen inbox": 0}  # fmt: skip

    def add(kind: str, stream: int, token: int) -> None:
        if len(idle) < n - n_bc:
            idle.append([stream, token])
            kinds[kind] += 1

    while len(idle) < n - n_bc:
        o = len(streams)
        rest = f"r-{o // RESTAURANT_ORDERS:05d}"
        cust = f"c-{o:06d}"
        drv = f"d-{o:06d}" if o % 2 == 1 else None
        streams.append([f"o-{o:06d}", cust, rest, drv])
        if o % RESTAURANT_ORDERS == 0:
            add("kitchen inbox", -1, tok(rest, "restaurant"))
        add("customer inbox", -1, tok(cust, "customer"))
        add("customer stream", o, tok(cust, "customer"))
        if drv is not None:
            add("driver inbox", -1, tok(drv, "driver"))
            add("driver stream", o, tok(drv, "driver"))
            add("kitchen stream", o, tok(rest, "restaurant"))
    n_orders = len(streams)
    # the broadcast: bc_streams streams, bc_per_stream subscribers each
    bc: list[list[int]] = []  # [stream index, token index, group]
    bc_index, append_tokens = [], []
    for g in range(bc_streams):
        cust, rest = f"bc-c-{g:02d}", f"bc-r-{g:02d}"
        streams.append([f"bc-{g:02d}", cust, rest, None])
        s = len(streams) - 1
        bc_index.append(s)
        append_tokens.append(tok(rest, "restaurant"))
        for j in range(bc_per_stream):
            if j % 2 == 0:
                t = tok(f"ops-{g:02d}-{j:03d}", "platform")
            elif j % 4 == 1:
                t = tok(cust, "customer")
            else:
                t = tok(rest, "restaurant")
            bc.append([s, t, g])
    # the broadcast sockets spread evenly among the others (connected in this order)
    sockets: list[list[int]] = []
    groups: list[list[int]] = []
    step = n / max(1, len(bc))
    bi = 0
    for i in range(n):
        if bi < len(bc) and i >= int(bi * step):
            sockets.append(bc[bi][:2])
            groups.append([i, bc[bi][2]])
            bi += 1
        else:
            sockets.append(idle[i - bi])
    watched = {s for s, _ in idle if s >= 0}
    return {
        "tokens": tokens,
        "streams": streams,
        "sockets": sockets,
        "bcStreams": bc_index,
        "bcAppendTokens": append_tokens,
        "bcGroups": groups,
        "summary": {
            "orders": n_orders,
            "orderStreamsWatched": len(watched),
            "restaurants": (n_orders + RESTAURANT_ORDERS - 1) // RESTAURANT_ORDERS,
            "tenantsWithTokens": len(tokens),
            "kinds": kinds,
            "streamSockets": sum(1 for s, _ in idle if s >= 0),
            "inboxSockets": sum(1 for s, _ in idle if s < 0),
            "broadcastSockets": len(bc),
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    p = plan(args.sockets, BC_STREAMS, BC_PER_STREAM)
    lo, hi = args.port_lo, args.port_hi
    addresses = [f"127.0.0.{2 + a}" for a in range(args.sources)]
    per_addr = -(-args.sockets // len(addresses))
    if per_addr > hi - lo + 1:
        raise SystemExit(f"{args.sockets} sockets over {len(addresses)} addresses need"
                         f" {per_addr} ports each; the band {lo}-{hi} has {hi - lo + 1}")  # fmt: skip
    rate, seconds = args.rate, args.broadcast_seconds
    per_stream = max(1, int(rate * seconds / BC_STREAMS))
    connect_bound = max(120.0, args.sockets / 100)  # at worst 100 sockets/s
    rounds = args.broadcast_rounds
    timeout_s = 120 + connect_bound + args.settle + args.hold + rounds * (seconds + 65) + 180
    hub = LimitedHub(
        args.hub_log_level, args.hub_nofile, dict(kv.split("=", 1) for kv in args.hub_env)
    )
    gen: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"plan": p["summary"], "sysctls": sysctls()}
    try:
        if args.wait_quiet > 0:
            print(fanout.wait_quiet(args.wait_quiet), flush=True)
        hub.start()
        assert hub.proc is not None
        # prlimit execs taskset, which execs python: one pid
        result["hubNofile"] = proc_limits(hub.proc.pid)
        cfg = {
            "host": "127.0.0.1",
            "port": hub.port,
            "hubPid": hub.proc.pid,
            "clkTck": os.sysconf("SC_CLK_TCK"),
            "timeoutS": timeout_s,
            "note": NOTE,
            "platformToken": issue_token(SECRET, "bench-ops", "platform"),
            "tokens": p["tokens"],
            "streams": p["streams"],
            "sockets": p["sockets"],
            "sources": {"addresses": addresses, "portLo": lo, "portHi": hi},
            "profile": args.profile
            and {
                "pyspy": os.environ.get("BENCH_PYSPY")
                or shutil.which("py-spy")
                or str(Path(sys.executable).parent / "py-spy"),
                "out": str(args.profile.resolve()),
                "rate": 100,
            },
            "connectConcurrency": args.connect_concurrency,
            "settleS": args.settle,
            "holdS": args.hold,
            "sampleEveryS": args.sample_every,
            "broadcast": {
                "streams": p["bcStreams"],
                "appendTokens": p["bcAppendTokens"],
                "socketGroups": p["bcGroups"],
                "subscribers": len(p["bcGroups"]),
                "rate": rate,
                "perStream": per_stream,
                "rounds": rounds,
                "baseSeq": 1,
            },
        }
        cfg_path = hub.tmp / "sockets.json"
        cfg_path.write_text(json.dumps(cfg))
        gen = subprocess.Popen(
            ["prlimit", f"--nofile={args.gen_nofile}:{args.gen_nofile}",
             "taskset", "-c", GEN_CORE, "node", f"--max-old-space-size={args.gen_heap_mb}",
             str(LOADGEN / "sockets.js"), str(cfg_path)],
            stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        time.sleep(0.5)
        result["genNofile"] = proc_limits(gen.pid)
        try:
            out, _ = gen.communicate(timeout=timeout_s + 60)
        except subprocess.TimeoutExpired:
            os.killpg(gen.pid, signal.SIGKILL)
            gen.wait()
            result["error"] = "generator exceeded the hard time bound"
            return result
        got = None
        for line in out.decode(errors="replace").splitlines():
            if line.startswith('{"result"'):
                got = json.loads(line)["result"]
            else:
                print(line, file=sys.stderr)
        if got is None:
            result["error"] = f"no result from the generator (exit {gen.returncode})"
        else:
            result.update(got)
        if hub.proc.poll() is not None:
            result.setdefault("error", f"hub exited during the run ({hub.proc.returncode})")
        log = hub.log()
        result["hubLogTail"] = log
        return result
    except RuntimeError as exc:
        result["error"] = str(exc)
        return result
    finally:
        if gen is not None and gen.poll() is None:
            os.killpg(gen.pid, signal.SIGKILL)
            gen.wait()
        hub.cleanup()


# ---------------------------------------------------------------------------- report


def gc_pauses(m: dict[str, float], before: dict[str, float]) -> str:
    """Collections per generation between two scrapes, their total, and the longest's bucket."""
    parts: list[str] = []
    for gen in ("0", "1", "2"):
        key = f'hub_gc_pause_seconds_count{{generation="{gen}"}}'
        skey = f'hub_gc_pause_seconds_sum{{generation="{gen}"}}'
        if key not in m:  # the series appears with the first collection of that generation
            if gen == "2" and parts:
                parts.append("gen2 0")
            continue
        count = m[key] - before.get(key, 0)
        total = m[skey] - before.get(skey, 0)
        # the smallest bucket holding every collection of the phase bounds the longest
        bound = None
        buckets = sorted(
            (float(k.split('le="')[1].split('"')[0]), v - before.get(k, 0))
            for k, v in m.items()
            if k.startswith("hub_gc_pause_seconds_bucket") and f'generation="{gen}"' in k
        )
        for le, c in buckets:
            if c >= count:
                bound = le
                break
        longest = "" if bound is None or count == 0 else f", each <= {bound * 1000:g} ms"
        parts.append(f"gen{gen} {count:g} ({total * 1000:.0f} ms{longest})")
    return "; ".join(parts) or "n/a"


def fmt(x: float | None, digits: int = 1) -> str:
    return "?" if x is None else f"{x:,.{digits}f}"


def report(r: dict[str, Any], args: argparse.Namespace) -> bool:
    s = r["plan"]
    print(
        f"plan: {r.get('sockets', args.sockets):,} sockets = {s['streamSockets']:,} on order streams"
        f" ({s['orderStreamsWatched']:,} streams) + {s['inboxSockets']:,} inboxes"
        f" ({s['orders']:,} orders, {s['restaurants']:,} restaurants)"
        f" + {s['broadcastSockets']:,} broadcast subscribers; {s['tenantsWithTokens']:,} tenants"
    )
    print("  " + ", ".join(f"{k} {v:,}" for k, v in s["kinds"].items()))
    sc = r["sysctls"]
    print(
        f"kernel: somaxconn {sc['net.core.somaxconn']}, tcp_max_syn_backlog"
        f" {sc['net.ipv4.tcp_max_syn_backlog']}, ip_local_port_range"
        f" {sc['net.ipv4.ip_local_port_range']}, nr_open {sc['fs.nr_open']}, file-max"
        f" {sc['fs.file-max']}, nf_conntrack_max {sc['net.netfilter.nf_conntrack_max']};"
        f" nofile soft:hard: hub {r.get('hubNofile')} (once it has raised its soft limit), generator"
        f" {r.get('genNofile')}"
    )
    if "error" in r:
        print(f"FAILED: {r['error']}")
        if "liveAtError" in r:
            print(
                f"  {r['liveAtError']:,} sockets were live; connect errors {r.get('connectErrors')}"
            )
        for key in ("atError",):
            if key in r:
                a = r[key]
                print(f"  hub then: RSS {fmt(a['hubRssMB'], 0)} MB, {a['hubFds']} fds")
        if r.get("metricsAtError"):
            m = r["metricsAtError"]
            print(
                "  hub metrics: "
                + ", ".join(
                    f"{k} {v:g}"
                    for k, v in m.items()
                    if not k.startswith("hub_gc") and isinstance(v, float | int)
                )
            )
        if r.get("hubLogTail"):
            print("hub log tail:\n" + r["hubLogTail"])
        return False
    n = r["sockets"]
    b, a, c, h = r["before"], r["after"], r["connect"], r["hold"]
    bc, ck = r["broadcast"], r["check"]
    ma = r["metricsAfterConnect"]
    mf = r["metricsFinal"]
    d_rss = a["hubRssMB"] - b["hubRssMB"]
    print(
        f"setup: {r['setup']['streams']:,} streams, {r['setup']['events']:,} events in {r['setup']['seconds']:.1f} s"
    )
    print(
        f"connect: {n:,} sockets live in {c['seconds']:.1f} s ({c['perS']:,.0f}/s,"
        f" {args.connect_concurrency} handshakes in flight); hub CPU {c['hubCpuPct']:.0f}%;"
        f" retries {c['retries']}, ports skipped {c['bindRetries']}, errors {c['errors'] or 'none'};"
        f" listen queue overflows {c['listenOverflows']}, drops {c['listenDrops']}"
    )
    print("  GC during the connect: " + gc_pauses(ma, r["metricsBefore"]))
    print(
        f"memory: hub RSS {b['hubRssMB']:.0f} MB before -> {a['hubRssMB']:.0f} MB with {n:,} sockets:"
        f" {d_rss * 1024 / n:.1f} KB per socket (ΔRSS/N); after the hold {h['end']['hubRssMB']:.0f} MB,"
        f" after the broadcast {r['final']['hubRssMB']:.0f} MB"
    )
    kb, ka = b["kernel"], a["kernel"]
    slab = (ka["slab"] - kb["slab"]) / n / 1024
    tcp_b, tcp_a = kb["tcp"], ka["tcp"]
    print(
        f"kernel: Slab +{(ka['slab'] - kb['slab']) / 2**20:.0f} MB ({slab:.1f} KB per connection,"
        f" both ends on this machine); TCP sockets in use {tcp_b['inuse']:,} -> {tcp_a['inuse']:,},"
        f" socket buffers {tcp_b['memPages'] * 4 / 1024:.1f} -> {tcp_a['memPages'] * 4 / 1024:.1f} MB"
    )
    print(
        f"open files: hub {b['hubFds']:,} -> {a['hubFds']:,} (/proc/PID/fd); hub_fd_limit"
        f" {ma.get('hub_fd_limit', 0):,.0f}, hub_connections_max {ma.get('hub_connections_max', 0):,.0f};"
        f" hub_ws_connections {ma.get('hub_ws_connections', 0):,.0f}, subscriptions"
        f" {ma.get('hub_ws_subscriptions', 0):,.0f}"
    )
    hold = [x for x in r["series"] if x["phase"] == "hold" and x["hubCpuPct"] is not None]
    peak = max((x["hubCpuPct"] for x in hold), default=float("nan"))
    print(
        f"idle ({h['seconds']:.0f} s): hub CPU {h['hubCpuPct']:.1f}% of a core (peak {peak:.0f}% over"
        f" {args.sample_every:g} s), {h['hubCpuPct'] / 100 / n * 1e6:.1f} µs per socket per second;"
        f" {h['keepalivePingsPerS']:,.0f} keepalive pings/s answered;"
        f" RSS {h['start']['hubRssMB']:.0f} -> {h['end']['hubRssMB']:.0f} MB, fds"
        f" {h['start']['hubFds']:,} -> {h['end']['hubFds']:,}; GC: "
        + gc_pauses(r["metricsAfterHold"], ma)
    )
    print(
        f"  meanwhile: generator CPU {h['genCpuPct']:.1f}%, other processes"
        f" {h['othersCpuPct']:.1f}% of a core, irq+softirq {h['irqCpuPct']:.1f}%"
    )
    ok_bc = True
    for rd in bc:
        v, lat, w = rd["verify"], rd["latency"], rd["window"]
        ok = v["ok"] and rd["allDelivered"] and rd["appendErrors"] == 0
        ok_bc &= ok
        print(
            f"broadcast round {rd['round']}/{len(bc)}: {rd['streams']} streams x"
            f" {rd['subscribers'] // rd['streams']} subscribers, {rd['events']:,} events at"
            f" {rd['targetRate']}/s (achieved {rd['achievedRate']:,.0f}/s),"
            f" {v['expectedDeliveries']:,} deliveries: {'ok' if ok else 'FAILED'}"
        )
        print(
            f"  latency append -> frame: p50 {lat['p50Ms']:.2f} ms, p90 {lat['p90Ms']:.2f} ms,"
            f" p99 {lat['p99Ms']:.2f} ms, p99.9 {lat['p999Ms']:.2f} ms, max {lat['maxMs']:.1f} ms;"
            f" HTTP round trip p50 {rd['appendRtt']['p50Ms']:.2f} ms,"
            f" p99 {rd['appendRtt']['p99Ms']:.2f} ms"
        )
        print(
            f"  lost {v['lost']}, duplicates {v['duplicates']}, out of order {v['outOfOrder']},"
            f" wrong stream {v['wrongStream']}, incomplete subscribers"
            f" {v['incompleteSubscribers']}, append errors {rd['appendErrors']}"
            f" {rd['appendErrorSamples'] or ''}"
        )
        print(
            f"  hub CPU {w['hubCpuPct']:.0f}% (peak 1 s {w['hubCpuPeak1sPct']:.0f}%), generator CPU"
            f" {w['genCpuPct']:.0f}% (event-loop delay max {w['genLoopDelayMaxMs']:.0f} ms);"
            f" other processes {w['othersCpuPct']:.0f}% of a core"
        )
    print("  GC during the rounds: " + gc_pauses(r["metricsAfterBroadcast"], r["metricsAfterHold"]))
    all_open = ck["open"] == n and ck["pongs"] == n and mf.get("hub_ws_connections") == n
    print(
        f"check: {ck['open']:,}/{n:,} sockets open, {ck['pongs']:,} answered a ping"
        f" ({ck['pingSeconds']:.1f} s); hub_ws_connections {mf.get('hub_ws_connections', 0):,.0f};"
        f" closes {r['closesByPhase'] or 'none'} {r['closeCodes'] or ''}; unexpected frames"
        f" {ck['unexpectedFrames']} on {ck['socketsWithUnexpected']} sockets:"
        f" {'ok' if all_open and ck['unexpectedFrames'] == 0 else 'FAILED'}"
    )
    print(
        f"generator: peak RSS {r['genPeakRssMB']:.0f} MB; counters: slow-consumer fallbacks"
        f" {mf.get('hub_ws_slow_consumer_fallbacks_total', 0):g}, stalled closes"
        f" {mf.get('hub_ws_stalled_closes_total', 0):g}, refused"
        f" {sum(v for k, v in mf.items() if k.startswith('hub_connections_refused_total')):g}"
    )
    warnings = [
        ln for ln in r.get("hubLogTail", "").splitlines() if " WARNING " in ln or " ERROR " in ln
    ]
    if warnings:
        print("hub log warnings:\n  " + "\n  ".join(warnings[-10:]))
    return bool(all_open and ok_bc and ck["unexpectedFrames"] == 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="5,000 sockets, 20 s hold, 10 s broadcast")
    p.add_argument("--sockets", type=int, help="sockets in all (default 100,000; quick 5,000)")
    p.add_argument("--hold", type=float, help="seconds held idle (default 300; quick 20)")
    p.add_argument("--rate", type=int, default=100, help="broadcast events/s over the 10 streams")
    p.add_argument("--broadcast-seconds", type=float, help="default 30; quick 10")
    p.add_argument(
        "--broadcast-rounds", type=int, help="broadcasts, 5 s apart (default 3; quick 1)"
    )
    p.add_argument("--connect-concurrency", type=int, default=256, help="handshakes in flight")
    p.add_argument(
        "--settle",
        type=float,
        default=10,
        help="seconds after the connect before the 'after' sample",
    )
    p.add_argument("--sample-every", type=float, default=5, help="seconds between /proc samples")
    p.add_argument("--sources", type=int, default=16, help="source addresses 127.0.0.2 ...")
    p.add_argument(
        "--ports", default="20000-27999", help="source port band (outside the ephemeral range)"
    )
    p.add_argument("--hub-nofile", type=int, default=262_144, help="the hub's hard open-file limit")
    p.add_argument(
        "--gen-nofile", type=int, default=262_144, help="the generator's open-file limit"
    )
    p.add_argument("--gen-heap-mb", type=int, default=4096, help="node --max-old-space-size")
    p.add_argument("--hub-log-level", default="warning")
    p.add_argument("--hub-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait-quiet", type=float, default=300, metavar="S")
    p.add_argument("--json", type=Path, help="also write the raw result here")
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy on the hub during the hold, collapsed stacks (py-spy: $BENCH_PYSPY or PATH)",
    )
    args = p.parse_args(argv)
    args.sockets = args.sockets or (5_000 if args.quick else 100_000)
    args.hold = args.hold if args.hold is not None else (20 if args.quick else 300)
    args.broadcast_seconds = args.broadcast_seconds or (10 if args.quick else 30)
    args.broadcast_rounds = args.broadcast_rounds or (1 if args.quick else 3)
    args.port_lo, args.port_hi = (int(x) for x in args.ports.split("-"))
    eph_lo, eph_hi = (
        int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    if not (args.port_hi < eph_lo or args.port_lo > eph_hi):
        print(
            f"--ports {args.ports} overlaps the ephemeral range {eph_lo}-{eph_hi}", file=sys.stderr
        )
        return 2
    if not {0, 1} <= os.sched_getaffinity(0):
        print("needs cores 0 and 1", file=sys.stderr)
        return 2
    avail = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                     if ln.startswith("MemAvailable"))) * 1024  # fmt: skip
    need = args.sockets * 50 * 1024  # hub ~25 KB, generator ~10 KB, kernel ~5 KB, with a margin
    if avail < need:
        print(f"{args.sockets:,} sockets need ~{need / 2**30:.1f} GiB; {avail / 2**30:.1f} GiB available",
              file=sys.stderr)  # fmt: skip
        return 2
    for who, nofile in (("hub", args.hub_nofile), ("generator", args.gen_nofile)):
        if not can_set_nofile(nofile):
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            print(
                f"cannot give the {who} an open-file limit of {nofile:,}: this process's hard"
                f" limit is {hard:,} and raising it needs CAP_SYS_RESOURCE (root outside a"
                f" sandbox that drops it). Pass --hub-nofile/--gen-nofile {hard} to run within it.",
                file=sys.stderr,
            )
            return 2
    hub_env = dict(kv.split("=", 1) for kv in args.hub_env)
    ws_cap = websocket_cap(args.hub_nofile, hub_env.get("HUB_MAX_CONNECTIONS"))
    if args.sockets > ws_cap:
        print(
            f"warning: with a hard open-file limit of {args.hub_nofile:,} the hub takes"
            f" {ws_cap:,} WebSockets (nine tenths of HUB_MAX_CONNECTIONS, by default half the"
            f" limit less 64): it answers the upgrades beyond with 503, and the run stops there",
            flush=True,
        )
    if args.sockets + 200 > args.gen_nofile:
        print(f"warning: the generator's open-file limit {args.gen_nofile:,} is below"
              f" {args.sockets:,} sockets + 200", flush=True)  # fmt: skip
    os.sched_setaffinity(0, {int(GEN_CORE)})  # this script stays off the hub's core
    fanout.ensure_loadgen()
    print(fanout.header(None), flush=True)
    print(
        f"{args.sockets:,} sockets from {args.sources} source addresses (ports {args.ports}),"
        f" hold {args.hold:g} s, broadcast {BC_STREAMS} x {BC_PER_STREAM} at {args.rate}/s for"
        f" {args.broadcast_seconds:g} s, {args.broadcast_rounds} time(s)",
        flush=True,
    )
    r = run(args)
    ok = report(r, args)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
