"""Unsubscribe links: `{{ unsubscribe_url }}`, the List-Unsubscribe header, and following them.

A link names an address in an org. Following it (the page's button, or a mail client's
RFC 8058 one-click POST) makes the contact owning that address `unsubscribed`, creating
the contact when there is none, so that the Broadcasts API refuses it from then on.
Transactional email still reaches it (that is the Transactionals API's rule).
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid

import asyncpg

from shared import contacts
from shared.domain import ContactStatus
from shared.sql import Q

TOKEN_BYTES = 32
# Longer than any token we issue: such a path is answered as unknown without a lookup.
MAX_TOKEN_LENGTH = 100
ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    org_name: str
    already_unsubscribed: bool


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def url_for(public_base: str, token: str) -> str:
    return f"{public_base}/unsubscribe/{token}"


def headers_for(url: str) -> dict[str, str]:
    """RFC 2369 List-Unsubscribe with RFC 8058 one-click: mail clients POST to the URL."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": ONE_CLICK}


async def create(
    conn: asyncpg.Connection, org_id: uuid.UUID, email: str, contact_id: uuid.UUID | None, token: str
) -> None:
    await conn.execute(Q.insert_unsubscribe_token, token, org_id, email, contact_id)


async def look_up(pool: asyncpg.Pool, token: str) -> Link | None:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = await pool.fetchrow(Q.select_unsubscribe_token, token)
    if row is None:
        return None
    return Link(org_name=row["org_name"], already_unsubscribed=row["contact_status"] == ContactStatus.unsubscribed)


async def follow(pool: asyncpg.Pool, token: str) -> Link | None:
    """Unsubscribe the link's address; None when the token is unknown. Repeating is harmless."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = await pool.fetchrow(Q.select_unsubscribe_token, token)
    if row is None:
        return None
    contact, _ = await contacts.find_or_create(pool, row["org_id"], email=row["email"], phone=None, name=None)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.unsubscribe_contact, contact["id"])
        await conn.execute(Q.mark_unsubscribe_token_used, token)
    return Link(org_name=row["org_name"], already_unsubscribed=True)
