"""The bounce server: an SMTP server (aiosmtpd) that reads bounces and complaints back.

It accepts mail for `bounces+{token}@{BOUNCE_DOMAIN}` (the VERP envelope senders the worker
sends with) and `postmaster@{BOUNCE_DOMAIN}` (RFC 5321 asks for it); any other recipient is
refused at RCPT (550), and mail over BOUNCE_MAX_MESSAGE_BYTES at DATA (552). What it accepts it
reads (shared.bounces) and applies (shared.bounce_reports): the message is the one the token
names, or, when the token is missing, mangled or forged, the one whose Message-ID the report
quotes, else none. Soft bounces, auto-replies and anything unreadable are accepted and change
nothing, so a sender never retries them at us. Only an outage of Postgres answers 451, so
that the reporting server tries again later instead of the report being lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from shared import bounce_reports, bounces, db, errors, smtp_server, verp
from shared.config import Settings

log = structlog.get_logger("tidings.bounces")

# Reports are addressed to one bounce address; a few more leave room for odd relays, and a
# long list is not a report.
MAX_RECIPIENTS = 10


class BounceHandler:
    """aiosmtpd handler: the recipients it takes and what it does with the mail."""

    def __init__(self, settings: Settings, pool: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.domain = settings.bounce_domain.lower()

    def _accepts(self, address: str) -> bool:
        local, _, domain = address.strip().strip("<>").rpartition("@")
        if not self.domain or domain.lower() != self.domain:
            return False
        return local.lower() == "postmaster" or local.lower().startswith(verp.LOCAL_PREFIX)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self._accepts(address):
            return "550 5.1.1 No such recipient here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        # Parsing is CPU work on hostile input: off the loop, so one report cannot stall the rest.
        report = await asyncio.to_thread(bounces.parse, raw)
        tokens = [
            verp.message_for_address(r, domain=self.domain, secret=self.settings.bounce_secret)
            for r in envelope.rcpt_tos
        ]
        message_ids: list[uuid.UUID | None] = list(dict.fromkeys(t for t in tokens if t is not None)) or [None]
        fields = {
            "kind": str(report.kind),
            "status": report.status,
            "detail": report.detail,
            "peer": session.peer[0] if isinstance(session.peer, tuple) else None,
            "bytes": len(raw),
        }
        if not bounce_reports.changes_status(report.kind):
            log.info("bounce_report_ignored", token_valid=any(t is not None for t in tokens), **fields)
            return "250 OK"
        try:
            for message_id in message_ids:
                applied = await bounce_reports.apply(self.pool, report, message_id)
                log.info(
                    "bounce_report_read",
                    message_id=str(applied.message_id) if applied else None,
                    by="token" if message_id is not None else "message_id",
                    applied=bool(applied and applied.moved),
                    **fields,
                )
        except errors.TidingsError as exc:
            # Postgres unreachable or failing over: the reporting server keeps the report and
            # tries again later.
            log.warning("bounce_report_deferred", error=str(exc), **fields)
            return "451 4.3.0 Try again later"
        except Exception as exc:  # a bug: accept (a retry would fail alike), say so in the log
            log.error("bounce_report_failed", error=f"{type(exc).__name__}: {exc}", **fields)
        return "250 OK"


class BounceServer:
    """A listening bounce server; see `start`."""

    def __init__(self, server: asyncio.Server, connections: set[smtp_server.TrackedSMTP], host: str, port: int) -> None:
        self._server = server
        self._connections = connections
        self.host = host
        self.port = port

    async def close(self) -> None:
        await smtp_server.close(self._server, self._connections)


async def start(settings: Settings, pool: Any, *, host: str, port: int) -> BounceServer:
    """Listen on host:port (0: a free port, then read `.port`) on the running loop."""
    handler = BounceHandler(settings, pool)
    loop = asyncio.get_running_loop()
    connections: set[smtp_server.TrackedSMTP] = set()

    def protocol() -> smtp_server.TrackedSMTP:
        return smtp_server.TrackedSMTP(
            handler,
            connections,
            loop=loop,
            # An explicit hostname: the default, socket.getfqdn(), can block on DNS.
            hostname=settings.bounce_domain or "tidings-bounces",
            ident="tidings bounces",
            data_size_limit=settings.bounce_max_message_bytes,
            enable_SMTPUTF8=True,
            # A silent client is dropped rather than held open.
            timeout=60,
        )

    server = await loop.create_server(protocol, host, port)
    bound: int = server.sockets[0].getsockname()[1]
    return BounceServer(server, connections, host, bound)


async def serve(settings: Settings, stop: asyncio.Event, *, host: str, port: int) -> None:
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=5)
    server = await start(settings, pool, host=host, port=port)
    log.info("bounces_listening", host=host, port=server.port, domain=settings.bounce_domain)
    try:
        await stop.wait()
    finally:
        await server.close()
        await pool.close()


async def serve_until_signalled(settings: Settings, *, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop, host=host, port=port)


def run(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """`tidings bounces`: one bounce server process, until SIGTERM or SIGINT."""
    import uvloop

    uvloop.run(
        serve_until_signalled(
            settings, host=host or settings.bounce_host, port=settings.bounce_port if port is None else port
        )
    )
