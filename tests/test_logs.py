"""The api's per-request line, written directly in JSON mode, matches structlog's own lines."""

from __future__ import annotations

import io
from collections.abc import Iterator

import orjson
import pytest
import structlog

from shared import logs


@pytest.fixture
def json_logs() -> Iterator[io.BytesIO]:
    stream = io.BytesIO()
    logs.configure("INFO", "json", stream)
    try:
        yield stream
    finally:
        logs._request_out = None
        structlog.reset_defaults()


def test_request_line_has_the_keys_of_a_structlog_line(json_logs: io.BytesIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        structlog.get_logger("tidings.api").info("request", method="POST", path="/x", status=202, duration_ms=1.5)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    logs.request_line("req-1", method="POST", path="/x", status=202, duration_ms=1.5)
    via_structlog, direct = (orjson.loads(line) for line in json_logs.getvalue().splitlines())
    assert set(direct) == set(via_structlog)
    assert {k: v for k, v in direct.items() if k != "timestamp"} == {
        k: v for k, v in via_structlog.items() if k != "timestamp"
    }
    assert direct["timestamp"].endswith("Z") and direct["timestamp"][:10] == via_structlog["timestamp"][:10]


def test_request_line_is_quiet_above_info() -> None:
    logs.configure("WARNING", "json")
    try:
        assert logs._request_out is None  # goes through structlog, which filters it out
    finally:
        structlog.reset_defaults()
