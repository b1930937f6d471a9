"""P8's picture (out/bench-p8.png): per step of the ladder, the offered, accepted and
delivered rates and the backlog at the end of the window (left), and the delay from accept to
the sink's 250, p50 and p99, against the 500 ms bound (right).

    python tests/perf/plot_steps.py tests/perf/out/result.json tests/perf/out/bench-p8.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], path: Path) -> bool:
    """Draw P8's steps; False (nothing written) when the result has none."""
    steps = result.get("details", {}).get("P8", {}).get("steps")
    p8 = result.get("P8")
    if not steps or not p8:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_delay) = plt.subplots(1, 2, figsize=(14, 5.5))
    offered = [s["rate"] for s in steps]
    colours = ["#38a169" if s["passed"] else "#e53e3e" for s in steps]
    ax_rate.plot(offered, offered, color="#a0aec0", linestyle=":", label="offered")
    ax_rate.plot(offered, [s["accepted_per_s"] for s in steps], marker="o", label="accepted/s (api commits)")
    ax_rate.plot(offered, [s["delivered_per_s"] for s in steps], marker="s", label="delivered/s (sent_at)")
    ceiling = float(p8.get("ceiling") or 0)
    if ceiling:
        ax_rate.axhline(
            0.2 * ceiling, color="#dd6b20", linestyle="--", label=f"target: 0.2 of the P2 ceiling ({ceiling:,.0f})"
        )
    backlog = ax_rate.twinx()
    backlog.bar(offered, [s["backlog_end"] for s in steps], width=max(offered) * 0.03, color=colours, alpha=0.35)
    backlog.set_ylabel("backlog at the end of the window (bars; red: step failed)")
    ax_rate.set_xlabel("offered triggers/s (open loop)")
    ax_rate.set_ylabel("messages/s")
    ax_rate.set_title(f"P8: {p8['value']:,.0f} messages/s sustained, ratio {p8['ratio']:.3f} of P2's ceiling")
    ax_rate.set_ylim(bottom=0)
    ax_rate.legend(loc="upper left", fontsize=8)

    for key, label, marker in (("delay_p50_ms", "p50", "o"), ("delay_p99_ms", "p99", "s")):
        ax_delay.plot(offered, [s.get(key) or float("nan") for s in steps], marker=marker, label=label)
    ax_delay.scatter(offered, [s.get("delay_p99_ms") or float("nan") for s in steps], c=colours, zorder=3)
    ax_delay.axhline(500, color="#e53e3e", linestyle="--", label="p99 bound 500 ms")
    ax_delay.set_yscale("log")
    ax_delay.set_xlabel("offered triggers/s (open loop)")
    ax_delay.set_ylabel("accept → sink's 250, ms (log scale)")
    ax_delay.set_title("delay from accept to delivery")
    ax_delay.legend(loc="lower right", fontsize=8)
    smoke = " (smoke run: the numbers mean nothing)" if result.get("config", {}).get("smoke") else ""
    fig.suptitle(f"tidings bench P8 end to end, {result.get('config', {}).get('at', '')}{smoke}")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    plot(json.loads(source.read_text()), target)
