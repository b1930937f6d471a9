"""A real webhook receiver for the tests, and a real deliverer to feed it.

`Receiver` is an aiohttp server on 127.0.0.1 that checks EVERY request with the official
`standardwebhooks` library against the secrets it was told for that path, records it, and
answers as the test arranged (a status, a hold, a redirect, a huge or a slow answer).
`deliverer` runs the worker's webhook task in this process with the session's settings (the
session's own worker delivers no webhooks, so nothing competes with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from shared.config import Settings
from worker.webhooks import WebhookDeliverer

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class Hit:
    name: str
    headers: dict[str, str]
    body: bytes
    payload: Any
    verified_by: list[str]

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def signatures(self) -> list[str]:
        return self.headers["webhook-signature"].split(" ")


def answer(status: int = 200, body: bytes = b"ok") -> Behaviour:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body)

    return respond


def redirect(location: str) -> Behaviour:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location})

    return respond


def hold(release: asyncio.Event) -> Behaviour:
    async def respond(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    return respond


def hang_up() -> Behaviour:
    """Close the connection without answering."""

    async def respond(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=200)  # never reaches the client

    return respond


def slow(seconds: float) -> Behaviour:
    async def respond(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200)

    return respond


class Receiver:
    def __init__(self) -> None:
        self.hits: dict[str, list[Hit]] = defaultdict(list)
        self.unverified: list[Hit] = []
        self.secrets: dict[str, list[str]] = {}
        self.plans: dict[str, list[Behaviour]] = defaultdict(list)
        self.changed = asyncio.Condition()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1, on `port` (0: any free one; the same one again after `close`)."""
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/hook/{name}", self._handle)
        app.router.add_get("/elsewhere", self._elsewhere)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook/{name}"

    def trust(self, name: str, *secrets: str) -> None:
        """The secrets a request to `name` may be signed with (each one is tried)."""
        self.secrets[name] = list(secrets)

    def plan(self, name: str, *behaviours: Behaviour) -> None:
        """How the next requests to `name` are answered, in order; then 200."""
        self.plans[name].extend(behaviours)

    async def wait(self, name: str, count: int, timeout_s: float = 10.0) -> list[Hit]:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: len(self.hits[name]) >= count)
        return self.hits[name]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        payload, verified_by = None, []
        for secret in self.secrets.get(name, []):
            try:
                payload = Webhook(secret).verify(body, headers)
                verified_by.append(secret)
            except WebhookVerificationError:
                pass
        hit = Hit(name, headers, body, payload, verified_by)
        async with self.changed:
            self.hits[name].append(hit)
            if not verified_by:
                self.unverified.append(hit)
            self.changed.notify_all()
        behaviour = self.plans[name].pop(0) if self.plans[name] else answer()
        return await behaviour(request)

    async def _elsewhere(self, request: web.Request) -> web.StreamResponse:
        raise AssertionError("a redirect was followed")


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.close()


@contextlib.asynccontextmanager
async def deliverer(settings: Settings, **overrides: Any) -> AsyncIterator[WebhookDeliverer]:
    """The worker's webhook task, running in this process until the block ends."""
    d = WebhookDeliverer(settings.replace(**{"webhook_max_in_flight": 16, **overrides}))
    await d.start()
    try:
        yield d
    finally:
        await d.stop(1.0)


class Endpoints:
    """Creates endpoints through the api, and deletes them (and their deliveries) at the end."""

    def __init__(self, client: TestClient[Any, Any], receiver: Receiver) -> None:
        self.client = client
        self.receiver = receiver
        self.made: list[tuple[Any, str]] = []

    async def create(self, org: Any, name: str | None = None, **body: Any) -> dict[str, Any]:
        name = name or uuid.uuid4().hex[:12]
        body.setdefault("url", self.receiver.url(name))
        r = await self.client.post(org.path("/webhooks"), headers=org.auth("admin"), json=body)
        assert r.status == 201, await r.text()
        out: dict[str, Any] = await r.json()
        out["name"] = name
        self.receiver.trust(name, out["secret"])
        self.made.append((org, out["id"]))
        return out

    async def deliveries(self, org: Any, endpoint_id: str, **params: str) -> list[dict[str, Any]]:
        r = await self.client.get(
            org.path(f"/webhooks/{endpoint_id}/deliveries"), headers=org.auth("read"), params=params
        )
        assert r.status == 200, await r.text()
        data: list[dict[str, Any]] = (await r.json())["data"]
        return data

    async def cleanup(self) -> None:
        for org, endpoint_id in self.made:
            await self.client.delete(org.path(f"/webhooks/{endpoint_id}"), headers=org.auth("admin"))
