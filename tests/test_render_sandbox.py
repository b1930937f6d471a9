"""A template can never hang a worker: a real `tidings worker` delivers poisoned templates beside
healthy messages to the real SMTP server. Each poisoned one is `failed` with the reason and
sent zero times; the healthy ones are delivered; no message is taken back as if its worker had
died (one attempt each), since the worker's loop, and so its lease renewal, never stops.

Poisons: one the environment refuses by construction (a huge range fed to `sum`), one that
only the CPU limit stops (sorting 10,000 items 10,000 times), one that only the memory limit
stops (distinct strings collected in an array, whose namespace size Liquid counts shallowly).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiohttp.test_utils import TestClient

from shared.config import Settings
from shared.domain import Channel
from tests.conftest import Org
from tests.helpers import EMAIL_TEMPLATE, unique_email
from tests.procs import WorkerProcess
from worker import render, render_sandbox
from worker.channels.base import Draft

SETTLE_TIMEOUT_S = 60.0
HEALTHY = 30

_BIG = "{% assign big = 'x' %}" + "{% assign big = big | append: big %}" * 16  # 64 KiB
POISONS = {
    "huge range to a filter": ("{{ (1..400000000) | sum }}", "filter sum"),
    "CPU: sort in a loop": (
        "{% for i in (1..9999) %}{% assign t = (1..9999) | sort | reverse | join: ',' %}{% endfor %}{{ t | size }}",
        "s of CPU",
    ),
    "memory: an array of distinct strings": (
        _BIG
        + "{% assign arr = '' | split: ',' %}{% for i in (1..9999) %}{% assign one = big"
        + " | append: big" * 13
        + " | append: i | split: '|' %}{% assign arr = arr | concat: one %}{% endfor %}{{ arr | size }}",
        "MB of memory",
    ),
}


class ChildWatch:
    """Samples the worker's render processes every 10 ms: CPU time and peak memory of each."""

    def __init__(self, pid: int) -> None:
        self.parent = psutil.Process(pid)
        self.seen: dict[int, dict[str, float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for child in self.parent.children():
                with contextlib.suppress(psutil.Error):
                    cpu = child.cpu_times()
                    rss = child.memory_info().rss
                    stat = self.seen.setdefault(child.pid, {"cpu_s": 0.0, "peak_mb": 0.0})
                    stat["cpu_s"] = max(stat["cpu_s"], cpu.user + cpu.system)
                    stat["peak_mb"] = max(stat["peak_mb"], rss / 2**20)
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def ended(self) -> dict[int, dict[str, float]]:
        alive = {c.pid for c in self.parent.children()}
        return {pid: stat for pid, stat in self.seen.items() if pid not in alive}


async def _send(client: TestClient[Any, Any], org: Org, to: str, body: str) -> uuid.UUID:
    r = await client.post(
        "/api/v1/transactionals.json", headers=org.auth("write"), json={"to": to, "subject": "hello", "body": body}
    )
    assert r.status == 201, await r.text()
    return uuid.UUID((await r.json())["id"])


async def test_poisoned_templates_fail_alone_and_are_never_sent(
    settings: Settings, client: TestClient[Any, Any], pool: asyncpg.Pool, smtp_server: Any, org: Org, tmp_path: Path
) -> None:
    # A short lease: a worker whose loop stalled would have its messages reclaimed within seconds.
    worker = WorkerProcess(settings.replace(lease_s=3.0), tmp_path / "worker.log")
    await worker.start()
    assert worker.proc is not None
    watch = ChildWatch(worker.proc.pid)
    watch.start()
    try:
        poisoned: dict[uuid.UUID, tuple[str, str, str]] = {}
        healthy: dict[uuid.UUID, str] = {}
        per_poison = HEALTHY // len(POISONS)
        started = time.perf_counter()
        for name, (source, reason) in POISONS.items():
            to = unique_email("poison")
            poisoned[await _send(client, org, to, f"<p>{source}</p>")] = (name, reason, to)
            for _ in range(per_poison):
                to = unique_email("healthy")
                healthy[await _send(client, org, to, "<p>Hello {{ email }}</p>")] = to

        ids = list(poisoned) + list(healthy)
        rows: list[asyncpg.Record] = []
        deadline = time.perf_counter() + SETTLE_TIMEOUT_S
        while time.perf_counter() < deadline:
            rows = await pool.fetch("SELECT id, status, error, attempts FROM messages WHERE id = ANY($1)", ids)
            if all(r["status"] in ("sent", "failed") for r in rows):
                break
            await asyncio.sleep(0.1)
        took = time.perf_counter() - started
        by_id = {r["id"]: r for r in rows}
        assert all(r["status"] in ("sent", "failed") for r in rows), [dict(r) for r in rows]

        received = {rcpt for m in smtp_server.messages for rcpt in m.rcpt_tos}
        for message_id, (name, reason, to) in poisoned.items():
            row = by_id[message_id]
            print(f"poisoned {name:40s} -> {row['status']}: {row['error'][:90]!r}")
            assert row["status"] == "failed", (name, dict(row))
            assert reason in row["error"], (name, row["error"])
            assert row["attempts"] == 1, (name, "reclaimed as if its worker had died")
            assert to not in received, (name, "sent")
        for message_id, to in healthy.items():
            assert by_id[message_id]["status"] == "sent", dict(by_id[message_id])
            assert by_id[message_id]["attempts"] == 1
            assert to in received
        assert worker.proc.returncode is None, "the worker survived"

        ended = watch.ended()
        for pid, stat in sorted(ended.items()):
            print(f"render process {pid} stopped: CPU {stat['cpu_s']:.2f} s, peak memory {stat['peak_mb']:.0f} MB")
        # The CPU and memory poisons each ended one render process; the range was refused inside one.
        # (The figures are sampled every 10 ms: a loaded machine may miss a short-lived process.)
        assert len(ended) <= 2, ended
        if not ended:
            print("render processes ended between samples: no CPU/memory figures this run")
        assert all(s["cpu_s"] <= render_sandbox.CPU_LIMIT_S + 1.0 for s in ended.values()), ended
        print(
            f"{len(poisoned)} poisoned and {len(healthy)} healthy messages settled in {took:.1f} s;"
            f" limits: {render_sandbox.CPU_LIMIT_S:g} s CPU, {render_sandbox.MEMORY_LIMIT_MB} MB per message"
        )
    finally:
        await watch.stop()
        await worker.stop()


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def test_render_cost_per_message() -> None:
    """What the sandbox costs per message: 10,000 renders in the process, then through the pool
    (200 in flight, as a worker's pump has them). Prints the figures. The pool renders a
    template bounded by construction in the worker itself; the one measured here has a tag,
    so it goes through the children."""
    body = {k: v for k, v in EMAIL_TEMPLATE.items() if k != "channel"}
    assert render.bounded_by_construction(Channel.email, body)
    body = {**body, "html_body": body["html_body"] + "{% if otp %}{% endif %}"}
    assert not render.bounded_by_construction(Channel.email, body)
    n = 10_000

    def data(i: int) -> dict[str, str]:
        return {"name": f"n{i}", "otp": f"{i:06d}"}

    for i in range(100):  # warm the parse caches
        render.render_email(uuid.uuid4(), body, data(i), to="b@tidings.test", fallback_domain="tidings.test")
    wall, cpu = time.perf_counter(), _cpu_s(resource.RUSAGE_SELF)
    for i in range(n):
        render.render_email(uuid.uuid4(), body, data(i), to="b@tidings.test", fallback_domain="tidings.test")
    before_wall_us = (time.perf_counter() - wall) / n * 1e6
    before_cpu_us = (_cpu_s(resource.RUSAGE_SELF) - cpu) / n * 1e6

    pool = render_sandbox.RenderPool()
    children_cpu = _cpu_s(resource.RUSAGE_CHILDREN)
    try:

        async def one(i: int) -> Any:
            draft = Draft(uuid.uuid4(), body, data(i), "b@tidings.test")
            return await pool.render(Channel.email, draft, fallback_domain="tidings.test")

        await asyncio.gather(*(one(i) for i in range(200)))  # started, caches warm
        wall, cpu = time.perf_counter(), _cpu_s(resource.RUSAGE_SELF)
        for start in range(0, n, 200):
            rendered = await asyncio.gather(*(one(i) for i in range(start, start + 200)))
            assert rendered[-1].subject == f"Your code is {start + 199:06d}"
        after_wall_us = (time.perf_counter() - wall) / n * 1e6
        after_cpu_us = (_cpu_s(resource.RUSAGE_SELF) - cpu) / n * 1e6
    finally:
        await pool.close()
    # Reaped children only: includes their start-up and the warm-up renders (an upper bound).
    child_cpu_us = (_cpu_s(resource.RUSAGE_CHILDREN) - children_cpu) / n * 1e6
    print(
        f"in the worker: {before_wall_us:.0f} us wall, {before_cpu_us:.0f} us CPU per message;"
        f" sandboxed: {after_wall_us:.0f} us wall, {after_cpu_us:.0f} us CPU in the worker"
        f" + at most {child_cpu_us:.0f} us in its render processes per message"
    )
