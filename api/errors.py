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


def body_for(exc: errors.TidingsError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.fields:
        error["fields"] = exc.fields
    if exc.extra:
        error.update(exc.extra)
    return {"error": error}
