"""Transactionals API templates: email templates (`template_id`) and confirmation page copy
(`confirmation_template_id`). Both belong to the key's org; another org's id is not found."""

from __future__ import annotations

from aiohttp import web

from api.jsonio import json_response
from api.routing import Call, route
from api.transactionals import schemas
from shared import confirmations, cursors, field_errors, transactional_templates, transactionals
from shared.field_errors import FieldErrors

TAG = "transactionals"
MAX_HEADING = 200
MAX_PAGE_BODY = 5000


@route(
    "POST",
    "/api/v1/templates.json",
    summary="Create an email template (Liquid subject, body, preheader)",
    scope="write",
    tag=TAG,
    body=schemas.TemplateCreate,
    response=schemas.TemplateOut,
    status=201,
)
async def create_template(call: Call[schemas.TemplateCreate]) -> web.Response:
    body = call.body
    problems = FieldErrors()
    name = problems.text("name", body.name, maximum=transactionals.MAX_NAME, required=True)
    subject = problems.text("subject", body.subject, maximum=transactionals.MAX_SUBJECT, header=True, liquid=True)
    content = problems.text("body", body.body, maximum=transactionals.MAX_BODY, liquid=True)
    preheader = problems.text("preheader", body.preheader, maximum=transactionals.MAX_PREHEADER, liquid=True)
    await problems.check_liquid()
    problems.raise_if_any()
    assert name is not None
    row = await transactional_templates.create(
        call.state.pool, call.org_id, name=name.strip(), subject=subject, body=content, preheader=preheader
    )
    return json_response(transactional_templates.template_json(row), status=201)


@route(
    "GET",
    "/api/v1/templates/{id}.json",
    summary="One email template",
    scope="read",
    tag=TAG,
    response=schemas.TemplateOut,
)
async def get_template(call: Call[None]) -> web.Response:
    row = await transactional_templates.get(call.state.pool, call.org_id, call.path_uuid("id"))
    return json_response(transactional_templates.template_json(row))


@route(
    "GET",
    "/api/v1/templates.json",
    summary="The org's email templates, newest first",
    scope="read",
    tag=TAG,
    response=schemas.TemplateList,
    query=("limit", "cursor"),
)
async def list_templates(call: Call[None]) -> web.Response:
    q = call.request.query
    rows, next_cursor = await transactional_templates.page(
        call.state.pool, call.org_id, cursor=q.get("cursor"), limit=cursors.parse_limit(q.get("limit"))
    )
    return json_response({"data": [transactional_templates.template_json(r) for r in rows], "next_cursor": next_cursor})


@route(
    "POST",
    "/api/v1/confirmation_templates.json",
    summary="Create confirmation page copy (heading and body per page state)",
    scope="write",
    tag=TAG,
    body=schemas.ConfirmationTemplateCreate,
    response=schemas.ConfirmationTemplateOut,
    status=201,
    error_statuses=(409,),
)
async def create_confirmation_template(call: Call[schemas.ConfirmationTemplateCreate]) -> web.Response:
    body = call.body
    problems = FieldErrors()
    name = problems.text("name", body.name, maximum=transactionals.MAX_NAME, required=True)
    pages: dict[str, dict[str, str]] = {}
    given = body.pages or schemas.ConfirmationPages()
    for state in confirmations.PageState:
        copy = getattr(given, state.value)
        if copy is None:
            continue
        page: dict[str, str] = {}
        for field, value, maximum in (("heading", copy.heading, MAX_HEADING), ("body", copy.body, MAX_PAGE_BODY)):
            if value is None or not value.strip():
                continue
            if len(value) > maximum:
                # Keyed by the top-level field like every error of this API; the message says where.
                problems.add("pages", f"{state.value}.{field} {field_errors.too_long(maximum)}")
            page[field] = value
        pages[state.value] = page
    problems.raise_if_any()
    assert name is not None
    row = await confirmations.create_template(
        call.state.pool, call.org_id, name=name.strip(), pages=pages, is_default=bool(body.default)
    )
    return json_response(confirmations.template_json(row), status=201)


@route(
    "GET",
    "/api/v1/confirmation_templates/{id}.json",
    summary="One confirmation template",
    scope="read",
    tag=TAG,
    response=schemas.ConfirmationTemplateOut,
)
async def get_confirmation_template(call: Call[None]) -> web.Response:
    row = await confirmations.get_template(call.state.pool, call.org_id, call.path_uuid("id"))
    return json_response(confirmations.template_json(row))
