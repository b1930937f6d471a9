"""VERP envelope senders: `bounces+{token}@{BOUNCE_DOMAIN}`, the token naming one message.

Receivers send bounces to the envelope sender (Return-Path), so a bounce that comes back to
`tidings bounces` names its message by the address it was sent to. The token is the message's
id and an HMAC-SHA256 of it (128 bits kept) under a key derived from BOUNCE_SECRET: it cannot be
made for a message without the secret, so a bounce or a complaint for another org's message
cannot be forged by guessing. Both halves are lowercase base32 (no padding), because some
relays lowercase local parts; the whole local part stays within RFC 5321's 64 octets
(8 + 26 + 26 = 60).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid

LOCAL_PREFIX = "bounces+"
_ID_CHARS = 26  # 16 bytes in base32, unpadded
_MAC_BYTES = 16
_TOKEN = re.compile(r"[a-z2-7]{52}")


def _key(secret: str) -> bytes:
    # A key of its own, so the secret could sign other things later without one MAC
    # standing for another.
    return hashlib.sha256(b"tidings verp v1\0" + secret.encode()).digest()


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


def token_for(message_id: uuid.UUID, secret: str) -> str:
    mac = hmac.new(_key(secret), message_id.bytes, hashlib.sha256).digest()[:_MAC_BYTES]
    return _b32(message_id.bytes) + _b32(mac)


def envelope_sender(message_id: uuid.UUID, *, domain: str, secret: str) -> str:
    return f"{LOCAL_PREFIX}{token_for(message_id, secret)}@{domain}"


def message_for_token(token: str, secret: str) -> uuid.UUID | None:
    """The message a token names, or None when it is malformed or its MAC does not verify."""
    token = token.strip().lower()
    if not _TOKEN.fullmatch(token):
        return None
    try:
        raw = base64.b32decode(token[:_ID_CHARS].upper() + "======")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 16:
        return None
    message_id = uuid.UUID(bytes=raw)
    if not hmac.compare_digest(token_for(message_id, secret), token):
        return None
    return message_id


def message_for_address(address: str, *, domain: str, secret: str) -> uuid.UUID | None:
    """The message a VERP address (`bounces+{token}@{domain}`) names, or None."""
    local, _, addr_domain = address.strip().strip("<>").rpartition("@")
    if addr_domain.lower() != domain.lower() or not local.lower().startswith(LOCAL_PREFIX):
        return None
    return message_for_token(local[len(LOCAL_PREFIX) :], secret)
