"""Double opt-in: confirmation links, following them, and the copy of the page they open.

A link is a random token (256 bits) naming one subscriber. Following it in time confirms
the subscriber (`confirmed`); following it again, or any link of a subscriber already
confirmed, says so (`already_confirmed`); an unknown or expired token gets `invalid`.
The page copy comes from the link's confirmation template, else the org's default one,
else English defaults, state by state and field by field.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import uuid
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import asyncpg

from shared import db, errors
from shared.sql import Q

# How long a confirmation link works, counted from when its email is due to leave.
CONFIRMATION_TTL = dt.timedelta(days=7)
TOKEN_BYTES = 32
# Longer than any token we issue: such a path is answered `invalid` without a lookup.
MAX_TOKEN_LENGTH = 100


class PageState(StrEnum):
    confirmed = "confirmed"
    already_confirmed = "already_confirmed"
    invalid = "invalid"


ENGLISH_PAGES: dict[str, dict[str, str]] = {
    PageState.confirmed: {
        "heading": "Subscription confirmed",
        "body": "Thank you! Your subscription is confirmed.",
    },
    PageState.already_confirmed: {
        "heading": "Already confirmed",
        "body": "Your subscription was already confirmed. There is nothing more to do.",
    },
    PageState.invalid: {
        "heading": "This link is not valid",
        "body": "This confirmation link is invalid or has expired. Sign up again to receive a new confirmation email.",
    },
}
PAGE_FIELDS = ("heading", "body")


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    state: PageState
    heading: str
    body: str


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def url_for(public_base: str, token: str) -> str:
    return f"{public_base}/confirm/{token}"


def expiry_for(queue_at: dt.datetime) -> dt.datetime:
    # A scheduled email's link must still work when the email arrives.
    return max(queue_at, dt.datetime.now(dt.UTC)) + CONFIRMATION_TTL


@db.translated
async def create_many(
    conn: asyncpg.Connection,
    links: Sequence[tuple[str, uuid.UUID, uuid.UUID | None, uuid.UUID | None, dt.datetime]],
) -> None:
    """New double opt-in links in one statement: (token, org, subscriber, page copy, expiry)."""
    await conn.execute(
        Q.insert_confirmations,
        *([link[i] for link in links] for i in range(5)),
    )


def page_copy(state: PageState, *candidates: Mapping[str, Any] | None) -> Page:
    """Each field from the first template that sets it for this state, else English."""
    values: dict[str, str] = {}
    for field in PAGE_FIELDS:
        for pages in candidates:
            page = (pages or {}).get(state) or {}
            if page.get(field):
                values[field] = page[field]
                break
        else:
            values[field] = ENGLISH_PAGES[state][field]
    return Page(state=state, heading=values["heading"], body=values["body"])


@db.translated
async def follow(pool: asyncpg.Pool, token: str) -> Page:
    """Follow a confirmation link: confirm when it is due, and say what happened."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return page_copy(PageState.invalid)
    async with pool.acquire() as conn, conn.transaction():
        link = await conn.fetchrow(Q.lock_confirmation, token)
        if link is None:
            # Nothing is known about whom the token was for: the org's copy cannot be chosen.
            return page_copy(PageState.invalid)
        if link["confirmed_at"] is not None or link["contact_confirmed_at"] is not None:
            state = PageState.already_confirmed
        elif link["expired"]:
            state = PageState.invalid
        else:
            await conn.execute(Q.confirm_subscriber, token, link["contact_id"])
            state = PageState.confirmed
        pages = await conn.fetchrow(Q.select_confirmation_pages, link["org_id"], link["confirmation_template_id"])
    assert pages is not None
    return page_copy(state, pages["chosen"], pages["org_default"])


def template_json(row: Mapping[str, Any]) -> dict[str, Any]:
    stored = row["pages"]
    return {
        "id": row["id"],
        "name": row["name"],
        "pages": {state.value: {f: (stored.get(state) or {}).get(f) for f in PAGE_FIELDS} for state in PageState},
        "default": row["is_default"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


@db.translated
async def create_template(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, name: str, pages: dict[str, dict[str, str]], is_default: bool
) -> asyncpg.Record:
    async with pool.acquire() as conn, conn.transaction():
        if is_default:
            await conn.execute(Q.clear_default_confirmation_template, org_id)
        # Two defaults made at once: the unique index refuses one, which is told (409) to retry.
        row = await conn.fetchrow(Q.insert_confirmation_template, uuid.uuid4(), org_id, name, pages, is_default)
    assert row is not None
    return row


@db.translated
async def get_template(pool: asyncpg.Pool, org_id: uuid.UUID, template_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow(Q.select_confirmation_template, template_id, org_id)
    if row is None:
        raise errors.NotFound("no such confirmation template")
    return row
