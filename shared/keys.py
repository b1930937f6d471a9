"""API keys: random, prefixed, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

from shared.domain import Scope

KEY_PREFIX = "tdg_"


def generate() -> str:
    # 32 random bytes = 256 bits; URL-safe so it survives shells and headers unquoted.
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    # A slow KDF buys nothing for 256-bit random secrets and would cost every request.
    return hashlib.sha256(key.encode()).digest()


def display_prefix(key: str) -> str:
    """The part of a key safe to show in listings and logs."""
    return key[: len(KEY_PREFIX) + 6]


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    valid = {s.value for s in Scope}
    bad = [s for s in scopes if s not in valid]
    if bad or not scopes:
        raise ValueError(f"scopes must be a comma-separated subset of read,write,admin (got {text!r})")
    return scopes
