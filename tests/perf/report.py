"""The run's result: one JSON object with every figure beside its ceiling and their ratio
(the last stdout line), the same with every run's raw numbers under `details`
(out/result.json), and its picture (out/bench.png, drawn by plot.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from typing import Any

from common import log
from harness import Config, Harness

FIGURES = ("P1", "P1b", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P10")  # their order in the result


def ratio(value: float, ceiling: float) -> float:
    return round(value / ceiling, 3) if ceiling else 0.0


def memory(cfg: Config, details: dict[str, Any], p2_run: dict[str, Any], soak: dict[str, Any] | None) -> dict[str, Any]:
    """P5: the api's peak RSS under P1 and a worker's under P2; growth per minute from the
    soak when it ran, else from those two (seconds-long) measured windows."""
    api = details.get("P1", {}).get("figure", {})
    if soak is not None:
        growth = max(soak["growth_mb_per_min"].values())
        growth_source = f"soak of {cfg.soak_s:g} s"
    else:
        growth = max(api.get("rss_growth_mb_per_min", 0.0), p2_run.get("rss_growth_mb_per_min", 0.0))
        growth_source = "P1 and P2 measured windows (short; --soak for a 5-minute figure)"
    return {
        "worker_rss_mb": p2_run.get("worker_rss_peak_mb"),
        "api_rss_mb": api.get("api_rss_peak_mb"),
        "rss_growth_mb_per_min": growth,
        "rss_growth_source": growth_source,
    }


def result(
    h: Harness,
    figures: dict[str, Any],
    *,
    p2_run: dict[str, Any],
    soak: dict[str, Any] | None,
    timings: dict[str, float],
    elapsed_s: float,
) -> dict[str, Any]:
    """The whole result: the machine, the figures that ran, the run's settings, the details."""
    cfg, details = h.cfg, h.details
    if soak is not None:
        details["soak"] = soak
    if "P5" in cfg.only:
        figures = figures | {"P5": memory(cfg, details, p2_run, soak)}
    out: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "sink": h.sink_name,
            "loadgen": h.loadgen_name,
            "cpu_pinning": "none",
        }
    }
    out |= {k: figures[k] for k in FIGURES if k in figures}
    out["config"] = {
        "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s,
        "backlog": cfg.backlog,
        "smoke": cfg.smoke,
        "soak": cfg.soak,
        "only": sorted(cfg.only),
        "services": details.pop("services"),
        "elapsed_s": elapsed_s,
        "phases_s": timings,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out["details"] = details
    return out


def write_outputs(cfg: Config, result: dict[str, Any]) -> None:
    """out/result.json, and out/bench.png when matplotlib is installed (`make bench` does)."""
    (cfg.out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        import plot

        plot.plot(result, cfg.out_dir / "bench.png")
        import plot_steps

        if plot_steps.plot(result, cfg.out_dir / "bench-p8.png"):  # P8's steps, when it ran
            log(f"wrote {cfg.out_dir / 'bench-p8.png'}")
    except ImportError as exc:
        log(f"warning: no plot ({exc}); `make bench` installs tests/perf/requirements.txt")
    log(f"wrote {cfg.out_dir / 'result.json'} and {cfg.out_dir / 'bench.png'}")


def summary_line(result: dict[str, Any]) -> str:
    """The last line on stdout: the result without its details (those are in result.json)."""
    return json.dumps({k: v for k, v in result.items() if k != "details"}, separators=(", ", ": "))
