"""A Broadcasts trigger, from request to committed send: the rules of the send endpoint.

Used through `shared.accept` by the api (`POST .../send`, source `api`) and the operator
CLI (`tidings send`, source `manual`). `prepare` validates and resolves everything and
raises on any rejection before anything is written; `commit_many` writes a batch of sends
and their messages in one statement. Postgres is the delivery queue: once committed, a
`queued` message is claimed by a worker's pump (the accept service rings the doorbell so
that an idle one looks at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar

import asyncpg
import msgspec
import structlog
from msgspec import Meta

from shared import attachments, broadcasts, contacts, db, deadlines, errors, ids, unsubscribes
from shared.attachments import Attachment, AttachmentIn
from shared.broadcast_cache import NO_CACHE, BroadcastCache
from shared.contact_cache import NO_CONTACT_CACHE, ContactCache
from shared.domain import (
    BUILTIN_VARIABLES,
    SETTLED,
    BroadcastStatus,
    BroadcastType,
    Channel,
    ContactStatus,
    MessageStatus,
)
from shared.sql import Q
from shared.subscribers import address_hash

log = structlog.get_logger("tidings.sending")
T = TypeVar("T")

# When the connection dies while a send commits, its outcome is unknown: it may have committed
# with its reply lost. The api then asks Postgres for up to this long (every POLL) before it
# answers: a committed send is a success, never a 503 that would invite a second send.
LOST_COMMIT_WAIT_S = 10.0
LOST_COMMIT_POLL_S = 0.25
OUTCOME_UNKNOWN = (
    "Postgres was lost while the send was being committed and has not answered since, so whether it "
    "was accepted is unknown; repeat the request with the same Idempotency-Key to learn it"
)
KEY_TAKEN_OVER = "a retry with this Idempotency-Key took it over while this request ran; it answers for the key"


def status_url(public_base: str, org_id: object, message_id: object) -> str:
    """Where a message of the Broadcasts API can be read back (`GET .../messages/{id}`)."""
    return f"{public_base}/orgs/{org_id}/messages/{message_id}"


class Trigger(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a caller asks of one send: the recipient, the variables, the templates to fire.

    Written once: the Broadcasts API decodes its request body straight into a subclass of
    this (`api.broadcasts.schemas.SendRequest`, which adds only how to answer), and the CLI
    builds one from its flags. Unknown fields are refused, so a typo is caught."""

    contact_channel_id: str | None = None
    contact_id: str | None = None
    phone: Annotated[str, Meta(max_length=50)] | None = None
    email: Annotated[str, Meta(max_length=320)] | None = None
    name: Annotated[str, Meta(max_length=300)] | None = None
    variables: dict[str, Any] = {}
    template_ids: list[str] | None = None
    # Files for the email templates that fire (WhatsApp templates ignore them): shared/attachments.py.
    attachments: list[AttachmentIn] | None = None


@dataclasses.dataclass(slots=True)
class Record:
    id: uuid.UUID
    template_id: uuid.UUID
    channel: str
    contact_channel_id: uuid.UUID | None
    to: str | None
    status: str
    error: str | None = None
    external_message_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class KeyFence:
    """The Idempotency-Key a send is made under, and the request (`holder`) holding it. The
    send's commit binds the send to the key, and only while `holder` still holds it: a retry
    that takes the key over later finds the send; one that took it first refuses it."""

    org_id: uuid.UUID
    key: str
    holder: uuid.UUID


@dataclasses.dataclass(frozen=True, slots=True)
class KeyClaim:
    """A request holds its Idempotency-Key (`api.idempotency` claims it)."""

    fence: KeyFence
    # A send that an earlier request holding the key committed (this one took the key over
    # when that request died): the answer is that send, not a new one.
    committed_send_id: uuid.UUID | None


@dataclasses.dataclass(slots=True)
class PreparedSend:
    send_id: uuid.UUID
    org_id: uuid.UUID
    broadcast_id: uuid.UUID
    contact_id: uuid.UUID
    source: str
    request_id: str | None
    variables: dict[str, Any]
    records: list[Record]
    # Someone waits for the outcome: the worker publishes it when the messages settle.
    notify: bool = False
    # The token behind `{{ unsubscribe_url }}` (written with the send), when a template uses it.
    unsubscribe: tuple[str, str] | None = None  # (token, the email address it names or "")
    fence: KeyFence | None = None
    # Made with a test key: its messages never reach a provider (worker/channels/testmode.py).
    test: bool = False
    # Written with the send, once, for all of its email messages.
    attachments: list[Attachment] = dataclasses.field(default_factory=list)

    @property
    def queued(self) -> list[Record]:
        return [r for r in self.records if r.status == MessageStatus.queued]

    @property
    def settled(self) -> bool:
        """Every message has its final outcome (sent, failed, skipped, rejected...)."""
        return all(r.status in SETTLED or r.error for r in self.records)

    def apply_outcome(self, outcome: Mapping[str, Any]) -> None:
        """Fold the worker's published results (keyed by message id) into the records."""
        for r in self.records:
            result = outcome.get(str(r.id))
            if result is not None:
                r.status = result["status"]
                r.external_message_id = result.get("external_message_id")
                r.error = result.get("error")


def record_json(public_base: str, send: PreparedSend, r: Record) -> dict[str, Any]:
    """One message of a send as the Broadcasts API and the CLI show it."""
    return {
        "id": r.id,
        "template_id": r.template_id,
        "channel": r.channel,
        "contact_id": send.contact_id,
        "contact_channel_id": r.contact_channel_id,
        "to": r.to,
        "status": r.status,
        "external_message_id": r.external_message_id,
        "error": r.error,
        "status_url": status_url(public_base, send.org_id, r.id),
        "test": send.test,
    }


def send_json(public_base: str, send: PreparedSend) -> dict[str, Any]:
    return {"send_id": send.send_id, "recipients": [record_json(public_base, send, r) for r in send.records]}


def _uuid_or_none(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        return None


@db.translated
async def prepare(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    broadcast_id: uuid.UUID,
    trigger: Trigger,
    cache: BroadcastCache = NO_CACHE,
    contact_cache: ContactCache = NO_CONTACT_CACHE,
    *,
    public_base: str | None = None,
    source: str = "api",
    request_id: str | None = None,
    max_attachment_bytes: int = attachments.DEFAULT_MAX_TOTAL_BYTES,
    sendable: Sendable | None = None,
) -> PreparedSend:
    """`public_base` (PUBLIC_BASE_URL) makes `{{ unsubscribe_url }}` for templates that use it;
    `source` (`api` or `manual`) and `request_id` are written with the send; its attachments
    may hold `max_attachment_bytes` (MAX_ATTACHMENT_BYTES) in total. `sendable`: the broadcast
    as `sendable_broadcast` found it for this request (a batch looks it up once for all of
    its items); None: looked up here."""
    if sendable is None:
        sendable = await sendable_broadcast(pool, org_id, broadcast_id, cache)
    broadcast = sendable.broadcast
    selected = (
        sendable.templates
        if trigger.template_ids is None
        else _select_templates(sendable.templates, trigger.template_ids)
    )
    if not selected:
        # Possible only if every template was removed after activation.
        raise errors.ValidationFailed("the broadcast has no templates to send", fields={"template_ids": ["none"]})
    # Before the recipient is looked up (which may create a contact): a refusal writes nothing.
    files = await attachments.decode_or_refuse(trigger.attachments, max_attachment_bytes) if trigger.attachments else []

    if not (trigger.contact_channel_id or trigger.contact_id or trigger.phone or trigger.email):
        raise errors.RecipientRequired()
    email = contacts.normalize(Channel.email, trigger.email) if trigger.email else None
    phone = contacts.normalize(Channel.whatsapp, trigger.phone) if trigger.phone else None

    only_type: str | None = None  # with contact_channel_id, only that channel's templates fire
    if trigger.contact_channel_id:
        channel_id = _uuid_or_none(trigger.contact_channel_id)
        ch = await pool.fetchrow(Q.select_channel_with_contact, channel_id, org_id) if channel_id else None
        if ch is None:
            raise errors.ContactNotFound("no such contact channel in this org")
        contact = await pool.fetchrow(Q.select_contact, ch["contact_id"], org_id)
        channels = [ch]
        only_type = ch["type"]
    elif trigger.contact_id:
        contact_id = _uuid_or_none(trigger.contact_id)
        contact = await pool.fetchrow(Q.select_contact, contact_id, org_id) if contact_id else None
        if contact is None:
            raise errors.ContactNotFound()
        channels = await contacts.channels_of(pool, contact["id"])
    else:
        contact, channels = await contact_cache.get(
            (org_id, email, phone),
            lambda: contacts.find_or_create(pool, org_id, email=email, phone=phone, name=trigger.name),
        )
    assert contact is not None

    if contact["status"] == ContactStatus.unsubscribed:
        raise errors.RecipientUnsubscribed()
    if contact["status"] == ContactStatus.blocked:
        raise errors.RecipientBlocked()

    # Delivery addresses: a per-send override wins over the stored channel, for this send only.
    stored = contacts.first_addresses(channels)
    to_by_channel = {
        Channel.email: email or stored.get(Channel.email),
        Channel.whatsapp: phone or stored.get(Channel.whatsapp),
    }
    channel_ids = {(c["type"], c["address"]): c["id"] for c in channels}

    variables = _resolve_variables(broadcast["variables"], contact["properties"], trigger.variables)
    variables["name"] = trigger.name or variables.get("name") or contact["name"] or ""
    variables["email"] = to_by_channel[Channel.email] or ""
    variables["phone"] = to_by_channel[Channel.whatsapp] or ""
    # Built in, like email and phone: a caller's own value never stands in for it (the link
    # must unsubscribe the contact here, or the next trigger would still reach them).
    variables["unsubscribe_url"] = ""

    records: list[Record] = []
    firing: list[Mapping[str, Any]] = []
    for t in selected:
        channel = t["channel"]
        to = to_by_channel[channel]
        record = Record(
            id=ids.new_message_id(),
            template_id=t["id"],
            channel=channel,
            contact_channel_id=channel_ids.get((channel, to)),
            to=to,
            status=MessageStatus.queued,
        )
        if only_type is not None and channel != only_type:
            record.status, record.to, record.contact_channel_id = MessageStatus.skipped, None, None
            record.error = f"contact_channel_id names a {only_type} channel; {channel} templates do not fire"
        elif to is None:
            record.status = MessageStatus.skipped
            record.error = f"the recipient has no {contacts.FIELD_OF[Channel(channel)]} for this {channel} template"
        else:
            firing.append(t)
        records.append(record)

    reads = sendable.reads
    missing = sorted(
        {
            name
            for t in firing
            for name in reads[t["id"]]
            if name not in BUILTIN_VARIABLES and variables.get(name) is None
        }
    )
    if missing:
        raise errors.MissingVariables(
            f"missing variables: {', '.join(missing)}",
            fields={"variables": [f"{n} has no value and no default" for n in missing]},
            extra={"missing": missing},
        )

    unsubscribe = None
    if any("unsubscribe_url" in reads[t["id"]] for t in firing):
        if public_base is None:
            raise RuntimeError("sending.prepare needs public_base for a template that uses unsubscribe_url")
        unsubscribe = (unsubscribes.new_token(), to_by_channel[Channel.email] or "")
        variables["unsubscribe_url"] = unsubscribes.url_for(public_base, unsubscribe[0])

    return PreparedSend(
        send_id=ids.new_id(),
        org_id=org_id,
        broadcast_id=broadcast_id,
        contact_id=contact["id"],
        source=source,
        request_id=request_id,
        variables=variables,
        records=records,
        unsubscribe=unsubscribe,
        attachments=files,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Sendable:
    """A broadcast that can be triggered now: its row, its templates, and the names each
    template reads (by template id), worked out once per request, not once per item."""

    broadcast: asyncpg.Record
    templates: list[asyncpg.Record]
    reads: dict[uuid.UUID, frozenset[str]]


@db.translated
async def sendable_broadcast(
    pool: asyncpg.Pool, org_id: uuid.UUID, broadcast_id: uuid.UUID, cache: BroadcastCache = NO_CACHE
) -> Sendable:
    """The broadcast and its templates, if it can be triggered now; else the refusal. A batch
    asks this once for all its items: a broadcast that cannot send is the request's fault,
    not an item's."""
    broadcast, templates = await cache.get(pool, org_id, broadcast_id)
    if broadcast is None:
        raise errors.NotFound("no such broadcast")
    if broadcast["type"] != BroadcastType.transactional:
        raise errors.NotTransactional()
    if broadcast["status"] != BroadcastStatus.active:
        raise errors.BroadcastNotActive(f"the broadcast is {broadcast['status']}; activate or resume it first")
    reads = {t["id"]: broadcasts.template_variables(t["channel"], t["body"]) for t in templates}
    return Sendable(broadcast, templates, reads)


def _select_templates(templates: list[asyncpg.Record], template_ids: list[str] | None) -> list[asyncpg.Record]:
    if template_ids is None:
        return templates
    by_id = {str(t["id"]): t for t in templates}
    wanted = [str(_uuid_or_none(i) or i) for i in template_ids]
    unknown = [raw for raw, norm in zip(template_ids, wanted, strict=True) if norm not in by_id]
    if unknown:
        raise errors.ValidationFailed(
            f"template_ids: not templates of this broadcast: {', '.join(unknown)}",
            fields={"template_ids": [f"{i} is not a template of this broadcast" for i in unknown]},
        )
    if not wanted:
        raise errors.ValidationFailed(
            "template_ids: name at least one template, or omit the field",
            fields={"template_ids": ["must not be empty"]},
        )
    chosen = set(wanted)
    return [t for t in templates if str(t["id"]) in chosen]


def _resolve_variables(
    declared: list[dict[str, Any]], properties: Mapping[str, Any], given: Mapping[str, Any]
) -> dict[str, Any]:
    """trigger value > contact property > broadcast default."""
    out: dict[str, Any] = {v["name"]: v.get("default") for v in declared if v.get("default") is not None}
    out.update({k: v for k, v in properties.items() if v is not None})
    out.update({k: v for k, v in given.items() if v is not None})
    return out


async def commit(pool: asyncpg.Pool, send: PreparedSend) -> None:
    """Write one send and its messages with their first event, atomically."""
    (result,) = await commit_many(pool, [send])
    if isinstance(result, BaseException):
        raise result


@db.translated
async def commit_many(pool: asyncpg.Pool, sends: list[PreparedSend]) -> list[errors.TidingsError | None]:
    """Write many sends in one statement; per send, None or the error that refused it.

    The broadcast's status is checked again inside the statement, so a pause that
    committed before this write refuses the trigger even if `prepare` saw it active.
    Suppressed and redacted email addresses are found by the same statement: their
    records come back `rejected` (the records of `sends` are updated in place).
    If the connection dies while the statement runs, Postgres is asked what it wrote
    (`after_lost_commit`): a send that committed is accepted, whatever came of the reply.
    """
    messages = [(s.send_id, r) for s in sends for r in s.records]
    links = [s for s in sends if s.unsubscribe is not None]
    if links:
        # Before the sends, so that no worker can deliver a link that does not exist yet; a
        # send refused below leaves an unused token behind, which no one ever received.
        await unsubscribes.create_many(
            pool, [(s.org_id, s.contact_id, *s.unsubscribe) for s in links if s.unsubscribe is not None]
        )
    fenced = [(s.send_id, s.fence) for s in sends if s.fence is not None]
    # Sends with attachments: their files are written in the sends' transaction, after them.
    files = [(s.send_id, s.org_id, s.attachments) for s in sends if s.attachments]
    statement_sent = False
    try:
        async with pool.acquire() as conn, conn.transaction() if files else contextlib.nullcontext():
            statement_sent = True
            written = await conn.fetch(
                Q.insert_sends_batch,
                [s.send_id for s in sends],
                [s.org_id for s in sends],
                [s.broadcast_id for s in sends],
                [s.contact_id for s in sends],
                [s.source for s in sends],
                [s.request_id for s in sends],
                [s.variables for s in sends],
                [r.id for _, r in messages],
                [send_id for send_id, _ in messages],
                [r.template_id for _, r in messages],
                [r.contact_channel_id for _, r in messages],
                [r.channel for _, r in messages],
                [r.to for _, r in messages],
                [r.status for _, r in messages],
                [r.error for _, r in messages],
                [_email_hash(s.org_id, r) for s in sends for r in s.records],
                [s.notify for s in sends],
                [send_id for send_id, _ in fenced],
                [fence.org_id for _, fence in fenced],
                [fence.key for _, fence in fenced],
                [fence.holder for _, fence in fenced],
                [s.test for s in sends for _ in s.records],
            )
            await attachments.insert_many(conn, files)
    except db.UNREACHABLE:
        if not statement_sent:
            raise  # no connection, so nothing was written: the caller may retry
        written = await after_lost_commit(lambda: pool.fetch(Q.select_sends_messages, [s.send_id for s in sends]))
        log.warning("send_commit_reply_lost", sends=len(sends), committed=len({r["send_id"] for r in written}))
        if not written:
            # The statement is atomic: no send of the batch was written (or all were refused,
            # which a repeat will tell). Nothing was accepted; the caller may retry.
            raise
    by_id = {row["id"]: row for row in written}
    for _, record in messages:
        row = by_id.get(record.id)
        if row is not None:
            record.status, record.error = row["status"], row["error"]
    ok = {row["send_id"] for row in written}
    refused = [s for s in sends if s.send_id not in ok]
    reasons: dict[uuid.UUID, errors.TidingsError] = {}
    if refused:
        # Rare: a pause, or an unsubscribe or block, committed after `prepare` looked; or a
        # retry took the send's Idempotency-Key over.
        rows = await pool.fetch(
            Q.select_send_refusals, [s.broadcast_id for s in refused], [s.contact_id for s in refused]
        )
        for send, row in zip(refused, rows, strict=True):
            if send.fence is not None and not await _holds(pool, send.fence):
                reasons[send.send_id] = errors.IdempotencyKeyInFlight(KEY_TAKEN_OVER)
            elif row["contact_status"] == ContactStatus.unsubscribed:
                reasons[send.send_id] = errors.RecipientUnsubscribed()
            elif row["contact_status"] == ContactStatus.blocked:
                reasons[send.send_id] = errors.RecipientBlocked()
            else:
                reasons[send.send_id] = errors.BroadcastNotActive()
    return [reasons.get(s.send_id) for s in sends]


async def _holds(pool: asyncpg.Pool, fence: KeyFence) -> bool:
    holder = await pool.fetchval(Q.select_idempotency_holder, fence.org_id, fence.key)
    return bool(holder == fence.holder)


async def after_lost_commit(probe: Callable[[], Awaitable[T]], wait_s: float = LOST_COMMIT_WAIT_S) -> T:
    """What a commit whose reply was lost wrote: `probe` (a read of it) asked until Postgres
    answers, for at most `wait_s`; then Unavailable (503), saying that the outcome is unknown."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            return await deadlines.within(probe(), max(LOST_COMMIT_POLL_S, deadline - loop.time()))
        except db.UNREACHABLE as exc:
            if loop.time() >= deadline:
                raise errors.Unavailable(OUTCOME_UNKNOWN, headers={"Retry-After": "1"}) from exc
        await asyncio.sleep(LOST_COMMIT_POLL_S)


@db.translated
async def load_committed(pool: asyncpg.Pool, org_id: uuid.UUID, send_id: uuid.UUID) -> PreparedSend | None:
    """A committed send of the org, with its messages as they are now (None: no such send)."""
    return (await load_committed_many(pool, org_id, [send_id])).get(send_id)


@db.translated
async def load_committed_many(
    pool: asyncpg.Pool, org_id: uuid.UUID, send_ids: list[uuid.UUID]
) -> dict[uuid.UUID, PreparedSend]:
    """The committed sends of the org among `send_ids`, in one query (absent: never committed)."""
    by_send: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for r in await pool.fetch(Q.select_sends_messages, send_ids):
        if r["org_id"] == org_id:
            by_send.setdefault(r["send_id"], []).append(r)
    return {send_id: _committed(org_id, send_id, rows) for send_id, rows in by_send.items()}


def _committed(org_id: uuid.UUID, send_id: uuid.UUID, rows: list[asyncpg.Record]) -> PreparedSend:
    first = rows[0]
    return PreparedSend(
        send_id=send_id,
        org_id=org_id,
        broadcast_id=first["broadcast_id"],
        contact_id=first["contact_id"],
        source="api",
        request_id=None,
        variables={},
        test=first["test"],
        records=[
            Record(
                id=r["id"],
                template_id=r["template_id"],
                channel=r["channel"],
                contact_channel_id=r["contact_channel_id"],
                to=r["to_address"],
                status=r["status"],
                error=r["error"],
                external_message_id=r["external_message_id"],
            )
            for r in rows
        ],
    )


def _email_hash(org_id: uuid.UUID, record: Record) -> bytes | None:
    if record.channel != Channel.email or not record.to:
        return None
    return address_hash(org_id, Channel.email, record.to.lower())
