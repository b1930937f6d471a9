"""`make bench`: the performance scenarios P1-P6 of ../shared/spec/performance.md, and P7 (P2
with DKIM on), each beside a ceiling measured in the same run on this machine.

    .venv/bin/python tests/perf/bench.py            # the full run (`make bench`)
    .venv/bin/python tests/perf/bench.py --smoke    # seconds, for the test suite
    .venv/bin/python tests/perf/bench.py --soak     # adds a 5-minute RSS soak

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
runs apt-get or sudo; 1 installs smtp-sink and wrk when missing).
Service settings (WORKER_CONCURRENCY, SMTP_POOL_SIZE, DB_POOL_MAX_SIZE, LOG_LEVEL...) pass
through to the api and worker processes unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import common

REPO = common.HERE.parents[1]
MAX_RPS = 100_000  # the request cap of a load phase is this times its duration
START_TIMEOUT_S = 90.0  # a server or the first delivery must come within this
WA_CONNECTIONS_PER_WORKER = 100  # worker/channels/whatsapp.py's connection limit
ALL = "P1,P2,P3,P4,P5,P6,P7"
DKIM_KEY_BITS = 2048  # P7's key: what Gmail and Yahoo expect of a bulk sender
DKIM_SELECTOR = "bench"
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class Config:
    smoke: bool
    soak: bool
    duration_s: float
    warmup_s: float
    backlog: int
    connections: int
    threads: int
    p4_rate: float
    p6_workers: list[int]
    soak_s: float
    soak_rate: float
    out_dir: Path
    data_dir: Path | None
    python_tools: bool
    install: bool
    database_url: str
    redis_url: str
    loops: list[str]
    only: set[str]

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> Config:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--smoke", action="store_true", help="tiny scenarios (seconds), no installs")
        parser.add_argument("--soak", action="store_true", help="add a BENCH_SOAK_S (300 s) RSS soak")
        parser.add_argument("--python-tools", action="store_true", help="aiosmtpd sink and Python load generator")
        parser.add_argument("--out", help="output folder (BENCH_OUT_DIR, default tests/perf/out)")
        parser.add_argument(
            "--only", help="a comma list of scenarios to run, e.g. P1,P4 or P2,P7 (BENCH_ONLY; default all: P1-P7)"
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
        if not only <= set(ALL.split(",")):
            parser.error(f"--only takes scenarios among {ALL}")
        return cls(
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
        )


# --------------------------------------------------------------------------------------
# Tools: smtp-sink and wrk from Debian's packages, else Python stand-ins


def _find_smtp_sink() -> str | None:
    found = shutil.which("smtp-sink")
    if found:
        return found
    return "/usr/sbin/smtp-sink" if os.access("/usr/sbin/smtp-sink", os.X_OK) else None


def _apt_install(packages: list[str]) -> None:
    if not shutil.which("apt-get"):
        log(f"warning: apt-get is not available; cannot install {', '.join(packages)}")
        return
    sudo: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            log(f"warning: not root and no sudo; cannot install {', '.join(packages)}")
            return
        sudo = ["sudo", "-n"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {', '.join(packages)} with apt-get (BENCH_INSTALL=1)")
    try:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=True, timeout=600)
        if "postfix" in packages:
            # "No configuration": the package only brings its programs (smtp-sink); no mail server starts.
            subprocess.run(
                [*sudo, "debconf-set-selections"],
                input=b"postfix postfix/main_mailer_type select No configuration\n",
                check=True,
                timeout=60,
            )
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], env=env, check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"warning: installing {', '.join(packages)} failed ({exc}); falling back to Python tools")


def find_tools(cfg: Config) -> tuple[str | None, str | None]:
    """(smtp-sink path, wrk path); None where the Python stand-in is used."""
    if cfg.python_tools:
        return None, None
    sink, wrk = _find_smtp_sink(), shutil.which("wrk")
    missing = [pkg for pkg, found in (("postfix", sink), ("wrk", wrk)) if not found]
    if missing and cfg.install:
        _apt_install(missing)
        sink, wrk = _find_smtp_sink(), shutil.which("wrk")
    if missing and not cfg.install:
        log(f"note: {', '.join(missing)} not installed (BENCH_INSTALL=1 installs them with apt-get)")
    if sink is None:
        log("warning: no smtp-sink; using an aiosmtpd sink, which may itself limit P2")
    if wrk is None:
        log("warning: no wrk; using the Python load generator, which may itself limit P1")
    return sink, wrk


# --------------------------------------------------------------------------------------
# RSS sampling


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

    def _role(self, name: str, cmdline: list[str] | None, ours: bool) -> str:
        if name.startswith("postgres") or name == "postmaster":
            return "postgres"
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
        for proc in psutil.process_iter(["name", "cpu_times", "cmdline"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            role = self._role(proc.info["name"] or "", proc.info["cmdline"], proc.pid in ours)
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


# --------------------------------------------------------------------------------------
# The run


class Bench:
    """The services, the processes and the scenarios of one run.

    Databases: one template database is made at start (migrated; the bench org, its key and
    one active broadcast per scenario, made through the api), and every scenario runs on a
    fresh copy of it that is dropped when the scenario ends. So no scenario sees another's
    rows, dead tuples or vacuum, and a run of some scenarios (`--only`) measures them as a
    full run does. Redis: one db index of our own, flushed before each scenario.
    """

    def __init__(self, cfg: Config, stack: contextlib.AsyncExitStack) -> None:
        self.cfg = cfg
        self.stack = stack
        self.logs = cfg.out_dir / "logs"
        self.run_id = uuid.uuid4().hex[:10]
        self.template = f"tidings_bench_{self.run_id}"
        self.queue = f"bench:{self.run_id}:queue"
        self.details: dict[str, Any] = {}
        self.sink_name = "smtp-sink"
        self.loadgen_name = "wrk"
        self.smtp_sink: str | None = None
        self.wrk: str | None = None
        # Distinct messages a ceiling client renders before its clock starts.
        self.distinct = 20 if cfg.smoke else 500
        # Filled in by start():
        self.server_dsn = ""
        self.pool: Any = None  # the current scenario's database
        self.redis: Any = None  # the driver's arq pool (also a plain Redis client)
        self.redis_lock = ""  # our claim on a shared Redis's db index
        self.child_env: dict[str, str] = {}
        self.api: common.Child | None = None
        self.api_port = 0
        self.smtp_port = 0
        self.sandbox: common.Child | None = None
        self.wa_url = ""
        self.org_id: uuid.UUID | None = None
        self.key = ""
        self.broadcasts: dict[str, uuid.UUID] = {}
        # P2's ceiling, measured once and shared by P2 and P7: (emails/s, runs).
        self.smtp_ceiling: tuple[float, dict[str, Any]] | None = None

    # -- start-up ----------------------------------------------------------------------

    async def start(self) -> None:
        if self.logs.exists():
            shutil.rmtree(self.logs)
        self.logs.mkdir(parents=True)
        self.smtp_sink, self.wrk = find_tools(self.cfg)
        self.sink_name = "smtp-sink" if self.smtp_sink else "aiosmtpd"
        self.loadgen_name = "wrk" if self.wrk else "python"

        self.server_dsn, redis_url = await self._servers()
        # The far ends start while the template is made; they are waited for at the end.
        far_ends = await self._spawn_far_ends()
        self.api_port = common.free_port()
        self.child_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "REDIS_", "SMTP_HOST", "SMTP_PORT", "SMTP_TLS", "WHATSAPP_API"))
        } | {
            "REDIS_URL": redis_url,
            "QUEUE_NAME": self.queue,
            "REDIS_PREFIX": f"bench:{self.run_id}:",
            "HOST": common.LOOPBACK,
            "PORT": str(self.api_port),
            "PUBLIC_BASE_URL": f"http://{common.LOOPBACK}:{self.api_port}",
            "SMTP_HOST": common.LOOPBACK,
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_TLS": "none",
            "SMTP_USERNAME": "",
            "SMTP_PASSWORD": "",
            "WHATSAPP_API_BASE_URL": self.wa_url,
            "WHATSAPP_ACCESS_TOKEN": common.WA_ACCESS_TOKEN,
            "WHATSAPP_PHONE_NUMBER_ID": common.WA_PHONE_NUMBER_ID,
        }

        from arq import create_pool as create_arq_pool
        from arq.connections import RedisSettings

        self.redis = await create_arq_pool(RedisSettings.from_dsn(redis_url), default_queue_name=self.queue)
        self.stack.push_async_callback(self.redis.aclose)
        await self._template()
        for port, child in far_ends:
            await common.wait_port(port, START_TIMEOUT_S, child.proc)

    async def _servers(self) -> tuple[str, str]:
        """The Postgres server's DSN and our Redis URL: from the environment, else embedded."""
        cfg = self.cfg
        from tidings.dev.embedded import EmbeddedPostgres, EmbeddedRedis

        data_dir = cfg.data_dir
        if data_dir is None and not (cfg.database_url and cfg.redis_url):
            import tempfile

            tmp = tempfile.TemporaryDirectory(prefix="tidings-bench-")
            self.stack.callback(tmp.cleanup)
            data_dir = Path(tmp.name)
        server_dsn = cfg.database_url
        if not server_dsn:
            assert data_dir is not None
            log(f"starting an embedded Postgres in {data_dir / 'postgres'}")
            pg = EmbeddedPostgres(data_dir / "postgres")
            self.stack.push_async_callback(pg.stop)
            server_dsn = await pg.start()
        if cfg.redis_url:
            redis_url = await self._free_redis_db(cfg.redis_url)
        else:
            assert data_dir is not None
            server = EmbeddedRedis(data_dir / "redis")
            self.stack.push_async_callback(server.stop)
            redis_url = await server.start()
        self.details["services"] = {
            "postgres": "DATABASE_URL" if cfg.database_url else "embedded",
            "redis": "REDIS_URL" if cfg.redis_url else "embedded",
        }
        return server_dsn, redis_url

    async def _free_redis_db(self, base: str) -> str:
        """A db index nobody uses on a shared Redis: claimed with a lock key, flushed at the end."""
        from redis.asyncio import Redis

        base = base.rstrip("/")
        root = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
        lock = f"tidings-bench-lock:{self.run_id}"
        for index in range(1, 16):
            client = Redis.from_url(f"{root}/{index}")
            try:
                if await client.dbsize() == 0 and await client.set(lock, 1, nx=True):
                    await asyncio.sleep(0.05)
                    if await client.dbsize() == 1:  # nobody else claimed it at the same moment
                        url = f"{root}/{index}"
                        self.redis_lock = lock  # set again after every flush

                        async def flush(url: str = url) -> None:
                            c = Redis.from_url(url)
                            try:
                                await c.flushdb()
                            finally:
                                await c.aclose()

                        self.stack.push_async_callback(flush)
                        return url
                    await client.delete(lock)
            finally:
                await client.aclose()
        raise RuntimeError("no free Redis db index (1-15) for the benchmark")

    async def _template(self) -> None:
        """The database every scenario copies: migrated, with the org, key and broadcasts."""
        from shared import db, orgs
        from shared.migrate import migrate
        from shared.sql import Q
        from tidings.dev.embedded import create_database, drop_database

        url = await create_database(self.server_dsn, self.template)
        self.stack.push_async_callback(drop_database, self.server_dsn, self.template)
        await migrate(url)
        self.child_env["DATABASE_URL"] = url
        pool = await db.create_pool(url, min_size=1, max_size=2)
        try:
            self.org_id = await orgs.create_org(pool, f"bench {self.run_id}")
            self.key = await orgs.create_key(pool, self.org_id, ["admin", "read", "write"])
            # The bench sends far past the default budget of 100 a minute.
            await pool.fetchrow(Q.update_org_rate_limit, self.org_id, 1_000_000_000, 60)
        finally:
            await pool.close()
        await self.start_api("setup")
        try:
            await self._broadcasts()
        finally:
            await self.stop_api()  # a template must have no one connected to it

    @contextlib.asynccontextmanager
    async def scenario_database(self, tag: str) -> AsyncIterator[None]:
        """A fresh copy of the template for one scenario (and an empty Redis db), dropped after."""
        import asyncpg

        from shared import db
        from tidings.dev.embedded import database_dsn, drop_database

        name = f"{self.template}_{tag.replace('-', '_')}"
        conn = await asyncpg.connect(self.server_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await conn.close()
        self.stack.push_async_callback(drop_database, self.server_dsn, name)  # if interrupted
        url = database_dsn(self.server_dsn, name)
        self.child_env["DATABASE_URL"] = url
        await self.redis.flushdb()  # our own db index (see _free_redis_db), or our own server
        if self.redis_lock:
            await self.redis.set(self.redis_lock, 1)
        self.pool = await db.create_pool(url, min_size=1, max_size=8)
        try:
            yield
        finally:
            await self.pool.close()
            self.pool = None
            await drop_database(self.server_dsn, name)

    async def _spawn_far_ends(self) -> list[tuple[int, common.Child]]:
        """Start the SMTP sink and the WhatsApp sandbox; returns (port, process) to wait for."""
        self.smtp_port = common.free_port()
        if self.smtp_sink:
            argv = [
                self.smtp_sink,
                *(["-u", "nobody"] if os.geteuid() == 0 else []),
                f"{common.LOOPBACK}:{self.smtp_port}",
                "1024",
            ]
        else:
            argv = [sys.executable, str(common.HERE / "sinks.py"), "smtp", "--port", str(self.smtp_port)]
        sink = await self.child("sink", argv)
        wa_port = common.free_port()
        self.sandbox = await self.child(
            "sandbox", [sys.executable, str(common.HERE / "sinks.py"), "whatsapp", "--port", str(wa_port)]
        )
        self.wa_url = f"http://{common.LOOPBACK}:{wa_port}"
        return [(self.smtp_port, sink), (wa_port, self.sandbox)]

    def sandbox_rss_mb(self) -> float | None:
        import psutil

        try:
            assert self.sandbox is not None
            return round(psutil.Process(self.sandbox.pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            return None

    async def child(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> common.Child:
        child = common.Child(name, argv, env if env is not None else dict(os.environ), self.logs / f"{name}.log")
        await child.start()
        self.stack.push_async_callback(child.stop)
        return child

    async def start_api(self, tag: str) -> None:
        import aiohttp

        self.api = await self.child(
            f"api-{tag}",
            [sys.executable, "-m", "tidings.cli", "api", "--host", common.LOOPBACK, "--port", str(self.api_port)],
            self.child_env,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if not self.api.alive:
                    raise RuntimeError(f"the api exited while starting:\n{self.api.tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.api_url}/readyz") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the api was not ready in {START_TIMEOUT_S} s:\n{self.api.tail()}")
                await asyncio.sleep(0.1)

    async def stop_api(self) -> None:
        if self.api is not None:
            await self.api.stop()
            self.api = None

    @property
    def api_url(self) -> str:
        return f"http://{common.LOOPBACK}:{self.api_port}"

    def send_url(self, broadcast: str) -> str:
        return f"{self.api_url}/orgs/{self.org_id}/broadcasts/{self.broadcasts[broadcast]}/send"

    async def _broadcasts(self) -> None:
        """One active broadcast per scenario, made through the api as a user would."""
        import aiohttp

        names = {"p1": "email", "p4": "email", "soak": "email", "p3": "whatsapp", "p7": "email"}
        names |= {f"p2-{n}": "email" for n in self.cfg.p6_workers}
        base = f"{self.api_url}/orgs/{self.org_id}/broadcasts"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.key}"}) as http:

            async def call(path: str, body: dict[str, Any] | None, expect: int) -> dict[str, Any]:
                async with http.post(path, json=body) as r:
                    if r.status != expect:
                        raise RuntimeError(f"POST {path} answered {r.status}: {await r.text()}")
                    out: dict[str, Any] = await r.json()
                    return out

            for name, channel in names.items():
                b = await call(
                    base,
                    {"name": f"bench {name}", "type": "transactional", "variables": common.BROADCAST_VARIABLES},
                    201,
                )
                template = common.EMAIL_TEMPLATE if channel == "email" else common.WHATSAPP_TEMPLATE
                await call(f"{base}/{b['id']}/templates", template, 201)
                await call(f"{base}/{b['id']}/activate", None, 200)
                self.broadcasts[name] = uuid.UUID(b["id"])

    # -- helpers -----------------------------------------------------------------------

    async def start_workers(self, n: int, tag: str, extra_env: dict[str, str] | None = None) -> list[common.Child]:
        workers = []
        for i in range(n):
            workers.append(
                await self.child(
                    f"worker-{tag}-{i + 1}",
                    [sys.executable, "-m", "tidings.cli", "worker"],
                    self.child_env | (extra_env or {}),
                )
            )
        return workers

    async def stop_all(self, children: Sequence[common.Child]) -> None:
        await asyncio.gather(*(c.stop() for c in children))

    async def preflight(self, broadcast: str, *, background: bool, expect: int) -> dict[str, Any]:
        """One trigger by hand, so a misconfiguration fails loudly instead of measuring errors."""
        import aiohttp

        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            while True:
                async with http.post(
                    self.send_url(broadcast),
                    json=common.send_body(0, background=background),
                    headers={"Authorization": f"Bearer {self.key}"},
                ) as r:
                    body: dict[str, Any] = await r.json(content_type=None)
                    status = r.status
                if status == expect:
                    return body
                # A synchronous send answers 202 while the workers are still starting.
                if not (status == 202 and expect == 200 and time.monotonic() < deadline):
                    raise RuntimeError(f"a {broadcast} trigger answered {status}, not {expect}: {body}")

    async def http_load(self, url: str, phase: str, sampler: RssSampler | None = None) -> dict[str, Any]:
        """Warm-up, then the measured phase, with wrk (or the Python closed loop)."""
        cfg = self.cfg
        common.require_loopback(url)
        measured_from = 0.0
        result: dict[str, Any] = {}
        meter = CpuMeter()
        for seconds, measured in ((cfg.warmup_s, False), (cfg.duration_s, True)):
            if seconds <= 0:
                continue
            if measured:
                measured_from = time.monotonic()
                meter.start()
            cap = int(MAX_RPS * max(seconds, 1))
            log_path = self.logs / f"load-{phase}.log"
            if self.wrk:
                argv = [
                    self.wrk,
                    *("-t", str(cfg.threads), "-c", str(cfg.connections)),
                    *("-d", f"{max(1, round(seconds))}s", "--timeout", "10s"),  # wrk takes whole seconds
                    *("-s", str(common.HERE / "post.lua"), url),
                    *("--", self.key, str(common.RECIPIENTS), str(cap), str(cfg.threads)),
                ]
                raw = await common.run_json(argv, timeout_s=seconds + 60, log_path=log_path)
                secs = raw["duration_us"] / 1e6
                errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
                ok = raw["requests"] - raw["status_errors"]
                result = {
                    "rps": round(ok / secs, 1),
                    "requests": raw["requests"],
                    "non_2xx": raw["status_errors"],
                    "socket_errors": errors,
                    "duration_s": round(secs, 3),
                    "p50_ms": raw["p50_us"] / 1000,
                    "p90_ms": raw["p90_us"] / 1000,
                    "p99_ms": raw["p99_us"] / 1000,
                    "max_ms": raw["max_us"] / 1000,
                }
            else:
                argv = [
                    *(sys.executable, str(common.HERE / "loadgen.py"), "closed", "--url", url, "--key", self.key),
                    *("--connections", str(cfg.connections), "--duration", str(seconds)),
                    *("--max-requests", str(cap)),
                ]
                raw = await common.run_json(argv, timeout_s=seconds + 60, log_path=log_path)
                result = raw | {"non_2xx": sum(n for s, n in raw["statuses"].items() if not s.startswith("2"))}
        result["cpu_cores"] = meter.stop()
        if sampler is not None:
            result["rss_growth_mb_per_min"] = round(sampler.growth_mb_per_min(measured_from), 2)
        return result

    async def best_of_loops(self, argv: list[str], name: str) -> tuple[float, dict[str, Any]]:
        """A ceiling client on each event loop in turn; the best rate is the ceiling."""
        cfg = self.cfg
        runs = {}
        for loop in cfg.loops:
            meter = CpuMeter().start()
            runs[loop] = await common.run_json(
                [
                    *argv,
                    *("--duration", str(cfg.duration_s), "--warmup", str(cfg.warmup_s)),
                    *("--max-messages", str(int(MAX_RPS * max(cfg.duration_s, 1)))),
                    *("--loop", loop, "--distinct", str(self.distinct)),
                ],
                timeout_s=cfg.warmup_s + cfg.duration_s + 120,
                log_path=self.logs / f"ceiling-{name}.log",
            )
            runs[loop]["cpu_cores"] = meter.stop()  # over the whole process: start-up and warm-up too
        best = max(r["rate"] for r in runs.values())
        return best, runs

    # -- scenarios ---------------------------------------------------------------------

    async def p1(self) -> dict[str, Any]:
        """Triggers accepted per second against one api process, beside a bare aiohttp app."""
        cfg = self.cfg
        port = common.free_port()
        bare = await self.child("bare-api", [sys.executable, str(common.HERE / "bare_api.py"), "--port", str(port)])
        await common.wait_port(port, START_TIMEOUT_S, bare.proc)
        path = self.send_url("p1").removeprefix(self.api_url)
        log(f"P1 ceiling: bare aiohttp, {self.loadgen_name}, {cfg.connections} connections")
        ceiling = await self.http_load(f"http://{common.LOOPBACK}:{port}{path}", "p1-ceiling")
        await bare.stop()

        async with self.scenario_database("p1"):
            await self.start_api("p1")
            try:
                assert self.api is not None
                await self.preflight("p1", background=True, expect=202)
                log(f"P1: tidings api, background: true, {self.loadgen_name}, {cfg.connections} connections")
                async with RssSampler([self.api.pid]) as sampler:
                    figure = await self.http_load(self.send_url("p1"), "p1", sampler)
            finally:
                await self.stop_api()
            figure["api_rss_peak_mb"] = round(sampler.peak_mb(), 1)
            # A cross-check of the 2xx count: sends committed, warm-up included.
            figure["committed_sends_total"] = await self.pool.fetchval("SELECT count(*) FROM sends")
        self.details["P1"] = {"figure": figure, "ceiling": ceiling}
        if figure["non_2xx"] or figure.get("socket_errors"):
            log(
                f"warning: P1 saw {figure['non_2xx']} non-2xx answers"
                f" and {figure.get('socket_errors', 0)} socket errors"
            )
        return {
            "value": figure["rps"],
            "unit": "triggers/s",
            "ceiling": ceiling["rps"],
            "ratio": _ratio(figure["rps"], ceiling["rps"]),
            "p99_ms": figure["p99_ms"],
            "ceiling_p99_ms": ceiling["p99_ms"],
            "connections": cfg.connections,
            "loadgen": self.loadgen_name,
        }

    async def p4(self) -> dict[str, Any]:
        """Latency of background: false at a steady rate, beside the sink's own time per message."""
        cfg = self.cfg
        log("P4 reference: the sink's time per SMTP transaction on a warm connection")
        sink = await common.run_json(
            [sys.executable, str(common.HERE / "ceilings.py"), "sink-ms", "--port", str(self.smtp_port)],
            timeout_s=120,
            log_path=self.logs / "ceiling-sink-ms.log",
        )
        async with self.scenario_database("p4"):
            # Workers first: they import while the api starts (nothing is measured yet).
            workers = await self.start_workers(2, "p4")
            try:
                await self.start_api("p4")
                await self.preflight("p4", background=False, expect=200)
                log(f"P4: background: false at {cfg.p4_rate:g}/s, open loop, 2 workers")
                meter = CpuMeter().start()
                result = await common.run_json(
                    [
                        *(sys.executable, str(common.HERE / "loadgen.py"), "open", "--url", self.send_url("p4")),
                        *("--key", self.key, "--rate", str(cfg.p4_rate), "--sync"),
                        *("--duration", str(cfg.duration_s), "--warmup", str(cfg.warmup_s)),
                    ],
                    timeout_s=cfg.warmup_s + cfg.duration_s + 90,
                    log_path=self.logs / "load-p4.log",
                )
                result["cpu_cores"] = meter.stop()
            finally:
                await self.stop_all(workers)
                await self.stop_api()
        self.details["P4"] = {"figure": result, "sink": sink}
        if result["dropped"] or result["errors"] or set(result["statuses"]) - {"200"}:
            log(
                f"warning: P4 saw statuses {result['statuses']}, errors {result['errors']}, dropped {result['dropped']}"
                " (202: the send was not settled within SYNC_SEND_TIMEOUT_S)"
            )
        return {
            "p50_ms": result["p50_ms"],
            "p90_ms": result["p90_ms"],
            "p99_ms": result["p99_ms"],
            "max_ms": result["max_ms"],
            "rate": cfg.p4_rate,
            # 200: answered with the outcome; 202: the wait timed out (SYNC_SEND_TIMEOUT_S).
            "answered_200": result["statuses"].get("200", 0),
            "answered_other": result["requests"] - result["statuses"].get("200", 0),
            "sink_ms": sink["p50_ms"],
        }

    async def build_backlog(self, broadcast: str, channel: str) -> float:
        """Commit BENCH_BACKLOG sends through the service's own code; returns seconds.

        `shared.sending.prepare` resolves a few recipients once; each send is then a copy with
        new ids, written by the service's own `commit_many` in batches of 500 (as its api does
        under load). Postgres is the delivery queue: workers started afterwards find them."""
        from shared import sending

        n = self.cfg.backlog
        assert self.org_id is not None
        broadcast_id = self.broadcasts[broadcast]
        prepared = []
        for i in range(min(common.RECIPIENTS, max(1, n // 20))):
            trigger = sending.Trigger(variables={"otp": common.otp(i)})
            if channel == "email":
                trigger.email = common.recipient_email(i)
            else:
                trigger.phone = common.recipient_phone(i)
            prepared.append(await sending.prepare(self.pool, self.org_id, broadcast_id, trigger))
        batch = 500
        started = time.monotonic()
        next_index = 0

        def copy(i: int) -> sending.PreparedSend:
            base = prepared[i % len(prepared)]
            return dataclasses.replace(
                base, send_id=uuid.uuid4(), records=[dataclasses.replace(r, id=uuid.uuid4()) for r in base.records]
            )

        async def filler() -> None:
            nonlocal next_index
            while next_index < n:
                first, count = next_index, min(batch, n - next_index)
                next_index += count
                sends = [copy(first + j) for j in range(count)]
                refused = [e for e in await sending.commit_many(self.pool, sends) if e is not None]
                if refused:
                    raise RuntimeError(f"the backlog's sends were refused: {refused[0]!r}")

        await asyncio.wait_for(asyncio.gather(*(filler() for _ in range(4))), timeout=600)
        return time.monotonic() - started

    async def backlog_run(
        self, broadcast: str, channel: str, workers_n: int, *, sample: bool, extra_env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Deliver a backlog with N workers started after it was built: the rate over a fixed
        window after a warm-up, by Postgres's own sent_at. `extra_env`: the workers' own settings
        on top of the scenario's (P7's DKIM)."""
        async with self.scenario_database(broadcast):
            return await self._backlog_run(broadcast, channel, workers_n, sample=sample, extra_env=extra_env)

    async def _backlog_run(
        self, broadcast: str, channel: str, workers_n: int, *, sample: bool, extra_env: dict[str, str] | None
    ) -> dict[str, Any]:
        cfg = self.cfg
        build_s = await self.build_backlog(broadcast, channel)
        log(f"{broadcast}: backlog of {cfg.backlog} {channel} sends built in {build_s:.1f} s; {workers_n} worker(s)")
        workers = await self.start_workers(workers_n, broadcast, extra_env)
        sampler = RssSampler([w.pid for w in workers]) if sample else None
        first_seen: float | None = None
        exhausted = False
        meter = CpuMeter()
        cpu: dict[str, float] = {}
        try:
            if sampler is not None:
                await sampler.__aenter__()
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                row = await self.pool.fetchrow(
                    "SELECT count(*) FILTER (WHERE status = 'sent') AS sent,"
                    " count(*) FILTER (WHERE status NOT IN ('queued', 'sending', 'sent')) AS other FROM messages"
                )
                now = time.monotonic()
                if row["sent"] and first_seen is None:
                    first_seen = now
                    meter.start()
                    deadline = now + cfg.warmup_s + cfg.duration_s + 0.5
                if row["sent"] + row["other"] >= cfg.backlog:
                    exhausted = True
                    break
                if now > deadline:
                    if first_seen is None:
                        tails = "\n".join(w.tail() for w in workers)
                        raise RuntimeError(f"{broadcast}: nothing was delivered in {START_TIMEOUT_S} s:\n{tails}")
                    break
                if not all(w.alive for w in workers):
                    raise RuntimeError(f"{broadcast}: a worker exited:\n" + "\n".join(w.tail() for w in workers))
                await asyncio.sleep(0.25)
            if first_seen is not None:
                cpu = meter.stop()
        finally:
            if sampler is not None:
                await sampler.__aexit__(None, None, None)
            await self.stop_all(workers)
        stats = await self._window()
        stats |= {
            "workers": workers_n,
            "backlog": cfg.backlog,
            "backlog_exhausted": exhausted,
            "build_s": round(build_s, 1),
            "cpu_cores": cpu,
        }
        if sampler is not None and first_seen is not None:
            stats["worker_rss_peak_mb"] = round(sampler.peak_mb(), 1)
            stats["rss_growth_mb_per_min"] = round(sampler.growth_mb_per_min(first_seen + cfg.warmup_s), 2)
        if stats["failed"]:
            log(f"warning: {broadcast}: {stats['failed']} messages did not end sent")
        if exhausted and stats["window_s"] < cfg.duration_s and not cfg.smoke:
            log(
                f"note: {broadcast}: the backlog ran out before the window ended"
                "; a larger BENCH_BACKLOG measures longer"
            )
        return stats

    async def _window(self) -> dict[str, Any]:
        """Messages sent per second in [first + warm-up, + duration], by Postgres's own sent_at.

        The warm-up skipped is at most a fifth of the delivery, so a backlog that runs out
        early is still measured on most of it."""
        cfg = self.cfg
        row = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, min(sent_at) AS first, max(sent_at) AS last,"
            " count(*) FILTER (WHERE status IN ('failed', 'rejected', 'skipped')) AS failed FROM messages"
        )
        first, last = row["first"], row["last"]
        if first is None:
            return {"rate": 0.0, "window_s": 0.0, "sent": 0, "failed": row["failed"]}
        total_s = (last - first).total_seconds()
        warm = min(cfg.warmup_s, 0.2 * total_s)
        start = first + dt.timedelta(seconds=warm)
        end = min(start + dt.timedelta(seconds=cfg.duration_s), last)
        window_s = (end - start).total_seconds()
        if window_s < 0.05:  # everything within a few milliseconds: the whole delivery is the window
            start, end, window_s = first - dt.timedelta(microseconds=1), last, max(total_s, 0.05)
        in_window = await self.pool.fetchval(
            "SELECT count(*) FROM messages WHERE status = 'sent' AND sent_at > $1 AND sent_at <= $2", start, end
        )
        return {
            "rate": round(in_window / window_s, 1),
            "window_s": round(window_s, 2),
            "in_window": in_window,
            "sent": row["sent"],
            "failed": row["failed"],
            "delivery_s": round(total_s, 2),
        }

    @property
    def smtp_connections(self) -> int:
        from shared.config import Settings

        return 2 * Settings.from_env(self.child_env).smtp_pool_size

    async def p2_ceiling(self) -> tuple[float, dict[str, Any]]:
        """aiosmtplib straight to the sink (P2's ceiling, and P7's): measured once per run."""
        if self.smtp_ceiling is None:
            cfg, connections = self.cfg, self.smtp_connections
            log(f"P2 ceiling: aiosmtplib straight to {self.sink_name}, {connections} connections, best of {cfg.loops}")
            self.smtp_ceiling = await self.best_of_loops(
                [
                    *(sys.executable, str(common.HERE / "ceilings.py"), "smtp"),
                    *("--port", str(self.smtp_port), "--connections", str(connections)),
                ],
                "p2",
            )
        return self.smtp_ceiling

    async def p2_p6(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Emails per second from a backlog with 1, 2, 4 workers; P2 is the 2-worker run."""
        cfg = self.cfg
        connections = self.smtp_connections
        ceiling, runs = await self.p2_ceiling()
        by_workers: dict[str, dict[str, Any]] = {}
        for n in cfg.p6_workers:
            by_workers[str(n)] = await self.backlog_run(f"p2-{n}", "email", n, sample=n == 2)
        p2 = by_workers["2"]
        self.details["P2"] = {"ceiling": runs, "runs": by_workers}
        return (
            {
                "value": p2["rate"],
                "unit": "emails/s",
                "ceiling": ceiling,
                "ratio": _ratio(p2["rate"], ceiling),
                "workers": 2,
                "ceiling_connections": connections,
                "window_s": p2["window_s"],
            },
            {"workers": {n: r["rate"] for n, r in by_workers.items()}, "ceiling": ceiling},
            p2,
        )

    def dkim_key(self) -> Path:
        """A fresh RSA key for P7 (PEM, PKCS#8), in the output folder (git-ignored)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=DKIM_KEY_BITS)
        path = self.cfg.out_dir / "dkim-p7.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        return path

    async def p7(self, p2: dict[str, Any] | None) -> dict[str, Any]:
        """P2 with DKIM on: every email signed (rsa-sha256, a 2048-bit key) by the 2 workers,
        beside the same ceiling (aiosmtplib sends unsigned: signing is the service's cost)."""
        ceiling, _ = await self.p2_ceiling()
        domain = common.EMAIL_TEMPLATE["from_email"].rpartition("@")[2]
        dkim = {
            "DKIM_SELECTOR": DKIM_SELECTOR,
            "DKIM_DOMAIN": domain,
            "DKIM_PRIVATE_KEY_PATH": str(self.dkim_key()),
        }
        log(f"P7: P2 with DKIM on (rsa-sha256, {DKIM_KEY_BITS}-bit key, d={domain})")
        run = await self.backlog_run("p7", "email", 2, sample=False, extra_env=dkim)
        self.details["P7"] = {"run": run}
        out = {
            "value": run["rate"],
            "unit": "emails/s",
            "ceiling": ceiling,
            "ratio": _ratio(run["rate"], ceiling),
            "workers": 2,
            "dkim_key_bits": DKIM_KEY_BITS,
            "window_s": run["window_s"],
        }
        if p2 is not None:  # P2 of the same run, for what signing costs
            out["p2_value"] = p2["value"]
            out["of_p2"] = _ratio(run["rate"], p2["value"])
        return out

    async def p3(self) -> dict[str, Any]:
        """WhatsApp messages per second from a backlog to the sandbox, 2 workers."""
        from shared.config import Settings

        cfg = self.cfg
        rss_start = self.sandbox_rss_mb()
        concurrency = Settings.from_env(self.child_env).worker_concurrency
        connections = 2 * min(concurrency, WA_CONNECTIONS_PER_WORKER)
        log(f"P3 ceiling: aiohttp straight to the sandbox, {connections} connections, best of {cfg.loops}")
        ceiling, runs = await self.best_of_loops(
            [
                *(sys.executable, str(common.HERE / "ceilings.py"), "whatsapp"),
                *("--url", self.wa_url, "--connections", str(connections)),
            ],
            "p3",
        )
        rss_after_ceiling = self.sandbox_rss_mb()
        run = await self.backlog_run("p3", "whatsapp", 2, sample=False)
        # The sandbox keeps no request log and a bounded message deque: this must stay flat.
        run["sandbox_rss_mb"] = {"start": rss_start, "after_ceiling": rss_after_ceiling, "end": self.sandbox_rss_mb()}
        self.details["P3"] = {"ceiling": runs, "run": run}
        return {
            "value": run["rate"],
            "unit": "messages/s",
            "ceiling": ceiling,
            "ratio": _ratio(run["rate"], ceiling),
            "workers": 2,
            "ceiling_connections": connections,
            "window_s": run["window_s"],
        }

    async def soak(self) -> dict[str, Any]:
        """api + 2 workers under a steady background load for BENCH_SOAK_S: RSS over time."""
        cfg = self.cfg
        async with self.scenario_database("soak"):
            workers = await self.start_workers(2, "soak")
            try:
                await self.start_api("soak")
                assert self.api is not None
                api_pid = self.api.pid
                await self.preflight("soak", background=True, expect=202)
                log(f"soak: {cfg.soak_s:g} s at {cfg.soak_rate:g} triggers/s (background), api + 2 workers")
                async with RssSampler([api_pid, *(w.pid for w in workers)], interval_s=1.0) as sampler:
                    started = time.monotonic()
                    load = await common.run_json(
                        [
                            *(sys.executable, str(common.HERE / "loadgen.py"), "open"),
                            *("--url", self.send_url("soak"), "--key", self.key),
                            *("--rate", str(cfg.soak_rate), "--duration", str(cfg.soak_s)),
                        ],
                        timeout_s=cfg.soak_s + 120,
                        log_path=self.logs / "load-soak.log",
                    )
            finally:
                await self.stop_all(workers)
                await self.stop_api()
        # The first fifth is warm-up (pools filling, caches, first allocations).
        since = started + cfg.soak_s / 5
        names = {api_pid: "api", **{w.pid: w.name for w in workers}}
        growth = {
            names[pid]: round(common.slope_per_min([(t, mb) for t, mb in s if t >= since]), 3)
            for pid, s in sampler.samples.items()
        }
        peaks = {names[pid]: round(max((mb for _, mb in s), default=0.0), 1) for pid, s in sampler.samples.items()}
        return {
            "seconds": cfg.soak_s,
            "rate": cfg.soak_rate,
            "growth_mb_per_min": growth,
            "peak_mb": peaks,
            "load": load,
        }


def _ratio(value: float, ceiling: float) -> float:
    return round(value / ceiling, 3) if ceiling else 0.0


async def run_bench(cfg: Config) -> dict[str, Any]:
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    # Nothing under out/ belongs in git: results, logs, embedded data.
    (cfg.out_dir / ".gitignore").write_text("*\n")
    started = time.monotonic()
    only = cfg.only
    result: dict[str, Any] = {}
    timings: dict[str, float] = {}

    async def timed(name: str, coro: Awaitable[T]) -> T:
        t0 = time.monotonic()
        try:
            return await coro
        finally:
            timings[name] = round(time.monotonic() - t0, 1)

    async with contextlib.AsyncExitStack() as stack:
        bench = Bench(cfg, stack)
        await timed("start", bench.start())
        result["machine"] = {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "sink": bench.sink_name,
            "loadgen": bench.loadgen_name,
            "cpu_pinning": "none",
        }
        p2_run: dict[str, Any] = {}
        if only & {"P1", "P5"}:
            result["P1"] = await timed("P1", bench.p1())
        if "P4" in only:
            result["P4"] = await timed("P4", bench.p4())
        soak = await timed("soak", bench.soak()) if cfg.soak else None
        if only & {"P2", "P5", "P6"}:
            p2, p6, p2_run = await timed("P2+P6", bench.p2_p6())
            result["P2"] = p2
            if "P6" in only:
                result["P6"] = p6
        if "P7" in only:
            result["P7"] = await timed("P7", bench.p7(result.get("P2")))
        if "P3" in only:
            result["P3"] = await timed("P3", bench.p3())

        api = bench.details.get("P1", {}).get("figure", {})
        if soak is not None:
            growth = max(soak["growth_mb_per_min"].values())
            growth_source = f"soak of {cfg.soak_s:g} s"
            bench.details["soak"] = soak
        else:
            growth = max(api.get("rss_growth_mb_per_min", 0.0), p2_run.get("rss_growth_mb_per_min", 0.0))
            growth_source = "P1 and P2 measured windows (short; --soak for a 5-minute figure)"
        if "P5" in only:
            result["P5"] = {
                "worker_rss_mb": p2_run.get("worker_rss_peak_mb"),
                "api_rss_mb": api.get("api_rss_peak_mb"),
                "rss_growth_mb_per_min": growth,
                "rss_growth_source": growth_source,
            }
        result = {k: result[k] for k in ("machine", "P1", "P2", "P3", "P4", "P5", "P6", "P7") if k in result}
        services = bench.details.pop("services")
    result["config"] = {
        "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s,
        "backlog": cfg.backlog,
        "smoke": cfg.smoke,
        "soak": cfg.soak,
        "only": sorted(only),
        "services": services,
        "elapsed_s": round(time.monotonic() - started, 1),
        "phases_s": timings,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    result["details"] = bench.details
    return result


def write_outputs(cfg: Config, result: dict[str, Any]) -> None:
    (cfg.out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        import plot

        plot.plot(result, cfg.out_dir / "bench.png")
    except ImportError as exc:
        log(f"warning: no plot ({exc}); `make bench` installs tests/perf/requirements.txt")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = Config.from_args(argv)
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

    result = common.run(amain())
    if result is None:
        return 130
    write_outputs(cfg, result)
    log(f"wrote {cfg.out_dir / 'result.json'} and {cfg.out_dir / 'bench.png'}")
    # The last line on stdout: the result without its details (those are in result.json).
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, separators=(", ", ": ")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
