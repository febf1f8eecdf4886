"""Plots of bench/suite.py results: one PNG per scenario, hub against every peer.

Run with the bench environment (matplotlib): /tmp/benchenv/bin/python bench/plot.py RUN1.json [RUN2.json]
Writes docs/img/peers-A.png, peers-B.png, peers-D.png (``--markdown RUNS...`` prints the tables instead). With two runs, each bar is run 1 and
the error bar spans both runs. Targets that lost or repeated events are drawn hatched and
labelled.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"


def load(paths: list[str]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def value(r: dict, scen: str, kind: str) -> float | None:
    if "error" in r:
        return None
    if scen == "A":
        return r["deliveriesPerS"]
    if scen == "B":
        return r["latency"]["p99Ms"] if kind == "p99" else r["latency"]["p50Ms"]
    return r["kbPerConnection"]


def lossy(r: dict) -> bool:
    v = r.get("verify")
    if v and r.get("endedBy") == "deadline" and not v["duplicates"]:
        return False  # unfinished in the time bound, not shown to lose
    return bool(v and (v["lost"] or v["duplicates"] or v["wrongStream"]))


def main(paths: list[str]) -> None:
    runs = load(paths)
    OUT.mkdir(parents=True, exist_ok=True)
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
        "D": ("RSS per idle connection, KB (lower is better)", "D: 5,000 idle subscribers", False),
    }
    for scen, (ylabel, title, logy) in specs.items():
        per_run = [{r["target"]: r for r in run if r.get("scenario") == scen} for run in runs]
        targets = []
        for pr in per_run:
            targets += [t for t in pr if t not in targets]
        if not targets:
            continue
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for i, t in enumerate(targets):
            vals = [value(pr[t], scen, "p99") for pr in per_run if t in pr]
            vals = [v for v in vals if v is not None]
            if not vals:
                ax.text(i, 0, "failed", ha="center", va="bottom", rotation=90)
                continue
            r0 = next(pr[t] for pr in per_run if t in pr and "error" not in pr[t])
            bad = any(lossy(pr[t]) for pr in per_run if t in pr)
            color = (
                "#2b6cb0"
                if t.startswith("hub")
                else ("#999999" if t in ("websockets", "node-ws") else "#dd8452")
            )
            ax.bar(
                i,
                vals[0],
                color=color,
                hatch="//" if bad else None,
                edgecolor="black" if bad else None,
            )
            if len(vals) > 1:
                ax.errorbar(
                    i,
                    vals[0],
                    yerr=[[vals[0] - min(vals)], [max(vals) - vals[0]]],
                    color="black",
                    capsize=4,
                )
            label = f"{vals[0]:,.0f}" if scen != "B" else f"{vals[0]:.1f}"
            if bad:
                label += f"\nLOSES ({r0['verify']['deliveredPct']:.0f} %)"
            ax.text(i, max(vals), label, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(targets)), targets, rotation=15)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if logy:
            ax.set_yscale("log")
        ax.margins(y=0.15)
        fig.tight_layout()
        fig.savefig(OUT / f"peers-{scen}.png", dpi=110)
        plt.close(fig)
        print(f"wrote {OUT / f'peers-{scen}.png'}")


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
        bits = []
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

    def aux(r: dict, b: dict) -> str:
        w = r["window"]
        return "{:.0f} %".format(w["auxCpuPct"]) if "auxCpuPct" in w else "n/a"

    def pct(key: str):
        return lambda r, b: "{:.0f} %".format(r["window"][key])

    print("\n**A** (deliveries/s; hub / target is the hub's figure over the target's, same run)\n")
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--markdown"]:
        markdown(sys.argv[2:])
    else:
        main(sys.argv[1:])
