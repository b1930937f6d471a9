"""Serving the app on a port, with a deadline on every request's headers.

aiohttp has no header read timeout: a connection that trickles a request line and headers
(slow loris) is held until the keep-alive timer, and a thousand of them hold a thousand
sockets and tasks. Here each connection must deliver a request's complete head within
`HTTP_HEADER_TIMEOUT_S`: of being opened (a connection that sends nothing counts), and on a
kept-alive connection of the first byte of its next request. Otherwise it is closed. The body
has its own deadline where it is read (`api.routing.read_body`, HTTP_BODY_TIMEOUT_S); an idle
kept-alive connection is closed after HTTP_KEEPALIVE_TIMEOUT_S.

`run` does what `web.run_app` did here (SIGINT/SIGTERM end it gracefully) with this server.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from shared.config import Settings

SHUTDOWN_TIMEOUT_S = 15.0
# After answering before the whole body arrived (413, 401, 408), aiohttp reads and drops the
# rest for this long so that the client, still sending, receives the answer rather than a reset.
# A second is plenty for any body the api admits at a working speed (aiohttp's default, 10 s,
# would let a slow client hold the connection ten times longer than its body deadline).
LINGER_S = 1.0


class _HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection protocol, plus the head deadline (see the module's docstring)."""

    __slots__ = ("_head_timeout_s", "_head_timer", "_heads_seen")

    def __init__(self, manager: web.Server, *, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # `_request_count` counts the heads parsed on this connection (malformed ones too).
        if self._request_count != self._heads_seen:
            self._heads_seen = self._request_count
            self._disarm()
        elif self._head_timer is None and self._waiter is not None and not self._waiter.done():
            # Between requests (the handler waits for a message) and part of a head arrived.
            self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_overdue)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        # Any head completed since arming cancelled this timer: none has.
        self._head_timer = None
        self.force_close()


class _Server(web.Server):
    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s

    def __call__(self) -> RequestHandler:
        return _HeadDeadlineHandler(self, loop=self._loop, head_timeout_s=self.head_timeout_s, **self._kwargs)


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, *, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout_s = head_timeout_s

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            head_timeout_s=self._head_timeout_s,
            **made._kwargs,
        )


async def start(
    app: web.Application, settings: Settings, host: str, port: int, *, reuse_port: bool = False
) -> web.AppRunner:
    """Serve `app` on host:port until the returned runner's `cleanup()`."""
    runner = _Runner(
        app,
        head_timeout_s=settings.http_header_timeout_s,
        keepalive_timeout=settings.http_keepalive_timeout_s,
        lingering_time=LINGER_S,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def run(app: web.Application, settings: Settings, host: str, port: int, *, reuse_port: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (what `web.run_app` does)."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        runner = await start(app, settings, host, port, reuse_port=reuse_port)
        try:
            await stop.wait()
        finally:
            # Stops listening, lets requests in flight finish (SHUTDOWN_TIMEOUT_S), then the
            # app's shutdown and cleanup hooks.
            await runner.cleanup()

    asyncio.run(serve())
