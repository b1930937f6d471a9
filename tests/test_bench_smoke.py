"""The benchmark harness (`make bench`, tests/perf/) in its tiny mode, so that it cannot rot.

`bench.py --smoke` runs every scenario for about a second against real processes (the api,
workers, the SMTP sink, the WhatsApp sandbox) on the suite's Postgres and Redis (embedded, or
TEST_DATABASE_URL / TEST_REDIS_URL), where it makes a database of its own and picks a free
Redis db index, and must print the full JSON result. The figures of such a run mean nothing; that
every one of them is there, and positive, is what is checked. And the bench installs nothing
(no apt-get, no sudo) unless asked with BENCH_INSTALL=1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "tests" / "perf"
BENCH = PERF / "bench.py"
TIMEOUT_S = 300  # the run is bounded itself; this only guards against a hang


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


async def _run_smoke(out: Path, database_url: str, redis_url: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "DATABASE_URL", "REDIS_URL"))}
    # The suite's own servers (embedded, or TEST_DATABASE_URL / TEST_REDIS_URL): the bench
    # makes its own database there and takes a free Redis db index of its own.
    env |= {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    # Up to 4 workers beside the suite's own pools, on a server that allows 100 connections.
    env["DB_POOL_MAX_SIZE"] = "5"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--smoke",
        "--out",
        str(out),
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        # SIGTERM first: the driver then stops its processes and drops its database.
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        raise AssertionError(f"bench --smoke did not finish in {TIMEOUT_S} s") from None
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


async def test_bench_smoke(tmp_path: Path, admin_dsn: str, redis_url: str) -> None:
    code, stdout, stderr = await _run_smoke(tmp_path, admin_dsn, redis_url)
    assert code == 0, stderr[-6000:]
    lines = stdout.strip().splitlines()
    assert lines, stderr[-6000:]
    result = json.loads(lines[-1])  # the last stdout line is the one JSON object
    assert json.loads((tmp_path / "result.json").read_text())["P1"] == result["P1"]

    machine = result["machine"]
    assert _positive(machine["cores"])
    assert machine["python"].count(".") == 2
    assert machine["sink"] in ("smtp-sink", "aiosmtpd")

    units = {"P1": "triggers/s", "P2": "emails/s", "P3": "messages/s", "P7": "emails/s"}
    for name, unit in units.items():
        figure = result[name]
        assert figure["unit"] == unit
        for key in ("value", "ceiling", "ratio"):
            assert _positive(figure[key]), (name, key, figure)
        assert math.isclose(figure["ratio"], figure["value"] / figure["ceiling"], abs_tol=0.001)
    assert result["P2"]["workers"] == 2
    # P7 (P2 with DKIM on) beside the same ceiling and P2 of the same run.
    assert result["P7"]["ceiling"] == result["P2"]["ceiling"]
    assert result["P7"]["p2_value"] == result["P2"]["value"] and result["P7"]["dkim_key_bits"] == 2048

    # P1b: triggers through the batch route, beside P1 of the same run and its ceiling.
    p1b = result["P1b"]
    assert p1b["unit"] == "triggers/s" and p1b["batch_size"] == 100
    assert _positive(p1b["value"]) and p1b["p1_value"] == result["P1"]["value"]
    assert p1b["p1_ceiling"] == result["P1"]["ceiling"]
    assert math.isclose(p1b["of_p1"], p1b["value"] / p1b["p1_value"], abs_tol=0.001)

    for key in ("p50_ms", "p99_ms", "rate", "sink_ms"):
        assert _positive(result["P4"][key]), (key, result["P4"])
    assert result["P4"]["p50_ms"] <= result["P4"]["p99_ms"]

    p5 = result["P5"]
    assert _positive(p5["worker_rss_mb"]) and _positive(p5["api_rss_mb"]), p5
    # Growth may be zero or even negative over seconds; it must be a number.
    assert isinstance(p5["rss_growth_mb_per_min"], int | float) and math.isfinite(p5["rss_growth_mb_per_min"])

    p6 = result["P6"]["workers"]
    assert set(p6) == {"1", "2", "4"}
    assert all(_positive(v) for v in p6.values()), p6
    assert p6["2"] == result["P2"]["value"]

    # P8: the end-to-end ladder (api + 2 workers, open loop) beside P2's ceiling. On a busy
    # machine even the smoke's small rates may fail a step, so only the shape is checked.
    p8 = result["P8"]
    assert p8["unit"] == "messages/s" and p8["ceiling"] == result["P2"]["ceiling"] and p8["steps"] >= 1, p8
    assert math.isclose(p8["ratio"], p8["value"] / p8["ceiling"], abs_tol=0.001)
    details = json.loads((tmp_path / "result.json").read_text())["details"]
    for step in details["P8"]["steps"]:
        assert _positive(step["rate"]) and _positive(step["window_s"]), step
        assert step["accepted_per_s"] >= 0 and step["delivered_per_s"] >= 0 and step["backlog_end"] >= 0, step
        assert step["passed"] == (not step["why"]), step
    assert p8["value"] in [0.0, *(s["rate"] for s in details["P8"]["steps"] if s["passed"])]

    # P10 needs root, iproute2 and netem (or a C compiler for its delay relay): it says why not.
    p10 = result["P10"]
    if "skipped" not in p10:
        for key in ("P1_value", "P2_value", "P1_to_loopback", "P2_to_loopback", "rtt_measured_ms"):
            assert _positive(p10[key]), (key, p10)
        assert p10["rtt_ms"] == 1.0 and p10["delay_by"] in ("netem", "relay"), p10

    if importlib.util.find_spec("matplotlib") is not None:
        png = tmp_path / "bench.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "bench-p8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Run in a child so the bench's modules (imported by name from tests/perf) stay out of the suite.
_NO_INSTALL = """
import os, shutil, subprocess
import bench, tools

class Ran(Exception):
    pass

def refuse(*args, **kwargs):
    raise Ran(args)

subprocess.run = subprocess.call = subprocess.check_call = subprocess.check_output = subprocess.Popen = refuse
# apt-get and sudo are there, smtp-sink and wrk are missing: only `install` stands in the way.
shutil.which = lambda name, *args, **kwargs: None if name in ("smtp-sink", "wrk") else f"/usr/bin/{name}"
os.access = lambda *args, **kwargs: False
os.geteuid = lambda: 1000
assert tools.find_tools(python_tools=False, install=False) == (None, None)
try:
    tools.find_tools(python_tools=False, install=True)
except Ran:
    pass  # asked: it does try
else:
    raise AssertionError("with install=True the bench did not try apt-get")

os.environ.pop("BENCH_INSTALL", None)
assert not bench.parse_args([]).install
os.environ["BENCH_INSTALL"] = "1"
assert bench.parse_args([]).install
assert not bench.parse_args(["--smoke"]).install
print("ok")
"""


def test_bench_installs_nothing_unless_asked() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    done = subprocess.run(
        [sys.executable, "-c", _NO_INSTALL], cwd=PERF, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# `--repeat N`: each ratio's minimum and median over the runs (a child, as above).
_REPEAT = """
import bench, repeat

def run(p1, p2, p10):
    return {"machine": {}, "P1": {"value": 1.0, "ratio": p1}, "P2": {"ratio": p2},
            "P4": {"p99_ms": p2 * 10}, "P1b": {"ratio_to_P1": p1 * 10},
            "P10": {"P1_to_loopback": p10, "P2_to_loopback": p10 + 0.1},
            "config": {"elapsed_s": 1.0, "at": "t"}, "details": {"x": 1}}

out = repeat.combine([run(0.2, 0.4, 0.9), run(0.3, 0.3, 0.7), run(0.25, 0.5, 0.8)])
assert out["runs"] == 3
assert (out["P1"]["ratio_min"], out["P1"]["ratio_median"]) == (0.2, 0.25), out["P1"]
assert (out["P2"]["ratio_min"], out["P2"]["ratio_median"]) == (0.3, 0.4), out["P2"]
assert (out["P1b"]["ratio_min"], out["P1b"]["ratio_median"]) == (2.0, 2.5), out["P1b"]
assert (out["P10"]["P1_to_loopback_min"], out["P10"]["P2_to_loopback_min"]) == (0.7, 0.8), out["P10"]
assert out["P4"]["p99_ms_max"] == 5.0 and len(out["details"]["repeat"]) == 3
assert out["config"]["elapsed_s"] == 3.0
assert bench.parse_args(["--repeat", "3"]).repeat == 3 and bench.parse_args([]).repeat == 1
assert {"P1", "P2"} <= bench.parse_args(["--only", "P10"]).only
print("ok")
"""


def test_bench_repeat_reports_min_and_median() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    done = subprocess.run(
        [sys.executable, "-c", _REPEAT], cwd=PERF, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
