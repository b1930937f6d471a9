"""The bench's harness: the services and processes of one run, and how scenarios drive them.

- `Config`: one run's settings (bench.py fills it from the command line and BENCH_*).
- `Harness.start()`: the tools (tools.py), Postgres and Redis (from DATABASE_URL / REDIS_URL,
  else embedded), the SMTP sink and the WhatsApp sandbox, and the template database.
- `Harness.scenario_database()`: a fresh copy of the template per scenario, dropped after.
- `start_api()` / `start_workers()`: `tidings api` / `tidings worker` as child processes.
- `http_load()`: a warm-up and a measured phase of wrk (or loadgen.py); `best_of_loops()`:
  a ceiling client on each event loop.

Everything listens on 127.0.0.1; every child is stopped through the run's exit stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import common
import meters
from common import log
from meters import CpuMeter, RssSampler
from tools import find_tools

MAX_RPS = 100_000  # the request cap of a load phase is this times its duration
START_TIMEOUT_S = 90.0  # a server or the first delivery must come within this


@dataclasses.dataclass
class Config:
    """One run's settings: bench.py makes it from the command line and BENCH_* variables."""

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
    repeat: int = 1  # --repeat: the whole set this many times (repeat.py combines the runs)


class Harness:
    """The services and the processes of one run, and the helpers the scenarios drive them with.

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
        self.smtp_sink, self.wrk = find_tools(python_tools=self.cfg.python_tools, install=self.cfg.install)
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
            # The sink is the relay (SMTP_RELAYS would replace it), and the sandbox is not Meta:
            # no throughput ceiling, so P3 measures tidings, not Meta's 80/s default.
            "SMTP_RELAYS": "",
            "WHATSAPP_MAX_PER_S": "0",
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
        self.stack.push_async_callback(_drop_if_reachable, self.server_dsn, name)  # if interrupted
        url = database_dsn(self.server_dsn, name)
        self.child_env["DATABASE_URL"] = url
        await self.redis.flushdb()  # our own db index (see _free_redis_db), or our own server
        if self.redis_lock:
            await self.redis.set(self.redis_lock, 1)
        self.pool = await db.create_pool(url, min_size=1, max_size=8)
        if meters.bench_postmaster_pid is None:
            import psutil

            with contextlib.suppress(psutil.Error):  # a server on another machine: no CPU of its own to read
                meters.bench_postmaster_pid = psutil.Process(await self.pool.fetchval("SELECT pg_backend_pid()")).ppid()
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

        names = {"p1": "email", "p1b": "email", "p4": "email", "soak": "email", "p3": "whatsapp", "p7": "email"}
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

    # -- what the scenarios use --------------------------------------------------------

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

    async def preflight_batch(self, broadcast: str, size: int) -> None:
        """One batch by hand: every item must be accepted, or the figure would count refusals."""
        import aiohttp

        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(
                self.send_url(broadcast) + "/batch",
                json=common.batch_body(0, size),
                headers={"Authorization": f"Bearer {self.key}"},
            ) as r,
        ):
            body: dict[str, Any] = await r.json(content_type=None)
            status = r.status
        refused = [d for d in body.get("data", []) if "error" in d]
        if status != 202 or refused or len(body.get("data", [])) != size:
            raise RuntimeError(f"a {broadcast} batch answered {status}: {str(body)[:2000]}")

    async def http_load(
        self, url: str, phase: str, sampler: RssSampler | None = None, *, batch: int = 0, connections: int = 0
    ) -> dict[str, Any]:
        """Warm-up, then the measured phase, with wrk (or the Python closed loop). With
        `batch`, each request is a batch of that many triggers (`url`: the batch route);
        `connections` (default BENCH_CONNECTIONS) overrides the connection count."""
        cfg = self.cfg
        connections = connections or cfg.connections
        common.require_loopback(url)
        measured_from = 0.0
        result: dict[str, Any] = {}
        meter = CpuMeter()
        # WAL and Postgres CPU per message accepted (None: the ceiling's bare app, no database).
        cost = meters.DbCost(self.pool, "SELECT count(*) FROM messages") if self.pool is not None else None
        for seconds, measured in ((cfg.warmup_s, False), (cfg.duration_s, True)):
            if seconds <= 0:
                continue
            if measured:
                measured_from = time.monotonic()
                if cost is not None:
                    await cost.start()
                meter.start()
            cap = int(MAX_RPS * max(seconds, 1))
            log_path = self.logs / f"load-{phase}.log"
            if self.wrk:
                argv = [
                    self.wrk,
                    *("-t", str(min(cfg.threads, connections)), "-c", str(connections)),
                    *("-d", f"{max(1, round(seconds))}s", "--timeout", "10s"),  # wrk takes whole seconds
                    *("-s", str(common.HERE / "post.lua"), url),
                    *("--", self.key, str(common.RECIPIENTS), str(cap), str(min(cfg.threads, connections)), str(batch)),
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
                    *("--connections", str(connections), "--duration", str(seconds)),
                    *("--max-requests", str(cap), "--batch", str(batch)),
                ]
                raw = await common.run_json(argv, timeout_s=seconds + 60, log_path=log_path)
                result = raw | {"non_2xx": sum(n for s, n in raw["statuses"].items() if not s.startswith("2"))}
        result["cpu_cores"] = meter.stop()
        if cost is not None:
            await cost.stop()
            result["db_cost"] = cost.per_message(result["cpu_cores"])
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

    @property
    def smtp_connections(self) -> int:
        """The P2 ceiling's connections: as many as the 2 workers' SMTP pools hold."""
        from shared.config import Settings

        return 2 * Settings.from_env(self.child_env).smtp_pool_size


async def _drop_if_reachable(server_dsn: str, name: str) -> None:
    """A scenario database's drop at the run's end, if it was interrupted: the server may be
    gone by then (P10's, in its namespace), and then so is the database."""
    from tidings.dev.embedded import drop_database

    with contextlib.suppress(OSError):  # ConnectionError is one
        await drop_database(server_dsn, name)
