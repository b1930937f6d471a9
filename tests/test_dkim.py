"""DKIM signing: a real rendered message, signed with a fresh RSA key, verifies with dkimpy
against the published TXT record; and a message sent through the real EmailChannel arrives
at the SMTP server with a signature that still verifies (the bytes are not re-serialized)."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import pathlib
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import dkim
import pytest

from shared.config import Settings
from worker.channels.base import RenderedEmail
from worker.channels.email import EmailChannel, message_bytes
from worker.dkim import DkimConfigError, DkimSigner
from worker.render import render_email

SELECTOR = "tidings2026"
DOMAIN = "acme.test"


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str]:
    """A new 2048-bit RSA key (PEM file) and the TXT record that publishes its public half."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to generate an RSA key")
    path = tmp_path_factory.mktemp("dkim") / "private.pem"
    subprocess.run([openssl, "genrsa", "-out", str(path), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        [openssl, "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return path, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def dns_for(txt: str) -> Callable[..., bytes | None]:
    """A resolver that knows one record: `{SELECTOR}._domainkey.{DOMAIN}`."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return txt.encode() if name.rstrip(b".") == f"{SELECTOR}._domainkey.{DOMAIN}".encode() else None

    return dnsfunc


def rendered(to: str = "ada@example.com", **variables: Any) -> RenderedEmail:
    body = {
        "from_email": f"otp@{DOMAIN}",
        "from_name": "{{ product }} Sécurité",
        "reply_to": f"help@{DOMAIN}",
        "subject": "Votre code {{ otp }} — ne le partagez pas",
        "html_body": "<p>Bonjour {{ name }}, votre code est <b>{{ otp }}</b>.</p>",
        "preheader": "Code {{ otp }}",
    }
    data = {"otp": "123456", "name": "Zoë", "product": "Acme", **variables}
    unsubscribe = {
        "List-Unsubscribe": "<http://tidings.test/unsubscribe/abc>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    return render_email(uuid.uuid4(), body, data, to=to, fallback_domain="tidings.local", headers=unsubscribe)


def signed_fields(message: bytes) -> list[str]:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    tags = dict(
        part.strip().split("=", 1) for part in re.sub(r"\s+", "", str(parsed["DKIM-Signature"])).split(";") if part
    )
    return tags["h"].lower().split(":")


def test_signed_message_verifies_against_the_published_key(dkim_key: tuple[pathlib.Path, str]) -> None:
    path, txt = dkim_key
    signer = DkimSigner.from_settings(
        Settings(dkim_selector=SELECTOR, dkim_domain=DOMAIN, dkim_private_key_path=str(path))
    )
    assert signer is not None
    message = message_bytes(rendered(), signer)

    assert message.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=acme.test;")
    assert dkim.verify(message, dnsfunc=dns_for(txt))
    fields = signed_fields(message)
    assert fields == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "reply-to",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "from",  # signed once more than present: a From added later breaks the signature
    ]
    # Non-ASCII header text went out RFC 2047 encoded; the whole message is 7-bit.
    assert message.isascii()
    assert b"MIME-Version: 1.0\r\n" in message


def test_absent_optional_headers_are_not_signed(dkim_key: tuple[pathlib.Path, str]) -> None:
    path, txt = dkim_key
    signer = DkimSigner(selector=SELECTOR, domain=DOMAIN, private_key_pem=path.read_bytes())
    msg = RenderedEmail(
        message_id=f"<{uuid.uuid4()}@{DOMAIN}>",
        from_email=f"otp@{DOMAIN}",
        from_name=None,
        to="ada@example.com",
        to_name=None,
        reply_to=None,
        subject="plain",
        html=None,
        text="hello\n",
    )
    message = message_bytes(msg, signer)
    assert dkim.verify(message, dnsfunc=dns_for(txt))
    assert "reply-to" not in signed_fields(message)
    assert "list-unsubscribe" not in signed_fields(message)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.replace(b"Subject: ", b"Subject: Re: ", 1),
        lambda m: m.replace(b"<b>123456</b>", b"<b>654321</b>", 1),
        lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: evil@attacker.test\r\n\r\n", 1),
        lambda m: m.replace(b"List-Unsubscribe: <http://tidings.test/", b"List-Unsubscribe: <http://evil.test/", 1),
    ],
    ids=["subject", "body", "extra-from", "list-unsubscribe"],
)
def test_tampering_breaks_the_signature(dkim_key: tuple[pathlib.Path, str], tamper: Callable[[bytes], bytes]) -> None:
    path, txt = dkim_key
    signer = DkimSigner(selector=SELECTOR, domain=DOMAIN, private_key_pem=path.read_bytes())
    # qp-encode nothing in the body so the byte replacement above finds the plain markup.
    message = message_bytes(rendered(name="Ada"), signer)
    changed = tamper(message)
    assert changed != message
    assert not dkim.verify(changed, dnsfunc=dns_for(txt))


def test_configuration_errors_fail_at_construction(tmp_path: pathlib.Path, dkim_key: tuple[pathlib.Path, str]) -> None:
    assert DkimSigner.from_settings(Settings()) is None
    with pytest.raises(DkimConfigError, match="DKIM_PRIVATE_KEY_PATH"):
        DkimSigner.from_settings(Settings(dkim_selector=SELECTOR, dkim_domain=DOMAIN))
    with pytest.raises(DkimConfigError, match="cannot be read"):
        DkimSigner.from_settings(
            Settings(dkim_selector=SELECTOR, dkim_domain=DOMAIN, dkim_private_key_path=str(tmp_path / "nope.pem"))
        )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DkimConfigError, match="not a PEM RSA key"):
        DkimSigner.from_settings(
            Settings(dkim_selector=SELECTOR, dkim_domain=DOMAIN, dkim_private_key_path=str(garbage))
        )
    # The email channel builds its signer once, so a bad key stops the worker at start-up.
    with pytest.raises(DkimConfigError):
        EmailChannel(Settings(dkim_selector=SELECTOR))


@pytest.mark.parametrize("to", ["ada@example.com", "josé@example.com"], ids=["ascii", "smtputf8"])
async def test_email_channel_sends_a_signature_that_verifies_on_arrival(
    settings: Settings, smtp_server: Any, dkim_key: tuple[pathlib.Path, str], to: str
) -> None:
    path, txt = dkim_key
    channel = EmailChannel(
        settings.replace(dkim_selector=SELECTOR, dkim_domain=DOMAIN, dkim_private_key_path=str(path))
    )
    to = to.replace("@", f"-{uuid.uuid4().hex[:8]}@")
    try:
        msg = rendered(to=to)
        result = await channel.send(msg)
    finally:
        await channel.close()
    assert result.external_message_id == msg.message_id
    (received,) = [m for m in smtp_server.messages if to in m.rcpt_tos]
    assert received.raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(received.raw, dnsfunc=dns_for(txt))
    assert received.subject == "Votre code 123456 — ne le partagez pas"
    assert received.header("MIME-Version") == "1.0"
    assert "Acme Sécurité" in received.from_


async def test_a_message_that_cannot_be_built_fails_permanently(settings: Settings) -> None:
    """A rendered From that is not an address (a template's own doing) is not worth retrying."""
    from worker.channels.base import PermanentDeliveryError

    channel = EmailChannel(settings)
    bad = dataclasses.replace(rendered(), from_email="not an address <{{ oops }}>")
    try:
        with pytest.raises(PermanentDeliveryError, match="could not be built"):
            await channel.send(bad)
    finally:
        await channel.close()
