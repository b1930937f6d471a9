"""The one place where errors become HTTP responses: `answer(error, surface)`.

Every path goes through it: an error a handler raises, a request body that does not
decode, a refusal an `Idempotency-Key` stores for its replays, and the middleware's own
404, 405, 500 and 503. The two APIs answer errors in their own shapes: the Broadcasts API
as `{"error": {"code", "message", ...}}`, the Transactionals API (`/api/v1`, a Rails
product's model) as `{"errors": {"field": ["problem"]}}`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from aiohttp import web

from api.jsonio import json_response
from shared import errors

# The Transactionals API speaks its model's dialect (a Rails product): errors under `errors`.
V1_PREFIX = "/api/v1/"


class Surface(StrEnum):
    broadcasts = "broadcasts"
    transactionals = "transactionals"


def surface_of(path: str) -> Surface:
    return Surface.transactionals if path.startswith(V1_PREFIX) else Surface.broadcasts


class HttpError(errors.TidingsError):
    """A refusal aiohttp made itself (no such route, a method the path lacks, ...): its status is aiohttp's."""

    code = "http_error"

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status


class MethodNotAllowed(HttpError):
    code = "method_not_allowed"


def from_http(exc: web.HTTPException) -> errors.TidingsError:
    # A 405 names the methods the path has (RFC 9110: Allow is required on a 405).
    allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if exc.status == 404:
        return errors.NotFound(exc.reason, headers=allow)
    if exc.status == 405:
        return MethodNotAllowed(exc.status, exc.reason, headers=allow)
    return HttpError(exc.status, exc.reason, headers=allow)


class InternalError(errors.TidingsError):
    code = "internal_error"
    default_message = "internal error"


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


def answer(exc: errors.TidingsError, surface: Surface) -> tuple[int, dict[str, Any]]:
    """The status and body that answer `exc` on `surface`."""
    status = exc.status if isinstance(exc, HttpError) else next((s for cls, s in _STATUS if isinstance(exc, cls)), 500)
    if surface is Surface.transactionals:
        # A problem with no field is reported under `base`.
        return status, {"errors": exc.fields or {"base": [exc.message]}}
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.fields:
        error["fields"] = exc.fields
    if exc.extra:
        error.update(exc.extra)
    return status, {"error": error}


def response_for(exc: errors.TidingsError, request: web.Request) -> web.Response:
    status, body = answer(exc, surface_of(request.path))
    return json_response(body, status=status, headers=exc.headers)
