"""Route declarations carrying what OpenAPI needs, and the per-request `Call`.

Every route is declared once with `@route(...)`: method, path, scope, body and response
types. The wrapper authenticates, checks the scope and the org in the path, decodes the
body, then hands the handler a `Call`. `api.openapi` builds the document from the same
declarations, so the two cannot drift.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from aiohttp import web

from api import auth, idempotency, jsonio, ratelimit
from api.state import STATE, State
from shared import attachments, errors
from shared.config import Settings

B = TypeVar("B")


@dataclasses.dataclass(slots=True)
class Call(Generic[B]):
    request: web.Request
    state: State
    key: auth.AuthKey | None
    body: B
    raw_body: bytes = b""

    @property
    def org_id(self) -> uuid.UUID:
        assert self.key is not None
        return self.key.org_id

    def path_uuid(self, name: str) -> uuid.UUID:
        """A UUID from the path; anything else cannot name an object, so it is a 404."""
        try:
            return uuid.UUID(self.request.match_info[name])
        except ValueError:
            raise errors.NotFound() from None

    def path_text(self, name: str) -> str:
        """A text segment of the path. One holding a NUL cannot name anything stored (Postgres
        text cannot hold it), so it is a 404 like any other unknown name."""
        value = self.request.match_info[name]
        if "\x00" in value:
            raise errors.NotFound()
        return value


Handler = Callable[[Call[Any]], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    scope: str | None
    body: Any
    response: Any
    status: int
    tag: str
    query: tuple[str, ...]
    raw: bool
    idempotent: bool
    # What OpenAPI documents beyond what the flags above imply (api.openapi).
    also: tuple[int, ...] = ()
    error_statuses: tuple[int, ...] = ()
    content_type: str = "application/json"
    services: bool = True
    rate_limited: bool = False


ROUTES: list[RouteSpec] = []
WEBHOOK_MAX_BODY_BYTES = 8 * 1024 * 1024


def route(
    method: str,
    path: str,
    *,
    summary: str,
    scope: str | None,
    tag: str,
    body: Any = None,
    response: Any = None,
    status: int = 200,
    query: tuple[str, ...] = (),
    raw: bool = False,
    idempotent: bool = False,
    rate_limited: bool = False,
    also: tuple[int, ...] = (),
    error_statuses: tuple[int, ...] = (),
    content_type: str = "application/json",
    services: bool = True,
    body_limit: Callable[[Settings], int] | None = None,
) -> Callable[[Handler], Handler]:
    """Declare a route. `scope=None` means no bearer auth (health, webhooks, public pages).
    `raw=True` leaves the body undecoded (webhooks must verify the exact bytes).
    `idempotent=True` honours an `Idempotency-Key` header (POSTs that send).
    `rate_limited=True` spends the org's send budget before anything else is looked at.
    For the OpenAPI document only: `also` lists other success statuses (same body), `error_statuses`
    the error statuses the handler itself can answer beyond those the flags imply,
    `content_type` the success body's type, `services=False` a route that needs neither
    Postgres nor Redis (never 503). `body_limit`: the route's body size limit, when not
    MAX_BODY_BYTES (a send that carries attachments, a batch)."""

    def decorate(fn: Handler) -> Handler:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            state = request.app[STATE]
            key = None
            if scope is not None:
                key = await auth.authenticate(request, state)
                auth.require(key, scope, request.match_info.get("org_id"))
            limit_headers = await ratelimit.enforce(state, key) if rate_limited and key is not None else None
            try:
                response = await _run(request, state, key, fn)
            except errors.TidingsError as exc:
                if limit_headers:
                    exc.headers = {**limit_headers, **(exc.headers or {})}
                raise
            if limit_headers:
                response.headers.update(limit_headers)
            return response

        async def _run(request: web.Request, state: State, key: auth.AuthKey | None, fn: Handler) -> web.StreamResponse:
            decoded: Any = None
            raw_body = b""
            if body is not None or raw:
                # Webhook batches from a provider may be larger than any client request.
                limit = WEBHOOK_MAX_BODY_BYTES if raw else state.settings.max_body_bytes
                if body_limit is not None:
                    limit = body_limit(state.settings)
                raw_body = await read_body(request, limit, state.settings.http_body_timeout_s)
            if body is not None:
                decoded = jsonio.decode(raw_body, body)
            call = Call(request=request, state=state, key=key, body=decoded, raw_body=raw_body)
            if idempotent and key is not None:
                _check_idempotency_key(request)
                return await idempotency.run_once(
                    request, state.pool, key.org_id, raw_body, lambda: fn(call), test=key.test
                )
            return await fn(call)

        ROUTES.append(
            RouteSpec(
                method,
                path,
                endpoint,
                summary,
                scope,
                body,
                response,
                status,
                tag,
                query,
                raw,
                idempotent,
                also=also,
                error_statuses=error_statuses,
                content_type=content_type,
                services=services,
                rate_limited=rate_limited,
            )
        )
        return fn

    return decorate


async def read_body(request: web.Request, limit_bytes: int, timeout_s: float) -> bytes:
    """The whole body, or BodyTooLarge as soon as it passes `limit_bytes` (never buffered past it),
    or RequestTimeout when it has not all arrived within `timeout_s`: a client that trickles a
    body cannot hold a connection and a handler open for longer."""
    if request.content_length is not None and request.content_length > limit_bytes:
        raise _too_large(limit_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit_bytes:
                    raise _too_large(limit_bytes)
                chunks.append(chunk)
    except TimeoutError:
        raise errors.RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None


def attachment_body_limit(settings: Settings) -> int:
    """The body limit of a send that may carry attachments: MAX_BODY_BYTES plus their base64."""
    return attachments.body_limit_bytes(settings.max_body_bytes, settings.max_attachment_bytes)


def batch_body_limit(settings: Settings) -> int:
    """The body limit of a batch route: BATCH_MAX_BODY_BYTES plus the base64 of one email's
    MAX_ATTACHMENT_BYTES, so that any item the single send route accepts, files and all, can
    also go in a batch; the batch's files together are held to that one allowance (their
    bytes are decoded and kept in memory until the batch commits)."""
    return attachments.body_limit_bytes(settings.batch_max_body_bytes, settings.max_attachment_bytes)


def _too_large(limit_bytes: int) -> errors.BodyTooLarge:
    return errors.BodyTooLarge(f"the request body is larger than {limit_bytes} bytes")


def _check_idempotency_key(request: web.Request) -> None:
    # aiohttp keeps bytes that are not UTF-8 as lone surrogates, which Postgres cannot store;
    # control characters have no place in a key either.
    key = request.headers.get("Idempotency-Key")
    if key is not None and not key.isprintable():
        raise errors.ValidationFailed(
            "Idempotency-Key must be printable text", fields={"Idempotency-Key": ["must be printable text"]}
        )


def add_routes(app: web.Application) -> None:
    # aiohttp tries the routes under one path prefix in the order they were added: the send
    # endpoints (the idempotent ones), hit on every trigger, go first. Their paths end in a
    # literal segment, so they cannot shadow another route.
    for spec in sorted(ROUTES, key=lambda spec: not spec.idempotent):
        app.router.add_route(spec.method, spec.path, spec.handler)
