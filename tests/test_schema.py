"""The SQL the code names exists and prepares; migrations are idempotent; enums agree."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from shared import domain
from shared.migrate import available, migrate
from shared.sql import Q, parse
from tidings.dev.embedded import create_database, drop_database


async def test_every_named_statement_prepares(pool: asyncpg.Pool) -> None:
    # Every statement against today's schema, each failure named (test_data_layer.py checks
    # that every name the code uses is one of these).
    failed: dict[str, str] = {}
    async with pool.acquire() as conn:
        for name in Q.names():
            try:
                await conn.prepare(getattr(Q, name))
            except asyncpg.PostgresError as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
    assert failed == {}


def test_parser_rejects_duplicates_and_empty() -> None:
    import pytest

    with pytest.raises(ValueError):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    with pytest.raises(ValueError):
        parse("-- name: a\n-- only a comment\n")
    assert parse("-- name: a\n-- purpose\nSELECT 1;") == {"a": "SELECT 1"}


async def test_unknown_statement_name_fails_loudly() -> None:
    import pytest

    with pytest.raises(AttributeError):
        _ = Q.no_such_statement


async def test_enums_match_python(pool: asyncpg.Pool) -> None:
    pairs = {
        "broadcast_type": domain.BroadcastType,
        "broadcast_status": domain.BroadcastStatus,
        "channel": domain.Channel,
        "contact_status": domain.ContactStatus,
        "message_status": domain.MessageStatus,
        "message_source": domain.MessageSource,
    }
    for pg_name, enum in pairs.items():
        labels = await pool.fetchval("SELECT enum_range(NULL::" + pg_name + ")::text[]")
        assert labels == [e.value for e in enum], pg_name


async def test_concurrent_migrations_apply_once(admin_dsn: str) -> None:
    name = f"tidings_migrate_{uuid.uuid4().hex[:8]}"
    dsn = await create_database(admin_dsn, name)
    try:
        results = await asyncio.gather(*(migrate(dsn) for _ in range(4)))
        applied = [r for r in results if r]
        assert len(applied) == 1 and applied[0] == [n for n, _ in available()]
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(available())
        finally:
            await conn.close()
        assert await migrate(dsn) == []
    finally:
        await drop_database(admin_dsn, name)
