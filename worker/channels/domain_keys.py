"""The DKIM key of an org's sending domain, for the email channel: mail whose From domain the
org registered is signed with that domain's key (`d=` that domain, so DMARC aligns).

Looked up per (org, From domain) and kept for DKIM_KEY_CACHE_TTL_S, absence included (most
mail may come from domains nobody registered): one Postgres round trip per org, domain and
period, not per message. So a domain added, removed or registered anew (a new key and
selector) is signed with within that period, without a restart. Concurrent messages that
find the same entry expired share one look-up. A parsed key is kept by its row id: a
refresh that finds the same key does not decrypt or parse it again (parsing checks the RSA
key, milliseconds of CPU).

Failures are the message's to wait out, never a wrong signature: a key SECRET_KEY cannot
open, or Postgres away with nothing cached, is a transient failure (retried later); Postgres
away with a stale entry keeps using it. The private key is never logged.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import structlog

from shared import db, errors, sending_domains
from shared.config import Settings
from shared.secret_box import SecretBox
from worker.channels.base import TransientDeliveryError
from worker.channels.dkim import DkimConfigError, DkimSigner

log = structlog.get_logger("tidings.worker")

Key = tuple[uuid.UUID, str]
MAX_ENTRIES = 50_000


def from_domain(from_email: str) -> str | None:
    """The From address's domain as domains are stored (lower-case, IDNA); None: none."""
    domain = from_email.rpartition("@")[2].strip().lower().removesuffix(".")
    if not domain:
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return domain


class DomainKeys:
    def __init__(self, settings: Settings, pool: db.Pool) -> None:
        self._pool = pool
        self._ttl_s = settings.dkim_key_cache_ttl_s
        self._box = SecretBox(settings.secret_key) if settings.secret_key else None
        self._entries: dict[Key, tuple[DkimSigner | None, float]] = {}
        self._parsed: dict[uuid.UUID, DkimSigner] = {}
        self._loading: dict[Key, asyncio.Future[DkimSigner | None]] = {}

    async def signer(self, org_id: uuid.UUID, from_email: str) -> DkimSigner | None:
        """The signer for the org's mail From this address; None: the domain is not the org's."""
        domain = from_domain(from_email)
        if domain is None:
            return None
        key = (org_id, domain)
        hit = self._entries.get(key)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key, hit))
            self._loading[key] = loading

            def done(future: asyncio.Future[DkimSigner | None]) -> None:
                self._loading.pop(key, None)
                if not future.cancelled():
                    future.exception()  # retrieved: every waiter may have been cancelled

            loading.add_done_callback(done)
        # Shielded: one waiter cancelled (its message's deadline) does not cancel the others' look-up.
        return await asyncio.shield(loading)

    async def _load(self, key: Key, stale: tuple[DkimSigner | None, float] | None) -> DkimSigner | None:
        org_id, domain = key
        try:
            row = await sending_domains.signing_key(self._pool, org_id, domain)
        except errors.Unavailable as exc:
            if stale is not None:
                return stale[0]  # Postgres away: the key it had is still the best answer
            raise TransientDeliveryError(f"the DKIM key of {domain} could not be looked up: {exc.message}") from None
        signer = None if row is None else self._signer(row)
        if self._ttl_s > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (signer, time.monotonic() + self._ttl_s)
        return signer

    def _signer(self, row: Any) -> DkimSigner:
        cached = self._parsed.get(row["id"])
        if cached is not None:
            return cached
        if self._box is None:
            log.error("dkim_key_unusable", domain=row["domain"], reason="SECRET_KEY is not set")
            raise TransientDeliveryError(f"the DKIM key of {row['domain']} cannot be read: SECRET_KEY is not set")
        try:
            pem = sending_domains.open_key(self._box, row)
            signer = DkimSigner(selector=row["selector"], domain=row["domain"], private_key_pem=pem)
        except (errors.TidingsError, DkimConfigError) as exc:
            reason = exc.message if isinstance(exc, errors.TidingsError) else "the stored key is not a valid RSA key"
            log.error("dkim_key_unusable", domain=row["domain"], reason=reason)
            raise TransientDeliveryError(f"the DKIM key of {row['domain']} cannot be read: {reason}") from None
        if len(self._parsed) >= MAX_ENTRIES:
            self._parsed.clear()
        self._parsed[row["id"]] = signer
        return signer
