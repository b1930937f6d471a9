"""VERP envelope senders: with BOUNCE_DOMAIN, MAIL FROM names the message with a signed token."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from shared import verp
from shared.config import Settings
from shared.redis_keys import RedisKeys
from tests.helpers import EMAIL_TEMPLATE, unique_email
from worker.context import WorkerContext, open_channels
from worker.deliver import _deliver_one

SECRET = "a-test-bounce-secret-of-enough-length"


def test_token_round_trips_and_fits_a_local_part() -> None:
    message_id = uuid.uuid4()
    address = verp.envelope_sender(message_id, domain="bounce.example.com", secret=SECRET)
    local = address.partition("@")[0]
    assert local.startswith("bounces+") and len(local) <= 64 and local == local.lower()
    assert verp.message_for_address(address, domain="bounce.example.com", secret=SECRET) == message_id
    # Relays that change the case of local parts or domains do not break it.
    assert verp.message_for_address(address.upper(), domain="BOUNCE.example.com", secret=SECRET) == message_id


def test_a_token_cannot_be_made_without_the_secret() -> None:
    message_id = uuid.uuid4()
    token = verp.token_for(message_id, SECRET)
    assert verp.message_for_token(verp.token_for(message_id, "another-secret-entirely"), SECRET) is None
    # Any one character changed: refused.
    for i in range(len(token)):
        changed = token[:i] + ("a" if token[i] != "a" else "b") + token[i + 1 :]
        assert verp.message_for_token(changed, SECRET) is None
    for bad in ("", "x", token[:-1], token + "a", "bounces", "=" * 52):
        assert verp.message_for_token(bad, SECRET) is None
    assert (
        verp.message_for_address(f"bounces+{token}@other.example", domain="bounce.example.com", secret=SECRET) is None
    )
    assert (
        verp.message_for_address(f"someone+{token}@bounce.example.com", domain="bounce.example.com", secret=SECRET)
        is None
    )


def test_bounce_domain_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="BOUNCE_SECRET"):
        Settings.from_env({"BOUNCE_DOMAIN": "bounce.example.com"})
    assert Settings.from_env({"BOUNCE_DOMAIN": "bounce.example.com", "BOUNCE_SECRET": SECRET}).bounce_domain


async def _deliver(settings: Settings, pool: asyncpg.Pool, to: str) -> uuid.UUID:
    redis = Redis.from_url(settings.redis_url)
    ctx = WorkerContext(
        settings=settings,
        pool=pool,
        redis=redis,
        keys=RedisKeys(settings.redis_prefix),
        channels=open_channels(settings),
    )
    message_id = uuid.uuid4()
    row: dict[str, Any] = {
        "id": message_id,
        "content": EMAIL_TEMPLATE,
        "template_body": None,
        "variables": {"otp": "123456"},
        "channel": "email",
        "to_address": to,
        "attempts": 1,
    }
    try:
        outcome = await _deliver_one(ctx, row)
        assert outcome.status == "sent", outcome
    finally:
        await ctx.close()
        await redis.aclose()
    return message_id


async def test_envelope_sender_names_the_message_when_bounce_domain_is_set(
    settings: Settings, pool: asyncpg.Pool, smtp_server: Any
) -> None:
    verp_settings = settings.replace(bounce_domain="bounce.tidings.test", bounce_secret=SECRET)
    to = unique_email("verp")
    message_id = await _deliver(verp_settings, pool, to)
    (received,) = [m for m in smtp_server.messages if to in m.rcpt_tos]
    assert received.mail_from.startswith("bounces+") and received.mail_from.endswith("@bounce.tidings.test")
    assert verp.message_for_address(received.mail_from, domain="bounce.tidings.test", secret=SECRET) == message_id
    # The From header is unchanged.
    assert received.email()["From"] == "Tidings <otp@tidings.test>"

    # Without BOUNCE_DOMAIN the envelope sender is the From address, as before.
    plain_to = unique_email("noverp")
    await _deliver(settings, pool, plain_to)
    await asyncio.sleep(0)
    (plain,) = [m for m in smtp_server.messages if plain_to in m.rcpt_tos]
    assert plain.mail_from == "otp@tidings.test"
