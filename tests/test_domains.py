"""Sending domains (per-org DKIM), end to end against the real SMTP server: a domain registered
through the api gets a key whose published record (dkimpy's `dnsfunc` answering `dns_value` at
`dns_name`) verifies the mail the worker sends From it, `d=` that domain; other mail is signed
with the global key or not at all; keys are stored encrypted and never shown; a missing or
wrong SECRET_KEY stops `tidings api` and `tidings worker` in one line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import dkim
import msgspec
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.broadcasts.domains import DomainList, DomainOut
from shared import errors, orgs, sending_domains
from shared.config import Settings
from shared.secret_box import SecretBox, SecretKeyWrong
from tests.api_process import api_process
from tests.conftest import TEST_SECRET_KEY, Org
from tests.helpers import EMAIL_TEMPLATE, eventually, make_broadcast, unique_email
from tests.procs import settings_env
from tests.transactionals_helpers import one_mail, send, wait_status
from worker.channels.base import RenderedEmail, TransientDeliveryError
from worker.channels.domain_keys import DomainKeys
from worker.channels.email import EmailChannel

GLOBAL_SELECTOR = "global"
GLOBAL_DOMAIN = "tidings-global.test"


def unique_domain(tag: str = "acme") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}.test"


@pytest.fixture
async def cleanup(pool: asyncpg.Pool) -> AsyncIterator[list[tuple[uuid.UUID, uuid.UUID]]]:
    """(org, domain id) of every domain a test registers: removed after it, so that no stored
    key is left for other tests' start-up checks."""
    made: list[tuple[uuid.UUID, uuid.UUID]] = []
    yield made
    for org_id, domain_id in made:
        with contextlib.suppress(errors.NotFound):  # the test removed it itself
            await sending_domains.delete(pool, org_id, domain_id)


async def register(client: Any, org: Org, domain: str, made: list[tuple[uuid.UUID, uuid.UUID]]) -> dict[str, Any]:
    r = await client.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": domain})
    body: dict[str, Any] = await r.json()
    assert r.status == 201, body
    msgspec.convert(body, DomainOut)
    made.append((org.id, uuid.UUID(body["id"])))
    return body


async def other_org(pool: asyncpg.Pool) -> Org:
    org_id = await orgs.create_org(pool, f"other org {uuid.uuid4().hex[:6]}")
    keys = {"admin,read,write": await orgs.create_key(pool, org_id, ["admin", "read", "write"])}
    for scope in ("admin", "read", "write"):
        keys[scope] = await orgs.create_key(pool, org_id, [scope])
    return Org(id=org_id, keys=keys)


def published(*records: dict[str, Any]) -> Callable[..., bytes | None]:
    """dkimpy's resolver: the TXT records as the api told us to publish them."""
    zone = {r["dkim"]["dns_name"].encode(): r["dkim"]["dns_value"].encode() for r in records}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return zone.get(name.rstrip(b"."))

    return dnsfunc


def signing_domain(raw: bytes) -> str | None:
    """d= of the message's DKIM-Signature (None: unsigned)."""
    if not raw.startswith(b"DKIM-Signature:"):
        return None
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    found = re.search(r"\bd=([^;\s]+);", head)
    assert found, head
    return found.group(1)


def from_domain_mail(from_email: str, org_id: uuid.UUID | None, to: str) -> RenderedEmail:
    return RenderedEmail(
        message_id=f"<{uuid.uuid4()}@{from_email.split('@')[1]}>",
        from_email=from_email,
        from_name="Acme",
        to=to,
        to_name=None,
        reply_to=None,
        subject="Your code is 123456",
        html="<p>123456</p>",
        text="123456\n",
        org_id=org_id,
    )


# ---- the routes ----


async def test_register_list_get_and_delete(client: Any, org: Org, cleanup: Any) -> None:
    domain = unique_domain()
    body = await register(client, org, domain.upper() + ".", cleanup)  # normalized: lower-case, no dot
    assert body["domain"] == domain
    d = body["dkim"]
    assert d["algorithm"] == "rsa-sha256"
    assert re.fullmatch(r"[a-z0-9-]+", d["selector"])
    assert d["dns_name"] == f"{d['selector']}._domainkey.{domain}"
    assert d["dns_value"].startswith("v=DKIM1; k=rsa; p=")
    public = serialization.load_der_public_key(base64.b64decode(d["dns_value"].split("p=", 1)[1]))
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    assert set(body) == {"id", "domain", "dkim", "created_at"}  # no private half, ever

    r = await client.get(org.path("/domains"), headers=org.auth("read"))
    listed = await r.json()
    assert r.status == 200
    msgspec.convert(listed, DomainList)
    assert listed["data"] == [body]
    r = await client.get(org.path(f"/domains/{body['id']}"), headers=org.auth("read"))
    assert r.status == 200 and await r.json() == body

    # The write-only key may not register; read may not delete.
    r = await client.post(org.path("/domains"), headers=org.auth("write", "read"), json={"domain": unique_domain()})
    assert r.status == 403
    r = await client.delete(org.path(f"/domains/{body['id']}"), headers=org.auth("read"))
    assert r.status == 403

    r = await client.delete(org.path(f"/domains/{body['id']}"), headers=org.auth("admin"))
    assert r.status == 204
    for method in ("GET", "DELETE"):
        r = await client.request(method, org.path(f"/domains/{body['id']}"), headers=org.auth())
        assert r.status == 404, method
        assert (await r.json())["error"]["code"] == "not_found"
    r = await client.get(org.path("/domains/not-a-uuid"), headers=org.auth())
    assert r.status == 404


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "not a domain",
        "localhost",
        "192.168.0.1",
        "ops@acme.test",
        "https://acme.test",
        "acme.test/path",
        "-acme.test",
        "acme-.test",
        "a..test",
        "acme_mail.test",
        "x" * 64 + ".test",
        ".".join(["abcdefghi"] * 26) + ".test",  # over 253 characters
        "acme\x00.test",
        42,
        None,
        ["acme.test"],
    ],
)
async def test_a_domain_that_is_not_a_domain_is_422_naming_it(client: Any, org: Org, bad: Any) -> None:
    r = await client.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": bad})
    body = await r.json()
    assert r.status == 422, body
    assert body["error"]["code"] == "validation_error"
    assert "domain" in body["error"]["fields"], body


async def test_a_missing_or_unknown_field_is_422(client: Any, org: Org) -> None:
    r = await client.post(org.path("/domains"), headers=org.auth("admin"), json={})
    assert r.status == 422 and "domain" in (await r.json())["error"]["fields"]
    r = await client.post(
        org.path("/domains"), headers=org.auth("admin"), json={"domain": unique_domain(), "private_key": "x"}
    )
    assert r.status == 422


async def test_a_domain_registered_twice_is_409_naming_it(client: Any, org: Org, pool: Any, cleanup: Any) -> None:
    domain = unique_domain()
    await register(client, org, domain, cleanup)
    other = await other_org(pool)
    for who, given in [(org, domain), (org, domain.upper()), (other, domain)]:
        r = await client.post(who.path("/domains"), headers=who.auth("admin"), json={"domain": given})
        body = await r.json()
        assert r.status == 409, body
        assert domain in body["error"]["message"] and "domain" in body["error"]["fields"]
    r = await client.get(other.path("/domains"), headers=other.auth("read"))
    assert (await r.json())["data"] == []


async def test_another_orgs_domain_is_404(client: Any, org: Org, pool: Any, cleanup: Any) -> None:
    body = await register(client, org, unique_domain(), cleanup)
    other = await other_org(pool)
    for method in ("GET", "DELETE"):
        r = await client.request(method, other.path(f"/domains/{body['id']}"), headers=other.auth())
        assert r.status == 404, method
    # Another org's key on this org's path is refused before anything is looked at.
    r = await client.get(org.path(f"/domains/{body['id']}"), headers=other.auth())
    assert r.status in (403, 404)
    r = await client.get(org.path(f"/domains/{body['id']}"), headers=org.auth("read"))
    assert r.status == 200  # still there


async def test_registering_without_secret_key_is_503_saying_so(settings: Settings, org: Org) -> None:
    from api.app import create_app

    async with TestClient(TestServer(create_app(settings.replace(secret_key="")))) as bare:
        r = await bare.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": unique_domain()})
        body = await r.json()
    assert r.status == 503, body
    assert body["error"]["code"] == "secret_key_missing" and "SECRET_KEY" in body["error"]["message"]


# ---- the key at rest ----


async def test_the_private_key_is_stored_encrypted_and_bound_to_its_row(
    client: Any, org: Org, pool: Any, settings: Settings, cleanup: Any
) -> None:
    body = await register(client, org, unique_domain(), cleanup)
    row = await sending_domains.signing_key(pool, org.id, body["domain"])
    assert row is not None
    sealed = bytes(row["private_key_encrypted"])
    assert b"PRIVATE KEY" not in sealed
    pem = sending_domains.open_key(SecretBox(settings.secret_key), row)
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert body["dkim"]["dns_value"] == sending_domains.dns_value(der)
    with pytest.raises(SecretKeyWrong):
        sending_domains.open_key(SecretBox("another secret"), row)
    with pytest.raises(SecretKeyWrong):  # copied onto another row, it does not open
        SecretBox(settings.secret_key).open(sealed, bound_to=uuid.uuid4().bytes)
    # Neither the settings nor the box print the secret (a settings object in a log line or a
    # traceback's locals).
    assert settings.secret_key not in repr(settings) and settings.secret_key not in repr(SecretBox("x"))


# ---- signing ----


async def test_mail_from_a_registered_domain_verifies_with_the_published_record(
    client: Any, org: Org, worker: Any, smtp_server: Any, cleanup: Any
) -> None:
    domain = unique_domain()
    record = await register(client, org, domain, cleanup)
    b = await make_broadcast(client, org, templates=[{**EMAIL_TEMPLATE, "from_email": f"otp@{domain}"}])
    to = unique_email("dkim")
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "1"}},
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["recipients"][0]["status"] == "sent"
    mail = await one_mail(smtp_server, to)
    assert signing_domain(mail.raw) == domain  # d= the From domain: DMARC aligns
    assert f"s={record['dkim']['selector']};" in mail.raw.split(b"\r\n\r\n")[0].decode().replace("\r\n ", "")
    assert dkim.verify(mail.raw, dnsfunc=published(record))
    # A record for another key (an old or wrong one) does not verify it.
    forged = {**record, "dkim": {**record["dkim"], "dns_value": _other_record()}}
    assert not dkim.verify(mail.raw, dnsfunc=published(forged))


def _other_record() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return sending_domains.dns_value(der)


@pytest.fixture(scope="module")
def global_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A global DKIM_* key (PEM file) and its record, shaped as the api's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "global.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    dns = {"dns_name": f"{GLOBAL_SELECTOR}._domainkey.{GLOBAL_DOMAIN}", "dns_value": sending_domains.dns_value(der)}
    return path, {"dkim": dns}


async def test_other_mail_is_signed_with_the_global_key_or_not_at_all(
    client: Any, org: Org, pool: Any, settings: Settings, smtp_server: Any, global_key: Any, cleanup: Any
) -> None:
    domain = unique_domain()
    record = await register(client, org, domain, cleanup)
    other = await other_org(pool)
    path, global_record = global_key
    with_global = settings.replace(
        dkim_selector=GLOBAL_SELECTOR, dkim_domain=GLOBAL_DOMAIN, dkim_private_key_path=str(path)
    )
    cases = [
        # (settings, From, org): the d= expected
        (with_global, f"otp@{domain}", org.id, domain),
        (with_global, f"otp@sub.{domain}", org.id, GLOBAL_DOMAIN),  # only the registered name itself
        (with_global, f"otp@{unique_domain('unregistered')}", org.id, GLOBAL_DOMAIN),
        (with_global, f"otp@{domain}", other.id, GLOBAL_DOMAIN),  # another org never signs as this one
        (settings, f"otp@{domain}", org.id, domain),
        (settings, f"otp@{unique_domain('unregistered')}", org.id, None),
        (settings, f"otp@{domain}", other.id, None),
        (settings, f"otp@{domain}", None, None),  # no org known: the global key only
    ]
    for config, from_email, org_id, expected in cases:
        channel = EmailChannel(config, DomainKeys(config, pool))
        to = unique_email("fallback")
        try:
            await channel.send(from_domain_mail(from_email, org_id, to))
        finally:
            await channel.close()
        mail = await one_mail(smtp_server, to)
        assert signing_domain(mail.raw) == expected, (from_email, org_id)
        if expected is not None:
            assert dkim.verify(mail.raw, dnsfunc=published(record, global_record))


async def test_domains_added_and_removed_are_picked_up_without_a_restart(
    client: Any, org: Org, pool: Any, settings: Settings, smtp_server: Any, cleanup: Any
) -> None:
    domain = unique_domain()
    channel = EmailChannel(settings, DomainKeys(settings, pool))  # one worker's channel, kept throughout

    async def signed_as() -> str | None:
        to = unique_email("pickup")
        await channel.send(from_domain_mail(f"otp@{domain}", org.id, to))
        return signing_domain((await one_mail(smtp_server, to)).raw)

    try:
        assert await signed_as() is None
        first = await register(client, org, domain, cleanup)
        await eventually(lambda: _is(signed_as(), domain), timeout_s=5)
        r = await client.delete(org.path(f"/domains/{first['id']}"), headers=org.auth("admin"))
        assert r.status == 204
        await eventually(lambda: _is(signed_as(), None), timeout_s=5)
        # Registered anew: a new key and selector, and the new record verifies.
        second = await register(client, org, domain, cleanup)
        assert second["dkim"]["selector"] != first["dkim"]["selector"]

        async def verifies_with_new() -> bool:
            to = unique_email("rotated")
            await channel.send(from_domain_mail(f"otp@{domain}", org.id, to))
            return bool(dkim.verify((await one_mail(smtp_server, to)).raw, dnsfunc=published(second)))

        await eventually(verifies_with_new, timeout_s=5)
    finally:
        await channel.close()


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_a_key_that_secret_key_cannot_open_is_a_transient_failure_never_logged(
    client: Any, org: Org, pool: Any, settings: Settings, cleanup: Any
) -> None:
    domain = unique_domain()
    await register(client, org, domain, cleanup)
    row = await sending_domains.signing_key(pool, org.id, domain)
    assert row is not None
    pem = sending_domains.open_key(SecretBox(settings.secret_key), row).decode()
    wrong = settings.replace(secret_key="not-the-secret-key-it-was-stored-under")
    with structlog.testing.capture_logs() as logged:
        for config in (wrong, settings.replace(secret_key="")):
            channel = EmailChannel(config, DomainKeys(config, pool))
            try:
                with pytest.raises(TransientDeliveryError, match="SECRET_KEY"):
                    await channel.send(from_domain_mail(f"otp@{domain}", org.id, unique_email()))
            finally:
                await channel.close()
    assert [e["event"] for e in logged] == ["dkim_key_unusable", "dkim_key_unusable"]
    text = repr(logged)
    assert domain in text
    assert settings.secret_key not in text and wrong.secret_key not in text
    assert not any(chunk in text for chunk in _key_chunks(pem))


def _key_chunks(pem: str) -> list[str]:
    """The base64 lines of a PEM: any one of them in a text means the key leaked."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


async def test_no_response_log_or_metric_carries_the_private_key(
    settings: Settings, org: Org, pool: Any, tmp_path: Path, cleanup: Any
) -> None:
    """The real `tidings api` process, logging at DEBUG: registering, listing and reading a
    domain, then /metrics; the private key and SECRET_KEY appear in none of it."""
    log_path = tmp_path / "api.log"
    domain = unique_domain()
    answers = []
    async with api_process(settings, log_path, LOG_LEVEL="DEBUG") as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}/orgs/{org.id}/domains", headers=org.auth("admin"), json={"domain": domain}) as r:
            assert r.status == 201
            body = await r.json()
            cleanup.append((org.id, uuid.UUID(body["id"])))
            answers.append(await r.text())
        for path in (f"/orgs/{org.id}/domains", f"/orgs/{org.id}/domains/{body['id']}", "/metrics", "/openapi.json"):
            async with http.get(base + path, headers=org.auth("read")) as r:
                assert r.status == 200, path
                answers.append(await r.text())
        await asyncio.sleep(0.3)  # request lines are flushed within 0.1 s
    row = await sending_domains.signing_key(pool, org.id, domain)
    assert row is not None
    pem = sending_domains.open_key(SecretBox(settings.secret_key), row).decode()
    text = await asyncio.to_thread(log_path.read_text) + "\n".join(answers)
    assert domain in text  # the log and the answers were captured
    assert settings.secret_key == TEST_SECRET_KEY and TEST_SECRET_KEY not in text
    assert not any(chunk in text for chunk in _key_chunks(pem))
    assert "PRIVATE KEY" not in text


# ---- the org's default sender (/api/v1) ----


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_v1_sends_use_the_orgs_default_sender_and_its_domain_key(
    client: Any, org: Org, pool: Any, settings: Settings, worker: Any, smtp_server: Any, cleanup: Any
) -> None:
    other = await other_org(pool)  # never updated: DEFAULT_FROM_EMAIL

    async def sent_from(who: Org) -> Any:
        to = unique_email("v1-sender")
        out = await send(client, who, {"to": to, "subject": "Hi", "body": "Hello"})
        await wait_status(client, who, out["id"], "sent")
        return await one_mail(smtp_server, to)

    assert (await sent_from(other)).header("From") == settings.default_from_email

    domain = unique_domain()
    record = await register(client, org, domain, cleanup)
    done = cli(
        settings, "org", "update", "--org", str(org.id), "--from-email", f"hello@{domain}", "--from-name", "Acme"
    )
    assert done.returncode == 0, done.stderr
    assert f"hello@{domain}" in done.stderr
    # The api caches an org's sender for BROADCAST_CACHE_TTL_S: this org's is read after the update.
    mail = await sent_from(org)
    assert mail.header("From") == f'"Acme" <hello@{domain}>' or mail.header("From") == f"Acme <hello@{domain}>"
    assert signing_domain(mail.raw) == domain
    assert dkim.verify(mail.raw, dnsfunc=published(record))
    assert (await sent_from(other)).header("From") == settings.default_from_email

    # Cleared: back to the default.
    done = cli(settings, "org", "update", "--org", str(org.id), "--from-email", "", "--from-name", "")
    assert done.returncode == 0, done.stderr
    assert await sending_domains.org_sender(pool, org.id) == (None, None)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--from-email", "not an address"], "--from-email"),
        (["--from-name", "{{ evil }}"], "--from-name"),
        (["--from-name", "a\nBcc: x@y.z"], "--from-name"),
        ([], "nothing to change"),
    ],
)
def test_org_update_refuses_bad_input_in_one_line(settings: Settings, org: Org, args: list[str], expected: str) -> None:
    done = cli(settings, "org", "update", "--org", str(org.id), *args)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], done.stderr


def test_org_update_of_an_unknown_org_says_so(settings: Settings) -> None:
    missing = uuid.uuid4()
    done = cli(settings, "org", "update", "--org", str(missing), "--from-email", "a@b.test")
    assert done.returncode != 0 and f"no org {missing}" in done.stderr


async def test_org_update_takes_every_option_together(settings: Settings, org: Org, pool: Any) -> None:
    # The sender options sit beside the rate limit and retention of the same command: one run
    # changes all four, and a later run with one option leaves the others as they are.
    done = cli(
        settings,
        "org",
        "update",
        "--org",
        str(org.id),
        "--rate-limit",
        "50/60",
        "--retention-days",
        "7",
        "--from-email",
        "hello@acme.example",
        "--from-name",
        "Acme",
    )
    assert done.returncode == 0, done.stderr
    row = await pool.fetchrow(
        "SELECT rate_limit_requests, retention_days, from_email, from_name FROM orgs WHERE id = $1", org.id
    )
    assert tuple(row) == (50, 7, "hello@acme.example", "Acme")
    done = cli(settings, "org", "update", "--org", str(org.id), "--from-name", "")
    assert done.returncode == 0, done.stderr
    row = await pool.fetchrow(
        "SELECT rate_limit_requests, retention_days, from_email, from_name FROM orgs WHERE id = $1", org.id
    )
    assert tuple(row) == (50, 7, "hello@acme.example", None)


async def test_v1_batch_sends_use_the_orgs_default_sender(client: Any, org: Org, pool: Any) -> None:
    # A batch is prepared apart from a single send (transactionals.prepare_many): it takes the
    # org's sender too.
    await sending_domains.set_org_sender(pool, org.id, from_email="batch@acme.example", from_name="Acme")
    to = [unique_email("v1-batch"), unique_email("v1-batch")]
    r = await client.post(
        "/api/v1/transactionals/batch.json",
        headers=org.auth("write"),
        json={"transactionals": [{"to": t, "subject": "Hi", "body": "Hello"} for t in to]},
    )
    assert r.status == 200, await r.text()
    rows = await pool.fetch(
        "SELECT content->>'from_email' AS email, content->>'from_name' AS name FROM messages"
        " WHERE org_id = $1 AND to_address = ANY($2::text[])",
        org.id,
        to,
    )
    assert sorted((row["email"], row["name"]) for row in rows) == [("batch@acme.example", "Acme")] * 2


# ---- SECRET_KEY at start-up ----


@pytest.mark.parametrize("command", ["api", "worker"])
async def test_a_missing_or_wrong_secret_key_stops_the_start_in_one_line(
    client: Any, org: Org, settings: Settings, cleanup: Any, command: str
) -> None:
    await register(client, org, unique_domain(), cleanup)
    for secret, expected in [("", "SECRET_KEY is not set"), ("a-wrong-secret", "SECRET_KEY does not decrypt")]:
        env = {**settings_env(settings), "SECRET_KEY": secret}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tidings.cli", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("configuration error: ") and expected in lines[0]
        assert "a-wrong-secret" not in done.stderr and TEST_SECRET_KEY not in done.stderr
