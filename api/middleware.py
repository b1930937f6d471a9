"""Request id, one log line per request with its duration, and the error mapping."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
import structlog
from aiohttp import web

from api import errors as http_errors
from api.jsonio import json_response
from shared import db, errors, ids, logs, metrics

log = structlog.get_logger("tidings.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
UNREACHABLE: tuple[type[BaseException], ...] = (
    *db.UNREACHABLE,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    # Echo a sane client id; otherwise make one. Bounded so logs cannot be flooded through it.
    request_id = incoming if 0 < len(incoming) <= 200 and incoming.isprintable() else ids.new_id().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    response: web.StreamResponse | None = None
    try:
        try:
            response = await handler(request)
        except errors.TidingsError as exc:
            response = json_response(
                http_errors.body_for(exc, request.path), status=http_errors.status_for(exc), headers=exc.headers
            )
        except UNREACHABLE as exc:
            # Nothing was acknowledged: the client may retry. (A send is only acknowledged after
            # its commit, so an outage never loses an accepted message.)
            log.warning("backing_service_unavailable", error=repr(exc), path=request.path)
            unavailable = errors.Unavailable("a backing service (Postgres or Redis) is unreachable; retry later")
            response = json_response(
                http_errors.body_for(unavailable, request.path), status=503, headers={"Retry-After": "1"}
            )
        except web.HTTPException as exc:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            if request.path.startswith(http_errors.V1_PREFIX):
                response = json_response(http_errors.v1_body(exc.reason), status=exc.status)
            else:
                response = json_response({"error": {"code": code, "message": exc.reason}}, status=exc.status)
        except Exception:
            log.exception("unhandled_error", path=request.path)
            response = json_response({"error": {"code": "internal_error", "message": "internal error"}}, status=500)
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        route = _route_label(request)
        elapsed_s = time.perf_counter() - started
        _observe(request.method, route, response.status if response is not None else 0, elapsed_s)
        logs.request_line(
            request_id,
            method=request.method,
            path=request.path,
            status=response.status if response is not None else None,
            duration_ms=round(elapsed_s * 1000, 2),
        )
        structlog.contextvars.unbind_contextvars("request_id")


# Label values a client cannot multiply: any other method is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The metric children per label set, looked up once (`labels()` validates and locks each call).
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _observe(method: str, route: str, status: int, elapsed_s: float) -> None:
    label = method if method in _METHODS else "other"
    children = _children.get((label, route, status))
    if children is None:
        children = _children[(label, route, status)] = (
            metrics.HTTP_REQUESTS.labels(label, route, str(status)),
            metrics.HTTP_LATENCY.labels(route),
        )
    children[0].inc()
    children[1].observe(elapsed_s)


def _route_label(request: web.Request) -> str:
    """The route's template (`/orgs/{org_id}/...`), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
