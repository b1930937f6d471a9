"""Auth, scopes, tenancy, rate limit and idempotency on the Broadcasts API."""

from __future__ import annotations

import asyncio
import uuid

from shared import orgs
from shared.sql import Q
from tests.helpers import make_broadcast, unique_email


async def test_missing_or_bad_key_is_401(client, org) -> None:
    r = await client.get(org.path("/broadcasts"))
    assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
    r = await client.get(org.path("/broadcasts"), headers={"Authorization": "Bearer tdg_nope"})
    assert r.status == 401


async def test_scopes_are_enforced_and_independent(client, org) -> None:
    r = await client.get(org.path("/broadcasts"), headers=org.auth("write"))
    assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"
    r = await client.get(org.path("/broadcasts"), headers=org.auth("admin"))
    assert r.status == 403
    r = await client.post(org.path("/broadcasts"), headers=org.auth("read"), json={"name": "x", "type": "marketing"})
    assert r.status == 403
    b = await make_broadcast(client, org)
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("admin", "read"),
        json={"email": unique_email(), "variables": {"otp": "1"}},
    )
    assert r.status == 403


async def test_another_orgs_key_sees_nothing(client, org, pool, worker) -> None:
    b = await make_broadcast(client, org)
    r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"email": unique_email()})
    contact = await r.json()
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"contact_id": contact["id"], "variables": {"otp": "1"}},
    )
    message_id = (await r.json())["recipients"][0]["id"]

    other_id = await orgs.create_org(pool, "intruder")
    other = {"Authorization": f"Bearer {await orgs.create_key(pool, other_id, ['admin', 'read', 'write'])}"}
    # Their key on our paths: 404, never 403.
    for method, path in [
        ("GET", f"/broadcasts/{b['id']}"),
        ("GET", "/broadcasts"),
        ("GET", f"/contacts/{contact['id']}"),
        ("GET", f"/messages/{message_id}"),
        ("POST", f"/broadcasts/{b['id']}/pause"),
    ]:
        r = await client.request(method, org.path(path), headers=other)
        assert r.status == 404, (method, path, r.status)
    # Our ids on their paths: 404 too.
    base = f"/orgs/{other_id}"
    for path in [f"/broadcasts/{b['id']}", f"/contacts/{contact['id']}", f"/messages/{message_id}"]:
        r = await client.get(base + path, headers=other)
        assert r.status == 404, path
    r = await client.post(
        f"{base}/broadcasts/{b['id']}/send",
        headers=other,
        json={"contact_id": contact["id"], "variables": {"otp": "1"}},
    )
    assert r.status == 404
    r = await client.get(org.path(f"/broadcasts/{b['id']}"), headers=org.auth("read"))
    assert (await r.json())["status"] == "active"


async def test_rate_limit_per_org_with_headers(client, org, pool, worker) -> None:
    await pool.execute(Q.update_org_rate_limit, org.id, 3, 60)
    b = await make_broadcast(client, org)
    statuses = []
    for _ in range(4):
        r = await client.post(
            org.path(f"/broadcasts/{b['id']}/send"),
            headers=org.auth("write"),
            json={"email": unique_email(), "variables": {"otp": "1"}, "background": True},
        )
        statuses.append(r.status)
        assert r.headers["RateLimit-Limit"] == "3"
    assert statuses == [202, 202, 202, 429]
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["RateLimit-Remaining"] == "0"
    assert (await r.json())["error"]["code"] == "rate_limited"


async def test_idempotency_key_replays_and_refuses_reuse(client, org, pool, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    email = unique_email("idem")
    body = {"email": email, "variables": {"otp": "1"}}
    headers = {**org.auth("write"), "Idempotency-Key": f"k-{uuid.uuid4()}"}
    path = org.path(f"/broadcasts/{b['id']}/send")
    first = await client.post(path, headers=headers, json=body)
    second = await client.post(path, headers=headers, json=body)
    assert first.status == second.status == 200
    assert await first.json() == await second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    await asyncio.sleep(0.1)
    assert sum(1 for m in smtp_server.messages if email in m.rcpt_tos) == 1
    r = await client.post(path, headers=headers, json={**body, "variables": {"otp": "2"}})
    assert r.status == 422 and (await r.json())["error"]["code"] == "idempotency_key_reused"
    r = await client.post(path, headers={**org.auth("write"), "Idempotency-Key": "x" * 256}, json=body)
    assert r.status == 422 and (await r.json())["error"]["code"] == "validation_error"


async def test_idempotency_key_in_flight_is_409(client, org, pool) -> None:
    key = f"k-{uuid.uuid4()}"
    b = await make_broadcast(client, org)
    path = org.path(f"/broadcasts/{b['id']}/send")
    body = {"email": unique_email(), "variables": {"otp": "1"}, "background": True}
    import orjson

    from api.idempotency import request_hash

    # A first request that has claimed the key and not finished.
    await pool.execute(
        Q.claim_idempotency_key, org.id, key, request_hash("POST", path, orjson.dumps(body)), uuid.uuid4(), 60.0
    )
    r = await client.post(
        path,
        headers={**org.auth("write"), "Idempotency-Key": key},
        data=orjson.dumps(body),
    )
    assert r.status == 409 and (await r.json())["error"]["code"] == "idempotency_key_in_flight"


async def test_malformed_and_oversized_bodies(client, org) -> None:
    r = await client.post(org.path("/broadcasts"), headers=org.auth("admin"), data=b"{not json")
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
    r = await client.post(org.path("/broadcasts"), headers=org.auth("admin"), data=b"x" * (256 * 1024 + 1))
    assert r.status == 413


async def test_readyz_and_healthz(client) -> None:
    assert (await client.get("/healthz")).status == 200
    r = await client.get("/readyz")
    assert r.status == 200 and (await r.json())["checks"] == {"postgres": "ok", "redis": "ok"}
