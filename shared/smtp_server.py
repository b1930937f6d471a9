"""What an SMTP server of tidings needs beyond aiosmtpd: closing that really closes.

asyncio's `Server.close()` stops listening but leaves accepted connections open, so a server
being stopped (the bounce server on SIGTERM, the dev inbox at the end of a test) would keep
its sessions running. `TrackedSMTP` remembers its open connections and `close` ends them and
waits for their session tasks to unwind. Used by `bounces/` and the dev inbox.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP


class TrackedSMTP(SMTP):
    """aiosmtpd's protocol, remembering open connections in `connections`."""

    def __init__(self, handler: Any, connections: set[TrackedSMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._connections.discard(self)
        super().connection_lost(error)


async def close(server: asyncio.Server, connections: set[TrackedSMTP]) -> None:
    """Stop listening, end every open session and wait for it to finish unwinding, so that
    nothing is left pending when the loop closes."""
    server.close()
    sessions = []
    for connection in list(connections):
        if connection.transport is not None:
            connection.transport.close()
        if connection._handler_coroutine is not None:
            sessions.append(connection._handler_coroutine)
    await asyncio.gather(*sessions, return_exceptions=True)
    await server.wait_closed()
