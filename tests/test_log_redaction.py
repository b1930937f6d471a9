"""No credential or address reaches the logs through a request's path.

The real `tidings api` process writing JSON lines at INFO: confirmation and unsubscribe
tokens, suppressed addresses, paths no route matches, and request lines aiohttp cannot parse.
Its captured output must hold none of them, and must still say which route was asked.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from shared.config import Settings
from tests.api_process import api_process
from tests.helpers import unique_email


async def test_tokens_and_addresses_stay_out_of_the_logs(settings: Settings, org: Any, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    address = unique_email("redact")
    log_path = tmp_path / "api.log"
    async with api_process(settings, log_path, LOG_LEVEL="INFO") as base, aiohttp.ClientSession() as http:
        for method, path in [
            ("GET", f"/confirm/{token}"),
            ("GET", f"/unsubscribe/{token}"),
            ("POST", f"/unsubscribe/{token}"),
            ("GET", f"/confirm/{token}/"),  # no route: the token must not survive either
            ("PUT", f"/confirm/{token}"),  # 405
            ("GET", f"/api/v1/suppressions/{address}"),  # no `.json`: no route
        ]:
            async with http.request(method, base + path):
                pass
        async with http.delete(f"{base}/api/v1/suppressions/{address}.json", headers=org.auth()) as r:
            assert r.status == 404
        # A request line aiohttp refuses to parse; its error message quotes the raw bytes.
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /unsubscribe/{token}\x01{address} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await reader.read()).startswith(b"HTTP/1.")
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.3)  # request lines are flushed within 0.1 s
    text = await asyncio.to_thread(log_path.read_text)

    assert token not in text
    assert address not in text and address.split("@")[0] not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    paths = [line["path"] for line in lines if line.get("event") == "request" and line["path"] != "/healthz"]
    print("\nlogged paths:", paths)
    assert paths == [
        "/confirm/{token}",
        "/unsubscribe/{token}",
        "/unsubscribe/{token}",
        "/confirm/*/",
        "/confirm/*",
        "/api/v1/suppressions/*",
        "/api/v1/suppressions/{email}.json",
    ]
    assert "malformed request refused with 400" in text
    assert "Traceback" not in text
