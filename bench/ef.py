"""Scenarios E (appends) and F (GPS) of ``bench/suite.py``: the hub against every peer.

A module, not a command: ``python bench/suite.py`` runs E and F with A-D (``--scenarios E,F``
for these two alone), and ``bench/plot.py`` draws ``peers-E.png`` and ``peers-F.png`` and prints
their two-run tables from the suite's ``--json`` files. It exposes ``run(scenario, target,
quick, redis_url, redis_pid)`` (one fresh server per run), ``print_result`` (one run, as it
comes), ``markdown(run1, run2=None)`` (the tables, each cell ``run 1 / run 2`` with two runs)
and ``per_target`` (results by scenario and target, for the plots). The diagnostics
(``--profile PREFIX``, ``--hub-src DIR``, ``--f-drivers``, ``--f-rate``, ``--f-seconds``) are
``bench/suite.py`` flags; they set ``PROFILE``, ``fanout.HUB_SRC`` and ``F_OVERRIDES`` here.

**E, appends** (``bench/loadgen/writers.js``): with 1, then 16, then 256 concurrent writers, each
writer is a loop of HTTP POSTs of one event each (the next sent when the last is answered), for
8 s or 50,000 events in all, whichever ends first (``--quick``: 3 s or 10,000). The hub:
``POST /api/streams/{id}/events``, each writer on its own stream with its restaurant's (member)
token; 201 = committed. Afterwards every stream is read back and must hold every acknowledged
event exactly once, seq without gaps. The peers: ``POST /publish/{channel}`` of the same
message; 200 = published, nothing is stored ("durable: no"). No subscribers on either side: E
is the write path alone.

**F, GPS** (``bench/loadgen/gps.js``): 1,000 drivers (``--quick``: 200), each on its own open
order with one watcher, ping 8 times a second each (8,000 pings/s offered, evenly spread, open
loop) for 10 s (``--quick``: 4 s). The hub: each driver comes online over HTTP (its tenant DB
gets its driver node and location point), the platform opens its order (ORDER_CREATE +
TASK_ASSIGN naming it), the customer watches ``/ws/streams/{id}`` and the driver sends
``location`` frames on its inbox socket, as the driver app does. Reported: pings/s accepted, %
of sent pings that reached the watcher as ``location`` frames, latency, and the tenant-DB
writes the pings cost (``/metrics``, at most one per driver per second). The peers: a watcher
per channel, each ping a ``POST /publish``; they write no database.

Every server (and redis-server) runs on core 0, the generator on core 1; each run has a hard time
bound; servers, Redis and temp dirs are removed whatever happens. The suite passes its own
redis-server (one per target) to ``run``; called without one, ``run`` starts its own for the
targets that need Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fanout
import suite

# broadcaster-staggered differs from broadcaster only in how several subscribers of one channel
# connect: E has no subscribers and F one watcher per channel, so it is not run here
TARGETS = ["hub", "hub-redis", "websockets", "node-ws", "broadcaster", "socketio", "channels",
           "uvicorn-raw"]  # fmt: skip
GENERATORS = {"E": "writers.js", "F": "gps.js"}
# the order of the tables and plots: the hub first, the ceilings, the peers
ORDER = ["hub", "hub-redis", "uvicorn-raw", "websockets", "node-ws", "broadcaster",
         "broadcaster-staggered", "socketio", "channels"]  # fmt: skip
# suite.py --profile: py-spy on the hub, to PROFILE.<scenario>.<fanout.PROFILE_FORMAT>
PROFILE: Path | None = None
E_WRITERS = [1, 16, 256]
TARGET_E = 10_000  # committed events/s at 256 writers
TARGET_F = 5_000  # pings/s ingested on one process


F_OVERRIDES: dict[str, float] = {}  # --f-drivers, --f-rate, --f-seconds (diagnostics)


def config(scenario: str, target: str, quick: bool) -> tuple[dict[str, Any], float]:
    """The generator's config for one run, and its hard time bound (s)."""
    hub = target.startswith("hub")
    platform = fanout.issue_token(fanout.SECRET, "bench-ops", "platform")
    if scenario == "E":
        duration, max_events = (3.0, 10_000) if quick else (8.0, 50_000)
        rests = [f"bench-rest-e-{i:03d}" for i in range(max(E_WRITERS))]
        cfg: dict[str, Any] = {"writers": E_WRITERS, "durationS": duration, "maxEvents": max_events}
        if hub:
            cfg.update(platformToken=platform, customer="bench-cust-e", restaurants=rests,
                       writerTokens=[fanout.issue_token(fanout.SECRET, r, "restaurant")
                                     for r in rests])  # fmt: skip
        return cfg, len(E_WRITERS) * (duration + 30) + 60
    if scenario == "F":
        drivers, duration = (200, 4.0) if quick else (1000, 10.0)
        drivers = int(F_OVERRIDES.get("drivers", drivers))
        duration = F_OVERRIDES.get("seconds", duration)
        cfg = {"drivers": drivers, "rate": F_OVERRIDES.get("rate", 8), "durationS": duration,
               "maxInFlight": 1024, "connectConcurrency": 50}  # fmt: skip
        if hub:
            ids = [f"bench-drv-{i:04d}" for i in range(drivers)]
            custs = [f"bench-cust-{i:04d}" for i in range(drivers)]
            cfg.update(platformToken=platform, restaurant="bench-rest-f", driverIds=ids,
                       customers=custs,
                       driverTokens=[fanout.issue_token(fanout.SECRET, d, "driver") for d in ids],
                       customerTokens=[fanout.issue_token(fanout.SECRET, c, "customer")
                                       for c in custs])  # fmt: skip
        return cfg, duration + drivers * 0.12 + 90
    raise ValueError(scenario)


def generate(scenario: str, cfg: dict[str, Any], tmp: Path, timeout_s: float) -> dict[str, Any]:
    """Run the scenario's Node generator on the generator core; its result (or an error)."""
    cfg = dict(cfg, scenario=scenario, host="127.0.0.1", clkTck=os.sysconf("SC_CLK_TCK"),
               timeoutS=timeout_s, note=fanout.NOTE)  # fmt: skip
    path = tmp / "generator.json"
    path.write_text(json.dumps(cfg))
    gen = subprocess.Popen(
        ["taskset", "-c", fanout.GEN_CORE, "node", str(fanout.LOADGEN / GENERATORS[scenario]),
         str(path)],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = gen.communicate(timeout=timeout_s + 60)
    except subprocess.TimeoutExpired:
        return {"error": "generator exceeded the hard time bound"}
    finally:
        suite.kill(gen)
    for line in out.decode(errors="replace").splitlines():
        if line.startswith('{"result"'):
            return dict(json.loads(line)["result"])
    return {"error": f"no result from the generator (exit {gen.returncode})"}


def run_hub(scenario: str, cfg: dict[str, Any], timeout_s: float, redis_url: str | None,
            redis_pid: int | None) -> dict[str, Any]:  # fmt: skip
    """A fresh ``python -m hub serve`` (embedded store; with Redis when ``redis_url``)."""
    hub = fanout.Hub("warning", {"HUB_REDIS_URL": redis_url} if redis_url else None)
    spy = None
    try:
        try:
            hub.start()
        except RuntimeError as exc:
            return {"error": str(exc)}
        assert hub.proc is not None
        if PROFILE is not None:  # the whole run, setup included
            path = PROFILE.with_suffix(f".{scenario}.{fanout.PROFILE_FORMAT}")
            spy = fanout.start_profile(hub.proc.pid, path)
        cfg = dict(cfg, hub=True, port=hub.port, serverPid=hub.proc.pid,
                   auxPids=[redis_pid] if redis_pid else [])  # fmt: skip
        result = generate(scenario, cfg, hub.tmp, timeout_s)
        if hub.proc.poll() is not None:
            result.setdefault("error", "the hub exited during the run")
        if "error" in result:
            result["serverLog"] = hub.log()
        return result
    finally:
        if spy is not None:
            fanout.stop_profile(spy)
        hub.cleanup()


def run_peer(scenario: str, target: str, cfg: dict[str, Any], timeout_s: float,
             redis_url: str | None, redis_pid: int | None) -> dict[str, Any]:  # fmt: skip
    """A peer app of ``bench/peers/`` (``suite.peer_cmd``), pinned to the server core."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-ef-{target}-"))
    port = suite.server_port(target)
    server = None
    try:
        cmd, extra = suite.peer_cmd(target, port)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if redis_url:
            env["REDIS_URL"] = redis_url
        with (tmp / "server.log").open("wb") as log:
            server = subprocess.Popen(
                ["taskset", "-c", fanout.HUB_CORE, *cmd], env=env, cwd=fanout.ROOT,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            suite.wait_port(port, server)
            if "pubPort" in extra:
                suite.wait_port(extra["pubPort"], server)
        except RuntimeError as exc:
            return {"error": f"{target}: {exc}", "serverLog": suite.tail(tmp)}
        cfg = dict(cfg, **extra, hub=False, port=port, serverPid=server.pid,
                   auxPids=[redis_pid] if redis_pid else [])  # fmt: skip
        result = generate(scenario, cfg, tmp, timeout_s)
        if server.poll() is not None:
            result.setdefault("error", "the server exited during the run")
        if "error" in result:
            result["serverLog"] = suite.tail(tmp)
        return result
    finally:
        suite.kill(server)
        shutil.rmtree(tmp, ignore_errors=True)


def run(scenario: str, target: str, quick: bool = False, redis_url: str | None = None,
        redis_pid: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One scenario (``"E"`` or ``"F"``) against one target; the result dict, or one with "error".

    Targets that need Redis get their own redis-server unless ``redis_url`` is given (then
    ``redis_pid``, when known, is sampled for its CPU).
    """
    cfg, timeout_s = config(scenario, target, quick)
    redis = None
    try:
        if target in suite.REDIS_TARGETS and redis_url is None:
            redis = suite.Redis().start()
            assert redis.proc is not None
            redis_url, redis_pid = redis.url, redis.proc.pid
        if target.startswith("hub"):
            url = redis_url if target == "hub-redis" else None
            result = run_hub(scenario, cfg, timeout_s, url, redis_pid if url else None)
        else:
            result = run_peer(scenario, target, cfg, timeout_s, redis_url, redis_pid)
    finally:
        if redis is not None:
            redis.cleanup()
    return {**result, "scenario": scenario, "target": target}


# ------------------------------------------------------------------------------------ reports


def check_e(r: dict[str, Any]) -> str:
    """What the read-back found (hub), or why the run has no figures."""
    if "error" in r:
        return "FAILED (" + r["error"].splitlines()[0][:60] + ")"
    bits = []
    for p in r["phases"]:
        v = p.get("verify")
        if v and (v["lost"] or v["repeated"] or v["gaps"]):
            bits.append(f"{p['writers']} writers: LOST {v['lost']}, REPEATED {v['repeated']},"
                        f" seq gaps {v['gaps']}")  # fmt: skip
        if p["errors"]:
            bits.append(f"{p['writers']} writers: {p['errors']} requests failed"
                        f" ({'; '.join(dict.fromkeys(p.get('errorSamples', [])))[:80]})")  # fmt: skip
    if bits:
        return "; ".join(bits)
    return "ok: every acknowledged event stored once" if r["durable"] else "ok (nothing stored)"


def lossy_f(r: dict[str, Any]) -> bool:
    """A sent ping that never reached its watcher, or one that arrived twice or elsewhere."""
    return "error" not in r and (r["received"] < r["sent"] or r["duplicates"] or r["wrong"])


def check_f(r: dict[str, Any]) -> str:
    if "error" in r:
        return "FAILED (" + r["error"].splitlines()[0][:60] + ")"
    bits = []
    if r["received"] < r["sent"]:
        bits.append(f"LOST {r['sent'] - r['received']:,} live")
    if r["duplicates"] or r["wrong"]:
        bits.append(f"REPEATED {r['duplicates']:,}, wrong stream {r['wrong']:,}")
    if r["shed"]:
        bits.append(f"{r['shed']:,} not sent (server behind)")
    if r.get("dropped") or r.get("errorFrames") or r["failed"]:
        bits.append(f"rate-limited {r.get('dropped', 0):,}, error frames"
                    f" {r.get('errorFrames', 0):,}, failed {r['failed']:,}")  # fmt: skip
    if r.get("closedSockets"):
        bits.append(f"{r['closedSockets']} sockets closed by the server ({r['errors'][0]})")
    if r.get("coldWatchers"):
        bits.append(f"{r['coldWatchers']} watchers never subscribed")
    if "tenantWrites" in r and r["tenantWrites"] > r["tenantWritesMax"]:
        bits.append(f"tenant writes OVER {r['tenantWritesMax']:,}")
    return ", ".join(bits) or "ok"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f} %"


def per_target(
    runs: list[list[dict[str, Any]]], scenario: str
) -> tuple[list[str], list[dict[str, dict[str, Any]]]]:
    """The targets that ran ``scenario`` in any run (first seen first), each run's results by
    target. Shared by ``markdown`` and ``bench/plot.py``."""
    per_run = [{r["target"]: r for r in run if r.get("scenario") == scenario} for run in runs]
    targets: list[str] = []
    for pr in per_run:
        targets += [t for t in pr if t not in targets]
    order = {t: i for i, t in enumerate(ORDER)}
    return sorted(targets, key=lambda t: order.get(t, len(order))), per_run


def ok(r: dict[str, Any] | None) -> dict[str, Any] | None:
    """``r`` if it has figures (ran, and did not fail)."""
    return r if r is not None and "error" not in r else None


def same(vals: list[str]) -> str:
    """One cell for what both runs should agree on (checks, config): one value if they do."""
    return vals[0] if len(set(vals)) == 1 else " / ".join(vals)


def phase(r: dict[str, Any] | None, writers: int) -> dict[str, Any] | None:
    """E: the phase of ``writers`` concurrent writers of a result with figures."""
    if ok(r) is None:
        return None
    assert r is not None
    return next((p for p in r["phases"] if p["writers"] == writers), None)


def lossy_e(r: dict[str, Any]) -> bool:
    """An acknowledged event missing or repeated on read-back (hub), or a request that failed."""
    return "error" not in r and any(
        p["errors"] or (p.get("verify") and not p["verify"]["ok"]) for p in r["phases"]
    )


def markdown(
    results: list[dict[str, Any]], results_run2: list[dict[str, Any]] | None = None
) -> str:
    """Tables of E and F, one row per target (E: per writer count); ratios against ``hub`` of
    the same run. With two runs each figure is ``run 1 / run 2`` (the spread)."""
    runs = [results] + ([results_run2] if results_run2 is not None else [])
    two = len(runs) > 1
    cells_note = "; each cell run 1 / run 2" if two else ""
    out: list[str] = []

    def targets_line(text: str, figures: list[str]) -> str:
        if not two:
            return f"{text}: {figures[0]}."
        return f"{text}: " + "; ".join(f"run {i}: {f}" for i, f in enumerate(figures, 1)) + "."

    def not_run(pr: dict[str, dict[str, Any]]) -> str:
        return "hub failed, MISSED" if "hub" in pr else "hub not run"

    targets, per_run = per_target(runs, "E")
    if targets:
        hubs = [ok(pr.get("hub")) for pr in per_run]
        out += [
            "**E** (committed events/s for the hub; published-and-acknowledged messages/s for the"
            " peers, which persist nothing; one event per request, no subscribers; hub / target is"
            f" the hub's events/s over the target's, same run{cells_note})",
            "",
            "| target | durable | writers | events/s | hub / target | request p50 (ms) |"
            " p99 (ms) | server CPU | redis CPU | generator CPU | other processes | check |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for t in targets:
            rs = [pr.get(t) for pr in per_run]
            durable = next(("yes" if r["durable"] else "no" for r in rs if ok(r)), "")
            check = same(["-" if r is None else check_e(r) for r in rs])
            if not any(ok(r) for r in rs):
                out.append(f"| {t} | | | | | | | | | | | {check} |")
                continue
            for i, wr in enumerate(E_WRITERS):

                def cell(f: Any, wr: int = wr, rs: list[Any] = rs) -> str:
                    vals = []
                    for r, hub in zip(rs, hubs, strict=True):
                        p = phase(r, wr)
                        vals.append(
                            "-" if r is None else "failed" if "error" in r
                            else "-" if p is None else f(p, phase(hub, wr))
                        )  # fmt: skip
                    return " / ".join(vals)

                def ratio(p: dict[str, Any], h: dict[str, Any] | None) -> str:
                    return (
                        f"{h['eventsPerS'] / p['eventsPerS']:.2f}x"
                        if h and p["eventsPerS"]
                        else "-"
                    )

                out.append(
                    f"| {t if i == 0 else ''} | {durable if i == 0 else ''} | {wr} |"
                    f" {cell(lambda p, h: format(p['eventsPerS'], ',.0f'))} | {cell(ratio)} |"
                    f" {cell(lambda p, h: fanout.fmt_ms(p['latency']['p50Ms']))} |"
                    f" {cell(lambda p, h: fanout.fmt_ms(p['latency']['p99Ms']))} |"
                    f" {cell(lambda p, h: pct(p['window']['serverCpuPct']))} |"
                    f" {cell(lambda p, h: pct(p['window']['redisCpuPct']))} |"
                    f" {cell(lambda p, h: pct(p['window']['genCpuPct']))} |"
                    f" {cell(lambda p, h: pct(p['window']['othersCpuPct']))} |"
                    f" {check if i == 0 else ''} |"
                )
        if any(hubs):
            figures = []
            for pr, h in zip(per_run, hubs, strict=True):
                best = phase(h, max(E_WRITERS))
                eps = best["eventsPerS"] if best else 0
                met = "met" if h and eps >= TARGET_E and not lossy_e(h) else "MISSED"
                figures.append(f"{eps:,.0f}, {met}" if h else not_run(pr))
            out += ["", targets_line(f"Target (hub >= {TARGET_E:,} committed events/s at"
                                     f" {max(E_WRITERS)} writers, none lost)", figures)]  # fmt: skip
        out.append("")
    targets, per_run = per_target(runs, "F")
    if targets:
        hubs = [ok(pr.get("hub")) for pr in per_run]
        out += [
            "**F** (each driver pings at a steady rate, one watcher per driver's order;"
            " ingested/s = pings accepted / (first ping sent -> last ping received by a watcher);"
            " hub / target is the hub's ingested/s over the target's, same run; tenant-DB writes"
            " from the hub's `/metrics`, per driver per second of that window + 1 s, max = what"
            f" one write per driver per second allows{cells_note})",
            "",
            "| target | durable | drivers | offered/s | ingested/s | hub / target | reached watchers"
            " live | latency p50 (ms) | p99 (ms) | tenant-DB writes (max) | writes per driver"
            " per s | server CPU | RSS MB | redis CPU | generator CPU | other processes | check |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            " ---: | ---: | ---: | ---: | --- |",
        ]
        for t in targets:
            rs = [pr.get(t) for pr in per_run]
            check = same(["-" if r is None else check_f(r) for r in rs])
            if not any(ok(r) for r in rs):
                out.append(f"| {t} | | | | | | | | | | | | | | | | {check} |")
                continue

            def cell(f: Any, rs: list[Any] = rs) -> str:
                return " / ".join(
                    "-" if r is None else "failed" if "error" in r else f(r, h)
                    for r, h in zip(rs, hubs, strict=True)
                )

            def ratio(r: dict[str, Any], h: dict[str, Any] | None) -> str:
                return (
                    f"{h['ingestedPerS'] / r['ingestedPerS']:.2f}x"
                    if h and r["ingestedPerS"]
                    else "-"
                )

            def writes(r: dict[str, Any], h: Any) -> str:
                if "tenantWrites" not in r:
                    return "n/a: no storage"
                return f"{r['tenantWrites']:,} ({r['tenantWritesMax']:,})"

            def per_driver(r: dict[str, Any], h: Any) -> str:
                return f"{r['tenantWritesPerDriverS']:.2f}" if "tenantWrites" in r else "n/a"

            first = next(r for r in rs if ok(r))
            out.append(
                f"| {t} | {'yes' if first['durable'] else 'no'} |"
                f" {same([format(r['drivers'], ',') for r in rs if ok(r)])} |"
                f" {same([format(r['offeredPerS'], ',') for r in rs if ok(r)])} |"
                f" {cell(lambda r, h: format(r['ingestedPerS'], ',.0f'))} | {cell(ratio)} |"
                f" {cell(lambda r, h: format(r['reachedPct'], '.2f') + ' %')} |"
                f" {cell(lambda r, h: fanout.fmt_ms(r['latency']['p50Ms']))} |"
                f" {cell(lambda r, h: fanout.fmt_ms(r['latency']['p99Ms']))} |"
                f" {cell(writes)} | {cell(per_driver)} |"
                f" {cell(lambda r, h: pct(r['window']['serverCpuPct']))} |"
                f" {cell(lambda r, h: format(r['window']['serverRssPeakMB'], '.0f'))} |"
                f" {cell(lambda r, h: pct(r['window']['redisCpuPct']))} |"
                f" {cell(lambda r, h: pct(r['window']['genCpuPct']))} |"
                f" {cell(lambda r, h: pct(r['window']['othersCpuPct']))} | {check} |"
            )
        if any(hubs):
            figures = []
            for pr, h in zip(per_run, hubs, strict=True):
                if h is None:
                    figures.append(not_run(pr))
                    continue
                met = (h["ingestedPerS"] >= TARGET_F and not lossy_f(h)
                       and h["tenantWrites"] <= h["tenantWritesMax"])  # fmt: skip
                verdict = "met" if met else "MISSED"
                if h["offeredPerS"] < TARGET_F:
                    verdict = f"not measured (only {h['offeredPerS']:,} pings/s offered)"
                figures.append(f"{h['ingestedPerS']:,.0f} pings/s, {h['reachedPct']:.2f} % reached,"
                               f" {h['tenantWritesPerDriverS']:.2f} writes/driver/s, {verdict}")  # fmt: skip
            out += ["", targets_line(f"Target (hub >= {TARGET_F:,} pings/s ingested, every ping"
                                     " live to its watcher, <= 1 tenant-DB write per driver per"
                                     " second)", figures)]  # fmt: skip
    return "\n".join(out)


def print_result(r: dict[str, Any]) -> None:
    """One run's figures, as they come."""
    if "error" in r:
        print(f"{r['scenario']} / {r['target']}: FAILED: {r['error']}\n{r.get('serverLog', '')}")
        return
    w = r.get("window")
    if r["scenario"] == "E":
        for p in r["phases"]:
            w = p["window"]
            print(f"  {p['writers']:>3} writers: {p['acked']:,} acknowledged, {p['eventsPerS']:,.0f}"
                  f" events/s, p50 {fanout.fmt_ms(p['latency']['p50Ms'])} ms,"
                  f" p99 {fanout.fmt_ms(p['latency']['p99Ms'])} ms; server CPU"
                  f" {pct(w['serverCpuPct'])}, generator {pct(w['genCpuPct'])}, other processes"
                  f" {pct(w['othersCpuPct'])}")  # fmt: skip
        print(f"  check: {check_e(r)}")
        return
    print(f"  {r['drivers']} drivers x {r['ratePerDriver']}/s for {r['sendSeconds']:.1f} s:"
          f" sent {r['sent']:,}, accepted {r['accepted']:,} ({r['ingestedPerS']:,.0f}/s),"
          f" reached watchers {r['received']:,} ({r['reachedPct']:.2f} %, ended {r['endedBy']}),"
          f" latency p50 {fanout.fmt_ms(r['latency']['p50Ms'])} ms,"
          f" p99 {fanout.fmt_ms(r['latency']['p99Ms'])} ms")  # fmt: skip
    if "tenantWrites" in r:
        print(f"  tenant-DB writes {r['tenantWrites']:,} ({r['tenantWritesPerDriverS']:.2f} per"
              f" driver per s; allowed {r['tenantWritesMin']:,}..{r['tenantWritesMax']:,}),"
              f" streams-DB writes {r['streamsWrites']:,}")  # fmt: skip
    assert w is not None
    print(f"  server CPU {pct(w['serverCpuPct'])}, RSS peak {w['serverRssPeakMB']:.0f} MB,"
          f" redis {pct(w['redisCpuPct'])}, generator {pct(w['genCpuPct'])}, other processes"
          f" {pct(w['othersCpuPct'])}; check: {check_f(r)}")  # fmt: skip
