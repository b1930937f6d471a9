"""DKIM signing (RFC 6376) of outgoing email with dkimpy.

The signer is built once per worker process from DKIM_SELECTOR, DKIM_DOMAIN and
DKIM_PRIVATE_KEY_PATH: a missing or unreadable key fails at start-up, not on the first
message. It signs the exact bytes that go to the SMTP server, so the message must not be
re-serialized after signing (the email channel sends those bytes with `sendmail`).

Only the header fields we write ourselves are signed, and only when present: naming an
absent field in `h=` would make a later relay's addition of it break the signature, which
is right for From (signed twice, see below) but needless for the rest.
"""

from __future__ import annotations

import dataclasses
import pathlib

import dkim as dkimpy  # type: ignore[import-untyped]

from shared.config import Settings

# In the order they are listed in `h=`. Names compared case-insensitively.
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)


class DkimConfigError(ValueError):
    """DKIM_* settings that are partly set, or a key that cannot be read or parsed."""


@dataclasses.dataclass(frozen=True, slots=True)
class DkimSigner:
    selector: str
    domain: str
    private_key_pem: bytes

    def __post_init__(self) -> None:
        # Parse once here so that a bad key is a start-up error, not a failed send.
        try:
            dkimpy.crypto.parse_pem_private_key(self.private_key_pem)
        except Exception as exc:
            raise DkimConfigError(f"DKIM private key is not a PEM RSA key (PKCS#1 or PKCS#8): {exc}") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer, or None when DKIM is not configured at all (all three settings empty)."""
        values = {
            "DKIM_SELECTOR": settings.dkim_selector,
            "DKIM_DOMAIN": settings.dkim_domain,
            "DKIM_PRIVATE_KEY_PATH": settings.dkim_private_key_path,
        }
        if not any(values.values()):
            return None
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise DkimConfigError(f"DKIM is partly configured: set {', '.join(missing)} too (or none of them)")
        try:
            pem = pathlib.Path(settings.dkim_private_key_path).read_bytes()
        except OSError as exc:
            raise DkimConfigError(f"DKIM_PRIVATE_KEY_PATH cannot be read: {exc}") from exc
        return cls(selector=settings.dkim_selector, domain=settings.dkim_domain.lower(), private_key_pem=pem)

    def signature(self, message: bytes) -> bytes:
        """The `DKIM-Signature: ...\\r\\n` header field for `message` (CRLF line endings)."""
        head = message.split(b"\r\n\r\n", 1)[0]
        present = {line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n") if line[:1] not in b" \t"}
        include = [name.encode() for name in SIGNED_HEADERS if name.lower().encode() in present]
        # From signed once more than it occurs: a From added on the way breaks the signature
        # (dkimpy's own default for "frozen" fields).
        include.append(b"From")
        header: bytes = dkimpy.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_key_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256",
            include_headers=include,
        )
        return header

    def sign(self, message: bytes) -> bytes:
        """`message` with its DKIM-Signature header field prepended."""
        return self.signature(message) + message
