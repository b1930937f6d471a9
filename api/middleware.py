"""Request id, one log line per request with its duration; errors answered through `api.errors`."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
import structlog
from aiohttp import web

from api import errors as http_errors
from api import routing
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
            response = http_errors.response_for(exc, request)
        except UNREACHABLE as exc:
            # Nothing was acknowledged: the client may retry. (A send is only acknowledged after
            # its commit, so an outage never loses an accepted message.)
            log.warning("backing_service_unavailable", error=repr(exc), path=loggable_path(request))
            unavailable = errors.Unavailable(
                "a backing service (Postgres or Redis) is unreachable; retry later", headers={"Retry-After": "1"}
            )
            response = http_errors.response_for(unavailable, request)
        except web.HTTPException as exc:
            response = http_errors.response_for(http_errors.from_http(exc), request)
        except Exception:
            log.exception("unhandled_error", path=loggable_path(request))
            response = http_errors.response_for(http_errors.InternalError(), request)
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        route = _route_label(request)
        elapsed_s = time.perf_counter() - started
        _observe(request.method, route, response.status if response is not None else 0, elapsed_s)
        logs.request_line(
            request_id,
            method=request.method,
            path=loggable_path(request),
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


# Path parameters that carry a credential (confirmation and unsubscribe tokens) or personal
# data (an address): a line for such a route shows the route's template in their place.
SECRET_PARAMS = frozenset({"token", "email"})
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def loggable_path(request: web.Request) -> str:
    """The request's path as logs may show it: never a token or an address.

    A route whose path carries one is logged as its template (`/confirm/{token}`); other
    routes' paths hold only opaque ids and are logged as they came. A path no route matched
    could hold anything (a token with a slash appended, an address without `.json`): only the
    segments the api's own routes use, and UUIDs, are kept, the others become `*`.
    """
    match_info = request.match_info
    resource = match_info.route.resource
    if resource is not None:
        if SECRET_PARAMS.isdisjoint(match_info):
            return request.path
        return resource.canonical
    return "/".join(s if s in _route_words() or _UUID.fullmatch(s) else "*" for s in request.path.split("/"))


@functools.cache
def _route_words() -> frozenset[str]:
    words = {""}
    for spec in routing.ROUTES:
        words.update(s for s in spec.path.split("/") if "{" not in s)
    return frozenset(words)


def _route_label(request: web.Request) -> str:
    """The route's template (`/orgs/{org_id}/...`), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
