"""Email attachments: checked when a send is accepted, stored with it, erased once it is final.

Both APIs take `"attachments": [{"filename", "content" (base64), "content_type"?}]` on a send
(`POST /api/v1/transactionals.json` and the Broadcasts send). `decode` checks and decodes them
before anything of the send is written; every refusal names `attachments`. The accepted files
are written with the send, in its transaction, once per send (`insert_many`): the several email
messages of a Broadcasts send share one stored copy, and WhatsApp messages ignore them.

Their bytes live only while a message of the send may still go out: the outcome write that
settles a send's last unsettled message deletes them (`record_outcomes` in
shared/sql/delivery.sql), and the reconciler sweeps what that misses (`sweep_settled`: a send
settled by two workers' writes at once, a cancel, a rejection after a hard bounce).
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import math
import mimetypes
import re
import unicodedata
import uuid
from collections.abc import Sequence

import asyncpg
import msgspec

from shared import db, errors, ids
from shared.sql import Q

FIELD = "attachments"
MAX_FILES = 10
DEFAULT_MAX_TOTAL_BYTES = 10 * 1024 * 1024  # MAX_ATTACHMENT_BYTES by default
MAX_FILENAME_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
# Refused by extension, whatever content type is claimed: what a mail client may run when opened.
EXECUTABLE_EXTENSIONS = frozenset({".exe", ".bat", ".cmd", ".com", ".js", ".jar", ".msi", ".scr", ".vbs", ".ps1"})
# And the content types those go by, so that `notes.txt` sent as a program is refused too.
EXECUTABLE_CONTENT_TYPES = frozenset(
    {
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-ms-dos-executable",
        "application/x-dosexec",
        "application/vnd.microsoft.portable-executable",
        "application/x-msi",
        "application/x-ms-installer",
        "application/java-archive",
        "application/x-java-archive",
        "application/javascript",
        "application/x-javascript",
        "text/javascript",
        "application/x-bat",
        "text/vbscript",
        "application/x-vbscript",
        "application/x-powershell",
    }
)
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Decoding this much base64 or more leaves the event loop (a 10 MB file takes a few ms).
_DECODE_IN_THREAD_CHARS = 256 * 1024

# The stdlib's built-in table only, not the host's /etc/mime.types: the api and every worker
# then agree on a filename's type whatever machine they run on.
_MIME = mimetypes.MimeTypes(filenames=())
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
# `type/subtype`, optionally with parameters (`text/plain; charset=utf-8`): nothing that could
# end the header line or smuggle another one.
_CONTENT_TYPE = re.compile(rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[\x20\x21\x23-\x5b\x5d-\x7e]*"))*')
# Characters that reorder how a name is displayed (`invoice\u202egpj.exe` shows as
# `invoiceexe.jpg`): refused like control characters.
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c")
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


class AttachmentIn(msgspec.Struct, forbid_unknown_fields=True):
    """One file as a request gives it. Every field optional, so that a missing one is reported
    by `decode` under `attachments` in each API's words."""

    filename: str | None = None
    content: str | None = None  # base64 (RFC 4648, the standard alphabet)
    content_type: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    """One accepted file, decoded."""

    id: uuid.UUID
    filename: str
    content_type: str
    content: bytes

    @property
    def size_bytes(self) -> int:
        return len(self.content)


def body_limit_bytes(max_body_bytes: int, max_attachment_bytes: int) -> int:
    """The body size limit of a route that takes attachments: MAX_BODY_BYTES for the rest of
    the request, plus the base64 of MAX_ATTACHMENT_BYTES (4 characters per 3 bytes, rounded
    up) and up to 4 characters of padding per file. With the defaults: 262144 + 13981016 + 40
    = 14243200 bytes."""
    return max_body_bytes + 4 * math.ceil(max_attachment_bytes / 3) + 4 * MAX_FILES


def content_type_for(filename: str) -> str:
    guessed, _ = _MIME.guess_type(filename, strict=False)
    return guessed or DEFAULT_CONTENT_TYPE


def _is_executable(filename: str, content_type: str) -> bool:
    # Windows ignores trailing dots and spaces: `setup.exe.` runs as `setup.exe`.
    name = filename.rstrip(". ").lower()
    if any(name.endswith(ext) for ext in EXECUTABLE_EXTENSIONS):
        return True
    return _media_type(content_type) in EXECUTABLE_CONTENT_TYPES


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _normalized(content_type: str) -> str:
    """The media type lower-cased (as MIME compares it), its parameters as given."""
    media, sep, params = content_type.partition(";")
    return media.strip().lower() + (sep + params if sep else "")


def _filename_problem(name: str | None) -> str | None:
    if name is None or not name.strip():
        return "filename can't be blank"
    if len(name) > MAX_FILENAME_CHARS:
        return f"filename is too long (maximum is {MAX_FILENAME_CHARS} characters)"
    if "/" in name or "\\" in name or name.strip() in (".", ".."):
        return "filename must be a file's name, without a path"
    if any(unicodedata.category(c) in ("Cc", "Cs") or c in _BIDI_CONTROLS for c in name):
        return "filename must not contain control characters"
    return None


def _base64(text: str) -> bytes | None:
    """The decoded bytes, or None if `text` is not base64. Line breaks and spaces (as MIME
    encoders write them) are allowed between characters; nothing else."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        pass
    try:
        return binascii.a2b_base64(_WHITESPACE.sub(b"", raw), strict_mode=True)
    except binascii.Error:
        return None


def _decode_all(items: Sequence[AttachmentIn], max_total_bytes: int) -> tuple[list[Attachment], list[str]]:
    problems: list[str] = []
    files: list[Attachment] = []
    total = 0
    for n, item in enumerate(items):
        at = f"{FIELD}[{n}]"
        problem = _filename_problem(item.filename)
        content_type = item.content_type.strip() if item.content_type and item.content_type.strip() else None
        if content_type is not None and (
            len(content_type) > MAX_CONTENT_TYPE_CHARS or not _CONTENT_TYPE.fullmatch(content_type)
        ):
            problems.append(f"{at}.content_type must be a MIME type such as application/pdf")
            content_type = DEFAULT_CONTENT_TYPE
        if problem is not None:
            problems.append(f"{at}.{problem}")
            continue
        assert item.filename is not None
        content_type = content_type or content_type_for(item.filename)
        if _is_executable(item.filename, content_type):
            problems.append(f"{at}.filename is an executable type, which is never attached")
            continue
        if item.content is None or not item.content.strip():
            problems.append(f"{at}.content can't be blank")
            continue
        content = _base64(item.content)
        if content is None:
            problems.append(f"{at}.content is not valid base64")
            continue
        if not content:
            problems.append(f"{at}.content can't be blank")
            continue
        total += len(content)
        files.append(Attachment(ids.new_id(), item.filename, _normalized(content_type), content))
    if total > max_total_bytes:
        problems.append(f"{FIELD} are {total} bytes in total; at most {max_total_bytes} bytes per message")
    return files, problems


async def decode(items: Sequence[AttachmentIn] | None, max_total_bytes: int) -> tuple[list[Attachment], list[str]]:
    """The files, decoded, and what is wrong with them (each problem a sentence naming the
    file: `attachments[1].content is not valid base64`). Nothing to decode: ([], [])."""
    if not items:
        return [], []
    if len(items) > MAX_FILES:
        return [], [f"{FIELD} has {len(items)} files; at most {MAX_FILES} per message"]
    if sum(len(i.content or "") for i in items) >= _DECODE_IN_THREAD_CHARS:
        return await asyncio.to_thread(_decode_all, items, max_total_bytes)
    return _decode_all(items, max_total_bytes)


async def decode_or_refuse(items: Sequence[AttachmentIn] | None, max_total_bytes: int) -> list[Attachment]:
    """`decode`, raising one ValidationFailed naming `attachments` if anything is wrong."""
    files, problems = await decode(items, max_total_bytes)
    if problems:
        raise errors.ValidationFailed(f"{problems[0]}", fields={FIELD: problems})
    return files


@db.translated
async def insert_many(
    conn: asyncpg.Connection, sends: Sequence[tuple[uuid.UUID, uuid.UUID, Sequence[Attachment]]]
) -> None:
    """Write the files of sends (send id, org id, files) in the caller's transaction, after
    their messages: only a send with an email message that may still go out keeps them (a
    refused send, or one whose emails were all rejected, stores nothing)."""
    rows = [(send_id, org_id, n, f) for send_id, org_id, files in sends for n, f in enumerate(files)]
    if not rows:
        return
    await conn.execute(
        Q.insert_attachments,
        [f.id for _, _, _, f in rows],
        [org_id for _, org_id, _, _ in rows],
        [send_id for send_id, _, _, _ in rows],
        [n for _, _, n, _ in rows],
        [f.filename for _, _, _, f in rows],
        [f.content_type for _, _, _, f in rows],
        [f.content for _, _, _, f in rows],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    """A send's file as the worker reads it back."""

    id: uuid.UUID
    filename: str
    content_type: str
    content: bytes


async def load(pool: db.Pool, send_id: uuid.UUID) -> list[Stored]:
    """A send's files in the order given (the worker's; raises `db.TryAgain` or `db.Refused`)."""
    with db.passing_or_refused():
        rows = await pool.fetch(Q.select_send_attachments, send_id)
    return [Stored(r["id"], r["filename"], r["content_type"], r["content"]) for r in rows]


async def sweep_settled(pool: db.Pool) -> int:
    """Erase the files of sends with no message left to go out (the reconciler's)."""
    with db.passing_or_refused():
        erased: int = await pool.fetchval(Q.delete_settled_attachments)
    return erased


@db.translated
async def count_for_send(pool: asyncpg.Pool, send_id: uuid.UUID) -> int:
    """How many files of a send are still stored (for operators and tests)."""
    stored: int = await pool.fetchval(Q.count_send_attachments, send_id)
    return stored
