"""Embedded Postgres and Redis: they start, take real connections, keep their data across
restarts, stop for good, and recover from a process that was killed without stopping them."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tidings.dev.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis, create_database, drop_database

REPO = Path(__file__).resolve().parent.parent


def postmaster_running(pgdata: Path) -> bool:
    # pg_ctl removes postmaster.pid once the server has shut down.
    return (pgdata / "postmaster.pid").exists()


def folder_has_entries(folder: Path) -> bool:
    return any(folder.iterdir())


async def run_then_kill(script: str) -> None:
    """Run `script` in a fresh interpreter until it prints "ready", then SIGKILL it: no atexit,
    no finally, exactly what a crash or `kill -9` leaves behind."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(script),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            while (line := await process.stdout.readline()).strip() != b"ready":
                assert line, "the script ended before it was ready"
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()


async def test_postgres_accepts_connections_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    server = EmbeddedPostgres(pgdata)
    dsn = await server.start()
    try:
        assert dsn.startswith("postgresql://postgres@/postgres?")
        assert await server.start() == dsn  # starting twice is harmless
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        await conn.close()
    finally:
        await server.stop()
    assert not postmaster_running(pgdata)
    with pytest.raises(EmbeddedError):
        _ = server.dsn

    async with EmbeddedPostgres(pgdata) as again:
        conn = await asyncpg.connect(again.dsn)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "still here"
        finally:
            await conn.close()
    assert not postmaster_running(pgdata)


async def test_fresh_databases_are_created_and_dropped(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "postgres") as server:
        dsn = await create_database(server.dsn)
        conn = await asyncpg.connect(dsn)
        name = await conn.fetchval("SELECT current_database()")
        assert name.startswith("tidings_") and name != "postgres"
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"

        assert await create_database(server.dsn, name, exist_ok=True) == dsn
        with pytest.raises(asyncpg.DuplicateDatabaseError):
            await create_database(server.dsn, name)
        other = await create_database(server.dsn, "tidings_named")
        assert other.startswith("postgresql://postgres@/tidings_named?")

        # Dropping closes connections still open to it.
        await drop_database(server.dsn, name)
        assert conn.is_closed() or await _is_dead(conn)
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncpg.connect(dsn)
        await drop_database(server.dsn, name)  # already gone: nothing to do
        await drop_database(server.dsn, "tidings_named")


async def _is_dead(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return True
    finally:
        conn.terminate()
    return False


async def test_postgres_left_running_by_a_killed_process_is_adopted_then_stopped(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    try:
        await _postgres_left_running_is_adopted_then_stopped(pgdata)
    finally:
        if postmaster_running(pgdata):  # the test failed half-way: stop what it left
            async with EmbeddedPostgres(pgdata):
                pass


async def _postgres_left_running_is_adopted_then_stopped(pgdata: Path) -> None:
    await run_then_kill(f"""
        import asyncio, asyncpg
        from tidings.dev.embedded import EmbeddedPostgres
        async def main():
            dsn = await EmbeddedPostgres({str(pgdata)!r}).start()
            conn = await asyncpg.connect(dsn)
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('from before')")
            await conn.close()
            print("ready", flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
    """)
    assert postmaster_running(pgdata)

    async with EmbeddedPostgres(pgdata) as server:
        conn = await asyncpg.connect(server.dsn)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "from before"
        finally:
            await conn.close()
    # The killed process's claim on the server was forgotten, so stop() really stopped it.
    assert not postmaster_running(pgdata)


async def test_redis_listens_on_tcp_for_arq_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    folder = tmp_path / 'with space and "quotes"' / "redis"  # redis.conf needs them escaped
    server = EmbeddedRedis(folder)
    url = await server.start()
    try:
        assert url == f"redis://127.0.0.1:{server.port}/0"
        arq = await create_pool(RedisSettings.from_dsn(url))
        try:
            await arq.set("kept", "still here")
            assert await arq.get("kept") == b"still here"
        finally:
            await arq.aclose()
    finally:
        await server.stop()
    assert server.port is None

    client = Redis.from_url(url)
    with pytest.raises(RedisConnectionError):
        await client.ping()
    await client.aclose()

    async with EmbeddedRedis(folder) as again:
        client = Redis.from_url(again.url)
        assert await client.get("kept") == b"still here"
        await client.aclose()


async def test_redis_left_running_by_a_killed_process_is_shut_down_with_its_data_saved(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    try:
        await _redis_left_running_is_shut_down_with_its_data_saved(folder)
    finally:
        # Shuts down a leftover, if the test failed half-way, then the server it starts itself.
        async with EmbeddedRedis(folder):
            pass


async def _redis_left_running_is_shut_down_with_its_data_saved(folder: Path) -> None:
    await run_then_kill(f"""
        import asyncio
        from redis.asyncio import Redis
        from tidings.dev.embedded import EmbeddedRedis
        async def main():
            url = await EmbeddedRedis({str(folder)!r}).start()
            client = Redis.from_url(url)
            await client.set("kept", "from before")  # in memory only: no snapshot yet
            await client.aclose()
            print("ready", flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
    """)
    old_port = json.loads((folder / "embedded.json").read_text())["port"]
    old = Redis(port=old_port)
    assert await old.ping()

    async with EmbeddedRedis(folder) as server:
        with pytest.raises(RedisConnectionError):
            await old.ping()  # the leftover was shut down ...
        client = Redis.from_url(server.url)
        assert await client.get("kept") == b"from before"  # ... after saving what it held
        await client.aclose()
    await old.aclose()


async def test_a_data_folder_serves_one_process_at_a_time(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path / "redis"):
        with pytest.raises(EmbeddedError, match="in use"):
            await EmbeddedRedis(tmp_path / "redis").start()


async def test_postgres_refuses_a_folder_with_spaces(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedError, match="spaces"):
        await EmbeddedPostgres(tmp_path / "has space" / "postgres").start()
    assert not folder_has_entries(tmp_path)
