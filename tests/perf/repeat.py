"""`--repeat N`: the whole set run N times (each run starts its services afresh and measures
every figure beside its own ceiling), and one result that says, for each figure, the
smallest and the median of its ratios over the runs: a target must hold in every run, not in
the best one.

The combined result is the last run's (its values, ceilings and details) plus, in each figure,
`<key>_min`, `<key>_median` and `<key>_runs` (every run's value in order) for each ratio it
has (`ratio`; P1b's `ratio_to_P1`, P7's `of_p2`, P10's `P1_to_loopback`, `P2_to_loopback`...),
with `ratio_min` / `ratio_median` also given for a figure whose one ratio has another name
(P1b); P4's `p99_ms` gets `_max` and `_median` instead (a latency: its worst run counts). The
object gains `"runs": N`, and `details.repeat` holds every run's figures (without details).
"""

from __future__ import annotations

import statistics
from typing import Any

# Figure keys that are ratios (the larger the better), beside `ratio` itself.
RATIO_KEYS = (
    "ratio",
    "ratio_to_P1",
    "of_p2",
    "P1_to_loopback",
    "P2_to_loopback",
    "P1_to_loopback_run",
    "P2_to_loopback_run",
    "P1_to_no_delay",
    "P2_to_no_delay",
)
LATENCY_KEYS = ("p99_ms",)
NOT_FIGURES = ("machine", "config", "details")


def _numbers(runs: list[dict[str, Any]], name: str, key: str) -> list[float]:
    values = []
    for run in runs:
        value = run.get(name, {}).get(key) if isinstance(run.get(name), dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            values.append(float(value))
    return values


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from N runs' results (each as bench.run_bench returns it)."""
    last = runs[-1]
    out: dict[str, Any] = {}
    for name, figure in last.items():
        if name in NOT_FIGURES or not isinstance(figure, dict):
            out[name] = figure
            continue
        figure = dict(figure)
        present = [k for k in RATIO_KEYS if k in figure]
        for key in present:
            values = _numbers(runs, name, key)
            if values:
                figure[f"{key}_min"] = round(min(values), 3)
                figure[f"{key}_median"] = round(statistics.median(values), 3)
                figure[f"{key}_runs"] = values
        if "ratio" not in figure and len(present) == 1 and f"{present[0]}_min" in figure:
            figure["ratio_min"] = figure[f"{present[0]}_min"]
            figure["ratio_median"] = figure[f"{present[0]}_median"]
        if name == "P4":
            for key in LATENCY_KEYS:
                values = _numbers(runs, name, key)
                if values:
                    figure[f"{key}_max"] = round(max(values), 3)
                    figure[f"{key}_median"] = round(statistics.median(values), 3)
        out[name] = figure
    out["runs"] = len(runs)
    config = dict(last.get("config", {}))
    config["elapsed_s"] = round(sum(r.get("config", {}).get("elapsed_s", 0.0) for r in runs), 1)
    config["runs_at"] = [r.get("config", {}).get("at") for r in runs]
    out["config"] = config
    details = dict(last.get("details", {}))
    details["repeat"] = [{k: v for k, v in r.items() if k != "details"} for r in runs]
    out["details"] = details
    return out
