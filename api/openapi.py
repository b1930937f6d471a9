"""The OpenAPI 3.1 document, built from the route declarations and msgspec's JSON Schema."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec

from api.broadcasts import schemas
from api.routing import ROUTES, RouteSpec
from shared import suppressions
from shared.domain import Channel, MessageSource, MessageStatus

_PARAM = re.compile(r"{(\w+)}")


# Query parameters as validation takes them, so that the document admits no value the api refuses.
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 200}
_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "limit": _LIMIT,
    "cursor": {"type": "string"},
    "status": {"type": "string", "enum": [s.value for s in MessageStatus]},
    "channel": {"type": "string", "enum": [c.value for c in Channel]},
    "contact_id": {"type": "string", "format": "uuid"},
    "reason": {"type": "string", "enum": [r.value for r in suppressions.Reason]},
}
# Message search (GET /orgs/{org_id}/messages).
_QUERY_SCHEMAS.update(
    {
        "to": {"type": "string", "minLength": 1},
        "broadcast_id": {"type": "string", "format": "uuid"},
        "source": {"type": "string", "enum": [s.value for s in MessageSource]},
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
    }
)
_TOKEN = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,100}$"}

# Why each error status can be answered, for the description.
_WHY = {
    "400": "the body is not JSON (or not UTF-8)",
    "401": "missing or invalid key",
    "404": "not found in this org",
    "408": "the body did not arrive within HTTP_BODY_TIMEOUT_S",
    "409": "conflicts with the current state",
    "413": "the body is over the size limit",
    "422": "validation error",
    "429": "over the org's rate limit (see Retry-After)",
    "503": "Postgres or Redis is unreachable; retry later",
}
_RATE_HEADERS = {
    name: {"description": what, "schema": {"type": "integer"}}
    for name, what in (
        ("RateLimit-Limit", "requests allowed per window"),
        ("RateLimit-Remaining", "requests left in this window"),
        ("RateLimit-Reset", "seconds until the window resets"),
    )
}


def _path_schema(name: str) -> dict[str, Any]:
    if name == "token":
        return _TOKEN
    if name == "id" or name.endswith("_id"):
        return {"type": "string", "format": "uuid"}
    return {"type": "string", "minLength": 1}


def _error_statuses(spec: RouteSpec) -> dict[str, str]:
    """Every error status the route can answer, with why: from its declaration's flags (the
    route wrapper's own refusals) and the statuses its handler declares."""
    codes: dict[str, str] = {}
    if spec.scope is not None:
        codes["401"] = _WHY["401"]
        codes["403"] = f"the key lacks the {spec.scope} scope"
    if spec.scope is not None or "{" in spec.path:
        codes["404"] = _WHY["404"]
    if spec.body is not None or (spec.raw and spec.method != "GET"):
        codes.update({c: _WHY[c] for c in ("400", "408", "413")})
    if spec.body is not None or (spec.query and not spec.raw):
        codes["422"] = _WHY["422"]
    if spec.idempotent:
        codes["409"] = "a request with this Idempotency-Key is still in flight"
        codes["422"] = _WHY["422"] + " (or an Idempotency-Key reused with another body)"
    if spec.rate_limited:
        codes["429"] = _WHY["429"]
    for code in spec.error_statuses:
        codes.setdefault(str(code), _WHY.get(str(code), "refused"))
    if spec.services:
        codes["503"] = _WHY["503"]
    return dict(sorted(codes.items()))


@functools.cache
def _build() -> dict[str, Any]:
    types: list[Any] = [schemas.ErrorResponse, schemas.V1ErrorResponse]
    for spec in ROUTES:
        types.extend(t for t in (spec.body, spec.response) if t is not None)
    unique = list(dict.fromkeys(types))
    type_schemas, components = msgspec.json.schema_components(unique, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(unique, type_schemas, strict=True))
    broadcasts_error_ref = schema_of[schemas.ErrorResponse]
    v1_error_ref = schema_of[schemas.V1ErrorResponse]

    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        # Each surface answers errors in its own model's shape; the public pages in HTML.
        error_ref = v1_error_ref if spec.path.startswith("/api/v1/") else broadcasts_error_ref
        html = spec.content_type == "text/html"
        error_content = (
            {"text/html": {"schema": {"type": "string"}}} if html else {"application/json": {"schema": error_ref}}
        )
        op: dict[str, Any] = {
            "summary": spec.summary,
            "tags": [spec.tag],
            "operationId": _operation_id(spec.method, spec.path),
        }
        params = [
            {"name": n, "in": "path", "required": True, "schema": _path_schema(n)} for n in _PARAM.findall(spec.path)
        ]
        params += [
            {"name": n, "in": "query", "required": False, "schema": _QUERY_SCHEMAS.get(n, {"type": "string"})}
            for n in spec.query
        ]
        if spec.idempotent:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            )
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema_of[spec.body]}}}
        responses: dict[str, Any] = {}
        for code in (spec.status, *spec.also):
            ok: dict[str, Any] = {"description": "success"}
            if spec.response is not None:
                ok["content"] = {"application/json": {"schema": schema_of[spec.response]}}
            elif code != 204:
                text = spec.content_type != "application/json"
                ok["content"] = {spec.content_type: {"schema": {"type": "string"}} if text else {}}
            if spec.rate_limited:
                ok["headers"] = _RATE_HEADERS
            responses[str(code)] = ok
        for status, why in _error_statuses(spec).items():
            error: dict[str, Any] = {"description": why, "content": error_content}
            if status == "429":
                error["headers"] = {
                    **_RATE_HEADERS,
                    "Retry-After": {"description": "seconds", "required": True, "schema": {"type": "integer"}},
                }
            responses[status] = error
        if spec.scope is not None:
            op["security"] = [{"bearer": []}]
            op["x-scope"] = spec.scope
        op["responses"] = responses
        paths.setdefault(spec.path, {})[spec.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tidings",
            "version": "0.1.0",
            "description": "Transactional messages by email and WhatsApp, tracked to their final status.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[{}]", "", path).strip("/").replace("/", "_").replace(".", "_").replace("-", "_")
    return f"{method.lower()}_{words}"


def document(server_url: str) -> dict[str, Any]:
    return {**_build(), "servers": [{"url": server_url}]}
