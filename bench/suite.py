"""Hub vs the Python peers (and two ceilings), side by side in one run: scenarios A to F.

The one entry command (run with the project's venv, which runs the hub; the peers run from the
bench's own environment made by ``sh bench/setup.sh``, default ``/tmp/benchenv``):

    python bench/suite.py --json run1.json      # A, B, C, D, E and F for every target
    python bench/suite.py --scenarios A --targets hub,websockets --json out.json
    python bench/suite.py --quick ...           # smoke run: every scenario shrunk
    /tmp/benchenv/bin/python bench/plot.py run1.json run2.json   # docs/img/peers-{A..F}.png
    /tmp/benchenv/bin/python bench/plot.py --markdown run1.json run2.json  # tables, both runs

It prints each run's figures as they come and, at the end, a markdown table per scenario
(ratios against the hub of the same run); ``--json`` gets every result of every scenario.

Targets (each a small app under ``bench/peers/``, as a user of the library would write it):

- ``hub``: ``python -m hub serve`` (uvicorn, embedded store, no Redis), via ``bench/fanout.py``
  and ``bench/loadgen/fanout.js`` (the hub's own protocol and tokens, seq-checked delivery);
- ``hub-redis``: the same with ``HUB_REDIS_URL`` set;
- ``uvicorn-raw`` (not in the default set): a raw ASGI app under the hub's own uvicorn, in-process
  channels: the floor of the hub's stack;
- ``broadcaster-staggered`` (not in the default set): the broadcaster app, but the generator
  connects the first subscriber of every channel (and waits until it receives) before the others:
  broadcaster 0.3.1 keeps only one of several subscribers that subscribe to a new channel at the
  same moment (``Broadcast.subscribe`` overwrites the channel's set), so this shows its speed
  when it delivers;
- ``websockets``: bare ``websockets.broadcast`` (ceiling), ``node-ws``: Node ``ws`` (ceiling);
- ``broadcaster``: broadcaster + Starlette (redis://); ``socketio``: python-socketio ASGI +
  AsyncRedisManager (socket.io-client in the generator); ``channels``: Django Channels +
  channels_redis ``RedisPubSubChannelLayer``.

The peers are driven by ``bench/loadgen/peers.js`` (same scenarios, a plain publish/subscribe
protocol, delivery checked per subscriber by the generator's own message index). Every server
(and redis-server, started on a free port for the targets that need it, ``--save ''``) is pinned
to core 0; the generator to core 1 (redis-server's CPU is reported for the targets that use it).
Each run has a hard time bound; servers, Redis and temp dirs are removed whatever happens.

Scenarios: A (1 channel, 1,000 subscribers, 2,000 events, batches of 50, 4 requests in flight),
B (1,000 channels x 3 subscribers, 20 events each, 1 per request, open loop at 1,000/s),
C (cross-instance: B against two server processes of the target sharing one redis-server, both
on core 0 with it; every publish goes to instance 1, every subscriber connects to instance 2; CPU
and RSS of both; the hub's two instances share one data dir, as ``tests/test_redis.py`` runs them;
only the targets that link instances through Redis run it: ``hub``, ``websockets``, ``node-ws``
and ``uvicorn-raw`` are single-instance and left out of C),
D (5,000 idle subscribers over 1,000 channels: server RSS growth per connection),
E (appends: events/s with 1, 16 and 256 concurrent writers, one event per HTTP request; the hub's
are committed and read back, the peers store nothing) and F (GPS: 1,000 drivers pinging 8 times a
second, a watcher per driver: pings/s ingested, % live to the watchers, the hub's tenant-DB
writes); E and F are ``bench/ef.py`` (its docstring has the details; generators
``bench/loadgen/writers.js`` and ``gps.js``), run here per target with the suite's redis-server.
``broadcaster-staggered`` is not run in E and F (no channel has several subscribers there, so it
would be ``broadcaster`` again); ``uvicorn-raw`` is.

Before each run the suite waits (``--wait-quiet``) for an idle machine. Diagnostics:
``--hub-src DIR`` (run a patched copy of the hub, every scenario), ``--profile PREFIX`` (py-spy on
the hub: ``PREFIX-<target>.<scenario>.raw``), ``--f-drivers``, ``--f-rate``, ``--f-seconds``
(F's load; ``--wait-quiet 0`` for a fast turnaround).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import ef
import fanout

ROOT = fanout.ROOT
BENCH_PY = Path(os.environ.get("BENCH_ENV", "/tmp/benchenv")) / "bin" / "python"
PEERS = ROOT / "bench" / "peers"
ALL_TARGETS = ["hub", "hub-redis", "websockets", "node-ws", "broadcaster", "socketio", "channels"]
REDIS_TARGETS = {"hub-redis", "broadcaster", "broadcaster-staggered", "socketio", "channels"}
CROSS_INSTANCE = REDIS_TARGETS  # the targets that scenario C runs (two instances, one Redis)
TARGET_C_RATIO = 2.0  # the hub's C p99 over its own B p99 (no Redis, same run)
SCENARIOS = ["A", "B", "C", "D", "E", "F"]


def wait_port(port: int, proc: subprocess.Popen[bytes], wait: float = 30.0) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("did not listen in time")


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Redis:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.port = fanout.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            ["taskset", "-c", fanout.HUB_CORE, "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.tmp),
             "--maxclients", "20000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_port(self.port, self.proc)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cleanup(self) -> None:
        kill(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


def server_port(target: str) -> int:
    """A free port for the target's server; for ``websockets`` the next one (its HTTP publish
    port) is free too."""
    while True:
        port = fanout.free_port()
        if target != "websockets":
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def peer_cmd(target: str, port: int) -> tuple[list[str], dict[str, Any]]:
    """The server command of a peer, and extra generator config."""
    uv = [str(BENCH_PY), "-m", "uvicorn", "--app-dir", str(ROOT), "--port", str(port),
          "--log-level", "warning"]  # fmt: skip
    if target == "websockets":
        return [str(BENCH_PY), str(PEERS / "websockets_app.py"), str(port)], {"pubPort": port + 1}
    if target == "node-ws":
        return ["node", str(PEERS / "ws_node.js"), str(port)], {}
    if target == "broadcaster":
        return [*uv, "bench.peers.broadcaster_app:app"], {}
    if (
        target == "broadcaster-staggered"
    ):  # same app; no two subscribers of a channel subscribe at once
        return [*uv, "bench.peers.broadcaster_app:app"], {"staggerFirst": True}
    if target == "socketio":
        return [*uv, "bench.peers.socketio_app:app"], {"client": "socketio"}
    if target == "channels":
        return [*uv, "bench.peers.channels_app:application"], {}
    if target == "uvicorn-raw":  # floor of the hub's own stack: run with the hub's venv and uvicorn
        return [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "--port", str(port),
                "--log-level", "warning", "bench.peers.asgi_raw:app"], {}  # fmt: skip
    raise ValueError(target)


def run_peer(
    target: str,
    name: str,
    cfg: dict[str, Any],
    timeout_s: float,
    redis: Redis | None,
    instances: int = 1,
) -> dict[str, Any]:
    """Run the peer's server (C: two of them, publish on the first, subscribe on the second)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{target}-"))
    servers: list[subprocess.Popen[bytes]] = []
    gen = None
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if redis:
            env["REDIS_URL"] = redis.url
        ports: list[int] = []
        try:
            for i in range(instances):  # each port picked once the previous server listens
                ports.append(server_port(target))
                cmd, extra = peer_cmd(target, ports[-1])
                with (tmp / f"server-{i + 1}.log").open("wb") as log:
                    servers.append(subprocess.Popen(
                        ["taskset", "-c", fanout.HUB_CORE, *cmd], env=env, cwd=ROOT,
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    ))  # fmt: skip
                wait_port(ports[-1], servers[-1])
                if "pubPort" in extra:
                    wait_port(extra["pubPort"], servers[-1])
        except RuntimeError as exc:
            return {"scenario": name, "error": f"{target}: {exc}", "hubLog": tail(tmp)}
        server = servers[-1]
        if instances == 2:
            extra = dict(extra, pubPort=ports[0], pubPid=servers[0].pid)
        cfg = dict(cfg, **extra, scenario=name, host="127.0.0.1", port=ports[-1], hubPid=server.pid,
                   clkTck=os.sysconf("SC_CLK_TCK"), timeoutS=timeout_s, note=fanout.NOTE)  # fmt: skip
        if redis:
            cfg["auxPids"] = [redis.pid]
        (tmp / "cfg.json").write_text(json.dumps(cfg))
        gen = subprocess.Popen(
            ["taskset", "-c", fanout.GEN_CORE, "node", str(ROOT / "bench" / "loadgen" / "peers.js"),
             str(tmp / "cfg.json")],
            stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            out, _ = gen.communicate(timeout=timeout_s + 60)
        except subprocess.TimeoutExpired:
            return {"scenario": name, "error": "generator exceeded the hard time bound"}
        result: dict[str, Any] = {"scenario": name, "error": "no result from generator"}
        for line in out.decode(errors="replace").splitlines():
            if line.startswith('{"result"'):
                result = json.loads(line)["result"]
        if any(s.poll() is not None for s in servers):
            result.setdefault("error", "server exited during the run")
        result["hubMetrics"] = {}
        if "error" in result:
            result["hubLog"] = tail(tmp)
        return result
    finally:
        kill(gen)
        for s in servers:
            kill(s)
        shutil.rmtree(tmp, ignore_errors=True)


def tail(tmp: Path) -> str:
    """The end of each server's log (``server.log``, or ``server-1.log`` and ``server-2.log``)."""
    return "\n".join(
        f"[{p.stem}]\n" + p.read_text(errors="replace")[-3000:]
        for p in sorted(tmp.glob("server*.log"))
    )


def run_hub_d(
    cfg_d: dict[str, Any], timeout_s: float, hub_env: dict[str, str], profile: Path | None = None
) -> dict[str, Any]:
    """Scenario D on the hub, through fanout.js's D mode (idle subscribers, RSS per socket)."""
    cfg = {"d": cfg_d, "connectConcurrency": 50}
    return fanout.run_scenario("D", cfg, timeout_s, "warning", profile, hub_env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="any of A,B,C,D,E,F")
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="any of %(default)s, broadcaster-staggered, uvicorn-raw",
    )
    p.add_argument("--json", type=Path, help="write the raw results here (after every run)")
    p.add_argument("--quick", action="store_true", help="smoke run: every scenario shrunk")
    p.add_argument("--a-timeout", type=float, default=150, help="hard bound of one A run (s)")
    p.add_argument(
        "--wait-quiet", type=float, default=30, help="wait up to S s for an idle machine"
    )
    p.add_argument("--hub-src", type=Path, metavar="DIR",
                   help="run the hub from this directory (diagnostics: a patched copy)")  # fmt: skip
    p.add_argument("--profile", metavar="PREFIX",
                   help="py-spy on the hub (diagnostics): PREFIX-<target>.<scenario>.raw")  # fmt: skip
    p.add_argument("--f-drivers", type=int, help="F: drivers (default 1,000; quick 200)")
    p.add_argument(
        "--f-rate", type=float, help="F: pings/s per driver (default 8; the hub allows 20)"
    )
    p.add_argument("--f-seconds", type=float, help="F: seconds of pinging (default 10; quick 4)")
    args = p.parse_args(argv)
    scen = args.scenarios.split(",")
    targets = args.targets.split(",")
    if unknown := set(scen) - set(SCENARIOS):
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    os.sched_setaffinity(0, {int(fanout.GEN_CORE)})
    fanout.ensure_loadgen()
    fanout.QUIET_WAIT_S = 0
    fanout.HUB_SRC = args.hub_src
    for key in ("drivers", "rate", "seconds"):
        if getattr(args, f"f_{key}") is not None:
            ef.F_OVERRIDES[key] = getattr(args, f"f_{key}")
    print(fanout.header(None), flush=True)
    q = args.quick
    results: list[dict[str, Any]] = []
    for name in scen:
        for target in targets:
            if name == "C" and target not in CROSS_INSTANCE:
                print(f"--- C / {target}: n/a, single instance (no cross-instance mode)")
                continue
            if name in ("E", "F") and target not in ef.TARGETS:
                print(f"--- {name} / {target}: n/a (no channel has several subscribers in E or F)")
                continue
            if args.wait_quiet > 0:
                print(f"{name}/{target}: {fanout.wait_quiet(args.wait_quiet)}", flush=True)
            redis = Redis() if target in REDIS_TARGETS else None
            try:
                r = run_one(name, target, q, args, redis.start() if redis else None)
            finally:
                if redis:
                    redis.cleanup()
            r["target"] = target
            results.append(r)
            print(f"--- {name} / {target}")
            if name == "D":
                print_d(r)
            elif name in ("E", "F"):
                ef.print_result(r)
            else:
                fanout.report(r)
            sys.stdout.flush()
            if args.json:
                logs = ("hubLog", "serverLog")
                slim = [{k: v for k, v in x.items() if k not in logs} for x in results]
                args.json.write_text(json.dumps(slim, indent=1))
    summary(results, targets)
    return 0


def run_one(
    name: str, target: str, q: bool, args: argparse.Namespace, redis: Redis | None
) -> dict[str, Any]:
    subs_a, events_a = (200, 300) if q else (1000, 2000)
    streams_b, per_b = (200, 3) if q else (1000, 20)
    subs_d = 1000 if q else 5000
    hub_env = {"HUB_REDIS_URL": redis.url} if target == "hub-redis" else {}
    aux: dict[str, Any] = {"auxPids": [redis.pid]} if redis else {}  # redis-server's CPU
    profile = Path(f"{args.profile}-{target}.x") if args.profile else None  # .x: with_suffix's
    if name in ("E", "F"):
        ef.PROFILE = profile
        return ef.run(name, target, q, redis.url if redis else None, redis.pid if redis else None)
    if name == "A":
        if target.startswith("hub"):
            cfg = {"a": {"streamId": "bench-a", "subscribers": subs_a, "events": events_a, "batch": 50,
                         "inflight": 4, **fanout.tokens_a(subs_a)}, **aux}  # fmt: skip
            return fanout.run_scenario("A", cfg, args.a_timeout, "warning", profile, hub_env)
        cfg = {"a": {"subscribers": subs_a, "events": events_a, "batch": 50, "inflight": 4}}
        return run_peer(target, "A", cfg, args.a_timeout, redis)
    if name in ("B", "C"):  # C: B with two instances, publish on one, subscribe on the other
        timeout = streams_b * per_b / 1000 + 150
        instances = 2 if name == "C" else 1
        if target.startswith("hub"):
            cfg = {"b": {"streams": streams_b, "perStream": per_b, "rate": 1000, **fanout.tokens_b(streams_b)},
                   "connectConcurrency": 50, **aux}  # fmt: skip
            return fanout.run_scenario(
                name, cfg, timeout, "warning", profile, hub_env, instances=instances
            )
        cfg = {
            "b": {"streams": streams_b, "perStream": per_b, "rate": 1000},
            "connectConcurrency": 50,
        }
        return run_peer(target, name, cfg, timeout, redis, instances)
    if name == "D":
        if target.startswith("hub"):
            # one platform tenant per socket: the hub caps sockets per tenant and role (4029)
            toks = [
                fanout.issue_token(fanout.SECRET, f"ops-d-{i:05d}", "platform")
                for i in range(subs_d)
            ]
            return run_hub_d(
                {"subscribers": subs_d, "channels": 1000, "tokens": toks}, 180, hub_env, profile
            )
        return run_peer(target, "D", {"d": {"subscribers": subs_d, "channels": 1000}}, 180, redis)
    raise ValueError(name)


def print_d(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"scenario D: FAILED: {r['error']}\n{r.get('hubLog', '')}")
        return
    print(f"  {r['subscribers']} idle subscribers on {r['channels']} channels: RSS {r['rssBeforeMB']:.0f}"
          f" -> {r['rssAfterMB']:.0f} MB = {r['kbPerConnection']:.1f} KB per connection"
          + (f"; errors {r['errors']}" if r.get("errors") else ""))  # fmt: skip


def aux(w: dict[str, Any]) -> str:
    """redis-server CPU over the window (n/a: the target runs without Redis)."""
    return f"{w['auxCpuPct']:.0f} %" if "auxCpuPct" in w else "n/a"


def verdict(r: dict[str, Any]) -> str:
    if "error" in r:
        return "FAILED (" + r["error"].splitlines()[0][:60] + ")"
    v = r["verify"]
    bits = [f"{r['appendErrors']:,} appends failed"] if r.get("appendErrors") else []
    if v["lost"] and r.get("endedBy") == "deadline":
        bits.append(f"unfinished at the time bound ({v['deliveredPct']:.0f} % by then)")
    elif v["lost"]:
        bits.append(f"LOST {v['lost']:,}")
    if v["duplicates"]:
        bits.append(f"REPEATED {v['duplicates']:,}")
    if r.get("coldSubscribers"):
        bits.append(f"{r['coldSubscribers']} subscribers never subscribed")
    if v["wrongStream"]:
        bits.append(f"WRONG CHANNEL {v['wrongStream']:,}")
    if not r.get("allDelivered", True) and not v["lost"]:
        bits.append("incomplete")
    return ", ".join(bits) or "ok"


def ratio_cell(p99: float, ref: float | None) -> str:
    return f"{p99 / ref:.1f}x" if ref else "?"


def summary_c(rows: list[dict[str, Any]], b_p99: dict[str, float], targets: list[str]) -> None:
    """C's table: latency against the hub's B (the target) and the target's own B, same run."""
    print(
        "| target | p50 / p99 / max ms | C p99 / hub B p99 | C p99 / own B p99 | delivered |"
        " server CPU (pub + sub) | Redis CPU | RSS MB (pub / sub) | generator CPU | check |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['target']} | | | | | | | | | {verdict(r)} |")
            continue
        w, lat, v = r["window"], r["latency"], r["verify"]
        print(f"| {r['target']} | {fanout.fmt_ms(lat['p50Ms'])} / {fanout.fmt_ms(lat['p99Ms'])} /"
              f" {fanout.fmt_ms(lat['maxMs'])} | {ratio_cell(lat['p99Ms'], b_p99.get('hub'))} |"
              f" {ratio_cell(lat['p99Ms'], b_p99.get(r['target']))} | {v['deliveredPct']:.2f} % |"
              f" {w['pubCpuPct']:.0f} + {w['hubCpuPct']:.0f} % | {aux(w)} |"
              f" {w['pubRssEndMB']:.0f} / {w['hubRssEndMB']:.0f} | {w['genCpuPct']:.0f} % |"
              f" {verdict(r)} |")  # fmt: skip
    skipped = [t for t in targets if t not in CROSS_INSTANCE]
    if skipped:
        print(f"\nNot run in C (single instance, no cross-instance mode): {', '.join(skipped)}.")
    hub_c = next((r for r in rows if r["target"] == "hub-redis" and "error" not in r), None)
    if hub_c and "hub" in b_p99:
        ratio = hub_c["latency"]["p99Ms"] / b_p99["hub"]
        met = "met" if ratio <= TARGET_C_RATIO else "MISSED"
        print(f"\nTarget: hub-redis C p99 <= {TARGET_C_RATIO:g}x the hub's own B p99 (same run):"
              f" {ratio:.1f}x, {met}.")  # fmt: skip


def summary(results: list[dict[str, Any]], targets: list[str]) -> None:
    """Markdown tables, ratios against the hub (no Redis) of the same run."""
    b_p99 = {
        r["target"]: r["latency"]["p99Ms"]
        for r in results
        if r.get("scenario") == "B" and "error" not in r
    }
    for name in SCENARIOS:
        if name in ("E", "F"):
            rows = [r for r in results if r.get("scenario") == name]
            if rows:
                print(f"\n### {name}\n")
                print(ef.markdown(rows))
            continue
        rows = [
            r
            for r in results
            if r.get("scenario") == name or (r.get("error") and r.get("scenario") == name)
        ]
        if not rows:
            continue
        hub = next((r for r in rows if r["target"] == "hub" and "error" not in r), None)
        print(f"\n### {name}\n")
        if name == "A":
            print(
                "| target | deliveries/s | hub / target | delivered | p50 / p99 ms | server CPU | Redis CPU | generator CPU | check |"
            )
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
            for r in rows:
                if "error" in r:
                    print(f"| {r['target']} | | | | | | | | {verdict(r)} |")
                    continue
                w, lat, v = r["window"], r["latency"], r["verify"]
                ratio = (
                    hub["deliveriesPerS"] / r["deliveriesPerS"]
                    if hub and r["deliveriesPerS"]
                    else float("nan")
                )
                print(f"| {r['target']} | {r['deliveriesPerS']:,.0f} | {ratio:.2f}x | {v['deliveredPct']:.2f} % |"
                      f" {lat['p50Ms']:,.0f} / {lat['p99Ms']:,.0f} | {w['hubCpuPct']:.0f} % |"
                      f" {aux(w)} | {w['genCpuPct']:.0f} % | {verdict(r)} |")  # fmt: skip
        elif name == "B":
            print(
                "| target | p50 / p99 / max ms | target p99 / hub p99 | delivered | server CPU | Redis CPU | RSS MB | generator CPU | check |"
            )
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
            for r in rows:
                if "error" in r:
                    print(f"| {r['target']} | | | | | | | | {verdict(r)} |")
                    continue
                w, lat, v = r["window"], r["latency"], r["verify"]
                ratio = lat["p99Ms"] / hub["latency"]["p99Ms"] if hub else float("nan")
                print(f"| {r['target']} | {fanout.fmt_ms(lat['p50Ms'])} / {fanout.fmt_ms(lat['p99Ms'])} /"
                      f" {fanout.fmt_ms(lat['maxMs'])} | {ratio:.1f}x | {v['deliveredPct']:.2f} % |"
                      f" {w['hubCpuPct']:.0f} % | {aux(w)} | {w['hubRssEndMB']:.0f} |"
                      f" {w['genCpuPct']:.0f} % | {verdict(r)} |")  # fmt: skip
            # Against broadcaster as it delivers: plain broadcaster drops concurrent first
            # subscribers (two thirds of B's), so its p99 is of the third it serves.
            ref = next((r for name in ("broadcaster-staggered", "broadcaster") for r in rows
                        if r["target"] == name and "error" not in r), None)  # fmt: skip
            if hub and ref:
                mine, theirs = hub["latency"]["p99Ms"], ref["latency"]["p99Ms"]
                met = "met" if mine <= theirs and verdict(hub) == "ok" else "MISSED"
                print(f"\nTarget: hub B p99 <= {ref['target']}'s (same run; the hub commits every"
                      f" event before it sends it): {fanout.fmt_ms(mine)} vs"
                      f" {fanout.fmt_ms(theirs)} ms, {met}"
                      + ("" if verdict(ref) == "ok" else f" ({ref['target']}: {verdict(ref)})")
                      + ".")  # fmt: skip
        elif name == "C":
            summary_c(rows, b_p99, targets)
        else:
            print("| target | KB per idle connection | RSS before -> after (MB) |")
            print("| --- | ---: | ---: |")
            for r in rows:
                if "error" in r:
                    print(f"| {r['target']} | FAILED | |")
                    continue
                print(
                    f"| {r['target']} | {r['kbPerConnection']:.1f} | {r['rssBeforeMB']:.0f} -> {r['rssAfterMB']:.0f} |"
                )


if __name__ == "__main__":
    sys.exit(main())
