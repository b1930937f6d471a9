"""Small builders the tests share."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from shared import db
from shared.migrate import migrate
from tidings.dev.embedded import create_database, drop_database

EMAIL_TEMPLATE: dict[str, Any] = {
    "channel": "email",
    "from_email": "otp@tidings.test",
    "from_name": "Tidings",
    "subject": "Your code is {{ otp }}",
    "html_body": "<p>Hi {{ name }}, your code is <b>{{ otp }}</b>.</p>",
    "preheader": "Code {{ otp }}",
}


@contextlib.asynccontextmanager
async def own_database_pool(
    admin_dsn: str, prefix: str, *, min_size: int, max_size: int
) -> AsyncIterator[asyncpg.Pool]:
    """A migrated database of the caller's own (named `prefix` + a random suffix) and a pool
    on it, both gone afterwards: for tests the session's worker must not see."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    dsn = await create_database(admin_dsn, name)
    try:
        await migrate(dsn)
        pool = await db.create_pool(dsn, min_size=min_size, max_size=max_size)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await drop_database(admin_dsn, name)


WHATSAPP_TEMPLATE: dict[str, Any] = {
    "channel": "whatsapp",
    "template_name": "otp_code",
    "language": "en_US",
    "category": "authentication",
    "body_parameters": ["{{ otp }}"],
    "button_parameters": ["{{ otp }}"],
}


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


def unique_phone() -> str:
    # +1 415 555 01xx is reserved for fiction but valid to phonenumbers; vary the exchange.
    n = uuid.uuid4().int
    return f"+1415{200 + n % 700:03d}{n // 1000 % 10000:04d}"


async def make_broadcast(
    client: TestClient[Any, Any],
    org: Any,
    *,
    templates: list[dict[str, Any]] | None = None,
    variables: list[dict[str, Any]] | None = None,
    activate: bool = True,
    type_: str = "transactional",
) -> dict[str, Any]:
    headers = org.auth("admin", "read")
    r = await client.post(
        org.path("/broadcasts"),
        headers=headers,
        json={
            "name": "otp",
            "type": type_,
            "variables": variables if variables is not None else [{"name": "otp", "default": None}],
        },
    )
    assert r.status == 201, await r.text()
    b = await r.json()
    for t in templates if templates is not None else [EMAIL_TEMPLATE]:
        r = await client.post(org.path(f"/broadcasts/{b['id']}/templates"), headers=headers, json=t)
        assert r.status == 201, await r.text()
    if activate:
        r = await client.post(org.path(f"/broadcasts/{b['id']}/activate"), headers=headers)
        assert r.status == 200, await r.text()
    r = await client.get(org.path(f"/broadcasts/{b['id']}"), headers=headers)
    body: dict[str, Any] = await r.json()
    return body


async def eventually(check: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.02) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; bounded in time."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)
