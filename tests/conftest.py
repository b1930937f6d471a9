"""Real services for every test: Postgres, Redis, an SMTP server, the WhatsApp sandbox,
the API app and a real worker (its pump and its reconciler), shared by the session; each test
makes its own org.

Postgres and Redis are the ones named by TEST_DATABASE_URL / TEST_REDIS_URL, or embedded
ones started here. Either way the run gets its own database and Redis db index and
removes them at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import pathlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from shared import db, orgs
from shared.config import Settings
from shared.migrate import migrate

RUN_ID = uuid.uuid4().hex[:10]
SCOPES = ("admin", "read", "write")


TEST_SECRET_KEY = "tidings-test-secret-key-not-for-production"


@pytest.fixture(scope="session")
def embedded_dir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="tidings-test-") as d:
        yield pathlib.Path(d)


@pytest.fixture(scope="session")
async def admin_dsn(embedded_dir: pathlib.Path) -> AsyncIterator[str]:
    dsn = os.environ.get("TEST_DATABASE_URL")
    if dsn:
        yield dsn
        return
    from tidings.dev.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(embedded_dir / "postgres")
    yield await server.start()
    await server.stop()


@pytest.fixture(scope="session")
async def database_url(admin_dsn: str) -> AsyncIterator[str]:
    from tidings.dev.embedded import create_database, drop_database

    name = f"tidings_test_{RUN_ID}"
    dsn = await create_database(admin_dsn, name)
    await migrate(dsn)
    yield dsn
    await drop_database(admin_dsn, name)


@pytest.fixture(scope="session")
async def redis_url(embedded_dir: pathlib.Path) -> AsyncIterator[str]:
    base = os.environ.get("TEST_REDIS_URL")
    server = None
    if not base:
        from tidings.dev.embedded import EmbeddedRedis

        server = EmbeddedRedis(embedded_dir / "redis")
        base = await server.start()
    base = base.rstrip("/")
    # Pick a db index nobody is using, so that a parallel run cannot collide with this one.
    root = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    chosen = None
    for index in range(15, 0, -1):
        client = Redis.from_url(f"{root}/{index}")
        try:
            if await client.dbsize() == 0 and await client.set(f"tidings-test-lock:{RUN_ID}", 1, nx=True):
                chosen = index
                break
        finally:
            await client.aclose()
    assert chosen is not None, "no free Redis db index for the test run"
    url = f"{root}/{chosen}"
    yield url
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    if server is not None:
        await server.stop()


@pytest.fixture(scope="session")
async def smtp_server() -> AsyncIterator[Any]:
    from tidings.dev.inbox import start_smtp

    # Tests find their mail by recipient among everything the session sent: keep it all.
    server = await start_smtp("127.0.0.1", 0, max_messages=1_000_000)
    yield server
    await server.close()


@pytest.fixture(scope="session")
async def wa_sandbox() -> AsyncIterator[Any]:
    from tidings.dev.whatsapp_sandbox import start_sandbox

    runner, base_url, sandbox = await start_sandbox(
        "127.0.0.1", 0, access_token="test-token", phone_number_id="1000001"
    )
    sandbox.base_url = base_url
    yield sandbox
    await runner.cleanup()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, smtp_server: Any, wa_sandbox: Any) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        public_base_url="http://tidings.test",
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        smtp_tls="none",
        smtp_pool_size=4,
        whatsapp_api_base_url=wa_sandbox.base_url,
        whatsapp_access_token="test-token",
        whatsapp_phone_number_id="1000001",
        whatsapp_app_secret="test-secret",
        whatsapp_verify_token="test-verify",
        queue_name=f"tidings-test:{RUN_ID}:queue",
        redis_prefix=f"tidings-test:{RUN_ID}:",
        retry_base_delay_s=0.05,
        retry_max_delay_s=0.2,
        retry_max_attempts=3,
        sync_send_timeout_s=5.0,
        key_cache_ttl_s=0.0,
        db_pool_min_size=1,
        db_pool_max_size=10,
        log_level="WARNING",
        worker_metrics_port=0,
        # Outbound webhooks: the session's worker delivers none (tests that want deliveries start
        # their own deliverer, tests/webhook_support.py, so that none competes with another);
        # receivers listen on 127.0.0.1, and retries come quickly.
        webhook_max_in_flight=0,
        webhook_allow_private_urls=True,
        webhook_retry_schedule_s="0.2,0.2,0.2",
        webhook_timeout_s=2.0,
        webhook_lease_s=4.0,
        # Sending domains' keys are stored under it (tests/test_domains.py); picked up quickly.
        secret_key=TEST_SECRET_KEY,
        dkim_key_cache_ttl_s=0.2,
    )


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(settings.database_url, min_size=1, max_size=5)
    yield p
    await p.close()


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    from api.app import create_app

    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


@pytest.fixture(scope="session")
async def worker(settings: Settings) -> AsyncIterator[Any]:
    from worker.main import serve

    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    yield task
    stop.set()
    await asyncio.wait_for(task, 30)


@dataclasses.dataclass
class Org:
    id: uuid.UUID
    keys: dict[str, str]

    def auth(self, *scopes: str) -> dict[str, str]:
        """Headers for a key with exactly these scopes (default: all three)."""
        name = ",".join(sorted(scopes or ("admin", "read", "write")))
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def path(self, rest: str = "") -> str:
        return f"/orgs/{self.id}{rest}"


@pytest.fixture
async def org(pool: asyncpg.Pool) -> Org:
    org_id = await orgs.create_org(pool, f"test org {uuid.uuid4().hex[:6]}")
    keys = {}
    for combo in itertools.chain.from_iterable(itertools.combinations(SCOPES, n) for n in (1, 2, 3)):
        keys[",".join(combo)] = await orgs.create_key(pool, org_id, list(combo))
    return Org(id=org_id, keys=keys)
