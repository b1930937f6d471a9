"""Liveness, readiness and the OpenAPI document: no auth."""

from __future__ import annotations

import asyncio
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from api import openapi
from api.jsonio import json_response
from api.routing import Call, route
from shared import db, deadlines, errors


@route("GET", "/healthz", summary="The process is up", scope=None, tag="service", services=False)
async def healthz(call: Call[None]) -> web.Response:
    return json_response({"status": "ok"})


# 503 (not ready) carries the same body as 200, naming what is unreachable.
@route(
    "GET", "/readyz", summary="Postgres and Redis are reachable", scope=None, tag="service", services=False, also=(503,)
)
async def readyz(call: Call[None]) -> web.Response:
    checks: dict[str, Any] = {}

    async def check(name: str, probe: Any) -> None:
        try:
            await deadlines.within(probe, timeout_s=2)
            checks[name] = "ok"
        except Exception as exc:
            # Named by its root cause: the driver's error under the data layer's DatabaseUnavailable.
            cause = exc.__cause__ if isinstance(exc, errors.DatabaseUnavailable) and exc.__cause__ else exc
            checks[name] = f"unreachable: {type(cause).__name__}"

    await asyncio.gather(check("postgres", db.ping(call.state.pool)), check("redis", call.state.redis.ping()))
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503)


@route("GET", "/openapi.json", summary="This API's OpenAPI 3.1 document", scope=None, tag="service", services=False)
async def openapi_json(call: Call[None]) -> web.Response:
    return json_response(openapi.document(call.state.settings.public_base))


@route(
    "GET",
    "/metrics",
    summary="Prometheus metrics of this API process",
    scope=None,
    tag="service",
    services=False,
    content_type="text/plain",
)
async def metrics_text(call: Call[None]) -> web.Response:
    # No auth, like /healthz: expose the api port only to the scraper's network.
    return web.Response(body=prometheus_client.generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
