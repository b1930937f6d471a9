"""Bearer-key authentication with a short per-process cache, and scope/org checks."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from shared import errors, keys, orgs

if TYPE_CHECKING:
    from api.state import State


@dataclasses.dataclass(frozen=True, slots=True)
class AuthKey:
    key_id: uuid.UUID
    org_id: uuid.UUID
    scopes: frozenset[str]
    rate_limit_requests: int | None
    rate_limit_window_s: int | None


class KeyCache:
    """key hash -> (AuthKey | None, expiry). Hits skip Postgres; entries live `ttl_s` so a
    revoked key stops working within that time on every replica."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[AuthKey | None, float]] = {}

    def get(self, key_hash: bytes) -> tuple[bool, AuthKey | None]:
        hit = self._entries.get(key_hash)
        if hit is None or hit[1] < time.monotonic():
            return False, None
        return True, hit[0]

    def put(self, key_hash: bytes, value: AuthKey | None) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = (value, time.monotonic() + self.ttl_s)


async def authenticate(request: web.Request, state: State) -> AuthKey:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized()
    if not token.isascii():
        # Keys are ASCII; bytes that are not UTF-8 arrive as lone surrogates, which cannot be hashed.
        raise errors.Unauthorized("this API key is not valid")
    key_hash = keys.hash_key(token.strip())
    found, cached = state.key_cache.get(key_hash)
    if found:
        if cached is None:
            raise errors.Unauthorized("this API key is not valid")
        return cached
    row = await orgs.find_key(state.pool, key_hash)
    value = (
        None
        if row is None
        else AuthKey(
            key_id=row["id"],
            org_id=row["org_id"],
            scopes=frozenset(row["scopes"]),
            rate_limit_requests=row["rate_limit_requests"],
            rate_limit_window_s=row["rate_limit_window_s"],
        )
    )
    state.key_cache.put(key_hash, value)
    if value is None:
        raise errors.Unauthorized("this API key is not valid")
    return value


def require(key: AuthKey, scope: str, path_org: str | None) -> None:
    # The org check comes first: a key used on another org's path learns nothing (404).
    if path_org is not None and not _same_org(path_org, key.org_id):
        raise errors.NotFound()
    if scope not in key.scopes:
        raise errors.Forbidden(f"this API key lacks the {scope!r} scope")


def _same_org(path_org: str, org_id: uuid.UUID) -> bool:
    try:
        return uuid.UUID(path_org) == org_id
    except ValueError:
        return False
