"""Unsubscribe links: `{{ unsubscribe_url }}`, the List-Unsubscribe header, and following them.

A link names an address in an org, and the contact it was sent to when there was one (a
Broadcasts API send always has one). Following it (the page's button, or a mail client's
RFC 8058 one-click POST) makes that contact `unsubscribed`, or else the contact owning the
address, created when there is none, so that the Broadcasts API refuses it from then on.
Transactional email still reaches it (that is the Transactionals API's rule).

An email whose template uses `{{ unsubscribe_url }}` (a Broadcasts API template) or that
asked for the link (`include_unsubscribe_link`) carries the RFC 2369/8058 headers for it.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from shared import contacts, db
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


def headers_for_template(sources: frozenset[str], data: Mapping[str, Any]) -> dict[str, str]:
    """The headers for an email whose template uses `{{ unsubscribe_url }}` (`sources`: the
    variables it uses) and whose send has the link; else none."""
    url = data.get("unsubscribe_url")
    return headers_for(url) if url and isinstance(url, str) and "unsubscribe_url" in sources else {}


@db.translated
async def create_many(
    pool: asyncpg.Pool | asyncpg.Connection, links: Sequence[tuple[uuid.UUID, uuid.UUID | None, str, str]]
) -> None:
    """Many links in one statement: (org id, contact id, token, email address or "")."""
    await pool.execute(
        Q.insert_unsubscribe_tokens,
        [token for _, _, token, _ in links],
        [org_id for org_id, _, _, _ in links],
        [email for _, _, _, email in links],
        [contact_id for _, contact_id, _, _ in links],
    )


@db.translated
async def look_up(pool: asyncpg.Pool, token: str) -> Link | None:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = await pool.fetchrow(Q.select_unsubscribe_token, token)
    if row is None:
        return None
    return Link(org_name=row["org_name"], already_unsubscribed=row["contact_status"] == ContactStatus.unsubscribed)


@db.translated
async def follow(pool: asyncpg.Pool, token: str) -> Link | None:
    """Unsubscribe the link's address; None when the token is unknown. Repeating is harmless."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = await pool.fetchrow(Q.select_unsubscribe_token, token)
    if row is None:
        return None
    contact_id = row["contact_id"]
    if contact_id is None:
        if not row["email"]:  # a link to a contact that was deleted since, and had no email
            return None
        contact, _ = await contacts.find_or_create(pool, row["org_id"], email=row["email"], phone=None, name=None)
        contact_id = contact["id"]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.unsubscribe_contact, contact_id)
        await conn.execute(Q.mark_unsubscribe_token_used, token)
    return Link(org_name=row["org_name"], already_unsubscribed=True)
