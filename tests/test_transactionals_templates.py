"""Email templates of the Transactionals API: create, read, list, validation, tenancy."""

from __future__ import annotations

import msgspec

from api.transactionals import schemas as v1_schemas
from shared import orgs
from tests.transactionals_helpers import V1, make_template, post_json


async def test_create_read_and_list(client, org) -> None:
    read = org.auth("read")
    first = await make_template(client, org, name="first", subject="Hi {{ first_name }}", body="<p>b</p>")
    msgspec.convert(first, v1_schemas.TemplateOut)
    assert first["name"] == "first" and first["subject"] == "Hi {{ first_name }}" and first["preheader"] is None
    second = await make_template(client, org, name="second", preheader="Preview")
    r = await client.get(f"{V1}/templates/{first['id']}.json", headers=read)
    assert r.status == 200 and await r.json() == first

    r = await client.get(f"{V1}/templates.json", headers=read, params={"limit": "1"})
    page = await r.json()
    msgspec.convert(page, v1_schemas.TemplateList)
    assert [t["id"] for t in page["data"]] == [second["id"]] and page["next_cursor"]
    r = await client.get(f"{V1}/templates.json", headers=read, params={"cursor": page["next_cursor"]})
    assert [t["id"] for t in (await r.json())["data"]] == [first["id"]]


async def test_validation_scopes_and_tenancy(client, org, pool) -> None:
    write = org.auth("write")
    status, out = await post_json(client, "/templates.json", write, {"subject": "s"})
    assert status == 422 and out == {"errors": {"name": ["can't be blank"]}}
    status, out = await post_json(
        client,
        "/templates.json",
        write,
        {"name": "n" * 201, "subject": "a\nb", "body": "{{ unclosed", "preheader": "{% nope %}"},
    )
    assert status == 422
    assert out["errors"]["name"] == ["is too long (maximum is 200 characters)"]
    assert out["errors"]["subject"] == ["can't contain line breaks"]
    assert set(out["errors"]) == {"name", "subject", "body", "preheader"}
    status, out = await post_json(client, "/templates.json", write, {"name": "x", "html": "typo"})
    assert status == 422 and list(out["errors"]) == ["html"]

    r = await client.post(f"{V1}/templates.json", headers=org.auth("read"), json={"name": "x"})
    assert r.status == 403
    template = await make_template(client, org, subject="s", body="b")
    r = await client.get(f"{V1}/templates/{template['id']}.json", headers=org.auth("write"))
    assert r.status == 403

    other_id = await orgs.create_org(pool, "other")
    other = {"Authorization": f"Bearer {await orgs.create_key(pool, other_id, ['read'])}"}
    r = await client.get(f"{V1}/templates/{template['id']}.json", headers=other)
    assert r.status == 404 and list((await r.json())["errors"]) == ["base"]
    r = await client.get(f"{V1}/templates.json", headers=other)
    assert (await r.json())["data"] == []
