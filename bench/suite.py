"""Hub vs the Python peers (and two ceilings), side by side in one run: scenarios A, B, D.

One entry command (run with the project's venv, which runs the hub; the peers run from the
bench's own environment made by ``sh bench/setup.sh``, default ``/tmp/benchenv``):

    python bench/suite.py                       # A, B and D for every target
    python bench/suite.py --scenarios A --targets hub,websockets --json out.json

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
to core 0; the generator to core 1. Each run has a hard time bound; servers, Redis and temp dirs
are removed whatever happens.

Scenarios: A (1 channel, 1,000 subscribers, 2,000 events, batches of 50, 4 requests in flight),
B (1,000 channels x 3 subscribers, 20 events each, 1 per request, open loop at 1,000/s),
D (5,000 idle subscribers over 1,000 channels: server RSS growth per connection).
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

import fanout

ROOT = fanout.ROOT
BENCH_PY = Path(os.environ.get("BENCH_ENV", "/tmp/benchenv")) / "bin" / "python"
PEERS = ROOT / "bench" / "peers"
ALL_TARGETS = ["hub", "hub-redis", "websockets", "node-ws", "broadcaster", "socketio", "channels"]
REDIS_TARGETS = {"hub-redis", "broadcaster", "broadcaster-staggered", "socketio", "channels"}


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

    def cleanup(self) -> None:
        kill(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


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


def run_peer(target: str, name: str, cfg: dict[str, Any], timeout_s: float, redis_url: str | None):
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{target}-"))
    port = fanout.free_port()
    server = gen = None
    try:
        cmd, extra = peer_cmd(target, port)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if redis_url:
            env["REDIS_URL"] = redis_url
        log = (tmp / "server.log").open("wb")
        server = subprocess.Popen(
            ["taskset", "-c", fanout.HUB_CORE, *cmd], env=env, cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_port(port, server)
            if "pubPort" in extra:
                wait_port(extra["pubPort"], server)
        except RuntimeError as exc:
            return {"scenario": name, "error": f"{target}: {exc}", "hubLog": tail(tmp)}
        cfg = dict(cfg, **extra, scenario=name, host="127.0.0.1", port=port, hubPid=server.pid,
                   clkTck=os.sysconf("SC_CLK_TCK"), timeoutS=timeout_s, note=fanout.NOTE)  # fmt: skip
        if redis_pid is not None:
            cfg["auxPids"] = [redis_pid]
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
        if server.poll() is not None:
            result.setdefault("error", "server exited during the run")
        result["hubMetrics"] = {}
        if "error" in result:
            result["hubLog"] = tail(tmp)
        return result
    finally:
        kill(gen)
        kill(server)
        shutil.rmtree(tmp, ignore_errors=True)


def tail(tmp: Path) -> str:
    p = tmp / "server.log"
    return p.read_text(errors="replace")[-3000:] if p.exists() else ""


redis_pid: int | None = None


def run_hub_d(cfg_d: dict[str, Any], timeout_s: float, hub_env: dict[str, str]) -> dict[str, Any]:
    """Scenario D on the hub: fanout.js has no D, so run fanout.js's protocol through a tiny mode."""
    cfg = {"d": cfg_d, "connectConcurrency": 50}
    return fanout.run_scenario("D", cfg, timeout_s, "warning", None, hub_env, None)


def main(argv: list[str] | None = None) -> int:
    global redis_pid
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenarios", default="A,B,D")
    p.add_argument("--targets", default=",".join(ALL_TARGETS))
    p.add_argument("--json", type=Path, help="write the raw results here")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer events/subscribers")
    p.add_argument("--a-timeout", type=float, default=150, help="hard bound of one A run (s)")
    p.add_argument(
        "--wait-quiet", type=float, default=30, help="wait up to S s for an idle machine"
    )
    args = p.parse_args(argv)
    os.sched_setaffinity(0, {int(fanout.GEN_CORE)})
    fanout.ensure_loadgen()
    fanout.QUIET_WAIT_S = 0
    print(fanout.header(None), flush=True)
    targets = args.targets.split(",")
    scen = args.scenarios.split(",")
    q = args.quick
    results: list[dict[str, Any]] = []
    for name in scen:
        for target in targets:
            if args.wait_quiet > 0:
                print(f"{name}/{target}: {fanout.wait_quiet(args.wait_quiet)}", flush=True)
            redis = Redis().start() if target in REDIS_TARGETS else None
            redis_pid = redis.proc.pid if redis else None
            try:
                r = run_one(name, target, q, args, redis)
            finally:
                if redis:
                    redis.cleanup()
                redis_pid = None
            r["target"] = target
            results.append(r)
            print(f"--- {name} / {target}")
            if name == "D":
                print_d(r)
            else:
                fanout.report(r)
            sys.stdout.flush()
            if args.json:
                slim = [{k: v for k, v in x.items() if k != "hubLog"} for x in results]
                args.json.write_text(json.dumps(slim, indent=1))
    summary(results)
    return 0


def run_one(
    name: str, target: str, q: bool, args: argparse.Namespace, redis: Redis | None
) -> dict[str, Any]:
    subs_a, events_a = (200, 300) if q else (1000, 2000)
    streams_b, per_b = (200, 3) if q else (1000, 20)
    subs_d = 1000 if q else 5000
    hub_env = {"HUB_REDIS_URL": redis.url} if target == "hub-redis" else {}
    if name == "A":
        if target.startswith("hub"):
            cfg = {"a": {"streamId": "bench-a", "subscribers": subs_a, "events": events_a, "batch": 50,
                         "inflight": 4, **fanout.tokens_a(subs_a)}}  # fmt: skip
            return fanout.run_scenario("A", cfg, args.a_timeout, "warning", None, hub_env, None)
        cfg = {"a": {"subscribers": subs_a, "events": events_a, "batch": 50, "inflight": 4}}
        return run_peer(target, "A", cfg, args.a_timeout, redis.url if redis else None)
    if name == "B":
        timeout = streams_b * per_b / 1000 + 150
        if target.startswith("hub"):
            cfg = {"b": {"streams": streams_b, "perStream": per_b, "rate": 1000, **fanout.tokens_b(streams_b)},
                   "connectConcurrency": 50}  # fmt: skip
            return fanout.run_scenario("B", cfg, timeout, "warning", None, hub_env, None)
        cfg = {
            "b": {"streams": streams_b, "perStream": per_b, "rate": 1000},
            "connectConcurrency": 50,
        }
        return run_peer(target, "B", cfg, timeout, redis.url if redis else None)
    if name == "D":
        if target.startswith("hub"):
            # one platform tenant per socket: the hub caps sockets per tenant and role (4029)
            toks = [
                fanout.issue_token(fanout.SECRET, f"ops-d-{i:05d}", "platform")
                for i in range(subs_d)
            ]
            return run_hub_d(
                {"subscribers": subs_d, "channels": 1000, "tokens": toks}, 180, hub_env
            )
        return run_peer(target, "D", {"d": {"subscribers": subs_d, "channels": 1000}}, 180,
                        redis.url if redis else None)  # fmt: skip
    raise ValueError(name)


def print_d(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"scenario D: FAILED: {r['error']}\n{r.get('hubLog', '')}")
        return
    print(f"  {r['subscribers']} idle subscribers on {r['channels']} channels: RSS {r['rssBeforeMB']:.0f}"
          f" -> {r['rssAfterMB']:.0f} MB = {r['kbPerConnection']:.1f} KB per connection"
          + (f"; errors {r['errors']}" if r.get("errors") else ""))  # fmt: skip


def aux(w: dict[str, Any]) -> str:
    """redis-server CPU over the window (not measured for hub-redis: fanout.js does not sample it)."""
    return f"{w['auxCpuPct']:.0f} %" if "auxCpuPct" in w else "n/a"


def verdict(r: dict[str, Any]) -> str:
    if "error" in r:
        return "FAILED (" + r["error"].splitlines()[0][:60] + ")"
    v = r["verify"]
    bits = []
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


def summary(results: list[dict[str, Any]]) -> None:
    """Markdown tables, ratios against the hub (no Redis) of the same run."""
    for name in ("A", "B", "D"):
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
