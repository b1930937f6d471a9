"""Bad bytes get a 4xx in the surface's error shape, never a 500.

Bodies that are not UTF-8, NUL characters in text (refused with 422 naming the field: Postgres
text cannot hold one, and the api does not quietly change what a client sent), NUL in a path
segment, and header bytes that are not UTF-8, on both surfaces and on the public pages.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog.testing

import api.app  # noqa: F401  (registers every route)
from api.routing import ROUTES

NOT_UTF8 = b'{"name": "caf\xe9"}'
UUID0 = "00000000-0000-0000-0000-000000000000"


def _concrete(path: str, org: Any) -> str:
    return path.replace("{org_id}", str(org.id)).replace("{token}", "t").replace("{email}", "a@b.c")


def _fill(path: str) -> str:
    out = path
    while "{" in out:
        start = out.index("{")
        out = out[:start] + UUID0 + out[out.index("}") + 1 :]
    return out


BODY_ROUTES = [spec for spec in ROUTES if spec.body is not None]


@pytest.mark.parametrize("spec", BODY_ROUTES, ids=lambda s: f"{s.method} {s.path}")
async def test_a_body_that_is_not_utf8_is_400_invalid_json(client: Any, org: Any, spec: Any) -> None:
    path = _fill(_concrete(spec.path, org))
    with structlog.testing.capture_logs() as logs:
        r = await client.request(
            spec.method, path, headers={**org.auth(), "Content-Type": "application/json"}, data=NOT_UTF8
        )
    body = await r.json()
    assert r.status == 400, body
    if spec.path.startswith("/api/v1/"):
        assert body == {"errors": {"base": ["the request body is not valid UTF-8"]}}
    else:
        assert body["error"]["code"] == "invalid_json"
    assert not [e for e in logs if e["log_level"] == "error"]


async def test_nul_in_text_is_refused_naming_the_field_on_both_surfaces(client: Any, org: Any) -> None:
    r = await client.post(org.path("/contacts"), headers=org.auth(), json={"name": "a\u0000b"})
    assert r.status == 422
    error = (await r.json())["error"]
    assert error["code"] == "validation_error"
    assert error["fields"] == {"name": ["must not contain the NUL character (\\u0000)"]}

    # Inside a nested value (and in a key), the top-level field is named.
    r = await client.post(org.path("/contacts"), headers=org.auth(), json={"properties": {"a": ["x\u0000"]}})
    assert (await r.json())["error"]["fields"] == {"properties": ["must not contain the NUL character (\\u0000)"]}
    r = await client.post(org.path("/contacts"), headers=org.auth(), json={"properties": {"k\u0000": 1}})
    assert (await r.json())["error"]["fields"] == {"properties": ["must not contain the NUL character (\\u0000)"]}

    r = await client.post("/api/v1/templates.json", headers=org.auth(), json={"name": "n", "subject": "a\u0000"})
    assert r.status == 422
    assert await r.json() == {"errors": {"subject": ["must not contain the NUL character (\\u0000)"]}}


async def test_the_text_backslash_u0000_is_ordinary_text(client: Any, org: Any) -> None:
    # JSON "\\u0000": a backslash and five characters, which Postgres stores like any text.
    r = await client.post(org.path("/contacts"), headers=org.auth(), json={"name": "write \\u0000 to end"})
    assert r.status == 201, await r.text()
    assert (await r.json())["name"] == "write \\u0000 to end"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/confirm/a%00b"), ("GET", "/unsubscribe/a%00b"), ("POST", "/unsubscribe/a%00b")],
)
async def test_nul_in_a_page_token_is_the_invalid_link_page(client: Any, method: str, path: str) -> None:
    with structlog.testing.capture_logs() as logs:
        r = await client.request(method, path)
    assert r.status == 404
    assert r.content_type == "text/html"
    assert "not valid" in await r.text()
    assert not [e for e in logs if e["log_level"] == "error"]


async def test_nul_in_an_address_in_the_path_is_404(client: Any, org: Any) -> None:
    with structlog.testing.capture_logs() as logs:
        r = await client.delete("/api/v1/suppressions/a%00b%40example.com.json", headers=org.auth())
    assert r.status == 404
    assert await r.json() == {"errors": {"base": ["not found"]}}
    assert not [e for e in logs if e["log_level"] == "error"]


async def _raw(client: Any, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_header_bytes_that_are_not_utf8_are_4xx(client: Any, org: Any) -> None:
    """aiohttp keeps such bytes as lone surrogates: they reached hashing and Postgres (500)."""
    key = org.auth()["Authorization"].encode()
    send = f"/orgs/{org.id}/broadcasts/{UUID0}/send".encode()
    with structlog.testing.capture_logs() as logs:
        bad_key = await _raw(
            client,
            b"GET /orgs/" + str(org.id).encode() + b"/broadcasts HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer tdg_\xff\xfe\r\nConnection: close\r\n\r\n",
        )
        bad_idempotency_key = await _raw(
            client,
            b"POST " + send + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + key + b"\r\n"
            b"Idempotency-Key: k\xff\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}",
        )
        bad_signature = await _raw(
            client,
            b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=\xff\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
    assert bad_key.startswith(b"HTTP/1.1 401"), bad_key
    assert bad_idempotency_key.startswith(b"HTTP/1.1 422"), bad_idempotency_key
    assert b'"Idempotency-Key":["must be printable text"]' in bad_idempotency_key
    assert bad_signature.startswith(b"HTTP/1.1 401"), bad_signature
    assert not [e for e in logs if e["log_level"] == "error"]
