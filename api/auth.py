"""Bearer-key authentication with a short per-process cache, and scope/org checks.

Revocation across replicas: every api process caches a resolved key for KEY_CACHE_TTL_S and
then asks Postgres again, so a key revoked anywhere is refused everywhere within that time,
with no message to deliver or lose (a Redis pub/sub invalidation would be faster but leaves
a revoked key working for as long as Redis is away). The process that revokes drops its own
entry at once. The cache holds the org's rate limit too, so `tidings org update
--rate-limit` also takes effect within KEY_CACHE_TTL_S.

A key's last use (`api_keys.last_used_at`) is recorded in the background: at most one
write per key per LAST_USED_EVERY_S per process, many keys in one statement (`KeyUsage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
import uuid
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from shared import db, errors, keys, orgs
from shared.domain import KeyMode

if TYPE_CHECKING:
    from api.state import State

log = structlog.get_logger("tidings.auth")

# A key's last use is written at most this often per api process (a listing shows it to
# about a minute), and the writes of every key used meanwhile go together every FLUSH_S.
LAST_USED_EVERY_S = 60.0
LAST_USED_FLUSH_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class AuthKey:
    """The authenticated principal of a request."""

    key_id: uuid.UUID
    org_id: uuid.UUID
    scopes: frozenset[str]
    rate_limit_requests: int | None
    rate_limit_window_s: int | None
    mode: KeyMode = KeyMode.live

    @property
    def test(self) -> bool:
        """A test key: its sends reach no provider, and it sees only test messages (what the
        message statements take as their `test` parameter)."""
        return self.mode is KeyMode.test


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

    async def lookup(self, pool: db.Pool, key_hash: bytes) -> AuthKey | None:
        """The key with this hash if it still works (None: unknown or revoked), from the cache
        or else from Postgres. The one lookup both the api's bearer keys and the console's
        sessions make, so a revoked key stops both within ttl_s."""
        found, value = self.get(key_hash)
        if found:
            return value
        row = await orgs.find_key(pool, key_hash)
        value = (
            None
            if row is None
            else AuthKey(
                key_id=row["id"],
                org_id=row["org_id"],
                scopes=frozenset(row["scopes"]),
                rate_limit_requests=row["rate_limit_requests"],
                rate_limit_window_s=row["rate_limit_window_s"],
                mode=KeyMode(row["mode"]),
            )
        )
        self.put(key_hash, value)
        return value

    def forget(self, key_id: uuid.UUID) -> None:
        """Drop a revoked key from this process's cache (the others expire it within ttl_s)."""
        for key_hash, (value, _) in list(self._entries.items()):
            if value is not None and value.key_id == key_id:
                del self._entries[key_hash]


class KeyUsage:
    """Records when keys are used without a write per request: a key's use is noted in memory
    (at most once per LAST_USED_EVERY_S) and written by a background task, every key noted
    meanwhile in one statement. A failed write is dropped: the next use notes it again."""

    def __init__(self, pool: db.Pool, every_s: float = LAST_USED_EVERY_S, flush_s: float = LAST_USED_FLUSH_S) -> None:
        self.pool = pool
        self.every_s = every_s
        self.flush_s = flush_s
        self._pending: dict[uuid.UUID, dt.datetime] = {}
        self._next_note: dict[uuid.UUID, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def note(self, key_id: uuid.UUID) -> None:
        now = time.monotonic()
        if self._next_note.get(key_id, 0.0) > now:
            return
        if len(self._next_note) >= 100_000:
            self._next_note.clear()  # bounded memory; at worst a few extra writes
        self._next_note[key_id] = now + self.every_s
        self._pending[key_id] = dt.datetime.now(dt.UTC)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        used, self._pending = self._pending, {}
        if not used:
            return
        try:
            await orgs.touch_keys(self.pool, used)
        except errors.TidingsError as exc:
            # Only a listing's "last used" waits for the next use; requests never do.
            log.warning("key_last_used_unwritten", keys=len(used), error=str(exc))
            for key_id in used:
                self._next_note.pop(key_id, None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Gather what arrives meanwhile into the same statement.
            await asyncio.sleep(self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                # A bug must not end the recording for the process's lifetime.
                log.exception("key_last_used_failed")


async def authenticate(request: web.Request, state: State) -> AuthKey:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized()
    if not token.isascii():
        # Keys are ASCII; bytes that are not UTF-8 arrive as lone surrogates, which cannot be hashed.
        raise errors.Unauthorized("this API key is not valid")
    value = await state.key_cache.lookup(state.pool, keys.hash_key(token.strip()))
    if value is None:
        raise errors.Unauthorized("this API key is not valid")
    state.key_usage.note(value.key_id)
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
