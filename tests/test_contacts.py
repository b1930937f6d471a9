"""Contacts: normalization, uniqueness per org, channels, status and properties."""

from __future__ import annotations

import msgspec

from api.broadcasts import schemas
from tests.helpers import unique_email


async def test_create_normalizes_and_reads_back(client, org) -> None:
    local = unique_email().split("@")[0]
    r = await client.post(
        org.path("/contacts"),
        headers=org.auth("admin"),
        json={
            "name": "Ada",
            "email": f"{local}@EXAMPLE.COM",
            "phone": "+1 (415) 555-0199",
            "properties": {"plan": "pro"},
        },
    )
    assert r.status == 201, await r.text()
    c = await r.json()
    msgspec.convert(c, schemas.ContactOut)
    assert c["email"] == f"{local}@example.com" and c["phone"] == "+14155550199"
    assert c["status"] == "subscribed" and c["properties"] == {"plan": "pro"}
    assert {ch["type"] for ch in c["channels"]} == {"email", "whatsapp"}
    r = await client.get(org.path(f"/contacts/{c['id']}"), headers=org.auth("read"))
    assert await r.json() == c


async def test_one_contact_per_address(client, org) -> None:
    email = unique_email()
    r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"email": email})
    assert r.status == 201
    r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"email": email})
    assert r.status == 409 and (await r.json())["error"]["code"] == "conflict"
    other = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"name": "no channels"})
    c = await other.json()
    r = await client.post(
        org.path(f"/contacts/{c['id']}/channels"), headers=org.auth("admin"), json={"type": "email", "address": email}
    )
    assert r.status == 409


async def test_add_channel_and_patch(client, org) -> None:
    r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"name": "B"})
    c = await r.json()
    r = await client.post(
        org.path(f"/contacts/{c['id']}/channels"),
        headers=org.auth("admin"),
        json={"type": "whatsapp", "address": "+44 20 7946 0958"},
    )
    assert r.status == 201
    ch = await r.json()
    assert ch["address"] == "+442079460958"
    r = await client.post(
        org.path(f"/contacts/{c['id']}/channels"), headers=org.auth("admin"), json={"type": "whatsapp", "address": "12"}
    )
    assert r.status == 422 and "address" in (await r.json())["error"]["fields"]
    r = await client.patch(
        org.path(f"/contacts/{c['id']}"),
        headers=org.auth("admin"),
        json={"status": "blocked", "properties": {"tier": "gold"}},
    )
    body = await r.json()
    assert body["status"] == "blocked" and body["properties"] == {"tier": "gold"} and body["phone"] == "+442079460958"
    r = await client.patch(org.path(f"/contacts/{c['id']}"), headers=org.auth("admin"), json={"status": "gone"})
    assert r.status == 422
