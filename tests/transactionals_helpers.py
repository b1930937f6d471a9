"""Builders shared by the Transactionals API tests."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from api.transactionals import schemas as v1_schemas
from tests.helpers import eventually

V1 = "/api/v1"
PUBLIC_BASE = "http://tidings.test"


async def post_json(client: Any, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
    r = await client.post(V1 + path, headers=headers, json=body)
    return r.status, await r.json()


async def send(client: Any, org: Any, body: dict[str, Any], *, expect: int = 201) -> dict[str, Any]:
    """POST /api/v1/transactionals.json with a write key; checks the status and the shape."""
    r = await client.post(f"{V1}/transactionals.json", headers=org.auth("write"), json=body)
    out: dict[str, Any] = await r.json()
    assert r.status == expect, out
    if expect == 201:
        msgspec.convert(out, v1_schemas.TransactionalOut)
    return out


async def fetch(client: Any, org: Any, transactional_id: str) -> dict[str, Any]:
    r = await client.get(f"{V1}/transactionals/{transactional_id}.json", headers=org.auth("read"))
    out: dict[str, Any] = await r.json()
    assert r.status == 200, out
    msgspec.convert(out, v1_schemas.TransactionalOut)
    return out


async def wait_status(client: Any, org: Any, transactional_id: str, status: str, timeout_s: float = 10.0) -> Any:
    async def reached() -> dict[str, Any] | None:
        out = await fetch(client, org, transactional_id)
        return out if out["status"] == status else None

    return await eventually(reached, timeout_s=timeout_s)


def inbox(smtp_server: Any, address: str) -> list[Any]:
    return [m for m in smtp_server.messages if address in m.rcpt_tos]


async def one_mail(smtp_server: Any, address: str) -> Any:
    (mail,) = await smtp_server.wait_for(1, rcpt=address)
    return mail


def path_of(url: str) -> str:
    """The path of a public URL (the test client talks to the app directly)."""
    assert url.startswith(PUBLIC_BASE + "/"), url
    return url[len(PUBLIC_BASE) :]


def heading(page: str) -> str:
    found = re.search(r"<h1>(.*?)</h1>", page, re.DOTALL)
    assert found, page
    return found.group(1)


async def make_template(client: Any, org: Any, **fields: Any) -> dict[str, Any]:
    body = {"name": "welcome", **fields}
    status, out = await post_json(client, "/templates.json", org.auth("write"), body)
    assert status == 201, out
    return dict(out)


async def make_subscriber(client: Any, org: Any, **fields: Any) -> dict[str, Any]:
    status, out = await post_json(client, "/subscribers.json", org.auth("write"), fields)
    assert status == 201, out
    return dict(out)
