"""The console's pages. Each calls the domain functions the JSON APIs call (`shared.broadcasts`,
`shared.messages`, `shared.suppressions`, the accept service): a rule is written once."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shlex
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from api.broadcasts import messages as api_messages
from api.broadcasts import schemas
from api.broadcasts.broadcasts import complete_template, template_body
from api.console import chart
from api.console.web import Page, page, redirect
from api.middleware import REQUEST_ID
from shared import broadcasts, console, errors, messages, orgs, sending, suppressions, templating
from shared.domain import BUILTIN_VARIABLES, BroadcastStatus, Channel, KeyMode, MessageSource, MessageStatus
from shared.field_errors import FieldErrors

PAGE_SIZE = 50
RECIPIENTS_SHOWN = 25
SINCE: dict[str, dt.timedelta] = {
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
}
# Notices a redirect may ask the next page to show (a fixed set: nothing from the URL is echoed).
NOTICES = {
    "created": "Broadcast created.",
    "template": "Template added.",
    "template_removed": "Template removed.",
    "template_saved": "Template saved.",
    "variables": "Variables saved.",
    "activate": "The broadcast is active: triggers are accepted.",
    "pause": "The broadcast is paused: triggers are refused.",
    "resume": "The broadcast is active again.",
    "sent": "Sent. The recipients table below shows the message as it goes.",
    "suppressed": "The address is on the suppression list.",
    "unsuppressed": "The address is off the suppression list.",
    "canceled": "The message is canceled: it will not be sent.",
    "revoked": "The key is revoked: the API refuses it from now on (every api process within KEY_CACHE_TTL_S).",
}
SAMPLE = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+15550100"}


def problems(exc: msgspec.ValidationError | errors.TidingsError, default_field: str) -> dict[str, str]:
    """A validation failure as {form field: its problem, in words}."""
    if isinstance(exc, errors.TidingsError):
        if exc.fields:
            return {k.split("[")[0]: v[0] for k, v in exc.fields.items() if v}
        return {default_field: exc.message}
    text = str(exc)
    missing = re.search(r"missing required field `(\w+)`", text)
    if missing:
        return {missing.group(1): "is required"}
    at = re.search(r"at `\$\.(\w+)", text)
    return {at.group(1) if at else default_field: _in_words(text.split(" - at ")[0])}


def _in_words(problem: str) -> str:
    """msgspec's wording of a schema failure, as an operator would read it."""
    if problem == "Expected `str` of length >= 1":
        return "is required"
    if m := re.fullmatch(r"Expected `str` of length >= (\d+)", problem):
        return f"must be at least {m.group(1)} characters"
    if m := re.fullmatch(r"Expected `str` of length <= (\d+)", problem):
        return f"must be at most {m.group(1)} characters"
    if problem.startswith(("Invalid enum value", "Invalid value")):
        return "is not one of the choices"
    if problem.startswith("Expected `str` matching regex '^[A-Za-z_]"):
        return "names must be letters, digits and _, not starting with a digit"
    return problem


# ---- overview and broadcasts ----


@page
async def overview(p: Page) -> web.StreamResponse:
    range_name = chart.parse_range(p.request.query.get("range"))
    recent, _ = await broadcasts.page(p.state.pool, p.org_id, cursor=None, limit=5)
    return p.render(
        "overview.html",
        {
            "nav": "overview",
            "chart": await chart.build(p.state.pool, p.org_id, None, range_name, test=p.test),
            "recent": recent,
        },
    )


async def _broadcast_list(p: Page, *, problems: dict[str, str] | None = None, status: int = 200) -> web.Response:
    rows, next_cursor = await broadcasts.page(
        p.state.pool, p.org_id, cursor=p.request.query.get("cursor"), limit=PAGE_SIZE
    )
    return p.render(
        "broadcasts.html",
        {
            "nav": "broadcasts",
            "broadcasts": rows,
            "next_cursor": next_cursor,
            "problems": problems or {},
            "input": {"name": p.field("name"), "type": p.field("type")},
            "types": ["transactional", "marketing"],
        },
        status=status,
    )


@page
async def broadcast_list(p: Page) -> web.StreamResponse:
    return await _broadcast_list(p)


@page
async def broadcast_create(p: Page) -> web.StreamResponse:
    try:
        body = msgspec.convert({"name": p.field("name"), "type": p.field("type")}, schemas.BroadcastCreate)
        full = await broadcasts.create(p.state.pool, p.org_id, name=body.name, type_=body.type, variables=[])
    except (msgspec.ValidationError, errors.ValidationFailed) as exc:
        return await _broadcast_list(p, problems=problems(exc, "name"), status=422)
    return redirect(f"/console/broadcasts/{full['id']}?notice=created")


def _sample_data(variables: list[dict[str, Any]], public_base: str) -> dict[str, Any]:
    data: dict[str, Any] = {**SAMPLE, "unsubscribe_url": f"{public_base}/unsubscribe/preview"}
    for v in variables:
        data[v["name"]] = v.get("default") if v.get("default") is not None else f"[{v['name']}]"
    return data


async def _preview(channel: str, body: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A template rendered with sample variables by the worker's renderer (`shared.templating`),
    after the same check the API makes (which bounds parsing). Rendering runs off the loop."""
    try:
        await broadcasts.check_template(channel, body)
        if channel == Channel.email:
            subject = await asyncio.to_thread(templating.render, body.get("subject"), data)
            html = await asyncio.to_thread(templating.render, body.get("html_body"), data, html=True)
            text = await asyncio.to_thread(templating.render, body.get("text_body"), data)
            return {"subject": subject, "html": html, "text": text, "error": None}
        params = [await asyncio.to_thread(templating.render, src, data) for src in body.get("body_parameters") or []]
        return {"parameters": params, "error": None}
    except errors.ValidationFailed as exc:
        return {"error": exc.message}


def _curl(endpoint: str, variables: list[dict[str, Any]]) -> str:
    payload = {"email": "someone@example.com", "variables": {v["name"]: v.get("default") or "..." for v in variables}}
    data = msgspec.json.encode(payload).decode()
    return (
        f"curl -X POST {shlex.quote(endpoint)} \\\n"
        '  -H "Authorization: Bearer $TIDINGS_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d {shlex.quote(data)}"
    )


def _banner(b: dict[str, Any]) -> dict[str, Any]:
    s = b["summary"]
    channels = len(s["channels_used"])
    sent = s["messages_sent"]
    counts = f"{sent} message{'' if sent == 1 else 's'} sent across {channels} channel{'' if channels == 1 else 's'}"
    if b["status"] == BroadcastStatus.active:
        return {"kind": "active", "since": s["active_since"], "counts": counts}
    if b["status"] == BroadcastStatus.paused:
        return {"kind": "paused", "counts": counts}
    return {"kind": "draft", "counts": counts}


async def _live(p: Page, b: dict[str, Any]) -> dict[str, Any]:
    rows, _ = await messages.recipients_page(
        p.state.pool,
        p.org_id,
        b["id"],
        status=None,
        channel=None,
        contact_id=None,
        cursor=None,
        limit=RECIPIENTS_SHOWN,
        test=p.test,
    )
    return {"banner": _banner(b), "recipients": rows}


async def _broadcast_page(
    p: Page,
    *,
    problems: dict[str, dict[str, str]] | None = None,
    inputs: dict[str, dict[str, str]] | None = None,
    status: int = 200,
) -> web.Response:
    broadcast_id = p.path_uuid("broadcast_id")
    b = await broadcasts.get(p.state.pool, p.org_id, broadcast_id)
    data = _sample_data(b["variables"], p.state.settings.public_base)
    templates = [{**t, "preview": await _preview(t["channel"], t, data)} for t in b["templates"]]
    endpoint = f"{p.state.settings.public_base}/orgs/{p.org_id}/broadcasts/{broadcast_id}/send"
    notice = NOTICES.get(p.request.query.get("notice", ""))
    return p.render(
        "broadcast.html",
        {
            "nav": "broadcasts",
            "b": b,
            "templates": templates,
            "endpoint": endpoint,
            "curl": _curl(endpoint, b["variables"]),
            "variables_text": "\n".join(
                v["name"] + ("" if v.get("default") is None else f"={v['default']}") for v in b["variables"]
            ),
            "live": await _live(p, b),
            "chart": await chart.build(
                p.state.pool, p.org_id, broadcast_id, chart.parse_range(p.request.query.get("range")), test=p.test
            ),
            "notice": notice,
            "problems": problems or {},
            "inputs": inputs or {},
            "channels": [c.value for c in Channel],
            "categories": ["utility", "authentication", "marketing"],
            "builtins": sorted(BUILTIN_VARIABLES),
        },
        status=status,
    )


@page
async def broadcast_show(p: Page) -> web.StreamResponse:
    return await _broadcast_page(p)


@page
async def broadcast_live(p: Page) -> web.StreamResponse:
    """The banner and the recipients table, which htmx re-fetches every few seconds."""
    b = await broadcasts.get(p.state.pool, p.org_id, p.path_uuid("broadcast_id"))
    return p.render("_live.html", {"b": b, "live": await _live(p, b)})


def _template_fields(p: Page) -> dict[str, Any]:
    channel = p.field("channel")
    if channel == Channel.whatsapp:
        fields: dict[str, Any] = {
            "channel": channel,
            "template_name": p.field("template_name"),
            "language": p.field("language"),
            "category": p.field("category"),
            "body_parameters": [line.strip() for line in p.field("body_parameters").splitlines() if line.strip()],
        }
        return fields
    fields = {"channel": channel, "from_email": p.field("from_email"), "subject": p.field("subject")}
    for optional in ("from_name", "html_body", "text_body"):
        if p.field(optional):
            fields[optional] = p.field(optional)
    return fields


def _validated_template(p: Page) -> tuple[str, dict[str, Any]]:
    """The template form as the API would store it (its schema, its defaults), or ValidationError."""
    validated = msgspec.convert(_template_fields(p), schemas.TemplateIn)
    channel = Channel.email if isinstance(validated, schemas.EmailTemplateIn) else Channel.whatsapp
    return channel, template_body(validated)


_TEMPLATE_INPUTS = (
    "channel",
    "from_email",
    "from_name",
    "subject",
    "html_body",
    "text_body",
    "template_name",
    "language",
    "category",
    "body_parameters",
)


@page
async def template_add(p: Page) -> web.StreamResponse:
    broadcast_id = p.path_uuid("broadcast_id")
    await broadcasts.ensure_exists(p.state.pool, p.org_id, broadcast_id)
    try:
        channel, body = _validated_template(p)
        await broadcasts.add_template(p.state.pool, p.org_id, broadcast_id, channel, body)
    except (msgspec.ValidationError, errors.ValidationFailed) as exc:
        return await _broadcast_page(
            p,
            problems={"template": problems(exc, "channel")},
            inputs={"template": {k: p.field(k) for k in _TEMPLATE_INPUTS}},
            status=422,
        )
    p.state.broadcast_cache.invalidate(p.org_id, broadcast_id)
    return redirect(f"/console/broadcasts/{broadcast_id}?notice=template")


@page
async def template_preview(p: Page) -> web.StreamResponse:
    """The add-template form rendered as it stands (htmx posts it as the operator types)."""
    b = await broadcasts.get(p.state.pool, p.org_id, p.path_uuid("broadcast_id"))
    try:
        channel, body = _validated_template(p)
        preview = await _preview(channel, body, _sample_data(b["variables"], p.state.settings.public_base))
    except msgspec.ValidationError as exc:
        channel, preview = p.field("channel"), {"error": "; ".join(f"{k} {v}" for k, v in problems(exc, "").items())}
    return p.render("_preview.html", {"channel": channel, "preview": preview})


def _template_values(t: dict[str, Any]) -> dict[str, str]:
    """A stored template as the editor's fields."""
    values = {k: ("" if v is None else str(v)) for k, v in t.items() if isinstance(v, str | None)}
    values["body_parameters"] = "\n".join(t.get("body_parameters") or [])
    return values


async def _template_page(
    p: Page, *, inputs: dict[str, str] | None = None, problems: dict[str, str] | None = None, status: int = 200
) -> web.Response:
    b = await broadcasts.get(p.state.pool, p.org_id, p.path_uuid("broadcast_id"))
    template_id = p.path_uuid("template_id")
    t = next((t for t in b["templates"] if t["id"] == template_id), None)
    if t is None:
        raise errors.NotFound("no such template")
    data = _sample_data(b["variables"], p.state.settings.public_base)
    return p.render(
        "template.html",
        {
            "nav": "broadcasts",
            "b": b,
            "t": t,
            "ti": inputs if inputs is not None else _template_values(t),
            "tp": problems or {},
            "initial_preview": await _preview(t["channel"], t, data),
            "channels": [c.value for c in Channel],
            "categories": ["utility", "authentication", "marketing"],
            "builtins": sorted(BUILTIN_VARIABLES),
        },
        status=status,
    )


@page
async def template_show(p: Page) -> web.StreamResponse:
    return await _template_page(p)


@page
async def template_save(p: Page) -> web.StreamResponse:
    """Save an edited template through `shared.broadcasts.update_template` with the API's own
    completion (its schema and defaults): fields the editor does not show (a reply-to, a
    preheader set through the API) are kept."""
    broadcast_id, template_id = p.path_uuid("broadcast_id"), p.path_uuid("template_id")
    changes = _template_fields(p)
    changes.pop("channel")
    if "from_email" in changes:
        for optional in ("from_name", "html_body", "text_body"):
            changes.setdefault(optional, None)
    try:
        await broadcasts.update_template(p.state.pool, p.org_id, broadcast_id, template_id, changes, complete_template)
    except errors.ValidationFailed as exc:
        inputs = {k: p.field(k) for k in _TEMPLATE_INPUTS}
        return await _template_page(p, inputs=inputs, problems=problems(exc, "channel"), status=422)
    p.state.broadcast_cache.invalidate(p.org_id, broadcast_id)
    return redirect(f"/console/broadcasts/{broadcast_id}?notice=template_saved")


@page
async def template_remove(p: Page) -> web.StreamResponse:
    broadcast_id = p.path_uuid("broadcast_id")
    await broadcasts.delete_template(p.state.pool, p.org_id, broadcast_id, p.path_uuid("template_id"))
    p.state.broadcast_cache.invalidate(p.org_id, broadcast_id)
    return redirect(f"/console/broadcasts/{broadcast_id}?notice=template_removed")


def _parse_variables(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, default = line.partition("=")
        out.append({"name": name.strip(), "default": default.strip() if sep else None})
    return out


@page
async def variables_save(p: Page) -> web.StreamResponse:
    broadcast_id = p.path_uuid("broadcast_id")
    try:
        variables = msgspec.convert(_parse_variables(p.field("variables")), list[schemas.Variable])
        await broadcasts.update(
            p.state.pool,
            p.org_id,
            broadcast_id,
            type_=None,
            name=None,
            variables=[{"name": v.name, "default": v.default} for v in variables],
        )
    except (msgspec.ValidationError, errors.ValidationFailed) as exc:
        return await _broadcast_page(
            p,
            problems={"variables": {"variables": next(iter(problems(exc, "variables").values()))}},
            inputs={"variables": {"variables": p.field("variables")}},
            status=422,
        )
    p.state.broadcast_cache.invalidate(p.org_id, broadcast_id)
    return redirect(f"/console/broadcasts/{broadcast_id}?notice=variables")


def status_action(action: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    @page
    async def change(p: Page) -> web.StreamResponse:
        broadcast_id = p.path_uuid("broadcast_id")
        try:
            await broadcasts.change_status(p.state.pool, p.org_id, broadcast_id, action)
        except errors.Conflict as exc:
            return await _broadcast_page(p, problems={"status": {"status": exc.message}}, status=409)
        except errors.NotReady as exc:
            missing = exc.fields.get("readiness") if exc.fields else None
            text = "; ".join(missing) if missing else exc.message
            return await _broadcast_page(p, problems={"status": {"status": f"Not ready: {text}"}}, status=422)
        p.state.broadcast_cache.invalidate(p.org_id, broadcast_id)
        return redirect(f"/console/broadcasts/{broadcast_id}?notice={action}")

    return change


@page
async def manual_send(p: Page) -> web.StreamResponse:
    """The manual trigger: accepted by the accept service like the API's send, `source: manual`."""
    broadcast_id = p.path_uuid("broadcast_id")
    b = await broadcasts.get(p.state.pool, p.org_id, broadcast_id)
    variables = {v["name"]: p.field(f"var_{v['name']}") for v in b["variables"] if p.field(f"var_{v['name']}")}
    inputs = {"email": p.field("email"), "phone": p.field("phone"), **{f"var_{k}": v for k, v in variables.items()}}
    try:
        trigger = msgspec.convert(
            {"email": p.field("email") or None, "phone": p.field("phone") or None, "variables": variables},
            sending.Trigger,
        )
        await p.state.acceptor.trigger(
            p.org_id,
            broadcast_id,
            trigger,
            source="manual",
            request_id=p.request[REQUEST_ID],
            wait=False,
            test=p.test,
        )
    except (msgspec.ValidationError, errors.ValidationFailed, errors.Conflict) as exc:
        return await _broadcast_page(
            p,
            problems={"send": {"send": exc.message if isinstance(exc, errors.TidingsError) else str(exc)}},
            inputs={"send": inputs},
            status=409 if isinstance(exc, errors.Conflict) else 422,
        )
    return redirect(f"/console/broadcasts/{broadcast_id}?notice=sent")


# ---- messages ----


def _choice(raw: str | None, allowed: list[str]) -> str | None:
    return raw if raw in allowed else None


@page
async def message_search(p: Page) -> web.StreamResponse:
    """Messages search: `shared.messages.search`, as `GET /orgs/{org_id}/messages` runs it."""
    q = p.request.query
    statuses = [s.value for s in MessageStatus]
    channels = [c.value for c in Channel]
    sources = [s.value for s in MessageSource]
    names = await console.broadcast_names(p.state.pool, p.org_id)
    broadcast_ids = {str(r["id"]): r["id"] for r in names}
    filters = {
        "address": q.get("address", "").strip(),
        "status": _choice(q.get("status"), statuses) or "",
        "channel": _choice(q.get("channel"), channels) or "",
        "source": _choice(q.get("source"), sources) or "",
        "broadcast": q.get("broadcast", "") if q.get("broadcast", "") in broadcast_ids else "",
        "since": _choice(q.get("since"), list(SINCE)) or "",
    }
    filter_problems: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    next_cursor = None
    try:
        # The address is checked by the API's own rule for `to`.
        to = api_messages._text_filter(filters["address"], "address")
    except errors.ValidationFailed as exc:
        filter_problems = problems(exc, "address")
    else:
        rows, next_cursor = await messages.search(
            p.state.pool,
            p.org_id,
            messages.SearchFilters(
                to=to,
                status=filters["status"] or None,
                channel=filters["channel"] or None,
                broadcast_id=broadcast_ids.get(filters["broadcast"]),
                source=filters["source"] or None,
                since=dt.datetime.now(dt.UTC) - SINCE[filters["since"]] if filters["since"] else None,
            ),
            test=p.test,
            cursor=q.get("cursor"),
            limit=PAGE_SIZE,
        )
    return p.render(
        "messages.html",
        {
            "nav": "messages",
            "messages": rows,
            "next_cursor": next_cursor,
            "filters": filters,
            "problems": filter_problems,
            "statuses": statuses,
            "channels": channels,
            "sources": sources,
            "broadcasts": names,
            "names": {r["id"]: r["name"] for r in names},
            "since_choices": list(SINCE),
        },
        status=422 if filter_problems else 200,
    )


async def _message_page(p: Page, *, problem: str | None = None, status: int = 200) -> web.Response:
    m = await messages.get(p.state.pool, p.org_id, p.path_uuid("message_id"), test=p.test)
    notice = NOTICES.get(p.request.query.get("notice", ""))
    return p.render("message.html", {"nav": "messages", "m": m, "notice": notice, "problem": problem}, status=status)


@page
async def message_show(p: Page) -> web.StreamResponse:
    return await _message_page(p)


@page
async def message_cancel(p: Page) -> web.StreamResponse:
    """Cancel a scheduled message, as `POST /orgs/{org_id}/messages/{id}/cancel` does."""
    message_id = p.path_uuid("message_id")
    try:
        await messages.cancel(p.state.pool, p.org_id, message_id, test=p.test)
    except errors.NotCancelable as exc:
        return await _message_page(p, problem=exc.message, status=409)
    return redirect(f"/console/messages/{message_id}?notice=canceled")


# ---- contacts and suppressions ----


@page
async def contact_list(p: Page) -> web.StreamResponse:
    address = p.request.query.get("address", "").strip()[:320]
    rows, next_cursor = await console.contacts_page(
        p.state.pool, p.org_id, address=address or None, cursor=p.request.query.get("cursor"), limit=PAGE_SIZE
    )
    return p.render(
        "contacts.html", {"nav": "contacts", "contacts": rows, "next_cursor": next_cursor, "address": address}
    )


async def _suppression_list(
    p: Page, *, problems: dict[str, str] | None = None, email: str = "", status: int = 200
) -> web.Response:
    reason = _choice(p.request.query.get("reason"), [r.value for r in suppressions.Reason])
    rows, next_cursor = await suppressions.page(
        p.state.pool, p.org_id, reason=reason, cursor=p.request.query.get("cursor"), limit=PAGE_SIZE
    )
    return p.render(
        "suppressions.html",
        {
            "nav": "suppressions",
            "entries": rows,
            "next_cursor": next_cursor,
            "problems": problems or {},
            "email": email,
            "notice": NOTICES.get(p.request.query.get("notice", "")),
        },
        status=status,
    )


@page
async def suppression_list(p: Page) -> web.StreamResponse:
    return await _suppression_list(p)


@page
async def suppression_add(p: Page) -> web.StreamResponse:
    # The address is checked as the Transactionals API checks its suppressions' (FieldErrors).
    checks = FieldErrors()
    email = checks.email("email", p.field("email"), required=True)
    try:
        checks.raise_if_any()
    except errors.ValidationFailed as exc:
        return await _suppression_list(p, problems=problems(exc, "email"), email=p.field("email"), status=422)
    assert email is not None
    await suppressions.add(p.state.pool, p.org_id, email, suppressions.Reason.manual)
    return redirect("/console/suppressions?notice=suppressed")


@page
async def suppression_remove(p: Page) -> web.StreamResponse:
    await suppressions.remove(p.state.pool, p.org_id, p.field("email"))
    return redirect("/console/suppressions?notice=unsuppressed")


# ---- API keys ----


async def _key_list(
    p: Page, *, problems: dict[str, str] | None = None, inputs: dict[str, Any] | None = None, status: int = 200
) -> web.Response:
    rows, next_cursor = await orgs.keys_page(
        p.state.pool, p.org_id, cursor=p.request.query.get("cursor"), limit=PAGE_SIZE
    )
    return p.render(
        "keys.html",
        {
            "nav": "keys",
            "keys": rows,
            "next_cursor": next_cursor,
            "current_key_id": p.key.key_id,
            "problems": problems or {},
            "input": inputs or {"name": "", "scopes": ["read", "write"], "mode": "live"},
            "scopes": ["read", "write", "admin"],
            "modes": ["live", "test"],
            "notice": NOTICES.get(p.request.query.get("notice", "")),
        },
        status=status,
    )


@page
async def key_list(p: Page) -> web.StreamResponse:
    return await _key_list(p)


@page
async def key_create(p: Page) -> web.StreamResponse:
    """Create a key as the keys API does; the key is on this answer's page only (never stored,
    never shown again: the page is not cached, and a reload would post a new key)."""
    assert p.form is not None
    scopes = [s for s in p.form.getall("scopes", []) if isinstance(s, str)]
    inputs = {"name": p.field("name"), "scopes": scopes, "mode": p.field("mode")}
    try:
        body = msgspec.convert(
            {"name": p.field("name") or None, "scopes": scopes, "mode": p.field("mode") or "live"}, schemas.KeyCreate
        )
    except msgspec.ValidationError as exc:
        return await _key_list(p, problems=problems(exc, "name"), inputs=inputs, status=422)
    created = await orgs.create_key_record(
        p.state.pool, p.org_id, list(body.scopes), name=body.name, mode=KeyMode(body.mode)
    )
    return p.render("key_created.html", {"nav": "keys", "created": created})


@page
async def key_revoke(p: Page) -> web.StreamResponse:
    key_id = p.path_uuid("key_id")
    await orgs.revoke_key(p.state.pool, p.org_id, key_id)
    # This process refuses it at once; the others within KEY_CACHE_TTL_S (as the API's revoke).
    p.state.key_cache.forget(key_id)
    return redirect("/console/keys?notice=revoked")
