"""Plain SQL migrations applied in order, recorded in a table, under an advisory lock.

Several replicas may run `tidings migrate` at once: the first takes the lock and
applies what is missing, the others wait on the lock and then find nothing to do.
"""

from __future__ import annotations

from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger("tidings.migrate")

# Arbitrary but fixed: the key of the advisory lock every migrating process takes.
MIGRATION_LOCK_KEY = 0x7469_6469_6E67


def available() -> list[tuple[str, str]]:
    folder = resources.files("shared") / "migrations"
    files = sorted((e.name, e.read_text(encoding="utf-8")) for e in folder.iterdir() if e.name.endswith(".sql"))
    return files


async def migrate(dsn: str) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied by this call."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in available():
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied_now.append(name)
                log.info("migration_applied", migration=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied_now
