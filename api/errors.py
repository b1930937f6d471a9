"""The one place where domain errors become HTTP responses."""

from __future__ import annotations

from typing import Any

from shared import errors

# Most specific class first: the first isinstance match wins.
_STATUS: list[tuple[type[errors.TidingsError], int]] = [
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.InvalidJson, 400),
    (errors.BodyTooLarge, 413),
    (errors.RequestTimeout, 408),
    (errors.ValidationFailed, 422),
    (errors.Conflict, 409),
    (errors.RateLimited, 429),
    (errors.Unavailable, 503),
]


def status_for(exc: errors.TidingsError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


# The Transactionals API speaks its model's dialect (a Rails product): errors under `errors`.
V1_PREFIX = "/api/v1/"


def body_for(exc: errors.TidingsError, path: str = "") -> dict[str, Any]:
    if path.startswith(V1_PREFIX):
        return v1_body(exc.message, exc.fields)
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.fields:
        error["fields"] = exc.fields
    if exc.extra:
        error.update(exc.extra)
    return {"error": error}


def v1_body(message: str, fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """`{"errors": {"field": ["problem"]}}`; a problem with no field is reported under `base`."""
    return {"errors": fields or {"base": [message]}}
