"""The accept service (`shared.accept`): both kinds of send in one batch, one ring per batch,
and a transactional whose statement fails answered to its own request only."""

from __future__ import annotations

import asyncio
import pathlib
import re
import uuid
from typing import Any

import asyncpg
import pytest

from shared import doorbell, errors, sending, transactionals
from shared.accept import Acceptor
from shared.config import Settings
from shared.redis_keys import RedisKeys
from tests.helpers import make_broadcast, unique_email

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def rings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each doorbell ring, counted (and not sent)."""
    rung: list[int] = []

    async def ring(_redis: Any, _keys: Any) -> bool:
        rung.append(1)
        return True

    monkeypatch.setattr(doorbell, "ring", ring)
    return rung


async def _transactional(pool: asyncpg.Pool, settings: Settings, org_id: uuid.UUID) -> Any:
    submission = transactionals.Submission(to=unique_email("accept"), subject="Hi", body="Code {{ email }}")
    request = await transactionals.validate(pool, org_id, submission)
    return await transactionals.prepare(pool, settings, org_id, request, request_id="test-accept")


async def test_a_batch_of_both_kinds_commits_both_and_rings_once(
    client: Any, org: Any, pool: asyncpg.Pool, settings: Settings, rings: list[int]
) -> None:
    b = await make_broadcast(client, org)
    send = await sending.prepare(
        pool, org.id, uuid.UUID(b["id"]), sending.Trigger(email=unique_email(), variables={"otp": "1"})
    )
    email = await _transactional(pool, settings, org.id)
    acceptor = Acceptor(pool, None, RedisKeys(settings.redis_prefix), settings, None)  # type: ignore[arg-type]
    try:
        outcomes = await acceptor._flush([send, email])
        assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
        assert outcomes[0] is outcomes[1], "one ring for the whole batch"
        assert await outcomes[0] is True
    finally:
        await acceptor.close()
    assert rings == [1]
    written = await pool.fetch(
        "SELECT send_id FROM messages WHERE send_id = ANY($1::uuid[])", [send.send_id, email.send_id]
    )
    assert {r["send_id"] for r in written} == {send.send_id, email.send_id}
    assert email.row is not None and email.row["status"] == "queued"


async def test_a_transactional_whose_statement_fails_refuses_only_itself(
    org: Any, pool: asyncpg.Pool, settings: Settings
) -> None:
    good = await _transactional(pool, settings, org.id)
    bad = await _transactional(pool, settings, org.id)
    bad.contact_id = uuid.uuid4()  # no such contact: its send's insert fails
    results = await transactionals.commit_many(pool, [bad, good])
    # Answered to that send alone, as the domain names it (a batch answers it in its item's place).
    assert isinstance(results[0], errors.NotFound)
    assert isinstance(results[0].__cause__, asyncpg.ForeignKeyViolationError)
    assert results[1] is None and good.row is not None
    assert await transactionals.get(pool, org.id, good.message_id) is not None
    assert await transactionals.get(pool, org.id, bad.message_id) is None


async def test_sends_are_committed_concurrently_through_the_app(client: Any, org: Any, rings: list[int]) -> None:
    """Broadcasts triggers and /api/v1 emails at once: every one answered, fewer rings than sends."""
    b = await make_broadcast(client, org)
    write = org.auth("write")

    async def trigger() -> int:
        body = {"email": unique_email(), "variables": {"otp": "7"}, "background": True}
        r = await client.post(org.path(f"/broadcasts/{b['id']}/send"), headers=write, json=body)
        return int(r.status)

    async def email() -> int:
        body = {"to": unique_email("v1"), "subject": "Hi", "body": "Your code is 7"}
        r = await client.post("/api/v1/transactionals.json", headers=write, json=body)
        return int(r.status)

    statuses = await asyncio.gather(*(trigger() for _ in range(10)), *(email() for _ in range(10)))
    assert statuses == [202] * 10 + [201] * 10
    assert 1 <= len(rings) <= 20


def test_the_doorbell_is_rung_for_accepted_sends_in_one_place() -> None:
    ringing = [
        path.relative_to(REPO).as_posix()
        for folder in ("api", "shared", "tidings")
        for path in (REPO / folder).rglob("*.py")
        if re.search(r"doorbell\.ring\(", path.read_text())
    ]
    assert ringing == ["shared/accept.py"]


async def test_a_batch_s_recipients_found_at_once_are_kept_in_the_process_cache(
    client: Any, org: Any, pool: asyncpg.Pool, settings: Settings, rings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of known recipients looks them up in one query and keeps them in the process's
    contact cache, so the next batch to them within the TTL asks Postgres nothing about them."""
    from shared import contacts
    from shared.contact_cache import ContactCache

    b = await make_broadcast(client, org)
    broadcast_id = uuid.UUID(b["id"])
    emails = [unique_email("cached") for _ in range(3)]
    for email in emails:  # known recipients
        await contacts.find_or_create(pool, org.id, email=email, phone=None, name=None)
    lookups: list[int] = []
    find_many = contacts.find_many

    async def counted(*args: Any, **kwargs: Any) -> Any:
        lookups.append(1)
        return await find_many(*args, **kwargs)

    monkeypatch.setattr(contacts, "find_many", counted)
    cache = ContactCache(ttl_s=60)
    acceptor = Acceptor(pool, None, RedisKeys(settings.redis_prefix), settings, None, contact_cache=cache)  # type: ignore[arg-type]
    try:
        for _ in range(2):
            triggers = [sending.Trigger(email=e, variables={"otp": "1"}) for e in emails]
            results = await acceptor.trigger_many(org.id, broadcast_id, triggers, source="api", request_id="t")
            assert all(isinstance(r, sending.PreparedSend) for r in results), results
    finally:
        await acceptor.close()
    assert lookups == [1]
    assert all(cache.has((org.id, e, None)) for e in emails)


async def test_the_batcher_reports_each_flush_s_size_wait_and_duration() -> None:
    """Where the accept pipeline's time goes (the api's `tidings_accept_flush_*` metrics): a
    flush's items, how long its oldest waited for the flush in flight before it, how long it ran."""
    from shared.batching import Batcher

    seen: list[tuple[int, float, float]] = []

    async def flush(items: list[int]) -> list[int]:
        await asyncio.sleep(0.05)
        return items

    batcher: Batcher[int, int] = Batcher(
        flush, max_in_flight=1, observe=lambda n, waited, took: seen.append((n, waited, took))
    )
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first flush is running: the next three wait for it together
    assert await asyncio.gather(first, *(batcher.submit(i) for i in (1, 2, 3))) == [0, 1, 2, 3]
    await batcher.close()
    assert [n for n, _, _ in seen] == [1, 3]
    assert seen[0][1] < 0.01 and seen[0][2] >= 0.05
    assert 0.03 <= seen[1][1] < 0.05 + 0.04 and seen[1][2] >= 0.05
