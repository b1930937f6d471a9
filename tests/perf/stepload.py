"""P8's load generator: open-loop arrivals on a clock (as `loadgen.py open`), stepped up in rate.

    python tests/perf/stepload.py --url http://127.0.0.1:8080/orgs/O/broadcasts/B/send \\
        --key KEY --rates 250,500,750 --step 10 --warmup 3

Each step fires `background: true` triggers at its rate for `warmup + step` seconds; a
request is due at a fixed time whatever the answers, and its latency counts from then. The
steps follow each other without a pause, so a backlog left by one step is still there in the
next (what a real service would see). It prints one JSON line when a step's measured window
starts (`{"event": "window", ...}`: the driver then reads the database and the CPU) and one
when it ends (`{"event": "step", ...}` with what the generator saw: answers, latency of the
202, errors, requests it dropped because too many were in flight). The driver stops it (any
signal) when a step fails; otherwise it ends after the last step. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import common
import loadgen
import orjson


def emit(event: dict[str, Any]) -> None:
    print(orjson.dumps(event).decode(), flush=True)


async def steps(
    url: str, key: str, *, rates: list[float], step_s: float, warmup_s: float, timeout_s: float, max_in_flight: int
) -> None:
    bodies = loadgen._bodies(background=True)
    tasks: set[asyncio.Task[None]] = set()
    i = 0  # cycles through the recipients across steps
    async with loadgen._session(key, max_in_flight, timeout_s) as session:
        for n, rate in enumerate(rates):
            tally = loadgen.Tally()
            dropped = 0
            t0 = time.perf_counter()
            first_measured = int(rate * warmup_s)
            total = first_measured + int(rate * step_s)
            for k in range(total):
                due = t0 + k / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if k == first_measured:
                    emit({"event": "window", "step": n, "rate": rate, "at": time.time()})
                if len(tasks) >= max_in_flight:
                    dropped += k >= first_measured  # counted, not queued without bound
                    continue
                measured = tally if k >= first_measured else None
                task = asyncio.create_task(loadgen._post(session, url, bodies[i % len(bodies)], measured, due))
                i += 1
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            # The window ends when the last request is due, not when it is answered.
            end = t0 + total / rate
            if (delay := end - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            summary = tally.summary(step_s)
            emit({"event": "step", "step": n, "rate": rate, "at": time.time(), "dropped": dropped, **summary})
        if tasks:
            await asyncio.wait(set(tasks), timeout=timeout_s + 1)
    emit({"event": "done"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--rates", required=True, help="comma list of requests per second, one per step")
    parser.add_argument("--step", type=float, required=True, help="each step's measured window, seconds")
    parser.add_argument("--warmup", type=float, default=0.0, help="each step's unmeasured start, seconds")
    parser.add_argument("--max-in-flight", type=int, default=1000, help="beyond this, requests are dropped")
    parser.add_argument("--timeout", type=float, default=15.0, help="per request")
    args = parser.parse_args()
    common.require_loopback(args.url)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or min(rates) <= 0:
        raise SystemExit("--rates takes positive rates")
    common.run(
        steps(
            args.url,
            args.key,
            rates=rates,
            step_s=args.step,
            warmup_s=args.warmup,
            timeout_s=args.timeout,
            max_in_flight=args.max_in_flight,
        )
    )


if __name__ == "__main__":
    main()
