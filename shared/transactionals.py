"""The Transactionals API's send: one email with its own content, to one address.

`validate` checks a submission the way the Rails product does (every problem at once,
keyed by attribute) and resolves the template; `prepare` decides the recipient's fate
(redacted or suppressed: `rejected`; `queue_at` ahead: `scheduled`; else `queued`) and
makes the double opt-in and unsubscribe links; `commit_many` writes a batch of them (each
send, its message and its links) in one transaction. Both go through `shared.accept`,
the one way a send is accepted. The worker renders the stored content with the send's
variables, like any other message.

Unsubscribed subscribers still get transactional email (the product's rule); redacted
subscribers and suppressed addresses never do. A blocked contact is not sent to either:
blocking is this service's "never contact", stronger than unsubscribing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import msgspec
import structlog

from shared import (
    attachments,
    confirmations,
    cursors,
    db,
    errors,
    field_errors,
    ids,
    sending,
    subscribers,
    suppressions,
    transactional_templates,
    unsubscribes,
)
from shared.attachments import Attachment, AttachmentIn
from shared.config import Settings
from shared.domain import ContactStatus, MessageStatus
from shared.field_errors import FieldErrors
from shared.sql import Q

log = structlog.get_logger("tidings.transactionals")

BLOCKED_ERROR = "the recipient is blocked; nothing was sent"
MAX_SUBJECT = 1000
MAX_BODY = 200_000
MAX_PREHEADER = 1000
MAX_NAME = 200

_TAG = re.compile(r"<[A-Za-z!/][^>]*>")
_LIQUID_MARKUP = re.compile(r"({{.*?}}|{%.*?%})", re.DOTALL)


# The request body, written once: `api.transactionals.schemas.TransactionalCreate` is this
# shape under its wire name. Decoded leniently (every field optional and nullable), so that
# missing and blank values reach `validate`, which reports all of them at once in the
# product's words; wrong JSON types and unknown fields are refused by the decoder.


class SubscriberAttributes(msgspec.Struct, forbid_unknown_fields=True):
    first_name: str | None = None
    last_name: str | None = None


class Submission(msgspec.Struct, forbid_unknown_fields=True):
    to: str | None = None
    subject: str | None = None
    body: str | None = None
    preheader: str | None = None
    reply_to: str | None = None
    # The product's ids are integers; ours are UUID strings. Either is accepted (and looked up).
    template_id: str | int | None = None
    include_unsubscribe_link: bool | None = None
    queue_at: str | None = None
    double_opt_in: bool | None = None
    confirmation_template_id: str | int | None = None
    subscriber: SubscriberAttributes | None = None
    # Files attached to the email (shared/attachments.py).
    attachments: list[AttachmentIn] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """A valid submission with the template's defaults applied."""

    email: str
    subject: str
    body: str
    preheader: str | None
    reply_to: str | None
    template_id: uuid.UUID | None
    include_unsubscribe_link: bool
    queue_at: dt.datetime
    double_opt_in: bool
    confirmation_template_id: uuid.UUID | None
    first_name: str | None
    last_name: str | None
    # Written with the send (its message keeps no copy of its own).
    attachments: tuple[Attachment, ...] = ()


def parse_time(raw: str) -> dt.datetime | None:
    """ISO 8601 / RFC 3339; a time without an offset is UTC."""
    try:
        value = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


@db.translated
async def validate(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    s: Submission,
    *,
    max_attachment_bytes: int = attachments.DEFAULT_MAX_TOTAL_BYTES,
) -> Request:
    """Every problem at once; the attachments may hold `max_attachment_bytes` (MAX_ATTACHMENT_BYTES)
    in total."""
    problems = FieldErrors()
    # The product's model calls the recipient `recipient_email`; its errors use that name.
    email = problems.email("recipient_email", s.to, required=True)

    template = None
    if s.template_id is not None and str(s.template_id).strip():
        template = await transactional_templates.find(pool, org_id, s.template_id)
        if template is None:
            problems.add("template_id", field_errors.NOT_FOUND)

    def explicit_or_template(field: str, given: str | None) -> str | None:
        return given if given is not None and given.strip() else (template[field] if template else None)

    template_missing = "template_id" in problems  # its fields cannot be blamed on the client too
    subject = problems.text(
        "subject",
        explicit_or_template("subject", s.subject),
        maximum=MAX_SUBJECT,
        required=not template_missing,
        header=True,
        liquid=True,
    )
    body = problems.text(
        "body", explicit_or_template("body", s.body), maximum=MAX_BODY, required=not template_missing, liquid=True
    )
    preheader = problems.text(
        "preheader", explicit_or_template("preheader", s.preheader), maximum=MAX_PREHEADER, liquid=True
    )
    reply_to = problems.email("reply_to", s.reply_to)

    queue_at = dt.datetime.now(dt.UTC)
    if s.queue_at is not None and s.queue_at.strip():
        parsed = parse_time(s.queue_at)
        if parsed is None:
            problems.add("queue_at", field_errors.INVALID)
        else:
            queue_at = parsed

    confirmation_template_id = None
    if s.confirmation_template_id is not None and str(s.confirmation_template_id).strip():
        confirmation_template_id = _uuid_or_none(s.confirmation_template_id)
        if confirmation_template_id is None or (
            await pool.fetchrow(Q.select_confirmation_template, confirmation_template_id, org_id) is None
        ):
            problems.add("confirmation_template_id", field_errors.NOT_FOUND)

    # Nested attributes are named the Rails way: `subscriber.first_name`.
    named = s.subscriber or SubscriberAttributes()
    first_name = problems.text("subscriber.first_name", named.first_name, maximum=MAX_NAME, header=True)
    last_name = problems.text("subscriber.last_name", named.last_name, maximum=MAX_NAME, header=True)
    files, file_problems = await attachments.decode(s.attachments, max_attachment_bytes)
    for problem in file_problems:
        problems.add(attachments.FIELD, problem)
    await problems.check_liquid()
    problems.raise_if_any()
    assert email is not None and subject is not None and body is not None
    return Request(
        email=email,
        subject=subject,
        body=body,
        preheader=preheader,
        reply_to=reply_to,
        template_id=template["id"] if template else None,
        include_unsubscribe_link=bool(s.include_unsubscribe_link),
        queue_at=queue_at,
        double_opt_in=bool(s.double_opt_in),
        confirmation_template_id=confirmation_template_id,
        first_name=first_name.strip() if first_name else None,
        last_name=last_name.strip() if last_name else None,
        attachments=tuple(files),
    )


def _uuid_or_none(raw: str | int) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        return None


def html_and_text(body: str) -> tuple[str, str | None]:
    """The email's HTML source and, for a plain-text body, its exact text part.

    HTML goes as it is (the worker wraps a fragment in html/body tags). Plain text is
    escaped outside its Liquid markup and its line breaks kept, and it is also the text
    part verbatim, rather than a conversion back from the HTML."""
    if _TAG.search(body):
        return body, None
    parts = _LIQUID_MARKUP.split(body.replace("\r\n", "\n"))
    escaped = "".join(part if i % 2 else html.escape(part, quote=False) for i, part in enumerate(parts))
    return escaped.replace("\n", "<br>\n"), body


@dataclasses.dataclass(frozen=True, slots=True)
class _Recipient:
    """Who the address belongs to, and why nothing may be sent to it (if so)."""

    subscriber: asyncpg.Record | None
    rejection: str | None
    first_name: str | None
    last_name: str | None
    # `recipient_name`: the subscriber's name, else the names given in the request.
    display_name: str | None


async def _resolve_recipient(pool: asyncpg.Pool, org_id: uuid.UUID, req: Request) -> _Recipient:
    if await subscribers.is_redacted(pool, org_id, req.email):
        return _Recipient(None, subscribers.REDACTED_ERROR, None, None, None)
    subscriber = await subscribers.find_by_email(pool, org_id, req.email)
    reason = await suppressions.reason_for(pool, org_id, req.email)
    return await _recipient_from(pool, org_id, req, redacted=False, subscriber=subscriber, suppression=reason)


async def _resolve_recipients(pool: asyncpg.Pool, org_id: uuid.UUID, reqs: Sequence[Request]) -> list[_Recipient]:
    """`_resolve_recipient` for a batch: two queries for all its addresses (then one more per
    double opt-in that creates its subscriber)."""
    emails = [r.email for r in reqs]
    flags = await pool.fetch(
        Q.select_transactional_recipients,
        org_id,
        [suppressions.key(e) for e in emails],
        [subscribers.address_hash(org_id, "email", e) for e in emails],
    )
    owners = {row["email"]: row for row in await pool.fetch(Q.select_subscribers_by_emails, org_id, emails)}
    return [
        await _recipient_from(
            pool, org_id, req, redacted=f["redacted"], subscriber=owners.get(req.email), suppression=f["suppression"]
        )
        for req, f in zip(reqs, flags, strict=True)
    ]


async def _recipient_from(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    req: Request,
    *,
    redacted: bool,
    subscriber: asyncpg.Record | None,
    suppression: str | None,
) -> _Recipient:
    if redacted:
        return _Recipient(None, subscribers.REDACTED_ERROR, None, None, None)
    rejection = None
    if suppression is not None:
        rejection = suppressions.rejection_error(suppression)
    elif subscriber is not None and subscriber["status"] == ContactStatus.blocked:
        rejection = BLOCKED_ERROR
    if rejection is None and req.double_opt_in:
        # Double opt-in creates the subscriber; a rejected send creates nothing.
        subscriber = await subscribers.find_or_create(
            pool, org_id, req.email, first_name=req.first_name, last_name=req.last_name
        )
    first_name = (subscriber["first_name"] if subscriber else None) or req.first_name
    last_name = (subscriber["last_name"] if subscriber else None) or req.last_name
    display_name = (subscribers.display_name(subscriber) if subscriber else None) or subscribers.full_name(
        first_name, last_name
    )
    return _Recipient(subscriber, rejection, first_name, last_name, display_name)


def _content(
    settings: Settings, req: Request, unsubscribe_url: str, sender: tuple[str | None, str | None] = (None, None)
) -> dict[str, Any]:
    """The email as the worker renders it: an email template body, every text field Liquid.
    From is the org's default sender (`tidings org update`, which refuses Liquid markup in
    it), else DEFAULT_FROM_EMAIL / DEFAULT_FROM_NAME."""
    html_body, text_body = html_and_text(req.body)
    from_email, from_name = sender
    return {
        "from_email": from_email or settings.default_from_email,
        # The service's display name does not go with an org's own address.
        "from_name": from_name or ("" if from_email else settings.default_from_name),
        "reply_to": req.reply_to,
        "subject": req.subject,
        "html_body": html_body,
        "text_body": text_body,
        "preheader": req.preheader,
        "headers": unsubscribes.headers_for(unsubscribe_url) if unsubscribe_url else {},
    }


def _variables(req: Request, recipient: _Recipient, confirmation_url: str, unsubscribe_url: str) -> dict[str, Any]:
    """The seed's Liquid variables; each renders blank when unknown."""
    return {
        "email": req.email,
        "first_name": recipient.first_name or "",
        "last_name": recipient.last_name or "",
        "name": subscribers.full_name(recipient.first_name, recipient.last_name) or recipient.display_name or "",
        "confirmation_url": confirmation_url,
        "unsubscribe_url": unsubscribe_url,
    }


@dataclasses.dataclass(slots=True)
class PreparedTransactional:
    """One transactional, resolved and ready to write: everything `commit_many` stores."""

    send_id: uuid.UUID
    message_id: uuid.UUID
    org_id: uuid.UUID
    request_id: str | None
    req: Request
    contact_id: uuid.UUID | None
    contact_channel_id: uuid.UUID | None
    # None for a redacted address: nothing about it is stored again, not even in the record.
    address: str | None
    recipient_name: str | None
    status: MessageStatus
    rejection: str | None
    content: dict[str, Any]
    variables: dict[str, Any]
    confirmation_token: str | None
    unsubscribe_token: str | None
    fence: sending.KeyFence | None = None
    # Made with a test key: never reaches a provider (worker/channels/testmode.py).
    test: bool = False
    # The transactional as accepted (read back in the commit's transaction).
    row: asyncpg.Record | None = None

    @property
    def wakes_workers(self) -> bool:
        # A scheduled one too: an idle worker then sleeps only until its queue_at.
        return self.status != MessageStatus.rejected


async def prepare(
    pool: asyncpg.Pool,
    settings: Settings,
    org_id: uuid.UUID,
    req: Request,
    *,
    request_id: str | None,
    fence: sending.KeyFence | None = None,
    sender: tuple[str | None, str | None] = (None, None),
) -> PreparedTransactional:
    """Decide the recipient's fate and make the links; nothing of the send is written yet
    (a double opt-in may create its subscriber, as a Broadcasts trigger may create its contact).

    Made under an Idempotency-Key (`fence`), the send is bound to the key in its commit,
    and refused if a retry took the key over meanwhile."""
    recipient = await _resolve_recipient(pool, org_id, req)
    return _prepared(settings, org_id, req, recipient, request_id=request_id, fence=fence, sender=sender)


@db.translated
async def prepare_many(
    pool: asyncpg.Pool,
    settings: Settings,
    org_id: uuid.UUID,
    reqs: Sequence[Request],
    *,
    request_id: str | None,
    fence: sending.KeyFence | None = None,
    sender: tuple[str | None, str | None] = (None, None),
) -> list[PreparedTransactional]:
    """`prepare` for a batch's valid items, their recipients looked up together."""
    if not reqs:
        return []
    recipients = await _resolve_recipients(pool, org_id, reqs)
    return [
        _prepared(settings, org_id, req, recipient, request_id=request_id, fence=fence, sender=sender)
        for req, recipient in zip(reqs, recipients, strict=True)
    ]


def _prepared(
    settings: Settings,
    org_id: uuid.UUID,
    req: Request,
    recipient: _Recipient,
    *,
    request_id: str | None,
    fence: sending.KeyFence | None,
    sender: tuple[str | None, str | None],
) -> PreparedTransactional:
    now = dt.datetime.now(dt.UTC)
    base = settings.public_base
    subscriber, rejection = recipient.subscriber, recipient.rejection

    confirmation_token = None
    if rejection is None and req.double_opt_in and subscriber is not None and subscriber["confirmed_at"] is None:
        confirmation_token = confirmations.new_token()
    unsubscribe_token = unsubscribes.new_token() if rejection is None and req.include_unsubscribe_link else None
    confirmation_url = confirmations.url_for(base, confirmation_token) if confirmation_token else ""
    unsubscribe_url = unsubscribes.url_for(base, unsubscribe_token) if unsubscribe_token else ""

    address: str | None = req.email
    recipient_name = recipient.display_name
    content = _content(settings, req, unsubscribe_url, sender)
    variables = _variables(req, recipient, confirmation_url, unsubscribe_url)
    if rejection == subscribers.REDACTED_ERROR:
        # Nothing about a redacted address is stored again, not even in the rejected record.
        address, recipient_name, content, variables = None, None, {}, {}

    scheduled = rejection is None and req.queue_at > now
    status = MessageStatus.rejected if rejection else MessageStatus.scheduled if scheduled else MessageStatus.queued
    return PreparedTransactional(
        send_id=uuid.uuid4(),
        message_id=ids.new_message_id(),
        org_id=org_id,
        request_id=request_id,
        req=req,
        contact_id=subscriber["id"] if subscriber else None,
        contact_channel_id=subscriber["channel_id"] if subscriber else None,
        address=address,
        recipient_name=recipient_name,
        status=status,
        rejection=rejection,
        content=content,
        variables=variables,
        confirmation_token=confirmation_token,
        unsubscribe_token=unsubscribe_token,
        fence=fence,
    )


@db.translated
async def commit_many(pool: asyncpg.Pool, sends: list[PreparedTransactional]) -> list[BaseException | None]:
    """Write many transactionals in one transaction; per send, None (its `row` is set) or the
    error to raise to its request (a retry took its Idempotency-Key over).

    Should a statement fail for one of them, each is written again in a transaction of its
    own, so that one send's fault is answered to its own request only."""
    try:
        return list(await _commit(pool, sends))
    except db.UNREACHABLE:
        raise
    except asyncpg.PostgresError:
        if len(sends) == 1:
            raise
        log.warning("transactional_batch_failed", sends=len(sends), exc_info=True)
    results: list[BaseException | None] = []
    for send in sends:
        try:
            (result,) = await _commit(pool, [send])
        except db.UNREACHABLE:
            raise
        except asyncpg.PostgresError as exc:
            results.append(_as_domain_error(exc))
        else:
            results.append(result)
    return results


def _as_domain_error(exc: BaseException) -> BaseException:
    """One send's own failure as the domain names it (a template or subscriber deleted meanwhile:
    NotFound), so that it is answered to that send alone; else the driver's error as it is."""
    try:
        with db.translate_errors():
            raise exc
    except errors.TidingsError as translated:
        return translated
    except asyncpg.PostgresError:
        pass
    return exc


async def _commit(pool: asyncpg.Pool, sends: list[PreparedTransactional]) -> list[errors.TidingsError | None]:
    refused: dict[uuid.UUID, errors.TidingsError] = {}
    written = False
    try:
        async with pool.acquire() as conn, conn.transaction():
            for p in await _write_many(conn, sends):
                # A retry took the key over while this request ran: it answers for the key.
                refused[p.send_id] = errors.IdempotencyKeyInFlight(sending.KEY_TAKEN_OVER)
            # The batch's files at once, after their messages (a rejected one's are not kept).
            files = [(p.send_id, p.org_id, p.req.attachments) for p in sends if p.send_id not in refused]
            await attachments.insert_many(conn, files)
            written = True
    except db.UNREACHABLE:
        kept = [p for p in sends if p.send_id not in refused]
        if not written or not kept:
            raise  # lost before the commit: nothing was written
        # Lost in the commit itself: it may have committed. A committed send is answered as
        # accepted. The transaction is atomic: all of `kept` were written, or none.
        rows = await sending.after_lost_commit(lambda: pool.fetch(Q.select_sends_messages, [kept[0].send_id]))
        if not rows:
            raise
        read = await sending.after_lost_commit(
            lambda: pool.fetch(Q.select_transactionals_by_ids, [p.message_id for p in kept])
        )
        by_id = {row["id"]: row for row in read}
        for p in kept:
            p.row = by_id.get(p.message_id)
    return [refused.get(p.send_id) for p in sends]


async def _write_many(conn: asyncpg.Connection, sends: list[PreparedTransactional]) -> list[PreparedTransactional]:
    """Write transactionals in the caller's transaction, a statement for all of them per
    table (whatever their number); returns those refused, with nothing written, because
    their request no longer holds their Idempotency-Key."""
    for p in sends:
        p.row = None
    fenced = [p for p in sends if p.fence is not None]
    refused: list[PreparedTransactional] = []
    if fenced:
        held = {
            (r["org_id"], r["key"], r["holder"])
            for r in await conn.fetch(
                Q.bind_idempotency_keys,
                [p.send_id for p in fenced],
                *([getattr(p.fence, f) for p in fenced] for f in ("org_id", "key", "holder")),
            )
        }
        refused = [p for p in fenced if p.fence is not None and _key_of(p.fence) not in held]
        if refused:
            gone = {id(p) for p in refused}
            sends = [p for p in sends if id(p) not in gone]
    if not sends:
        return refused
    links = [p for p in sends if p.confirmation_token is not None]
    if links:
        await confirmations.create_many(
            conn,
            [
                (
                    p.confirmation_token or "",
                    p.org_id,
                    p.contact_id,
                    p.req.confirmation_template_id,
                    confirmations.expiry_for(p.req.queue_at),
                )
                for p in links
            ],
        )
    unsubscribe_links = [p for p in sends if p.unsubscribe_token is not None]
    if unsubscribe_links:
        await unsubscribes.create_many(
            conn, [(p.org_id, p.contact_id, p.unsubscribe_token or "", p.req.email) for p in unsubscribe_links]
        )
    await conn.execute(
        Q.insert_transactionals_batch,
        [p.send_id for p in sends],
        [p.org_id for p in sends],
        [p.contact_id for p in sends],
        [p.request_id for p in sends],
        [p.variables for p in sends],
        [p.message_id for p in sends],
        [p.contact_channel_id for p in sends],
        [p.address for p in sends],
        [p.status for p in sends],
        [p.rejection for p in sends],
        [p.content for p in sends],
        [p.req.queue_at if p.status == MessageStatus.scheduled else None for p in sends],
        [p.recipient_name for p in sends],
        [p.req.subject if p.address else None for p in sends],
        [p.req.body if p.address else None for p in sends],
        [p.req.preheader if p.address else None for p in sends],
        [p.req.reply_to for p in sends],
        [p.req.template_id for p in sends],
        [p.req.include_unsubscribe_link for p in sends],
        [p.req.double_opt_in for p in sends],
        [p.confirmation_token for p in sends],
        [p.req.queue_at for p in sends],
        [p.test for p in sends],
    )
    # Read back inside the transaction: the answer is the transactional as accepted
    # (queued, scheduled or rejected), known as soon as the commit is, and not
    # whichever step a fast worker has reached meanwhile.
    by_id = {row["id"]: row for row in await conn.fetch(Q.select_transactionals_by_ids, [p.message_id for p in sends])}
    for p in sends:
        p.row = by_id[p.message_id]
    return refused


def _key_of(fence: sending.KeyFence) -> tuple[uuid.UUID, str, uuid.UUID]:
    return fence.org_id, fence.key, fence.holder


@db.translated
async def get_many_by_sends(
    pool: asyncpg.Pool, org_id: uuid.UUID, send_ids: list[uuid.UUID]
) -> dict[uuid.UUID, asyncpg.Record]:
    """The transactionals committed sends of the org made, by send (a retry that took a
    batch's Idempotency-Key over answers with them)."""
    found = await pool.fetch(Q.select_sends_messages, send_ids)
    messages = {m["id"]: m["send_id"] for m in found if m["org_id"] == org_id}
    if not messages:
        return {}
    rows = await pool.fetch(Q.select_transactionals_by_ids, list(messages))
    return {messages[row["id"]]: row for row in rows}


@db.translated
async def get_by_send(pool: asyncpg.Pool, org_id: uuid.UUID, send_id: uuid.UUID) -> asyncpg.Record | None:
    """The transactional a committed send made (a retry that took its Idempotency-Key over answers with it)."""
    for message in await pool.fetch(Q.select_sends_messages, [send_id]):
        if message["org_id"] == org_id:
            return await get(pool, org_id, message["id"], test=message["test"])
    return None


@db.translated
async def get(
    pool: asyncpg.Pool, org_id: uuid.UUID, transactional_id: uuid.UUID, *, test: bool = False
) -> asyncpg.Record | None:
    """One transactional of the org; only a test one for `test` (a test key), only a live one
    otherwise: the two modes never see each other's messages."""
    return await pool.fetchrow(Q.select_transactional, transactional_id, org_id, test)


def status_url(public_base: str, transactional_id: object) -> str:
    return f"{public_base}/api/v1/transactionals/{transactional_id}.json"


def transactional_json(row: Mapping[str, Any], public_base: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "recipient_email": row["recipient_email"],
        "recipient_name": row["recipient_name"],
        "subject": row["subject"],
        "body": row["body"],
        "preheader": row["preheader"],
        "reply_to": row["reply_to"],
        "queue_at": row["queue_at"],
        "sent_at": row["sent_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "status": row["status"],
        "error": row["error"],
        "status_url": status_url(public_base, row["id"]),
        "test": row["test"],
    }
    if row["double_opt_in"]:
        out.update(_confirmation_fields(row, public_base))
    return out


def _confirmation_fields(row: Mapping[str, Any], public_base: str) -> dict[str, Any]:
    """`pending` until the link is followed, then `confirmed`; `expired` if it ran out first.
    A subscriber confirmed before the send got no link (`confirmed`, no URL); a rejected
    send or a redacted subscriber has neither."""
    token = row["confirmation_token"]
    if row["status"] == MessageStatus.rejected or row["subscriber_redacted"]:
        return {"confirmation_status": None, "confirmation_url": None}
    url = confirmations.url_for(public_base, token) if token else None
    if token is None or row["subscriber_confirmed"]:
        state = "confirmed"
    elif row["confirmation_expired"]:
        state = "expired"
    else:
        state = "pending"
    return {"confirmation_status": state, "confirmation_url": url}


@db.translated
async def page(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, test: bool, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    """The org's transactionals of one mode, newest first (rows for `transactional_json`), and
    the next cursor."""
    after_at, after_id = cursors.decode_from_top(cursor)
    rows = await pool.fetch(Q.select_transactionals_page, org_id, test, after_at, after_id, limit + 1)
    chosen = list(rows[:limit])
    # The cursor is the transactional's own (created_at, id): the order the index walks.
    next_cursor = cursors.encode(chosen[-1]["listed_at"], chosen[-1]["id"]) if len(rows) > limit else None
    return chosen, next_cursor
