"""Plots of ``bench/city.py --json`` files: docs/img/city-step.png.

Run with the bench env's Python (matplotlib; ``sh bench/setup.sh`` makes /tmp/benchenv)::

    /tmp/benchenv/bin/python bench/city_plot.py /tmp/city-step.json [--label "as shipped"]
        [/tmp/city-step-freeze.json --label "gc.freeze every 10 s"] [--out docs/img/city-step.png]

One line per file: step -> screen p99 (customer), GPS -> screen p99 and the hub's CPU in the
orders window, against the level (sockets / drivers / orders per minute), with the service
level's bounds (50 ms, 100 ms).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "city-step.png"))
    args = ap.parse_intermixed_args()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    loaded = []
    for n, f in enumerate(args.files):
        runs = [r for r in json.loads(Path(f).read_text()) if "error" not in r]
        loaded.append((args.label[n] if n < len(args.label) else Path(f).stem, runs))
    # one x position per level (drivers, orders per minute), across every file
    keys = sorted(
        {(r["config"]["drivers"], r["config"]["opm"]) for _, runs in loaded for r in runs}
    )
    ticks = {}
    for _, runs in loaded:
        for r in runs:
            k = (r["config"]["drivers"], r["config"]["opm"])
            ticks.setdefault(k, f"{r['sockets'] / 1000:.1f}k / {k[0]:,} / {k[1]}")
    collapsed = set()
    for label, runs in loaded:
        xs = [keys.index((r["config"]["drivers"], r["config"]["opm"])) for r in runs]
        axes[0].plot(xs, [r["stepToScreen"]["customer"]["p99Ms"] for r in runs], "o-", label=label)
        axes[1].plot(xs, [r["gpsToScreen"]["p99Ms"] for r in runs], "o-", label=label)
        axes[2].plot(xs, [sum(r["windows"]["orders"]["serverCpuPct"]) for r in runs], "o-",
                     label=label)  # fmt: skip
        # a level whose orders did not all finish, or whose pings were shed: its latencies
        # cover only what got through
        collapsed |= {x for x, r in zip(xs, runs, strict=True)
                      if r["check"]["unfinished"] or r["gps"]["shed"]}  # fmt: skip
    for ax in axes:
        ax.set_xticks(range(len(keys)), [ticks[k] for k in keys], rotation=20, fontsize=8)
    axes[0].axhline(50, color="red", ls="--", lw=1, label="service level 50 ms")
    axes[1].axhline(100, color="red", ls="--", lw=1, label="service level 100 ms")
    axes[2].axhline(100, color="grey", ls=":", lw=1)
    axes[0].set_title("step -> customer screen, p99 (ms)")
    axes[1].set_title("GPS -> customer screen, p99 (ms)")
    axes[2].set_title("hub CPU, orders window (% of a core)")
    for ax in axes[:2]:
        ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("sockets / drivers (1 Hz) / orders per minute")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for x in sorted(collapsed):
        for ax in axes[:2]:
            ax.annotate("collapsed", (x, ax.get_ylim()[0]), xytext=(0, 8),
                        textcoords="offset points", ha="center", color="red", fontsize=8)  # fmt: skip
    fig.suptitle("bench/city.py --step: one hub process on one core")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
