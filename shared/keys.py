"""API keys: random, prefixed, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

from shared.domain import KeyMode, Scope

KEY_PREFIX = "tdg_"
# A test key says so in its text, so that it is recognised wherever it is pasted.
TEST_KEY_PREFIX = "tdg_test_"
# Random characters shown in a key's prefix: enough to tell an org's keys apart (72 bits),
# a small part of the 256 the key holds.
PREFIX_RANDOM_CHARS = 12


def generate(mode: KeyMode = KeyMode.live) -> str:
    # 32 random bytes = 256 bits; URL-safe so it survives shells and headers unquoted.
    if mode is KeyMode.test:
        return TEST_KEY_PREFIX + secrets.token_urlsafe(32)
    while True:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        # A live key never reads as a test key (a 1 in 2^30 draw, drawn again).
        if not key.startswith(TEST_KEY_PREFIX):
            return key


def mode_of(key: str) -> KeyMode:
    return KeyMode.test if key.startswith(TEST_KEY_PREFIX) else KeyMode.live


def hash_key(key: str) -> bytes:
    # A slow KDF buys nothing for 256-bit random secrets and would cost every request.
    return hashlib.sha256(key.encode()).digest()


def display_prefix(key: str) -> str:
    """The part of a key safe to show in listings and logs: `tdg_` (or `tdg_test_`) and
    PREFIX_RANDOM_CHARS random characters."""
    marker = TEST_KEY_PREFIX if mode_of(key) is KeyMode.test else KEY_PREFIX
    return key[: len(marker) + PREFIX_RANDOM_CHARS]


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    valid = {s.value for s in Scope}
    bad = [s for s in scopes if s not in valid]
    if bad or not scopes:
        raise ValueError(f"scopes must be a comma-separated subset of read,write,admin (got {text!r})")
    return scopes
