"""DKIM signing (RFC 6376) of outgoing email: rsa-sha256, relaxed/relaxed.

The RSA signature is OpenSSL's, through `cryptography` (about half a millisecond for a
2048-bit key; a pure-Python RSA took 7-17 ms here, which capped a worker with DKIM on at
about 60-150 emails per second per core). The canonicalisation (RFC 6376 3.4.2 and 3.4.4)
and the header field are written here: they are a few lines of byte handling, and dkimpy
verifies what they produce in the tests (tests/test_dkim.py, a property test over varied
messages).

The signer is built once per worker process from DKIM_SELECTOR, DKIM_DOMAIN and
DKIM_PRIVATE_KEY_PATH: a missing or unreadable key fails at start-up, not on the first
message. It signs the exact bytes that go to the SMTP server, so the message must not be
re-serialized after signing (the email channel sends those bytes with `sendmail`).

Only the header fields we write ourselves are signed, and only when present: naming an
absent field in `h=` would make a later relay's addition of it break the signature, which
is right for From (signed twice, see below) but needless for the rest.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import pathlib
import re
import time

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
    "Content-Transfer-Encoding",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
# Receivers refuse shorter keys (RFC 8301: 1024 at least, 2048 recommended).
MIN_KEY_BITS = 1024

_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_BEFORE_CRLF = re.compile(rb"[ \t]+\r\n")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_LINE_CHARS = 78


class DkimConfigError(ValueError):
    """DKIM_* settings that are partly set, or a key that cannot be read or parsed."""


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: name lower-cased, value unfolded, runs of WSP made one space, WSP
    around the colon and at the end removed; `name:value` CRLF."""
    unfolded = _FOLD.sub(b"", value)
    return name.strip().lower() + b":" + _WSP_RUN.sub(b" ", unfolded).strip(b" \t") + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP at line ends removed, other runs of WSP made one space, empty
    lines at the end removed; a non-empty body ends with CRLF, an empty one is empty (erratum
    1384, as receivers hash it). Lines end with CRLF only: the email channel writes no lone
    CR or LF."""
    body = _WSP_RUN.sub(b" ", _WSP_BEFORE_CRLF.sub(b"\r\n", body))
    if not body.endswith(b"\r\n"):
        # The email channel always ends a body with CRLF; for any other, do as dkimpy does.
        body += b"\r\n"
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header fields (name, raw value after the colon, folds kept) and the body."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        head, body = message.removesuffix(b"\r\n"), b""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields, body


def _fold(words: list[str], line: str, sep: str = " ") -> list[str]:
    """`line` with `words` appended (joined by `sep`), a new indented line started where
    one would pass 78 characters."""
    lines = [line]
    for word in words:
        if len(lines[-1]) + len(sep) + len(word) > _LINE_CHARS:
            lines.append(" " + word)
        else:
            lines[-1] += sep + word
    return lines


@dataclasses.dataclass(frozen=True, slots=True)
class DkimSigner:
    selector: str
    domain: str
    private_key_pem: bytes = dataclasses.field(repr=False)  # never in a log line or traceback
    _key: rsa.RSAPrivateKey = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Parse once here so that a bad key is a start-up error, not a failed send.
        try:
            key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise DkimConfigError(f"DKIM private key is not a PEM RSA key (PKCS#1 or PKCS#8): {exc}") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimConfigError(
                f"DKIM private key is not a PEM RSA key (PKCS#1 or PKCS#8): it is {type(key).__name__}"
            )
        if key.key_size < MIN_KEY_BITS:
            raise DkimConfigError(
                f"DKIM private key has {key.key_size} bits; receivers refuse fewer than {MIN_KEY_BITS}"
            )
        object.__setattr__(self, "_key", key)

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

    def signature(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """The `DKIM-Signature: ...\\r\\n` header field for `message` (CRLF line endings)."""
        fields, body = split_message(message)
        # Instances are signed from the bottom up (RFC 6376 5.4.2); each is used once.
        unused: dict[bytes, list[bytes]] = {}
        for raw_name, raw_value in fields:
            unused.setdefault(raw_name.strip().lower(), []).append(raw_value)
        names = [name.lower() for name in SIGNED_HEADERS if name.lower().encode() in unused]
        # From signed once more than it occurs: a From added on the way breaks the signature.
        names.append("from")
        signed = bytearray()
        for name in names:
            instances = unused.get(name.encode())
            if instances:
                signed += relaxed_header(name.encode(), instances.pop())
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        stamp = int(time.time()) if timestamp is None else timestamp
        tags = [
            "v=1;",
            "a=rsa-sha256;",
            "c=relaxed/relaxed;",
            f"d={self.domain};",
            f"s={self.selector};",
            f"t={stamp};",
        ]
        head = _fold(tags, "DKIM-Signature:")
        # h= folded after its colons if need be (folding white space is allowed around them).
        words = [f"{name}:" for name in names]
        words[-1] = f"{names[-1]};"
        head += _fold(words[1:], f" h={words[0]}", sep="")
        unsigned = "\r\n".join([*head, f" bh={body_hash};", " b="])
        # The signature covers this field with an empty b= (3.7), canonicalised, no CRLF.
        field, value = unsigned.encode().split(b":", 1)
        signed += relaxed_header(field, value)[:-2]
        sig = base64.b64encode(self._key.sign(bytes(signed), padding.PKCS1v15(), hashes.SHA256())).decode()
        return (unsigned + "\r\n ".join(sig[i : i + 72] for i in range(0, len(sig), 72)) + "\r\n").encode()

    def sign(self, message: bytes) -> bytes:
        """`message` with its DKIM-Signature header field prepended."""
        return self.signature(message) + message
