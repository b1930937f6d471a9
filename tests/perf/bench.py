"""`make bench`: the project's performance scenarios P1-P10 (P7: P2 with DKIM on; P8: end to
end; P10: Postgres behind a 1 ms round trip), each beside a ceiling measured in the same run on
this machine. This file reads the command line and runs
the scenarios in order; harness.py starts the services and processes, scenarios.py holds one
function per scenario, report.py builds the result (tests/perf/README.md has the whole map).

    .venv/bin/python tests/perf/bench.py            # the full run (`make bench`)
    .venv/bin/python tests/perf/bench.py --smoke    # seconds, for the test suite
    .venv/bin/python tests/perf/bench.py --soak     # adds a 5-minute RSS soak
    .venv/bin/python tests/perf/bench.py --repeat 3 # three runs: each ratio's min and median

It starts what it needs as `tidings dev` does: Postgres and Redis from DATABASE_URL /
REDIS_URL, else embedded servers kept under tests/perf/out/data; fresh databases for the
run (a template, and a copy of it per scenario, all dropped) and, on a Redis of your own, a
free db index (flushed before each scenario and at the end);
the SMTP sink (Postfix's `smtp-sink`, else aiosmtpd), the WhatsApp sandbox, and `tidings
api` / `tidings worker` as subprocesses. Everything listens on 127.0.0.1 and every load is
bounded in requests and in time. Ctrl-C stops and removes everything.

The last stdout line is one JSON object (also in out/result.json); out/bench.png plots it.
Knobs (environment): BENCH_DURATION_S (15), BENCH_WARMUP_S (5), BENCH_BACKLOG (80000),
BENCH_CONNECTIONS (50), BENCH_THREADS (2), BENCH_P4_RATE (100), BENCH_P6_WORKERS (1,2,4),
BENCH_SOAK_S (300), BENCH_SOAK_RATE (200), BENCH_OUT_DIR, BENCH_DATA_DIR, BENCH_INSTALL (0: never
runs apt-get or sudo; 1 installs smtp-sink, wrk and iproute2 when missing), BENCH_REPEAT (1),
BENCH_P8_RATES, BENCH_P8_STEP_S (10), BENCH_P8_WARMUP_S (3), BENCH_P10_BASELINE (1),
BENCH_P10_BESIDE (1).
Service settings (WORKER_CONCURRENCY, SMTP_POOL_SIZE, DB_POOL_MAX_SIZE, LOG_LEVEL...) pass
through to the api and worker processes unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import common
import endtoend
import netns
import repeat
import report
import scenarios
from common import log
from harness import Config, Harness

ALL = "P1,P1b,P2,P3,P4,P5,P6,P7,P8,P10"
T = TypeVar("T")


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny scenarios (seconds), no installs")
    parser.add_argument("--soak", action="store_true", help="add a BENCH_SOAK_S (300 s) RSS soak")
    parser.add_argument("--python-tools", action="store_true", help="aiosmtpd sink and Python load generator")
    parser.add_argument("--out", help="output folder (BENCH_OUT_DIR, default tests/perf/out)")
    parser.add_argument(
        "--only",
        help="a comma list of scenarios to run, e.g. P1,P1b or P2,P7 (BENCH_ONLY; default all: P1, P1b, P2-P10)",
    )
    parser.add_argument(
        "--repeat", type=int, help="run the whole set N times; ratios get _min and _median (BENCH_REPEAT, default 1)"
    )
    args = parser.parse_args(argv)
    env = os.environ

    def num(name: str, default: float, smoke: float) -> float:
        raw = env.get(name)
        return float(raw) if raw else (smoke if args.smoke else default)

    out_dir = Path(args.out or env.get("BENCH_OUT_DIR") or common.HERE / "out").resolve()
    data_dir = env.get("BENCH_DATA_DIR")
    workers = env.get("BENCH_P6_WORKERS") or "1,2,4"
    only = {p.strip().upper() for p in (args.only or env.get("BENCH_ONLY") or ALL).split(",") if p.strip()}
    if not only <= {p.upper() for p in ALL.split(",")}:
        parser.error(f"--only takes scenarios among {ALL}")
    if "P10" in only:  # P10 is a ratio to the loopback P1 and P2 of the same run
        only |= {"P1", "P2"}
    repeats = args.repeat if args.repeat is not None else int(env.get("BENCH_REPEAT") or 1)
    if repeats < 1:
        parser.error("--repeat takes a count of at least 1")
    return Config(
        smoke=args.smoke,
        soak=args.soak,
        duration_s=num("BENCH_DURATION_S", 15, 1),
        warmup_s=num("BENCH_WARMUP_S", 5, 0.5),
        backlog=int(num("BENCH_BACKLOG", 80_000, 100)),
        connections=int(num("BENCH_CONNECTIONS", 50, 50)),
        threads=int(num("BENCH_THREADS", 2, 2)),
        p4_rate=num("BENCH_P4_RATE", 100, 100),
        # P2 is P6's 2-worker run; without P6 only that one runs.
        p6_workers=sorted({int(w) for w in workers.split(",") if w.strip()} | {2}) if "P6" in only else [2],
        soak_s=num("BENCH_SOAK_S", 300, 10),
        soak_rate=num("BENCH_SOAK_RATE", 200, 50),
        out_dir=out_dir,
        # Embedded servers keep their data here; the smoke run gets a temp folder.
        data_dir=Path(data_dir).resolve() if data_dir else (None if args.smoke else out_dir / "data"),
        python_tools=args.python_tools,
        # Installing packages (apt-get, maybe through sudo) only when asked: BENCH_INSTALL=1.
        install=not args.smoke and env.get("BENCH_INSTALL", "0") == "1",
        database_url=env.get("DATABASE_URL", ""),
        redis_url=env.get("REDIS_URL", ""),
        # Ceilings take the best of both loops; the smoke run only tries uvloop.
        loops=["uvloop"] if args.smoke else ["asyncio", "uvloop"],
        only=only,
        repeat=repeats,
    )


async def run_bench(cfg: Config) -> dict[str, Any]:
    """Start the harness, run the chosen scenarios in a fixed order, and build the result."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    # Nothing under out/ belongs in git: results, logs, embedded data.
    (cfg.out_dir / ".gitignore").write_text("*\n")
    started = time.monotonic()
    only = cfg.only
    figures: dict[str, Any] = {}
    timings: dict[str, float] = {}

    async def timed(name: str, coro: Awaitable[T]) -> T:
        t0 = time.monotonic()
        try:
            return await coro
        finally:
            timings[name] = round(time.monotonic() - t0, 1)

    async with contextlib.AsyncExitStack() as stack:
        h = Harness(cfg, stack)
        await timed("start", h.start())
        p2_run: dict[str, Any] = {}  # P2's raw run: P5 reads the workers' RSS from it
        if only & {"P1", "P5"}:
            figures["P1"] = await timed("P1", scenarios.p1(h))
        if "P1B" in only:
            figures["P1b"] = await timed("P1b", scenarios.p1b(h, figures.get("P1")))
        if "P4" in only:
            figures["P4"] = await timed("P4", scenarios.p4(h))
        soak = await timed("soak", scenarios.soak(h)) if cfg.soak else None
        if only & {"P2", "P5", "P6"}:
            p2, p6, p2_run = await timed("P2+P6", scenarios.p2_p6(h))
            figures["P2"] = p2
            if "P6" in only:
                figures["P6"] = p6
        if "P7" in only:
            figures["P7"] = await timed("P7", scenarios.p7(h, figures.get("P2")))
        if "P3" in only:
            figures["P3"] = await timed("P3", scenarios.p3(h))
        if "P8" in only:
            p8_ceiling, _ = await scenarios.p2_ceiling(h)
            figures["P8"] = await timed("P8", endtoend.p8(h, p8_ceiling))
        if "P10" in only:
            figures["P10"] = await timed("P10", netns.p10(h, figures.get("P1"), figures.get("P2")))
    # After the clean-up: the elapsed time includes it.
    elapsed_s = round(time.monotonic() - started, 1)
    return report.result(h, figures, p2_run=p2_run, soak=soak, timings=timings, elapsed_s=elapsed_s)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    from shared import logs

    logs.configure("WARNING", "console")

    async def amain() -> dict[str, Any] | None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        interrupted: list[str] = []

        def on_signal(name: str) -> None:
            if interrupted:
                log("already stopping; cleaning up")
                return
            interrupted.append(name)
            log(f"{name}: stopping and cleaning up")
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        try:
            return await run_bench(cfg)
        except asyncio.CancelledError:
            if interrupted:
                return None
            raise

    runs = []
    for n in range(cfg.repeat):
        if cfg.repeat > 1:
            log(f"run {n + 1} of {cfg.repeat}")
        one = common.run(amain())
        if one is None:
            return 130
        runs.append(one)
    result = repeat.combine(runs) if len(runs) > 1 else runs[0]
    report.write_outputs(cfg, result)
    print(report.summary_line(result), flush=True)  # the last line on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
