"""Sending domains: an org registers a domain, tidings makes its DKIM key (RSA-2048) and
tells the DNS record to publish; the worker signs the org's mail From that domain with it
(`d=` that domain, so DMARC aligns). Also the org's default sender for `/api/v1` sends.

The private key is sealed under SECRET_KEY (`shared.secret_box`) before it is written and
opened only in the worker that signs with it: no response, log line or metric carries it
(the api's answers are built from the public half alone).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import db, errors
from shared.secret_box import SecretBox
from shared.sql import Q

KEY_BITS = 2048  # what Gmail and Yahoo expect of a bulk sender (RFC 8301: 1024 at least)
ALGORITHM = "rsa-sha256"
MAX_DOMAIN_CHARS = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def normalize_domain(raw: object, field: str = "domain") -> str:
    """A domain name as stored and compared: lower-case ASCII (IDNA for a Unicode name), no
    trailing dot, at least two labels of letters, digits and inner hyphens, a top-level label
    that is not all digits (an IP address is not a domain). Anything else: 422 naming `field`."""

    def refuse(why: str) -> errors.ValidationFailed:
        return errors.ValidationFailed(f"{field}: {why}", fields={field: [why]})

    if not isinstance(raw, str) or not raw.strip():
        raise refuse("must be a domain name, like mail.example.com")
    name = raw.strip().lower().removesuffix(".")
    if "@" in name or "/" in name or ":" in name:
        raise refuse(f"must be a domain name alone (no address, scheme or path), not {raw!r}")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise refuse(f"is not a valid internationalised domain name: {raw!r}") from None
    labels = name.split(".")
    if len(name) > MAX_DOMAIN_CHARS or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise refuse(f"is not a domain name: {raw!r}")
    if labels[-1].isdigit():
        raise refuse(f"is an IP address, not a domain name: {raw!r}")
    return name


def dns_value(public_key_der: bytes) -> str:
    """The TXT record's value (RFC 6376 3.6.1)."""
    return f"v=DKIM1; k=rsa; p={base64.b64encode(public_key_der).decode()}"


# One DNS character-string holds at most 255 bytes (RFC 1035 3.3); a longer TXT value is
# published as several strings on one record, which receivers join without spaces (RFC 6376 3.6.2.2).
TXT_STRING_CHARS = 255


def txt_strings(value: str, size: int = TXT_STRING_CHARS) -> list[str]:
    """A TXT value split into the character-strings a zone file needs (the value is ASCII)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def domain_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A domain as the api answers it: the public half only."""
    return {
        "id": str(row["id"]),
        "domain": row["domain"],
        "dkim": {
            "selector": row["selector"],
            "algorithm": ALGORITHM,
            "dns_name": f"{row['selector']}._domainkey.{row['domain']}",
            "dns_value": dns_value(row["public_key_der"]),
        },
        "created_at": row["created_at"],
    }


def _new_key() -> tuple[bytes, bytes]:
    """A new RSA-2048 key: (private PEM, PKCS#8; public DER, SubjectPublicKeyInfo)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, der


def new_selector() -> str:
    # Unique per key, so that a domain registered again (a new key) never reuses the DNS name
    # of the old one, which resolvers may still cache.
    return f"tidings{dt.datetime.now(dt.UTC):%Y%m}-{secrets.token_hex(3)}"


@db.translated
async def register(pool: asyncpg.Pool, box: SecretBox, org_id: uuid.UUID, domain: str) -> asyncpg.Record:
    """Register `domain` (already normalized) for the org with a new key; Conflict when any
    org has it."""
    # Key generation takes 50-500 ms of CPU: off the event loop.
    pem, der = await asyncio.to_thread(_new_key)
    domain_id = uuid.uuid4()
    sealed = box.seal(pem, bound_to=domain_id.bytes)
    try:
        row = await pool.fetchrow(Q.insert_org_domain, domain_id, org_id, domain, new_selector(), sealed, der)
    except asyncpg.UniqueViolationError as exc:
        raise errors.Conflict(
            f"domain {domain} is already registered (in this org or another)",
            fields={"domain": [f"{domain} is already registered"]},
        ) from exc
    assert row is not None
    return row


async def create(pool: asyncpg.Pool, secret_key: str, org_id: uuid.UUID, raw_domain: object) -> asyncpg.Record:
    """Register a domain as typed (the API's body, the console's form): checked first (422
    naming `domain`), then SECRET_KEY (SecretKeyMissing, 503, when unset), then a new key and
    the row (409 when any org has the domain). The API's and the console's one path."""
    domain = normalize_domain(raw_domain)
    box = SecretBox(secret_key)
    return await register(pool, box, org_id, domain)


@db.translated
async def list_for(pool: asyncpg.Pool, org_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(await pool.fetch(Q.select_org_domains, org_id))


@db.translated
async def get(pool: asyncpg.Pool, org_id: uuid.UUID, domain_id: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record | None = await pool.fetchrow(Q.select_org_domain, org_id, domain_id)
    if row is None:
        raise errors.NotFound("no such sending domain in this org")
    return row


@db.translated
async def delete(pool: asyncpg.Pool, org_id: uuid.UUID, domain_id: uuid.UUID) -> None:
    if await pool.fetchrow(Q.delete_org_domain, org_id, domain_id) is None:
        raise errors.NotFound("no such sending domain in this org")


@db.translated
async def signing_key(pool: asyncpg.Pool, org_id: uuid.UUID, domain: str) -> asyncpg.Record | None:
    """The worker: the org's key for mail From `domain`, still sealed; None: not registered."""
    row: asyncpg.Record | None = await pool.fetchrow(Q.select_signing_key, org_id, domain)
    return row


def open_key(box: SecretBox, row: Mapping[str, Any]) -> bytes:
    """The private key (PEM) of a `signing_key` row; SecretKeyWrong if SECRET_KEY cannot open it."""
    return box.open(row["private_key_encrypted"], bound_to=row["id"].bytes)


@db.translated
async def secret_key_problem(conn: asyncpg.Connection | asyncpg.Pool, secret_key: str) -> str | None:
    """Start-up (api and worker): what is wrong with SECRET_KEY given the stored keys, or None.
    No stored key (or a database not yet migrated): nothing is needed."""
    try:
        row = await conn.fetchrow(Q.select_any_signing_key)
    except asyncpg.UndefinedTableError:
        return None
    if row is None:
        return None
    if not secret_key:
        return (
            "SECRET_KEY is not set, and sending domains with DKIM keys stored under it exist; "
            "set it to the key they were stored under"
        )
    try:
        open_key(SecretBox(secret_key), row)
    except errors.TidingsError:
        return (
            "SECRET_KEY does not decrypt the stored DKIM keys of the sending domains: "
            "it is not the key they were stored under"
        )
    return None


# ---- the org's default sender (`/api/v1` sends) ----


@db.translated
async def org_sender(pool: asyncpg.Pool, org_id: uuid.UUID) -> tuple[str | None, str | None]:
    """(from_email, from_name) set for the org; None for either: the service-wide default."""
    row = await pool.fetchrow(Q.select_org_sender, org_id)
    if row is None:
        return None, None
    return row["from_email"], row["from_name"]


@db.translated
async def set_org_sender(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, from_email: str | None, from_name: str | None
) -> asyncpg.Record | None:
    """Set what is given (None: unchanged; "": back to the default). None: no such org."""
    row: asyncpg.Record | None = await pool.fetchrow(
        Q.update_org_sender, org_id, from_email is not None, from_email, from_name is not None, from_name
    )
    return row


class SenderCache:
    """The org's default sender, per process, for `ttl_s`: one round trip per org and period
    on the `/api/v1` send path instead of one per send. A change by the operator reaches new
    sends within `ttl_s`."""

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[uuid.UUID, tuple[tuple[str | None, str | None], float]] = {}

    async def get(self, pool: asyncpg.Pool, org_id: uuid.UUID) -> tuple[str | None, str | None]:
        hit = self._entries.get(org_id)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        value = await org_sender(pool, org_id)
        if self.ttl_s > 0:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[org_id] = (value, now + self.ttl_s)
        return value
