"""Delivery: render, send and record the messages a pump claimed (worker/pump.py).

A message is only sent after its claim in Postgres (`-> sending`, with a lease) has
committed, so two workers never both take it. Once sent, its outcome is kept in memory and
written (worker/outcomes.py) however long Postgres is away, for as long as the process lives;
the pump holds the message and renews its lease until then, and a message the reconciler
took back meanwhile still takes the outcome, or is taken back, until someone claims it
again (shared/sql/delivery.sql).

Where a duplicate can still happen (each time the reconciler reclaims the expired lease
and the message is sent again):
- a worker killed (kill -9, machine loss) after the provider accepted a message and before
  its outcome was written;
- a worker stopped (SIGTERM) while Postgres stays unreachable to the end of its drain: the
  outcomes it could not write are lost with it;
- a message still at the provider when a SIGTERM's drain ends (given back unfinished);
- a worker cut off from Postgres while other workers still reach it, for longer than its
  lease plus the reclaim's grace (worker/reconcile.py): another worker claims the message
  before the first can write its outcome;
- a Postgres crash (not a clean stop) within about half a second of an outcome being
  written: the worker's commits do not wait for the WAL flush (worker/main.py);
- an outcome Postgres refuses outright (a bug, not an outage): it is logged, not retried;
- a WhatsApp request that timed out after Meta accepted it (retried as transient).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError

from shared import errors, metrics, verp
from shared.delivery import Outcome
from shared.domain import MessageStatus
from worker.channels.base import (
    DeliveryError,
    Draft,
    PermanentDeliveryError,
    RenderedEmail,
    TransientDeliveryError,
)
from worker.context import WorkerContext

log = structlog.get_logger("tidings.worker")

# How long the worker tries to tell a waiting caller; past it the caller answers 202 at its
# own timeout and the outcome is in Postgres.
NOTIFY_TIMEOUT_S = 2.0


def backoff_s(ctx: WorkerContext, attempts: int, retry_after_s: float | None) -> float:
    """Exponential backoff with jitter, capped; a provider's Retry-After is a floor."""
    s = ctx.settings
    delay = min(s.retry_max_delay_s, s.retry_base_delay_s * 2 ** max(0, attempts - 1))
    delay *= random.uniform(0.5, 1.0)  # jitter: retries of a burst do not arrive together
    return float(max(delay, retry_after_s or 0.0))


async def deliver_group(
    ctx: WorkerContext, rows: list[Any], on_sent: Callable[[list[uuid.UUID]], None] | None = None
) -> None:
    """Where a message is rendered and sent: the claimed messages of one send, concurrently.

    `on_sent` is called with the ids of the messages the channel is done with (all of them;
    or, when cancelled, those that finished): their outcomes are known and must be written,
    never sent again. They are written together with other groups' (`ctx.outcomes`), retried
    until they are; a waiting caller (`sends.notify`) is told on Redis once they are.
    """
    started = time.perf_counter()
    first = rows[0]
    if len(rows) == 1:
        outcomes = [await _deliver_measured(ctx, first)]
    else:
        sends = [asyncio.ensure_future(_deliver_measured(ctx, m)) for m in rows]
        try:
            outcomes = list(await asyncio.gather(*sends))
        except asyncio.CancelledError:
            # Stopped past the drain: the messages already sent are recorded as such, so that
            # only the unfinished ones are given back (and sent again).
            finished = [t.result() for t in sends if t.done() and not t.cancelled() and t.exception() is None]
            if finished:
                if on_sent is not None:
                    on_sent([o.message_id for o in finished])
                await asyncio.shield(ctx.outcomes.submit(first["org_id"], finished))
            raise
    if on_sent is not None:
        on_sent([o.message_id for o in outcomes])
    await ctx.outcomes.submit(first["org_id"], outcomes)
    if first["notify"]:
        payload = {
            str(o.message_id): {
                "status": o.then or o.status,
                "external_message_id": o.external_message_id,
                "error": o.then_detail if o.then is MessageStatus.bounced else o.error,
            }
            for o in outcomes
        }
        try:
            # Bounded: a hung Redis must not hold up delivery (the pump waits for this group).
            channel = ctx.keys.send_done_channel(first["send_id"])
            await asyncio.wait_for(ctx.redis.publish(channel, orjson.dumps(payload)), NOTIFY_TIMEOUT_S)
        except (OSError, RedisError, TimeoutError):
            # The caller's wait ends at its timeout with 202; the outcome is in Postgres.
            log.warning("notify_failed", send_id=str(first["send_id"]))
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status.value] = counts.get(o.status.value, 0) + 1
    log.info(
        "delivered",
        request_id=first["request_id"],
        send_id=str(first["send_id"]),
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        attempt=first["attempts"],
        **counts,
    )


async def _deliver_measured(ctx: WorkerContext, message: Mapping[str, Any]) -> Outcome:
    started = time.perf_counter()
    outcome = await _deliver_one(ctx, message)
    outcome.attempt = message["attempts"]
    channel = message["channel"]
    metrics.DELIVERY_LATENCY.labels(channel).observe(time.perf_counter() - started)
    metrics.MESSAGES.labels(channel, outcome.status.value).inc()
    if outcome.status == MessageStatus.queued:
        metrics.RETRIES.labels(channel).inc()
    return outcome


async def _deliver_one(ctx: WorkerContext, message: Mapping[str, Any]) -> Outcome:
    message_id: uuid.UUID = message["id"]
    # A message carries its own content (Transactionals API) or names a broadcast template.
    body = message["content"] if message["content"] is not None else message["template_body"]
    data: Mapping[str, Any] = message["variables"] or {}
    if body is None:
        return Outcome(message_id, MessageStatus.failed, error="the template was deleted before delivery")
    kind = message["channel"]
    draft = Draft(message_id, body, data, message["to_address"])
    try:
        rendered = await ctx.renderer.render(kind, draft, fallback_domain=ctx.settings.message_id_domain)
        if isinstance(rendered, RenderedEmail):
            # The org's sending domains decide the DKIM key (worker/channels/domain_keys.py).
            changes: dict[str, Any] = {"org_id": message.get("org_id")}
            if ctx.settings.bounce_domain:
                # VERP: bounces and complaints come back to an address naming this message.
                changes["envelope_from"] = verp.envelope_sender(
                    message_id, domain=ctx.settings.bounce_domain, secret=ctx.settings.bounce_secret
                )
            rendered = dataclasses.replace(rendered, **changes)
        # Test mode is the channel's business: a test key's message is rendered as any other
        # and handed to the test transport, never to a provider.
        channel = ctx.test_channel if message.get("test") else ctx.channels[kind]
        if isinstance(rendered, RenderedEmail) and message.get("attachment_bytes"):
            # Files are added after rendering (never through the render sandbox), shared by
            # the send's messages in flight and let go when the last of them is done.
            async with ctx.attachments.hold(message["send_id"], message["attachment_bytes"]) as parts:
                result = await channel.send(dataclasses.replace(rendered, attachments=parts))
        else:
            result = await channel.send(rendered)
    except errors.ValidationFailed as exc:
        return Outcome(message_id, MessageStatus.failed, error=exc.message)
    except TransientDeliveryError as exc:
        attempts = message["attempts"]
        if attempts >= ctx.settings.retry_max_attempts:
            return Outcome(message_id, MessageStatus.failed, error=f"gave up after {attempts} attempts: {exc.detail}")
        delay_s = backoff_s(ctx, attempts, exc.retry_after_s)
        return Outcome(
            message_id,
            MessageStatus.queued,
            error=exc.detail,
            next_attempt_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay_s),
        )
    except PermanentDeliveryError as exc:
        suppress = message["to_address"] if exc.hard_bounce else None
        return Outcome(message_id, MessageStatus.failed, error=exc.detail, suppress=suppress)
    except DeliveryError as exc:  # a channel that did not sort its failure: treat as permanent
        return Outcome(message_id, MessageStatus.failed, error=exc.detail)
    except Exception as exc:
        # A bug, not a provider's answer: fail this message visibly rather than lose its
        # siblings' outcomes (already sent) by letting the exception end the whole group.
        log.exception("deliver_unexpected_error", message_id=str(message_id))
        return Outcome(message_id, MessageStatus.failed, error=f"internal error while sending: {type(exc).__name__}")
    return Outcome(
        message_id,
        MessageStatus.sent,
        external_message_id=result.external_message_id,
        then=result.then,
        then_detail=result.detail if result.then else None,
    )
