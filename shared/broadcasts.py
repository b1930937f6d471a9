"""Broadcast configuration: templates, readiness, summary, and their JSON shapes; and the
broadcast aggregate's data layer (create, read, page, change, templates, status), through
which every statement about a broadcast runs."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from shared import addresses, cursors, db, errors, templating
from shared.domain import BUILTIN_VARIABLES, BroadcastStatus, Channel, MessageStatus
from shared.sql import Q

# Fields that become mail headers: a literal CR/LF in them is refused, never folded.
HEADER_FIELDS = ("from_email", "from_name", "reply_to", "subject")
EMAIL_LIQUID_FIELDS = ("from_email", "from_name", "reply_to", "subject", "html_body", "text_body", "preheader")
SENT_STATUSES = frozenset(
    {MessageStatus.sent, MessageStatus.delivered, MessageStatus.read, MessageStatus.bounced, MessageStatus.complained}
)


async def check_template(channel: str, body: Mapping[str, Any]) -> None:
    """Refuse a template that can never render: bad Liquid, literal header line breaks.
    Large sources are parsed off the event loop."""
    problems: dict[str, list[str]] = {}
    if channel == Channel.email:
        for field in HEADER_FIELDS:
            if addresses.has_line_break(body.get(field)):
                problems[field] = ["must not contain line breaks (CR or LF)"]
        sources = {f: body.get(f) for f in EMAIL_LIQUID_FIELDS}
        from_email = body.get("from_email") or ""
        if "{" not in from_email and "from_email" not in problems:
            try:
                addresses.normalize_email(from_email)
            except addresses.InvalidAddress as exc:
                problems["from_email"] = [str(exc)]
        if "reply_to" not in problems and body.get("reply_to") and "{" not in body["reply_to"]:
            try:
                # The rule a rendered one meets too: exactly one mailbox, a name allowed.
                addresses.single_mailbox(body["reply_to"])
            except addresses.InvalidAddress as exc:
                problems["reply_to"] = [str(exc)]
    else:
        sources = {}
        for i, src in enumerate(body.get("body_parameters") or []):
            sources[f"body_parameters[{i}]"] = src
        slots = button_slots(body.get("button_parameters"))
        for i, (_, src) in enumerate(slots):
            sources[f"button_parameters[{i}]"] = src
        indexes = [index for index, _ in slots]
        if len(set(indexes)) != len(indexes):
            problems["button_parameters"] = ["two parameters fill the same button (a string fills its own position)"]
    for field, found in (await templating.check_syntax_async(sources)).items():
        problems.setdefault(field.split("[")[0], []).extend(found)
    if problems:
        first = next(iter(problems))
        raise errors.ValidationFailed(f"{first}: {problems[first][0]}", fields=problems)


def template_sources(channel: str, body: Mapping[str, Any]) -> list[str | None]:
    if channel == Channel.email:
        return [body.get(f) for f in EMAIL_LIQUID_FIELDS]
    return [*(body.get("body_parameters") or []), *(src for _, src in button_slots(body.get("button_parameters")))]


def button_slots(params: Sequence[str | Mapping[str, Any]] | None) -> list[tuple[int, str]]:
    """(button index, Liquid source) per button parameter: a string fills the button at its own
    position in the list, an object `{"index", "text"}` the button it names (a URL button that
    is not the template's first)."""
    return [(i, p) if isinstance(p, str) else (int(p["index"]), p["text"]) for i, p in enumerate(params or [])]


def template_variables(channel: str, body: Mapping[str, Any]) -> frozenset[str]:
    return templating.variables_used(template_sources(channel, body))


def template_problems(template_id: uuid.UUID, channel: str, body: Mapping[str, Any]) -> list[str]:
    """What keeps one template from being complete (empty list: complete)."""
    label = f"{channel} template {template_id}"
    out: list[str] = []
    if channel == Channel.email:
        if not (body.get("from_email") or "").strip():
            out.append(f"{label}: from_email is empty")
        if not (body.get("subject") or "").strip():
            out.append(f"{label}: subject is empty")
        if not (body.get("html_body") or "").strip() and not (body.get("text_body") or "").strip():
            out.append(f"{label}: html_body and text_body are both empty")
    else:
        if not (body.get("template_name") or "").strip():
            out.append(f"{label}: template_name is empty")
        if not (body.get("language") or "").strip():
            out.append(f"{label}: language is empty")
    return out


def readiness(variables: Sequence[Mapping[str, Any]], templates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    declared = {v["name"] for v in variables}
    missing: list[str] = []
    complete = 0
    for t in templates:
        problems = template_problems(t["id"], t["channel"], t["body"])
        complete += not problems
        missing.extend(problems)
    if not complete:
        missing.insert(0, "at least one complete template")
    for t in templates:
        for name in sorted(template_variables(t["channel"], t["body"]) - declared - BUILTIN_VARIABLES):
            missing.append(f"variable {name} used in template {t['id']} is not declared")
    return {"ready": not missing, "missing": missing}


def template_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "channel": row["channel"], **row["body"]}


def summary_json(status: str, activated_at: Any, counts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    channels: set[str] = set()
    sent = 0
    for c in counts:
        by_status[c["status"]] = by_status.get(c["status"], 0) + c["n"]
        if c["status"] in SENT_STATUSES:
            sent += c["n"]
            channels.add(c["channel"])
    return {
        "status": status,
        "active_since": activated_at if status == BroadcastStatus.active else None,
        "messages_sent": sent,
        "channels_used": sorted(channels),
        "by_status": by_status,
    }


async def _load_full(conn: asyncpg.Connection | asyncpg.Pool, rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    """Broadcast rows -> full JSON objects (templates, readiness, summary) in two more queries."""
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    templates: dict[uuid.UUID, list[asyncpg.Record]] = {i: [] for i in ids}
    for t in await conn.fetch(Q.select_templates, ids):
        templates[t["broadcast_id"]].append(t)
    counts: dict[uuid.UUID, list[asyncpg.Record]] = {i: [] for i in ids}
    for c in await conn.fetch(Q.select_message_counts, ids):
        counts[c["broadcast_id"]].append(c)
    return [broadcast_json(r, templates[r["id"]], counts[r["id"]]) for r in rows]


def broadcast_json(
    row: Mapping[str, Any], templates: Sequence[Mapping[str, Any]], counts: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "type": row["type"],
        "status": row["status"],
        "variables": row["variables"],
        "templates": [template_json(t) for t in templates],
        "readiness": readiness(row["variables"], templates),
        "summary": summary_json(row["status"], row["activated_at"], counts),
        "activated_at": row["activated_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def check_variables(variables: Sequence[Mapping[str, Any]]) -> None:
    seen: set[str] = set()
    for v in variables:
        if v["name"] in seen:
            raise errors.ValidationFailed(
                f"variable {v['name']} is declared twice", fields={"variables": [f"{v['name']} is declared twice"]}
            )
        seen.add(v["name"])


# The data layer: one function per thing the api does to a broadcast. A change runs in one
# transaction holding the broadcast's row lock, so that two changes of one broadcast queue.


@db.translated
async def get(pool: asyncpg.Pool, org_id: uuid.UUID, broadcast_id: uuid.UUID) -> dict[str, Any]:
    """One broadcast of the org as JSON, with templates, readiness and summary."""
    row = await pool.fetchrow(Q.select_broadcast, broadcast_id, org_id)
    if row is None:
        raise errors.NotFound("no such broadcast")
    (full,) = await _load_full(pool, [row])
    return full


@db.translated
async def ensure_exists(pool: asyncpg.Pool, org_id: uuid.UUID, broadcast_id: uuid.UUID) -> None:
    if await pool.fetchrow(Q.select_broadcast, broadcast_id, org_id) is None:
        raise errors.NotFound("no such broadcast")


@db.translated
async def create(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, name: str, type_: str, variables: list[dict[str, Any]]
) -> dict[str, Any]:
    """A new draft broadcast, as JSON."""
    check_variables(variables)
    row = await pool.fetchrow(Q.insert_broadcast, uuid.uuid4(), org_id, name, type_, variables)
    assert row is not None
    (full,) = await _load_full(pool, [row])
    return full


@db.translated
async def page(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the org's broadcasts as JSON, newest first, and the next page's cursor."""
    after_at, after_id = cursors.decode(cursor)
    rows = await pool.fetch(Q.select_broadcasts_page, org_id, after_at, after_id, limit + 1)
    chosen, next_cursor = cursors.split_page(rows, limit)
    return await _load_full(pool, chosen), next_cursor


@db.translated
async def update(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    broadcast_id: uuid.UUID,
    *,
    type_: str | None,
    name: str | None,
    variables: list[dict[str, Any]] | None,
) -> None:
    """Change name and/or variables (None: unchanged). `type_` given must be the one it has."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _lock(conn, org_id, broadcast_id)
        if type_ is not None and type_ != row["type"]:
            raise errors.TypeImmutable(fields={"type": ["cannot change after creation"]})
        if variables is not None:
            check_variables(variables)
        await conn.execute(Q.update_broadcast, broadcast_id, org_id, name, variables)


@db.translated
async def add_template(
    pool: asyncpg.Pool, org_id: uuid.UUID, broadcast_id: uuid.UUID, channel: str, body: dict[str, Any]
) -> asyncpg.Record:
    await check_template(channel, body)
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, org_id, broadcast_id)
        row = await conn.fetchrow(Q.insert_template, uuid.uuid4(), broadcast_id, org_id, channel, body)
        await conn.execute(Q.touch_broadcast, broadcast_id)
    assert row is not None
    return row


@db.translated
async def update_template(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    broadcast_id: uuid.UUID,
    template_id: uuid.UUID,
    changes: Mapping[str, Any],
    complete: Callable[[dict[str, Any]], dict[str, Any]],
) -> asyncpg.Record:
    """Apply `changes` to a template's body. `complete` turns the merged body into the stored
    one (the api's schema validates it and fills defaults) or raises ValidationFailed."""
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, org_id, broadcast_id)
        row = await conn.fetchrow(Q.select_template, template_id, broadcast_id, org_id)
        if row is None:
            raise errors.NotFound("no such template")
        if changes.get("channel", row["channel"]) != row["channel"]:
            raise errors.ValidationFailed(
                "a template's channel cannot change; add a new template", fields={"channel": ["cannot change"]}
            )
        body = complete({**row["body"], **changes, "channel": row["channel"]})
        await check_template(row["channel"], body)
        updated = await conn.fetchrow(Q.update_template, template_id, broadcast_id, org_id, body)
        await conn.execute(Q.touch_broadcast, broadcast_id)
    assert updated is not None
    return updated


@db.translated
async def delete_template(
    pool: asyncpg.Pool, org_id: uuid.UUID, broadcast_id: uuid.UUID, template_id: uuid.UUID
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, org_id, broadcast_id)
        if await conn.fetchval(Q.delete_template, template_id, broadcast_id, org_id) is None:
            raise errors.NotFound("no such template")
        await conn.execute(Q.touch_broadcast, broadcast_id)


@db.translated
async def set_status(
    pool: asyncpg.Pool, org_id: uuid.UUID, broadcast_id: uuid.UUID, allowed_from: Collection[str], to: BroadcastStatus
) -> None:
    """Move a broadcast to `to` from one of `allowed_from`; becoming active needs readiness."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _lock(conn, org_id, broadcast_id)
        if row["status"] not in allowed_from:
            raise errors.Conflict(f"a {row['status']} broadcast cannot become {to}", extra={"status": row["status"]})
        if to == BroadcastStatus.active:
            templates = await conn.fetch(Q.select_templates, [broadcast_id])
            ready = readiness(row["variables"], templates)
            if not ready["ready"]:
                raise errors.NotReady(extra={"missing": ready["missing"]}, fields={"readiness": ready["missing"]})
        await conn.execute(Q.update_broadcast_status, broadcast_id, org_id, to.value)


# What an operator asks of a broadcast's status (the API's routes and the console's buttons):
# the statuses it may start from, and the one it ends in. Asking for the status it already
# has changes nothing and is no error (a retried click or request).
STATUS_ACTIONS: dict[str, tuple[frozenset[str], BroadcastStatus]] = {
    "activate": (frozenset({BroadcastStatus.draft, BroadcastStatus.active}), BroadcastStatus.active),
    "pause": (frozenset({BroadcastStatus.active, BroadcastStatus.paused}), BroadcastStatus.paused),
    "resume": (frozenset({BroadcastStatus.paused, BroadcastStatus.active}), BroadcastStatus.active),
}


@db.translated
async def change_status(pool: asyncpg.Pool, org_id: uuid.UUID, broadcast_id: uuid.UUID, action: str) -> None:
    """Activate, pause or resume (`STATUS_ACTIONS`)."""
    allowed_from, to = STATUS_ACTIONS[action]
    await set_status(pool, org_id, broadcast_id, allowed_from, to)


async def _lock(conn: asyncpg.Connection, org_id: uuid.UUID, broadcast_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(Q.select_broadcast_for_update, broadcast_id, org_id)
    if row is None:
        raise errors.NotFound("no such broadcast")
    return row
