"""Plots and tables of bench/suite.py results: one PNG per scenario, hub against every peer.

Run with the bench environment (matplotlib), on the suite's ``--json`` files of one or two runs:

    /tmp/benchenv/bin/python bench/plot.py RUN1.json [RUN2.json] [--outdir DIR]
    /tmp/benchenv/bin/python bench/plot.py --markdown RUN1.json [RUN2.json]

The first writes ``peers-A.png`` ... ``peers-F.png`` (the scenarios the runs have) to ``--outdir``
(default ``docs/img``); the second prints the markdown tables for ``docs/benchmarks.md``, each
cell ``run 1 / run 2``. With two runs, each bar is run 1 and the error bar spans both runs.
Targets that lost or repeated events (E: or had requests fail) are drawn hatched and labelled;
a target that failed is marked "failed". C (cross-instance) has only the targets that run two
instances through Redis. E and F's tables and checks come from ``bench/ef.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ef

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
HUB, PEER, CEILING = "#2b6cb0", "#dd8452", "#999999"


def load(paths: list[str]) -> list[list[dict]]:
    return [json.loads(Path(p).read_text()) for p in paths]


def color(t: str) -> str:
    if t.startswith("hub"):
        return HUB
    return CEILING if t in ("websockets", "node-ws", "uvicorn-raw") else PEER


def bar(ax: Any, x: float, vals: list[float], width: float, c: str, bad: bool) -> None:
    """Run 1's bar, an error bar spanning every run; hatched when a run lost or repeated."""
    ax.bar(x, vals[0], width, color=c, hatch="//" if bad else None,
           edgecolor="black" if bad else None)  # fmt: skip
    if len(vals) > 1:
        ax.errorbar(x, vals[0], yerr=[[vals[0] - min(vals)], [max(vals) - vals[0]]],
                    color="black", capsize=3)  # fmt: skip


def failed(ax: Any, x: float, rs: list[dict | None]) -> None:
    """Mark a target without figures: every run of it failed."""
    why = next((r["error"].splitlines()[0][:45] for r in rs if r and "error" in r), "")
    ax.text(x, 0, f"FAILED\n{why}", ha="center", va="bottom", rotation=90, fontsize=7,
            color="#c53030")  # fmt: skip


def legend(ax: Any, targets: list[str], lines: Any = ()) -> None:
    """What the colours, the hatching, the error bars and the lines (``axhline(label=...)``) mean."""
    handles = [Patch(color=HUB, label="hub")]
    if any(color(t) == PEER for t in targets):
        handles.append(Patch(color=PEER, label="Python peer"))
    if any(color(t) == CEILING for t in targets):
        handles.append(Patch(color=CEILING, label="ceiling / floor (no framework)"))
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                         label="lost, repeated or failed"))  # fmt: skip
    handles += [Line2D([], [], color=ln.get_color(), linestyle=ln.get_linestyle(),
                       label=ln.get_label()) for ln in lines]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1),
              title="bar: run 1 (or the only run)\nerror bar: run 1 .. run 2", title_fontsize=7)  # fmt: skip


def tick(t: str, per_run: list[dict[str, dict]]) -> str:
    """A target's x label, with the runs it failed in (its bar is then the other run's)."""
    bad = [str(i) for i, pr in enumerate(per_run, 1) if t in pr and "error" in pr[t]]
    ok = any(t in pr and "error" not in pr[t] for pr in per_run)
    return t + (f"\nFAILED in run {' and '.join(bad)}" if bad and ok else "")


def value(r: dict, scen: str, kind: str) -> float | None:
    if "error" in r:
        return None
    if scen == "A":
        return r["deliveriesPerS"]
    if scen in ("B", "C"):
        return r["latency"]["p99Ms"] if kind == "p99" else r["latency"]["p50Ms"]
    return r["kbPerConnection"]


def lossy(r: dict) -> bool:
    v = r.get("verify")
    if v and r.get("endedBy") == "deadline" and not v["duplicates"]:
        return False  # unfinished in the time bound, not shown to lose
    return bool(v and (v["lost"] or v["duplicates"] or v["wrongStream"]))


def plots(paths: list[str], outdir: Path) -> None:
    runs = load(paths)
    outdir.mkdir(parents=True, exist_ok=True)
    specs = {
        "A": (
            "deliveries/s (higher is better)",
            "A: 1 stream x 1,000 subscribers, 2,000 events",
            False,
        ),
        "B": (
            "p99 latency, ms (log; lower is better)",
            "B: 1,000 streams x 3 subscribers, 1,000 events/s",
            True,
        ),
        "C": (
            "p99 latency, ms (log; lower is better)",
            "C: B across two instances and one Redis (publish on one, subscribe on the other)",
            True,
        ),
        "D": ("RSS per idle connection, KB (lower is better)", "D: 5,000 idle subscribers", False),
    }
    for scen, (ylabel, title, logy) in specs.items():
        targets, per_run = ef.per_target(runs, scen)
        if not targets:
            continue
        fig, ax = plt.subplots(figsize=(11, 4.5))
        for i, t in enumerate(targets):
            vals = [value(pr[t], scen, "p99") for pr in per_run if t in pr]
            vals = [v for v in vals if v is not None]
            if not vals:
                failed(ax, i, [pr.get(t) for pr in per_run])
                continue
            r0 = next(pr[t] for pr in per_run if t in pr and "error" not in pr[t])
            bad = any(lossy(pr[t]) for pr in per_run if t in pr)
            bar(ax, i, vals, 0.8, color(t), bad)
            label = f"{vals[0]:.1f}" if scen in ("B", "C") else f"{vals[0]:,.0f}"
            if bad:
                label += f"\nLOSES ({r0['verify']['deliveredPct']:.0f} %)"
            ax.text(i, max(vals), label, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(targets)), [tick(t, per_run) for t in targets], rotation=20,
                      ha="right")  # fmt: skip
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if logy:
            ax.set_yscale("log")
        ax.margins(y=0.15)
        legend(ax, targets)
        fig.tight_layout()
        save(fig, outdir / f"peers-{scen}.png")
    plot_e(runs, outdir)
    plot_f(runs, outdir)


def save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def plot_e(runs: list[list[dict]], outdir: Path) -> None:
    """E: per target, a bar per writer count (1 / 16 / 256), events/s."""
    targets, per_run = ef.per_target(runs, "E")
    if not targets:
        return
    fig, ax = plt.subplots(figsize=(12, 4.8))
    width = 0.8 / len(ef.E_WRITERS)
    for i, t in enumerate(targets):
        rs = [pr[t] for pr in per_run if t in pr and "error" not in pr[t]]
        if not rs:
            failed(ax, i, [pr.get(t) for pr in per_run])
            continue
        bad = any(ef.lossy_e(r) for r in rs)
        for j, wr in enumerate(ef.E_WRITERS):
            vals = [p["eventsPerS"] for r in rs for p in r["phases"] if p["writers"] == wr]
            if not vals:
                continue
            x = i + (j - (len(ef.E_WRITERS) - 1) / 2) * width
            bar(ax, x, vals, width, color(t), bad)
            ax.text(x, max(vals), f"{vals[0] / 1000:.1f}k", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(targets)), [e_tick(t, per_run) for t in targets], fontsize=8)
    lines = [ax.axhline(ef.TARGET_E, color=HUB, linestyle=":", linewidth=1,
                        label=f"hub target at {max(ef.E_WRITERS)} writers")]  # fmt: skip
    ax.set_ylabel("events/s (higher is better)")
    r0 = next(r for pr in per_run for r in pr.values() if "error" not in r)
    ax.set_title(f"E: one event per HTTP request, bars left to right: {' / '.join(map(str, ef.E_WRITERS))}"
                 f" concurrent writers, {r0['durationS']:g} s each\n(hub: committed and read back;"
                 " peers: published, nothing stored)", fontsize=10)  # fmt: skip
    ax.margins(y=0.25)
    legend(ax, targets, lines)
    fig.tight_layout()
    save(fig, outdir / "peers-E.png")


def e_tick(t: str, per_run: list[dict[str, dict]]) -> str:
    """E's x label: the target, what it does with an event, and what went wrong in any run."""
    rs = [pr[t] for pr in per_run if t in pr and "error" not in pr[t]]
    label = tick(t, per_run) + ("\n(commits)" if t.startswith("hub") else "\n(stores nothing)")
    ps = [p for r in rs for p in r["phases"]]
    lost = sum(p["verify"]["lost"] + p["verify"]["repeated"] for p in ps if p.get("verify"))
    if lost or any(p.get("verify") and not p["verify"]["ok"] for p in ps):
        label += f"\nLOSES/REPEATS {lost:,}"
    if failed_reqs := sum(p["errors"] for p in ps):
        label += f"\n{failed_reqs:,} REQUESTS FAILED"
    return label


def plot_f(runs: list[list[dict]], outdir: Path) -> None:
    """F: pings/s ingested per target, with the share that reached the watchers live."""
    targets, per_run = ef.per_target(runs, "F")
    if not targets:
        return
    fig, ax = plt.subplots(figsize=(11, 4.8))
    for i, t in enumerate(targets):
        rs = [pr[t] for pr in per_run if t in pr and "error" not in pr[t]]
        if not rs:
            failed(ax, i, [pr.get(t) for pr in per_run])
            continue
        vals = [r["ingestedPerS"] for r in rs]
        bad = any(ef.lossy_f(r) for r in rs)
        bar(ax, i, vals, 0.7, color(t), bad)
        label = f"{vals[0]:,.0f}\n{rs[0]['reachedPct']:.1f} % live"
        if bad:
            label += "\nLOSES"
        if rs[0]["shed"]:
            label += f"\n{rs[0]['shed']:,} not sent"
        ax.text(i, max(vals), label, ha="center", va="bottom", fontsize=7)
    r0 = next(r for pr in per_run for r in pr.values() if "error" not in r)
    lines = [ax.axhline(r0["offeredPerS"], color="black", linestyle="--", linewidth=0.8,
                        label=f"offered ({r0['offeredPerS']:,}/s)")]  # fmt: skip
    if r0["offeredPerS"] >= ef.TARGET_F:
        lines.append(ax.axhline(ef.TARGET_F, color=HUB, linestyle=":", linewidth=1,
                                label="hub target"))  # fmt: skip
    ax.set_xticks(range(len(targets)), [tick(t, per_run) for t in targets], rotation=20,
                  ha="right")  # fmt: skip
    ax.set_ylabel("pings/s ingested (higher is better)")
    ax.set_title(f"F: {r0['drivers']:,} drivers x {r0['ratePerDriver']:g} pings/s"
                 f" ({r0['offeredPerS']:,}/s offered), a watcher per driver's order\n"
                 "(hub: each ping also updates the driver in its tenant DB, at most once a second)",
                 fontsize=10)  # fmt: skip
    ax.margins(y=0.3)
    legend(ax, targets, lines)
    fig.tight_layout()
    save(fig, outdir / "peers-F.png")


def markdown(paths: list[str]) -> None:
    """Tables for docs/benchmarks.md: each cell 'run 1 / run 2', ratios against the hub per run."""
    runs = load(paths)
    by = [{(r["scenario"], r["target"]): r for r in run if "scenario" in r} for run in runs]
    targets = []
    for run in runs:
        for r in run:
            if r.get("target") not in targets:
                targets.append(r["target"])

    def cells(scen: str, t: str, f) -> str:
        out = []
        for b in by:
            r = b.get((scen, t))
            out.append("-" if r is None else "failed" if "error" in r else f(r, b))
        return " / ".join(out)

    def check(r: dict) -> str:
        v = r["verify"]
        bits = [f"{r['appendErrors']:,} appends failed"] if r.get("appendErrors") else []
        if v["lost"] and r.get("endedBy") == "deadline":
            bits.append(
                f"not finished in the time bound ({v['deliveredPct']:.0f} % delivered by then)"
            )
        elif v["lost"]:
            bits.append(f"**LOSES** {v['lost']:,}")
        if v["duplicates"]:
            bits.append(f"**REPEATS** {v['duplicates']:,}")
        if r.get("coldSubscribers"):
            bits.append(f"{r['coldSubscribers']} subscribers got nothing")
        if not bits and not r.get("allDelivered", True):
            bits.append("incomplete in the time bound")
        return ", ".join(bits) or "ok"

    def checks(scen: str, t: str) -> str:
        out = [
            "-"
            if (scen, t) not in b
            else "failed: " + b[(scen, t)]["error"].splitlines()[0][:40]
            if "error" in b[(scen, t)]
            else check(b[(scen, t)])
            for b in by
        ]
        return out[0] if len(set(out)) == 1 else " / ".join(out)

    def hub(b: dict, scen: str) -> dict | None:
        r = b.get((scen, "hub"))
        return None if r is None or "error" in r else r

    def row(scen: str, t: str, fns: list) -> str:
        return (
            "| "
            + t
            + " | "
            + " | ".join(cells(scen, t, f) for f in fns)
            + " | "
            + checks(scen, t)
            + " |"
        )

    def ratio_a(r: dict, b: dict) -> str:
        h = hub(b, "A")
        return "%.2fx" % (h["deliveriesPerS"] / r["deliveriesPerS"]) if h else "?"

    def ratio_b(r: dict, b: dict) -> str:
        h = hub(b, "B")
        return "%.1fx" % (r["latency"]["p99Ms"] / h["latency"]["p99Ms"]) if h else "?"

    def ratio_c(ref: str):
        """C p99 over the B p99 of ``ref`` (a target; None: the row's own), same run."""

        def f(r: dict, b: dict) -> str:
            h = b.get(("B", ref or r["target"]))
            ok = h is not None and "error" not in h
            return "%.1fx" % (r["latency"]["p99Ms"] / h["latency"]["p99Ms"]) if ok else "?"

        return f

    def aux(r: dict, b: dict) -> str:
        w = r["window"]
        return "{:.0f} %".format(w["auxCpuPct"]) if "auxCpuPct" in w else "n/a"

    def pct(key: str):
        return lambda r, b: "{:.0f} %".format(r["window"][key])

    def has(scen: str) -> bool:
        return any(k[0] == scen for b in by for k in b)

    if has("A"):
        print(
            "\n**A** (deliveries/s; hub / target is the hub's figure over the target's, same run)\n"
        )
        print(
            "| target | deliveries/s | hub / target | delivered | latency p50 (ms) | p99 (ms) | server CPU | redis-server CPU | generator CPU | check |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for t in targets:
        if any(("A", t) in b for b in by):
            print(
                row(
                    "A",
                    t,
                    [
                        lambda r, b: "{:,.0f}".format(r["deliveriesPerS"]),
                        ratio_a,
                        lambda r, b: "{:.1f} %".format(r["verify"]["deliveredPct"]),
                        lambda r, b: "{:,.0f}".format(r["latency"]["p50Ms"]),
                        lambda r, b: "{:,.0f}".format(r["latency"]["p99Ms"]),
                        pct("hubCpuPct"),
                        aux,
                        pct("genCpuPct"),
                    ],
                )
            )
    if has("B"):
        print(
            "\n**B** (latency send -> receipt; p99 target / hub is the target's p99 over the hub's, same run)\n"
        )
        print(
            "| target | p50 (ms) | p99 (ms) | max (ms) | p99 target / hub | delivered | server CPU | redis-server CPU | server RSS (MB) | generator CPU | check |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for t in targets:
        if any(("B", t) in b for b in by):
            print(
                row(
                    "B",
                    t,
                    [
                        lambda r, b: "{:.2f}".format(r["latency"]["p50Ms"]),
                        lambda r, b: "{:.1f}".format(r["latency"]["p99Ms"]),
                        lambda r, b: "{:.0f}".format(r["latency"]["maxMs"]),
                        ratio_b,
                        lambda r, b: "{:.1f} %".format(r["verify"]["deliveredPct"]),
                        pct("hubCpuPct"),
                        aux,
                        lambda r, b: "{:.0f}".format(r["window"]["hubRssEndMB"]),
                        pct("genCpuPct"),
                    ],
                )
            )
    if has("C"):
        print(
            "\n**C** (B across two instances and one redis-server: publish on instance 1, subscribe on"
            " instance 2; C p99 / hub B is over the hub's B p99 without Redis, same run)\n"
        )
        print(
            "| target | p50 (ms) | p99 (ms) | max (ms) | C p99 / hub B p99 | C p99 / own B p99 | delivered | server CPU (pub + sub) | redis-server CPU | server RSS (MB, pub / sub) | generator CPU | check |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for t in targets:
        if any(("C", t) in b for b in by):
            print(
                row(
                    "C",
                    t,
                    [
                        lambda r, b: "{:.2f}".format(r["latency"]["p50Ms"]),
                        lambda r, b: "{:.1f}".format(r["latency"]["p99Ms"]),
                        lambda r, b: "{:.0f}".format(r["latency"]["maxMs"]),
                        ratio_c("hub"),
                        ratio_c(None),
                        lambda r, b: "{:.1f} %".format(r["verify"]["deliveredPct"]),
                        lambda r, b: "{:.0f} + {:.0f} %".format(
                            r["window"]["pubCpuPct"], r["window"]["hubCpuPct"]
                        ),
                        aux,
                        lambda r, b: "{:.0f} / {:.0f}".format(
                            r["window"]["pubRssEndMB"], r["window"]["hubRssEndMB"]
                        ),
                        pct("genCpuPct"),
                    ],
                )
            )
    if has("D"):
        print("\n**D** (server RSS growth / connections, once every subscription is live)\n")
        print("| target | KB per idle connection | RSS before -> after (MB) |")
        print("| --- | ---: | ---: |")
    for t in targets:
        if any(("D", t) in b for b in by):
            print(
                "| "
                + t
                + " | "
                + cells("D", t, lambda r, b: "{:.1f}".format(r["kbPerConnection"]))
                + " | "
                + cells(
                    "D",
                    t,
                    lambda r, b: "{:.0f} -> {:.0f}".format(r["rssBeforeMB"], r["rssAfterMB"]),
                )
                + " |"
            )
    e_f = ef.markdown(runs[0], runs[1] if len(runs) > 1 else None)
    if e_f:
        print("\n" + e_f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN.json", help="run 1 [and run 2] of suite.py --json"
    )
    p.add_argument("--markdown", action="store_true", help="print the tables instead of plotting")
    p.add_argument("--outdir", type=Path, default=OUT, help="where the PNGs go (default docs/img)")
    args = p.parse_args(argv)
    if len(args.runs) > 2:
        p.error("one or two runs")
    if args.markdown:
        markdown(args.runs)
    else:
        plots(args.runs, args.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
