"""The bench's Python load generators, bounded in requests and in time, loopback only.

    closed: N connections each posting back to back (P1 and P1b when `wrk` is not installed)
    open:   requests fired at a fixed rate whatever the answers (P4, the soak); a request's
            latency counts from when it was due, so a stalled server cannot hide its queue
            (no coordinated omission)

    python tests/perf/loadgen.py open --url http://127.0.0.1:8080/orgs/O/broadcasts/B/send \\
        --key KEY --rate 100 --duration 15 --warmup 3 --sync

Prints one JSON object: requests and answers counted after the warm-up, `rps` (2xx answers
per second), latency percentiles in ms, the statuses seen, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from typing import Any

import aiohttp
import common
import orjson


def _bodies(background: bool, batch: int = 0) -> list[bytes]:
    if batch > 0:
        return [orjson.dumps(common.batch_body(i, batch)) for i in range(common.RECIPIENTS)]
    return [orjson.dumps(common.send_body(i, background=background)) for i in range(common.RECIPIENTS)]


class Tally:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.sent = 0

    def summary(self, duration_s: float) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        ok = sum(n for s, n in self.statuses.items() if s.startswith("2"))
        return {
            "requests": self.sent,
            "answered": len(lat),
            "ok": ok,
            "duration_s": round(duration_s, 3),
            "rps": round(ok / duration_s, 1) if duration_s > 0 else 0.0,
            "p50_ms": round(common.percentile(lat, 50), 3) if lat else None,
            "p90_ms": round(common.percentile(lat, 90), 3) if lat else None,
            "p99_ms": round(common.percentile(lat, 99), 3) if lat else None,
            "max_ms": round(lat[-1], 3) if lat else None,
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
        }


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, tally: Tally | None, started: float) -> None:
    if tally is not None:
        tally.sent += 1
    try:
        async with session.post(url, data=body) as resp:
            await resp.read()
            status = str(resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        if tally is not None:
            tally.errors[type(exc).__name__] += 1
        return
    if tally is not None:
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        tally.statuses[status] += 1


def _session(key: str, connections: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


async def closed_loop(
    url: str,
    key: str,
    *,
    connections: int,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
    background: bool,
    timeout_s: float,
    batch: int = 0,
) -> dict[str, Any]:
    bodies = _bodies(background, batch)
    async with _session(key, connections, timeout_s) as session:

        async def phase(seconds: float, tally: Tally | None) -> float:
            deadline = time.perf_counter() + seconds
            budget = [max_requests]

            async def one_connection(offset: int) -> None:
                i = offset
                while time.perf_counter() < deadline and budget[0] > 0:
                    budget[0] -= 1
                    i += connections
                    await _post(session, url, bodies[i % len(bodies)], tally, time.perf_counter())

            started = time.perf_counter()
            await asyncio.gather(*(one_connection(c) for c in range(connections)))
            return time.perf_counter() - started

        if warmup_s > 0:
            await phase(warmup_s, None)
        tally = Tally()
        elapsed = await phase(duration_s, tally)
    return tally.summary(elapsed)


async def open_loop(
    url: str,
    key: str,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    background: bool,
    timeout_s: float,
    max_in_flight: int,
) -> dict[str, Any]:
    bodies = _bodies(background)
    total = int(rate * (warmup_s + duration_s))
    first_measured = int(rate * warmup_s)
    tally = Tally()
    dropped = 0
    tasks: set[asyncio.Task[None]] = set()
    async with _session(key, max_in_flight, timeout_s) as session:
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= max_in_flight:
                dropped += 1  # the server is this far behind: counted, not queued without bound
                continue
            task = asyncio.create_task(
                _post(session, url, bodies[i % len(bodies)], tally if i >= first_measured else None, due)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks), timeout=timeout_s + 1)
        for task in list(tasks):
            task.cancel()
    out = tally.summary(duration_s)
    out["rate"] = rate
    out["dropped"] = dropped
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["closed", "open"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--connections", type=int, default=50, help="closed: concurrent connections")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="closed: a hard cap per phase")
    parser.add_argument("--rate", type=float, default=100.0, help="open: requests per second")
    parser.add_argument("--max-in-flight", type=int, default=1000, help="open: beyond this, requests are dropped")
    parser.add_argument("--sync", action="store_true", help="background: false (wait for delivery)")
    parser.add_argument("--timeout", type=float, default=15.0, help="per request")
    parser.add_argument("--batch", type=int, default=0, help="closed: post batches of this many triggers (P1b)")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = parser.parse_args()
    common.require_loopback(args.url)
    if args.mode == "closed":
        coro = closed_loop(
            args.url,
            args.key,
            connections=args.connections,
            duration_s=args.duration,
            warmup_s=args.warmup,
            max_requests=args.max_requests,
            background=not args.sync,
            timeout_s=args.timeout,
            batch=args.batch,
        )
    else:
        coro = open_loop(
            args.url,
            args.key,
            rate=args.rate,
            duration_s=args.duration,
            warmup_s=args.warmup,
            background=not args.sync,
            timeout_s=args.timeout,
            max_in_flight=args.max_in_flight,
        )
    result = common.run(coro, args.loop)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
