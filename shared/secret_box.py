"""Secrets stored in Postgres, encrypted under SECRET_KEY (DKIM private keys).

SECRET_KEY is any secret string; the cipher key is derived from it with HKDF-SHA256 (a
fixed salt and a purpose label: the same SECRET_KEY used elsewhere yields a different key
here), and each value is sealed with AES-256-GCM under a fresh 96-bit nonce. The row's id is
the associated data, so a ciphertext copied onto another row does not open. A database dump
alone reveals no private key.

Stored form: one version byte, the nonce, then the ciphertext and its tag.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import errors

_VERSION = b"\x01"
_NONCE_BYTES = 12
_SALT = b"tidings secret_box v1"
_INFO = b"tidings: DKIM private keys at rest"


class SecretKeyMissing(errors.Unavailable):
    """A secret must be sealed or opened and SECRET_KEY is not set."""

    code = "secret_key_missing"
    default_message = "SECRET_KEY is not set: the server cannot store or read DKIM keys; the operator must set it"


class SecretKeyWrong(errors.Unavailable):
    """A stored secret does not open under this SECRET_KEY (another key sealed it, or it was altered)."""

    code = "secret_key_wrong"
    default_message = "SECRET_KEY does not decrypt the stored DKIM keys: it is not the key they were stored under"


class SecretBox:
    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise SecretKeyMissing()
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(secret_key.encode())
        self._aead = AESGCM(derived)

    def __repr__(self) -> str:
        return "SecretBox(...)"  # never the key

    def seal(self, plaintext: bytes, *, bound_to: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, bound_to)

    def open(self, sealed: bytes, *, bound_to: bytes) -> bytes:
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise SecretKeyWrong("a stored DKIM key is not in a format this version reads")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, bound_to)
        except InvalidTag:
            raise SecretKeyWrong() from None
