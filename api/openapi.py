"""The OpenAPI 3.1 document, built from the route declarations and msgspec's JSON Schema."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec

from api import schemas
from api.routing import ROUTES

_PARAM = re.compile(r"{(\w+)}")


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
        # Each surface answers errors in its own model's shape.
        error_ref = v1_error_ref if spec.path.startswith("/api/v1/") else broadcasts_error_ref
        op: dict[str, Any] = {
            "summary": spec.summary,
            "tags": [spec.tag],
            "operationId": _operation_id(spec.method, spec.path),
        }
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in _PARAM.findall(spec.path)
        ]
        params += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}} for n in spec.query]
        if spec.idempotent:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                }
            )
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema_of[spec.body]}}}
        ok: dict[str, Any] = {"description": "success"}
        if spec.response is not None:
            ok["content"] = {"application/json": {"schema": schema_of[spec.response]}}
        responses: dict[str, Any] = {str(spec.status): ok}
        if spec.scope is not None:
            op["security"] = [{"bearer": []}]
            op["x-scope"] = spec.scope
            for code, why in (
                ("401", "missing or invalid key"),
                ("403", f"key lacks the {spec.scope} scope"),
                ("404", "not found in this org"),
            ):
                responses[code] = {"description": why, "content": {"application/json": {"schema": error_ref}}}
        if spec.body is not None:
            responses["422"] = {
                "description": "validation error",
                "content": {"application/json": {"schema": error_ref}},
            }
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
