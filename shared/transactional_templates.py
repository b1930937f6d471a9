"""Email templates of the Transactionals API: Liquid `subject`, `body` and `preheader`
that a send uses as defaults (explicit fields in the send win)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from shared import cursors, db, errors
from shared.sql import Q


def template_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "subject": row["subject"],
        "body": row["body"],
        "preheader": row["preheader"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


@db.translated
async def create(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    *,
    name: str,
    subject: str | None,
    body: str | None,
    preheader: str | None,
) -> asyncpg.Record:
    row = await pool.fetchrow(Q.insert_transactional_template, uuid.uuid4(), org_id, name, subject, body, preheader)
    assert row is not None
    return row


@db.translated
async def find(
    db: asyncpg.Pool | asyncpg.Connection, org_id: uuid.UUID, template_id: str | int | None
) -> asyncpg.Record | None:
    """The org's template with this id; None for anything else (another org's, a malformed id)."""
    try:
        parsed = uuid.UUID(str(template_id))
    except ValueError:
        return None
    return await db.fetchrow(Q.select_transactional_template, parsed, org_id)


@db.translated
async def get(pool: asyncpg.Pool, org_id: uuid.UUID, template_id: uuid.UUID) -> asyncpg.Record:
    row = await find(pool, org_id, str(template_id))
    if row is None:
        raise errors.NotFound("no such template")
    return row


@db.translated
async def page(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    after_at, after_id = cursors.decode(cursor)
    rows = await pool.fetch(Q.select_transactional_templates_page, org_id, after_at, after_id, limit + 1)
    return cursors.split_page(rows, limit)
