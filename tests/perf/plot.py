"""The bench's picture: throughput per scenario beside its ceiling, P6's scaling, and latency
percentiles (P4, and P1's load-generator view of the api and of the bare app). A run of
some scenarios only (`--only`) plots what it has.

    python tests/perf/plot.py tests/perf/out/result.json tests/perf/out/bench.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PERCENTILES = ("p50", "p90", "p99", "max")


def _throughput(ax: Any, result: dict[str, Any]) -> None:
    names = [n for n in ("P1", "P2", "P7", "P3") if n in result]
    ax.set_title("throughput beside its ceiling (same run)")
    if not names:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        return
    figures = [float(result[n]["value"]) for n in names]
    ceilings = [float(result[n]["ceiling"]) for n in names]
    xs = list(range(len(names)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], figures, width, label="tidings", color="#2b6cb0")
    ax.bar([x + width / 2 for x in xs], ceilings, width, label="ceiling", color="#a0aec0")
    top = max([*figures, *ceilings, 1.0])
    for x, f, c, name in zip(xs, figures, ceilings, names, strict=True):
        ax.annotate(f"{f:,.0f}", (x - width / 2, f), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{c:,.0f}", (x + width / 2, c), ha="center", va="bottom", fontsize=8)
        ax.annotate(
            f"ratio {result[name]['ratio']:.3f}",
            (x, max(f, c) + top * 0.06),
            ha="center",
            va="bottom",
            fontsize=9,
            weight="bold",
        )
    ax.set_xticks(xs, [f"{n}\n{result[n]['unit']}" for n in names])
    ax.set_ylabel("per second")
    ax.set_ylim(0, top * 1.25)
    ax.legend(loc="upper right", fontsize=8)


def _scaling(ax: Any, result: dict[str, Any]) -> None:
    ax.set_title("P6: emails/s by worker processes")
    p6 = result.get("P6")
    if not p6:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        return
    counts = sorted(p6["workers"], key=int)
    rates = [float(p6["workers"][c]) for c in counts]
    ax.bar(counts, rates, color="#38a169")
    for c, r in zip(counts, rates, strict=True):
        ax.annotate(f"{r:,.0f}", (c, r), ha="center", va="bottom", fontsize=8)
    ceiling = float(p6.get("ceiling") or 0)
    if ceiling:
        ax.axhline(ceiling, color="#a0aec0", linestyle="--", label=f"P2 ceiling {ceiling:,.0f}")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("emails/s")
    ax.set_ylim(0, max([*rates, ceiling, 1.0]) * 1.2)


def _latency(ax: Any, result: dict[str, Any]) -> None:
    ax.set_title("latency percentiles")
    series: list[tuple[str, list[float]]] = []
    p4 = result.get("P4")
    if p4:
        series.append((f"P4 background:false @ {p4['rate']:g}/s", [p4.get(f"{p}_ms") or 0.0 for p in PERCENTILES]))
    p1 = result.get("details", {}).get("P1", {})
    for label, key in (("P1 api (wrk, closed loop)", "figure"), ("P1 bare aiohttp", "ceiling")):
        if key in p1:
            series.append((label, [p1[key].get(f"{p}_ms") or 0.0 for p in PERCENTILES]))
    if not series:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        return
    bar_w = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * bar_w for j in range(len(PERCENTILES))]
        ax.bar(xs, values, bar_w, label=label)
        for x, v in zip(xs, values, strict=True):
            if v > 0:
                ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=7)
    if p4:
        ax.axhline(p4["sink_ms"], color="black", linestyle=":", label=f"sink, one message: {p4['sink_ms']:.2f} ms")
        ax.axhline(10, color="#e53e3e", linestyle="--", linewidth=0.8, label="P4 targets: p50 10 ms, p99 25 ms")
        ax.axhline(25, color="#e53e3e", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(PERCENTILES)), PERCENTILES)
    ax.set_ylabel("ms (log scale)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=7)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_p6, ax_lat) = plt.subplots(1, 3, figsize=(16, 6), gridspec_kw={"width_ratios": [3, 2, 3]})
    m = result["machine"]
    smoke = " (smoke run: the numbers mean nothing)" if result.get("config", {}).get("smoke") else ""
    fig.suptitle(
        f"tidings bench, {result.get('config', {}).get('at', '')}: {m['cores']} cores, Python {m['python']}, "
        f"sink {m['sink']}, load generator {m.get('loadgen', '?')}{smoke}"
    )
    _throughput(ax_tp, result)
    _scaling(ax_p6, result)
    _latency(ax_lat, result)
    p5 = result.get("P5")
    if p5:
        fig.text(
            0.5,
            0.01,
            f"P5: worker RSS {p5['worker_rss_mb']} MB (under P2), api RSS {p5['api_rss_mb']} MB (under P1), "
            f"growth {p5['rss_growth_mb_per_min']} MB/min ({p5.get('rss_growth_source', '')})",
            ha="center",
            fontsize=9,
        )
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    plot(json.loads(source.read_text()), target)
