"""Contacts and their channels: create, read, change, and race-safe find-or-create. The
contact aggregate's data layer: every statement about a contact runs here."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from shared import addresses, db, errors
from shared.domain import Channel
from shared.sql import Q

# The contact field each channel type fills.
FIELD_OF = {Channel.email: "email", Channel.whatsapp: "phone"}


def normalize(channel_type: str, raw: str, *, field: str | None = None) -> str:
    """Normalize an address for its channel type; an invalid one is a 422 naming `field`."""
    # Looked up by the plain string (a Channel is a str enum): no enum made per call.
    field = field or FIELD_OF[channel_type]  # type: ignore[index]
    try:
        if channel_type == Channel.email:
            return addresses.normalize_email(raw)
        return addresses.normalize_phone(raw)
    except addresses.InvalidAddress as exc:
        raise errors.ValidationFailed(f"{field}: {exc}", fields={field: [str(exc)]}) from exc


def contact_json(row: Mapping[str, Any], channels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = first_addresses(channels)
    return {
        "id": row["id"],
        "name": row["name"],
        "email": first.get(Channel.email),
        "phone": first.get(Channel.whatsapp),
        "status": row["status"],
        "properties": row["properties"],
        "channels": [{"id": c["id"], "type": c["type"], "address": c["address"]} for c in channels],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def first_addresses(channels: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The contact's email and phone: the oldest channel of each type."""
    out: dict[str, str] = {}
    for c in channels:
        out.setdefault(c["type"], c["address"])
    return out


@db.translated
async def channels_of(conn: asyncpg.Connection | asyncpg.Pool, contact_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(await conn.fetch(Q.select_contact_channels, [contact_id]))


@db.translated
async def get(pool: asyncpg.Pool, org_id: uuid.UUID, contact_id: uuid.UUID) -> dict[str, Any]:
    """One contact of the org, with its channels, as JSON."""
    row = await pool.fetchrow(Q.select_contact, contact_id, org_id)
    if row is None:
        raise errors.ContactNotFound()
    return contact_json(row, await channels_of(pool, row["id"]))


@db.translated
async def update(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    name: str | None,
    name_given: bool,
    status: str | None,
    properties: dict[str, Any] | None,
) -> dict[str, Any]:
    """Change what is given (None: unchanged; `name_given` with None clears the name)."""
    row = await pool.fetchrow(Q.update_contact, contact_id, org_id, name, status, properties, name_given)
    if row is None:
        raise errors.ContactNotFound()
    return contact_json(row, await channels_of(pool, row["id"]))


@db.translated
async def create(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    *,
    name: str | None,
    email: str | None,
    phone: str | None,
    status: str,
    properties: dict[str, Any],
) -> dict[str, Any]:
    wanted = [(t, a) for t, a in ((Channel.email, email), (Channel.whatsapp, phone)) if a]
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q.insert_contact, uuid.uuid4(), org_id, name, status, properties)
        assert row is not None
        channels = []
        for channel_type, address in wanted:
            ch = await conn.fetchrow(Q.insert_contact_channel, uuid.uuid4(), org_id, row["id"], channel_type, address)
            if ch is None:
                # Raising rolls the transaction back: the new contact is not kept.
                raise errors.Conflict(
                    f"a contact with this {FIELD_OF[channel_type]} already exists in this org",
                    fields={FIELD_OF[channel_type]: ["already belongs to a contact"]},
                )
            channels.append(ch)
    return contact_json(row, channels)


@db.translated
async def add_channel(
    pool: asyncpg.Pool, org_id: uuid.UUID, contact_id: uuid.UUID, channel_type: str, address: str
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        if await conn.fetchrow(Q.select_contact, contact_id, org_id) is None:
            raise errors.ContactNotFound()
        ch = await conn.fetchrow(Q.insert_contact_channel, uuid.uuid4(), org_id, contact_id, channel_type, address)
    if ch is None:
        raise errors.Conflict(
            "this address already belongs to a contact in this org",
            fields={"address": ["already belongs to a contact"]},
        )
    return {"id": ch["id"], "type": ch["type"], "address": ch["address"]}


@db.translated
async def find_many(
    pool: asyncpg.Pool, org_id: uuid.UUID, pairs: Sequence[tuple[str | None, str | None]]
) -> list[tuple[asyncpg.Record, list[Any]] | None]:
    """For each (email, phone), what `find_or_create` would find without writing anything: the
    contact owning the email (else the phone) when it already has every address given, with its
    channels; else None (it must be created, or given a channel: `find_or_create` does that)."""
    rows = await pool.fetch(Q.select_contacts_by_addresses_batch, org_id, [e for e, _ in pairs], [p for _, p in pairs])
    out: list[tuple[asyncpg.Record, list[Any]] | None] = []
    for (email, phone), row in zip(pairs, rows, strict=True):
        if row["id"] is None:
            out.append(None)
            continue
        channels: list[Any] = row["channels"] or []
        have = {(c["type"], c["address"]) for c in channels}
        wanted = {(t, a) for t, a in ((Channel.email, email), (Channel.whatsapp, phone)) if a}
        out.append((row, channels) if wanted <= have else None)
    return out


@db.translated
async def find_or_create(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, email: str | None, phone: str | None, name: str | None
) -> tuple[asyncpg.Record, list[Any]]:
    """The contact owning `email` (else `phone`), created with both when neither is known.

    Safe under concurrent triggers for the same new address: the unique key on
    (org, type, address) lets exactly one creator win; a loser rolls back its new contact
    and takes the winner's. An address given beside a known one is attached to that
    contact when no other contact owns it.
    """
    wanted = [(t, a) for t, a in ((Channel.email, email), (Channel.whatsapp, phone)) if a]
    for _ in range(5):
        found = await pool.fetchrow(Q.select_contact_by_addresses, org_id, email, phone)
        if found is not None:
            channels: list[Any] = found["channels"] or []
            have = {(c["type"], c["address"]) for c in channels}
            missing = [(t, a) for t, a in wanted if (t, a) not in have]
            for channel_type, address in missing:
                # Attached only if no other contact owns it (the unique key decides).
                await pool.execute(Q.insert_contact_channel, uuid.uuid4(), org_id, found["id"], channel_type, address)
            if missing:
                channels = await channels_of(pool, found["id"])
            return found, channels
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                contact = await conn.fetchrow(Q.insert_contact, uuid.uuid4(), org_id, name, "subscribed", {})
                assert contact is not None
                channels = []
                lost_race = False  # another trigger created a contact for one of these addresses
                for channel_type, address in wanted:
                    ch = await conn.fetchrow(
                        Q.insert_contact_channel, uuid.uuid4(), org_id, contact["id"], channel_type, address
                    )
                    if ch is None:
                        lost_race = True
                        break
                    channels.append(ch)
            except BaseException:
                await tx.rollback()
                raise
            if lost_race:
                await tx.rollback()
                continue
            await tx.commit()
            return contact, channels
    raise errors.Unavailable("could not resolve the contact under contention; retry")
