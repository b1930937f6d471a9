"""What must never leak: API keys in logs, other subscribers' data on public pages."""

from __future__ import annotations

from typing import Any

from tests.helpers import make_broadcast, unique_email


async def test_keys_and_secrets_never_reach_the_logs(client, org, worker, settings, capsys: Any) -> None:
    b = await make_broadcast(client, org)
    key = org.keys["write"]
    await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers={"Authorization": f"Bearer {key}"},
        json={"email": unique_email(), "variables": {"otp": "987123"}},
    )
    await client.get(org.path("/broadcasts"), headers={"Authorization": "Bearer tdg_wrong-key-value"})
    out = capsys.readouterr()
    logged = out.out + out.err
    assert "request" in logged  # the request lines were written
    assert key not in logged and key[8:] not in logged
    assert "tdg_wrong-key-value" not in logged
    assert settings.whatsapp_access_token not in logged and settings.whatsapp_app_secret not in logged


async def test_api_keys_are_stored_only_as_hashes(org, pool) -> None:
    rows = await pool.fetch("SELECT key_hash, prefix FROM api_keys WHERE org_id = $1", org.id)
    stored = " ".join(f"{bytes(r['key_hash']).hex()} {r['prefix']}" for r in rows)
    for key in org.keys.values():
        assert key not in stored
        assert any(len(bytes(r["key_hash"])) == 32 for r in rows)
