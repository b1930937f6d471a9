"""API keys as an API (create, list, revoke), revocation seen by a second api process within
KEY_CACHE_TTL_S, keys' last use, and the CLI: `key create --name --test`, `key list`,
`key revoke` and `org update --rate-limit`."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from api.broadcasts import schemas
from shared import keys
from shared.config import Settings
from tests.api_process import api_process
from tests.helpers import eventually, unique_email
from tests.procs import settings_env

URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


async def _create(client: Any, org: Any, **body: Any) -> dict[str, Any]:
    r = await client.post(org.path("/keys"), headers=org.auth("admin"), json=body)
    assert r.status == 201, await r.text()
    out: dict[str, Any] = await r.json()
    return out


async def _all_keys(client: Any, org: Any, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = await client.get(org.path("/keys?limit=200"), headers=headers or org.auth("admin"))
    assert r.status == 200, await r.text()
    listing = await r.json()
    schemas.KeyList(**{"data": [schemas.KeyOut(**k) for k in listing["data"]], "next_cursor": None})
    data: list[dict[str, Any]] = listing["data"]
    return data


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_create_live_and_test_keys(client, org) -> None:
    live = await _create(client, org, name="ci deploys", scopes=["write", "read"])
    assert set(live) == {"id", "name", "scopes", "mode", "prefix", "key", "created_at"}
    assert live["name"] == "ci deploys" and live["mode"] == "live" and live["scopes"] == ["read", "write"]
    assert live["key"].startswith("tdg_") and not live["key"].startswith("tdg_test_")
    assert URL_SAFE.match(live["key"][len("tdg_") :])
    assert live["key"].startswith(live["prefix"]) and live["prefix"] != live["key"]
    assert len(live["prefix"]) >= len("tdg_") + 8

    test = await _create(client, org, scopes=["read"], mode="test")
    assert test["mode"] == "test" and test["name"] is None
    assert test["key"].startswith("tdg_test_") and test["prefix"].startswith("tdg_test_")
    assert len(test["prefix"]) >= len("tdg_test_") + 8 and test["key"].startswith(test["prefix"])

    # The new keys work, with exactly their scopes.
    r = await client.get(org.path(f"/messages/{uuid.uuid4()}"), headers=_bearer(live["key"]))
    assert r.status == 404
    r = await client.get(org.path("/keys"), headers=_bearer(live["key"]))
    assert r.status == 403


async def test_create_refuses_bad_input(client, org) -> None:
    for body in (
        {},
        {"scopes": []},
        {"scopes": ["root"]},
        {"scopes": ["read"], "mode": "sandbox"},
        {"scopes": ["read"], "name": ""},
        {"scopes": ["read"], "key": "tdg_mine"},
        {"scopes": "read"},
    ):
        r = await client.post(org.path("/keys"), headers=org.auth("admin"), json=body)
        assert r.status == 422, (body, await r.text())
        assert (await r.json())["error"]["code"] == "validation_error"
    r = await client.post(org.path("/keys"), headers=org.auth("read", "write"), json={"scopes": ["read"]})
    assert r.status == 403
    r = await client.post(f"/orgs/{uuid.uuid4()}/keys", headers=org.auth("admin"), json={"scopes": ["read"]})
    assert r.status == 404


async def test_list_never_shows_keys_and_keeps_revoked_ones(client, org) -> None:
    made = [await _create(client, org, name=f"k{i}", scopes=["read"]) for i in range(3)]
    r = await client.delete(org.path(f"/keys/{made[0]['id']}"), headers=org.auth("admin"))
    assert r.status == 204
    listed = await _all_keys(client, org)
    text = str(listed)
    for key in [*made, *({"key": k} for k in org.keys.values())]:
        assert key["key"] not in text
    by_id = {k["id"]: k for k in listed}
    assert set(listed[0]) == {"id", "name", "scopes", "mode", "prefix", "created_at", "last_used_at", "revoked_at"}
    assert by_id[made[0]["id"]]["revoked_at"] is not None
    assert by_id[made[1]["id"]]["revoked_at"] is None and by_id[made[1]["id"]]["name"] == "k1"
    assert by_id[made[2]["id"]]["prefix"] == made[2]["prefix"]
    # Newest first.
    assert [k["created_at"] for k in listed] == sorted((k["created_at"] for k in listed), reverse=True)

    # Cursor pagination walks every key once.
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        r = await client.get(org.path(f"/keys{query}"), headers=org.auth("admin"))
        assert r.status == 200
        page = await r.json()
        assert len(page["data"]) <= 2
        seen += [k["id"] for k in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [k["id"] for k in listed]

    for query in ("?limit=0", "?limit=abc", "?cursor=not-a-cursor"):
        r = await client.get(org.path(f"/keys{query}"), headers=org.auth("admin"))
        assert r.status == 422, query
    r = await client.get(org.path("/keys"), headers=org.auth("read"))
    assert r.status == 403


async def test_revoke(client, org, pool) -> None:
    made = await _create(client, org, scopes=["read", "admin"])
    headers = _bearer(made["key"])
    assert (await client.get(org.path("/keys"), headers=headers)).status == 200
    r = await client.delete(org.path(f"/keys/{made['id']}"), headers=org.auth("admin"))
    assert r.status == 204 and await r.read() == b""
    r = await client.get(org.path("/keys"), headers=headers)
    assert r.status == 401
    # Revoking again changes nothing (the first time stays); unknown and other orgs' keys are 404.
    (first,) = [k["revoked_at"] for k in await _all_keys(client, org) if k["id"] == made["id"]]
    assert (await client.delete(org.path(f"/keys/{made['id']}"), headers=org.auth("admin"))).status == 204
    (again,) = [k["revoked_at"] for k in await _all_keys(client, org) if k["id"] == made["id"]]
    assert again == first
    assert (await client.delete(org.path(f"/keys/{uuid.uuid4()}"), headers=org.auth("admin"))).status == 404
    assert (await client.delete(org.path("/keys/not-an-id"), headers=org.auth("admin"))).status == 404
    other_org = await _other_org(pool)
    other_key = await _other_key(pool, other_org)
    r = await client.delete(org.path(f"/keys/{other_key}"), headers=org.auth("admin"))
    assert r.status == 404
    assert await pool.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", other_key) is None
    await pool.execute("DELETE FROM orgs WHERE id = $1", other_org)


async def test_revoking_the_key_making_the_request(client, org) -> None:
    made = await _create(client, org, scopes=["admin"])
    r = await client.delete(org.path(f"/keys/{made['id']}"), headers=_bearer(made["key"]))
    assert r.status == 204  # that request completes
    r = await client.get(org.path("/keys"), headers=_bearer(made["key"]))
    assert r.status == 401


async def test_last_used_at_is_recorded_without_a_write_per_request(client, org, pool) -> None:
    made = await _create(client, org, scopes=["read", "admin"])
    assert (await _by_id(client, org, made["id"]))["last_used_at"] is None
    for _ in range(5):
        assert (await client.get(org.path("/keys?limit=1"), headers=_bearer(made["key"]))).status == 200

    async def used() -> Any:
        return (await _by_id(client, org, made["id"]))["last_used_at"]

    first = await eventually(used, timeout_s=10)
    # Within LAST_USED_EVERY_S more uses write nothing more.
    for _ in range(5):
        assert (await client.get(org.path("/keys?limit=1"), headers=_bearer(made["key"]))).status == 200
    await asyncio.sleep(1.5)
    assert await used() == first


async def _by_id(client: Any, org: Any, key_id: str) -> dict[str, Any]:
    (found,) = [k for k in await _all_keys(client, org) if k["id"] == key_id]
    return found


async def _other_org(pool: Any) -> uuid.UUID:
    from shared import orgs

    return await orgs.create_org(pool, "another org")


async def _other_key(pool: Any, org_id: uuid.UUID) -> uuid.UUID:
    from shared import orgs

    key = await orgs.create_key(pool, org_id, ["read"])
    key_id: uuid.UUID = await pool.fetchval("SELECT id FROM api_keys WHERE key_hash = $1", keys.hash_key(key))
    return key_id


async def test_revoked_key_is_refused_by_a_second_api_process(client, org, settings: Settings, tmp_path: Path) -> None:
    ttl_s = 2.0
    made = await _create(client, org, scopes=["read", "admin"])
    other = settings.replace(key_cache_ttl_s=ttl_s)
    async with api_process(other, tmp_path / "api.log") as base, aiohttp.ClientSession() as http:
        url = f"{base}/orgs/{org.id}/keys?limit=1"
        async with http.get(url, headers=_bearer(made["key"])) as r:
            assert r.status == 200  # now cached in that process for ttl_s
        r2 = await client.delete(org.path(f"/keys/{made['id']}"), headers=org.auth("admin"))
        assert r2.status == 204
        revoked_at = asyncio.get_running_loop().time()
        while True:
            async with http.get(url, headers=_bearer(made["key"])) as r:
                if r.status == 401:
                    break
                assert r.status == 200
            elapsed = asyncio.get_running_loop().time() - revoked_at
            assert elapsed <= ttl_s + 1.0, f"the revoked key still works {elapsed:.1f} s later"
            await asyncio.sleep(0.1)
        assert asyncio.get_running_loop().time() - revoked_at <= ttl_s + 1.0


# ---- the CLI ----


async def _cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings.cli",
        *args,
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_key_create_list_revoke(client, org, settings: Settings) -> None:
    code, out, err = await _cli(
        settings, "key", "create", "--org", str(org.id), "--name", "ci", "--test", "--scopes", "read,admin"
    )
    assert code == 0, err
    test_key = out.strip().splitlines()[-1]
    assert test_key.startswith("tdg_test_")
    code, out, err = await _cli(settings, "key", "create", "--org", str(org.id), "--scopes", "read")
    assert code == 0, err
    live_key = out.strip().splitlines()[-1]
    assert live_key.startswith("tdg_") and not live_key.startswith("tdg_test_")

    code, out, err = await _cli(settings, "key", "list", "--org", str(org.id))
    assert code == 0, err
    assert test_key not in out and live_key not in out
    for key in org.keys.values():
        assert key not in out
    header, *rows = [line.split("\t") for line in out.strip().splitlines()]
    assert header[:5] == ["id", "prefix", "mode", "scopes", "name"]
    (ci,) = [row for row in rows if test_key.startswith(row[1])]
    assert ci[2:5] == ["test", "admin,read", "ci"]
    assert len(rows) == len(org.keys) + 2

    # The key made by the CLI works, then is refused once revoked.
    assert (await client.get(org.path("/keys"), headers=_bearer(test_key))).status == 200
    code, _, err = await _cli(settings, "key", "revoke", "--org", str(org.id), ci[0])
    assert code == 0, err
    assert (await client.get(org.path("/keys"), headers=_bearer(test_key))).status == 401
    code, out, _ = await _cli(settings, "key", "list", "--org", str(org.id))
    (ci,) = [line.split("\t") for line in out.splitlines() if line.startswith(ci[0])]
    assert ci[7] != "-"  # revoked_at


async def test_cli_refuses_bad_input(org, settings: Settings) -> None:
    for args in (
        ("key", "list", "--org", "not-an-org"),
        ("key", "list", "--org", str(uuid.uuid4())),
        ("key", "revoke", "--org", str(org.id), "not-a-key"),
        ("key", "revoke", "--org", str(org.id), str(uuid.uuid4())),
        ("key", "create", "--org", str(org.id), "--scopes", "root"),
        ("org", "update", "--org", str(org.id)),
        ("org", "update", "--org", str(org.id), "--rate-limit", "100"),
        ("org", "update", "--org", str(org.id), "--rate-limit", "0/60"),
        ("org", "update", "--org", str(org.id), "--rate-limit", "ten/60"),
        ("org", "update", "--org", str(uuid.uuid4()), "--rate-limit", "10/60"),
    ):
        code, _, err = await _cli(settings, *args)
        assert code != 0, args
        assert "Traceback" not in err and err.strip(), (args, err)


async def test_cli_org_rate_limit_takes_effect(client, org, settings: Settings, pool) -> None:
    # An hour's window: the test cannot straddle a window's edge.
    code, _, err = await _cli(settings, "org", "update", "--org", str(org.id), "--rate-limit", "2/3600")
    assert code == 0, err
    assert await pool.fetchval("SELECT rate_limit_requests FROM orgs WHERE id = $1", org.id) == 2
    test_key = (await _create(client, org, scopes=["write"], mode="test"))["key"]
    statuses = []
    for _ in range(3):
        r = await client.post(
            "/api/v1/transactionals.json",
            headers=_bearer(test_key),
            json={"to": unique_email(), "subject": "hi", "body": "<p>hi</p>"},
        )
        statuses.append(r.status)
        assert r.headers["RateLimit-Limit"] == "2"
    assert statuses == [201, 201, 429]

    code, _, err = await _cli(settings, "org", "update", "--org", str(org.id), "--rate-limit", "default")
    assert code == 0, err
    assert await pool.fetchval("SELECT rate_limit_requests FROM orgs WHERE id = $1", org.id) is None
    r = await client.post(
        "/api/v1/transactionals.json",
        headers=_bearer(test_key),
        json={"to": unique_email(), "subject": "hi", "body": "<p>hi</p>"},
    )
    assert r.status == 201 and r.headers["RateLimit-Limit"] == str(settings.rate_limit_requests)
