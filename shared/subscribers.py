"""Subscribers of the Transactionals API: contacts seen through that API's eyes.

A subscriber is a contact with an email channel, first and last names, a confirmation
state (double opt-in) and a redaction state. Redaction (GDPR erasure) removes every
personal field and every trace of the addresses in messages, and keeps only a salted
hash of each address so that the address stays blocked.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from shared import contacts, db, errors, field_errors, webhook_endpoints
from shared.domain import Channel, ContactStatus
from shared.sql import Q

REDACTED_ERROR = "the recipient is a redacted subscriber; nothing was sent"


def full_name(first_name: str | None, last_name: str | None) -> str | None:
    joined = " ".join(part.strip() for part in (first_name, last_name) if part and part.strip())
    return joined or None


def display_name(row: Mapping[str, Any]) -> str | None:
    """The name a recipient is addressed by: first and last names, else the contact's name."""
    name: str | None = full_name(row["first_name"], row["last_name"]) or row["name"]
    return name


def subscriber_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "email": row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "confirmed": row["confirmed_at"] is not None,
        "unsubscribed": row["status"] == ContactStatus.unsubscribed,
        "redacted": row["redacted_at"] is not None,
        "created_at": row["created_at"],
    }


# Asked for every email an accepted send writes (`insert_sends_batch` checks redacted
# addresses by it); the same recipients come back, so it is kept for them.
@functools.lru_cache(maxsize=65536)
def address_hash(org_id: uuid.UUID, channel: str, address: str) -> bytes:
    """What redaction keeps of an address. Salted with the org id, so that one org's list
    says nothing about another's; an address is blocked by recomputing this hash."""
    return hashlib.sha256(org_id.bytes + b"\0" + channel.encode() + b"\0" + address.lower().encode()).digest()


@db.translated
async def is_redacted(db: asyncpg.Pool | asyncpg.Connection, org_id: uuid.UUID, email: str) -> bool:
    """Whether `email` belonged to a subscriber of this org who was redacted."""
    found = await db.fetchval(Q.select_address_redacted, org_id, Channel.email, address_hash(org_id, "email", email))
    return found is not None


@db.translated
async def find_by_email(db: asyncpg.Pool | asyncpg.Connection, org_id: uuid.UUID, email: str) -> asyncpg.Record | None:
    return await db.fetchrow(Q.select_subscriber_by_email, org_id, email)


@db.translated
async def get(pool: asyncpg.Pool, org_id: uuid.UUID, subscriber_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow(Q.select_subscriber, subscriber_id, org_id)
    if row is None:
        raise errors.NotFound("no such subscriber")
    return row


@db.translated
async def create(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    *,
    email: str,
    first_name: str | None,
    last_name: str | None,
    confirmed: bool,
    unsubscribed: bool,
) -> asyncpg.Record:
    """A new subscriber; its address must be new to the org and never redacted in it."""
    if await is_redacted(pool, org_id, email):
        raise errors.ValidationFailed("email belongs to a redacted subscriber", fields={"email": ["has been redacted"]})
    status = ContactStatus.unsubscribed if unsubscribed else ContactStatus.subscribed
    confirmed_at = dt.datetime.now(dt.UTC) if confirmed else None
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            Q.insert_subscriber,
            uuid.uuid4(),
            org_id,
            full_name(first_name, last_name),
            status,
            first_name,
            last_name,
            confirmed_at,
        )
        assert row is not None
        channel = await conn.fetchrow(Q.insert_contact_channel, uuid.uuid4(), org_id, row["id"], Channel.email, email)
        if channel is None:
            # Raising rolls the new contact back.
            raise errors.ValidationFailed("email has already been taken", fields={"email": [field_errors.TAKEN]})
        created = await conn.fetchrow(Q.select_subscriber, row["id"], org_id)
    assert created is not None
    return created


@db.translated
async def find_or_create(
    pool: asyncpg.Pool, org_id: uuid.UUID, email: str, *, first_name: str | None, last_name: str | None
) -> asyncpg.Record:
    """The subscriber owning `email`, created (unconfirmed) when there is none. Names given
    fill the ones it lacks; names it has are kept. Race-safe through `contacts.find_or_create`."""
    name = full_name(first_name, last_name)
    contact, _ = await contacts.find_or_create(pool, org_id, email=email, phone=None, name=name)
    await pool.execute(Q.fill_subscriber_names, contact["id"], org_id, first_name, last_name, name)
    row = await find_by_email(pool, org_id, email)
    if row is None:  # the address moved to another contact meanwhile; that one is the subscriber now
        raise errors.Unavailable("the subscriber changed while it was being resolved; retry")
    return row


@db.translated
async def redact(pool: asyncpg.Pool, org_id: uuid.UUID, subscriber_id: uuid.UUID) -> asyncpg.Record:
    """GDPR erasure, in one transaction: names, properties and addresses erased; every
    message to the subscriber or its addresses loses its address, content and variables
    (unsent ones are rejected); its links stop working; stored replays quoting the address
    are dropped. Only a hash of each address is kept, to keep blocking it. Idempotent."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(Q.lock_subscriber, subscriber_id, org_id) is None:
            raise errors.NotFound("no such subscriber")
        channels = await conn.fetch(Q.select_contact_channels, [subscriber_id])
        await conn.execute(
            Q.insert_redacted_addresses,
            org_id,
            [c["type"] for c in channels],
            [address_hash(org_id, c["type"], c["address"]) for c in channels],
        )
        emails = sorted({c["address"].lower() for c in channels if c["type"] == Channel.email})
        phones = sorted({c["address"] for c in channels if c["type"] == Channel.whatsapp})
        quoted = [*emails, *phones]
        # Matches any quoted address, whatever its case; a pattern that can match nothing when none.
        pattern = "|".join(re.escape(a) for a in quoted) if quoted else "(?!)"

        messages = await conn.fetch(Q.select_messages_of_subscriber, org_id, subscriber_id, quoted)
        message_ids = [m["id"] for m in messages]
        await conn.fetch(Q.reject_unsent_messages, message_ids, REDACTED_ERROR)
        await conn.execute(Q.erase_send_variables, message_ids)
        await conn.execute(Q.erase_messages, message_ids, pattern)
        await conn.execute(Q.erase_message_events, message_ids, pattern)
        await conn.execute(Q.erase_transactionals, message_ids)
        # Webhook events not yet posted (or posted again) must not quote the addresses either.
        await webhook_endpoints.erase_addresses(conn, org_id, subscriber_id, message_ids, pattern)

        await conn.execute(Q.delete_confirmations_of_contact, subscriber_id)
        await conn.execute(Q.delete_unsubscribe_tokens_of, org_id, subscriber_id, emails)
        await conn.execute(Q.delete_suppressions_of, org_id, emails)
        await conn.execute(Q.delete_idempotent_responses_naming, org_id, [a.lower() for a in quoted])
        await conn.execute(Q.delete_subscriber_channels, subscriber_id)
        await conn.execute(Q.erase_subscriber, subscriber_id)
        row = await conn.fetchrow(Q.select_subscriber, subscriber_id, org_id)
    assert row is not None
    return row
