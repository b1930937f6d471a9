"""What the bench measures beside the rates: the RSS of some processes over time, and the
CPU each role (api, worker, Postgres, sink, load generator, everyone else) used in a window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import common


class RssSampler:
    """Samples the RSS (MB) of some processes every `interval_s`, in the background."""

    def __init__(self, pids: Sequence[int], interval_s: float = 0.5) -> None:
        import psutil

        self._procs = {pid: psutil.Process(pid) for pid in pids}
        self.samples: dict[int, list[tuple[float, float]]] = {pid: [] for pid in pids}
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        import psutil

        now = time.monotonic()
        for pid, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                self.samples[pid].append((now, proc.memory_info().rss / 2**20))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sample()

    def peak_mb(self) -> float:
        return max((mb for s in self.samples.values() for _, mb in s), default=0.0)

    def growth_mb_per_min(self, since: float) -> float:
        """The steepest least-squares RSS slope of any sampled process after `since`."""
        slopes = [common.slope_per_min([(t, mb) for t, mb in s if t >= since]) for s in self.samples.values()]
        return max(slopes, default=0.0)


# The bench's own Postgres server, once known (its postmaster's pid, Harness.scenario_database):
# its processes count as `postgres`, any other server's on the machine (someone's test suite)
# as `postgres (other)`, so that Postgres CPU per message is the service's own.
bench_postmaster_pid: int | None = None


async def wal_bytes(pool: Any) -> int:
    """The server's WAL position in bytes: two readings apart, the WAL written in between
    (by every database of the server: the bench's own server holds only the scenario's)."""
    return int(await pool.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))


class DbCost:
    """WAL bytes and Postgres CPU per message over a window: `start()` and `stop()` read the
    WAL position and a count of messages (`count_sql`: what the window produces, e.g. rows
    written or messages sent), and `per_message(cpu_cores)` divides the differences."""

    def __init__(self, pool: Any, count_sql: str) -> None:
        self.pool, self.count_sql = pool, count_sql
        self._wal0 = self._n0 = 0
        self._t0 = self.elapsed_s = 0.0
        self.wal = self.messages = self.records = self.fpi = 0
        self._records0 = self._fpi0 = 0

    async def _wal_stats(self) -> tuple[int, int]:
        """WAL records and full-page images written so far (pg_stat_wal, the whole server; a
        backend reports its counts within a second or so, so short windows blur)."""
        row = await self.pool.fetchrow("SELECT wal_records, wal_fpi FROM pg_stat_wal")
        return int(row["wal_records"]), int(row["wal_fpi"])

    async def start(self) -> None:
        self._wal0, self._n0 = await wal_bytes(self.pool), int(await self.pool.fetchval(self.count_sql))
        self._records0, self._fpi0 = await self._wal_stats()
        self._t0 = time.monotonic()

    async def stop(self) -> None:
        self.elapsed_s = time.monotonic() - self._t0
        self.wal = await wal_bytes(self.pool) - self._wal0
        self.messages = int(await self.pool.fetchval(self.count_sql)) - self._n0
        records, fpi = await self._wal_stats()
        self.records, self.fpi = records - self._records0, fpi - self._fpi0

    def per_message(self, cpu_cores: dict[str, float]) -> dict[str, Any]:
        if self.messages <= 0:
            return {"messages": 0}
        pg_cores = cpu_cores.get("postgres", 0.0)
        return {
            "messages": self.messages,
            "wal_bytes_per_message": round(self.wal / self.messages),
            # Records and full-page images (the first change of a page after a checkpoint
            # writes the whole 8 kB page: how much of the WAL is that, not the rows).
            "wal_records_per_message": round(self.records / self.messages, 2),
            "wal_fpi_per_message": round(self.fpi / self.messages, 3),
            "postgres_cpu_ms_per_message": round(pg_cores * self.elapsed_s * 1000 / self.messages, 3),
        }


class CpuMeter:
    """CPU used per role between `start()` and `stop()`, in cores (1.0 = one core busy).

    Every process on the machine is read. The bench's own descendants are named by what
    they run (api, worker, sink, load generator...), Postgres and Redis by name, and the
    rest is `other`: on a shared machine, someone else's load shows there. Processes that
    exit within the window are missed, except the bench's own children that it waited for
    (the load generator, a ceiling client): those count whole, start-up included, as
    `exited children`. Ones that start within the window count whole.
    """

    ROLES = (
        ("tidings.cli api", "api"),
        ("tidings.cli worker", "worker"),
        ("loadgen.py", "load generator"),
        ("stepload.py", "load generator"),
        ("ceilings.py", "ceiling client"),
        ("bare_api.py", "bare api"),
        ("sinks.py smtp", "sink"),
        ("sinks.py whatsapp", "sandbox"),
        ("smtp-sink", "sink"),
        ("wrk", "load generator"),
    )

    def __init__(self) -> None:
        self._start: dict[int, float] = {}
        self._t0 = 0.0
        self._reaped0 = 0.0

    def _role(self, name: str, cmdline: list[str] | None, ours: bool, pid: int = 0, ppid: int = 0) -> str:
        if name.startswith("postgres") or name == "postmaster":
            if bench_postmaster_pid is None or bench_postmaster_pid in (pid, ppid):
                return "postgres"
            return "postgres (other)"
        if name.startswith("redis-server"):
            return "redis"
        if ours:
            joined = " ".join(cmdline or [])
            for needle, role in self.ROLES:
                if needle in joined:
                    return role
            return "bench"
        return "other"

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        import psutil

        me = psutil.Process()
        ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
        out = {}
        for proc in psutil.process_iter(["name", "cpu_times", "cmdline", "ppid"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            role = self._role(
                proc.info["name"] or "", proc.info["cmdline"], proc.pid in ours, proc.pid, proc.info["ppid"] or 0
            )
            out[proc.pid] = (role, times.user + times.system)
        return out

    @staticmethod
    def _reaped() -> float:
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._start = {pid: cpu for pid, (_, cpu) in self._snapshot().items()}
        self._reaped0 = self._reaped()
        return self

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t0
        used: dict[str, float] = {"exited children": self._reaped() - self._reaped0}
        for pid, (role, cpu) in self._snapshot().items():
            used[role] = used.get(role, 0.0) + cpu - self._start.get(pid, 0.0)
        if elapsed <= 0:
            return {}
        cores = {role: round(seconds / elapsed, 2) for role, seconds in used.items() if seconds / elapsed >= 0.01}
        return dict(sorted(cores.items(), key=lambda kv: -kv[1]))
