"""structlog set-up: JSON lines by default, console for humans; a request id bound per task."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
from typing import Any, BinaryIO

import orjson
import structlog

# Where `request_line` writes directly, when lines are JSON at INFO or below (set by configure).
_request_out: BinaryIO | None = None
_log = structlog.get_logger("tidings.api")
FLUSH_AFTER_S = 0.1
_flush_pending = False


def configure(level: str = "INFO", fmt: str = "json", stream: BinaryIO | None = None) -> None:
    """`stream`: where JSON lines go (default stderr)."""
    global _request_out
    renderer: structlog.types.Processor
    _request_out = None
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
        logger_factory: structlog.types.WrappedLogger = structlog.PrintLoggerFactory(sys.stderr)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        out = stream if stream is not None else sys.stderr.buffer
        logger_factory = structlog.BytesLoggerFactory(out)
        if logging.getLevelName(level.upper()) <= logging.INFO:
            _request_out = out
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that log through stdlib (arq, aiohttp) go to stderr at WARNING and above.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    server_log = logging.getLogger("aiohttp.server")
    if _malformed_requests not in server_log.filters:
        server_log.addFilter(_malformed_requests)


def _malformed_requests(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot parse as an error with a traceback whose message quotes
    the raw request line and headers: tokens, addresses and keys included. It is the client's
    fault, not the server's: one line naming the kind of fault, without the bytes."""
    from aiohttp.http_exceptions import HttpProcessingError

    exc = record.exc_info[1] if record.exc_info else None
    if not isinstance(exc, HttpProcessingError):
        return True
    # Rewritten in place (a filter may change the record it passes).
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    record.msg, record.args = "malformed request refused with %s (%s)", (exc.code, type(exc).__name__)
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def request_line(request_id: str, **fields: Any) -> None:
    """The api's one line per request: the line `log.info("request", ...)` would write.

    Written directly when lines are JSON: structlog's processor chain (context merge, level,
    timestamp, renderer) was a tenth of an api process's time per trigger. Anywhere else
    (console format, tests) it goes through structlog as usual.
    """
    out = _request_out
    if out is None:
        _log.info("request", **fields)
        return
    line = {
        "request_id": request_id,
        **fields,
        "event": "request",
        "level": "info",
        "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
    }
    out.write(orjson.dumps(line) + b"\n")
    # Flushed in a moment, not per line (a write system call per request): lines reach the
    # stream within FLUSH_AFTER_S, and a crash loses at most that much of them.
    global _flush_pending
    if not _flush_pending:
        _flush_pending = True
        try:
            asyncio.get_running_loop().call_later(FLUSH_AFTER_S, _flush, out)
        except RuntimeError:  # no event loop: flush now
            _flush(out)


def _flush(out: BinaryIO) -> None:
    global _flush_pending
    _flush_pending = False
    with contextlib.suppress(OSError, ValueError):
        out.flush()
