"""Delivery: render, send and record the messages a pump claimed (worker/pump.py).

A message is only sent after its claim in Postgres (`-> sending`, with a lease) has
committed, so two workers never both take it. Once sent, its outcome is kept in memory and
written (`record_batch`) however long Postgres is away, for as long as the process lives;
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
import datetime as dt
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import orjson
import structlog
from redis.exceptions import RedisError

from shared import errors, metrics
from shared.domain import Channel, MessageStatus
from shared.sql import Q
from worker.channels.base import DeliveryError, DeliveryResult, PermanentDeliveryError, TransientDeliveryError
from worker.context import WorkerContext

log = structlog.get_logger("tidings.worker")

# How long the worker tries to tell a waiting caller; past it the caller answers 202 at its
# own timeout and the outcome is in Postgres.
NOTIFY_TIMEOUT_S = 2.0


class Outcome:
    __slots__ = ("attempt", "error", "external_message_id", "message_id", "next_attempt_at", "status", "suppress")

    def __init__(
        self,
        message_id: uuid.UUID,
        status: MessageStatus,
        *,
        attempt: int = 0,
        external_message_id: str | None = None,
        error: str | None = None,
        next_attempt_at: dt.datetime | None = None,
        suppress: str | None = None,
    ) -> None:
        self.message_id = message_id
        self.status = status
        self.attempt = attempt  # the claim's attempt number: the outcome write is fenced by it
        self.external_message_id = external_message_id
        self.error = error
        self.next_attempt_at = next_attempt_at
        self.suppress = suppress


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
    until they are (`record_batch`); a waiting caller (`sends.notify`) is told on Redis once
    they are.
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
                await asyncio.shield(ctx.outcomes.submit((first["org_id"], finished)))
            raise
    if on_sent is not None:
        on_sent([o.message_id for o in outcomes])
    await ctx.outcomes.submit((first["org_id"], outcomes))
    if first["notify"]:
        payload = {
            str(o.message_id): {"status": o.status, "external_message_id": o.external_message_id, "error": o.error}
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


# An outcome write that fails for a passing reason (Postgres stopped or restarting, connection
# lost, failover, deadlock) is tried again, backing off from RECORD_RETRY_MIN_S to
# RECORD_RETRY_MAX_S, for as long as the process lives: its messages were sent, and losing
# the write would send them again once their lease expired. Only a stopping worker gives up,
# at `ctx.outcomes_deadline` (the end of its drain).
RECORD_RETRY_MIN_S = 0.1
RECORD_RETRY_MAX_S = 1.0
# A long outage is logged on the first failed try and then every this many.
RECORD_LOG_EVERY = 20
PASSING_DB_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,  # class 08: connection lost or refused
    asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up, statement cancelled
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.ReadOnlySQLTransactionError,  # a failover under way: the old primary turned standby
)


async def record_batch(ctx: WorkerContext, batch: list[tuple[uuid.UUID, list[Outcome]]]) -> list[BaseException | None]:
    """Write the outcomes of many deliveries in one statement (one commit for all of them).

    Safe to repeat: the write is fenced by each claim, so a retry after an unknown result
    changes nothing twice. An error that is not passing (Postgres refusing the statement
    itself) is the caller's, per delivery: the batch is then written delivery by delivery,
    so that one refused outcome does not take its neighbours' with it."""
    try:
        await _record_until_written(ctx, batch)
        return [None] * len(batch)
    except PASSING_DB_ERRORS:
        raise  # only past a stopping worker's deadline
    except asyncpg.PostgresError as exc:
        if len(batch) == 1:
            return [exc]
    results: list[BaseException | None] = []
    for item in batch:
        try:
            await _record_until_written(ctx, [item])
            results.append(None)
        except PASSING_DB_ERRORS:
            raise
        except asyncpg.PostgresError as exc:
            log.error("record_refused", error=repr(exc), messages=[str(o.message_id) for o in item[1]])
            results.append(exc)
    return results


async def _record_until_written(ctx: WorkerContext, batch: list[tuple[uuid.UUID, list[Outcome]]]) -> None:
    loop = asyncio.get_running_loop()
    delay_s = RECORD_RETRY_MIN_S
    tries = 0
    while True:
        try:
            await _record(ctx, batch)
        except PASSING_DB_ERRORS as exc:
            tries += 1
            ctx.outcome_write_failures += 1  # the pump claims nothing new until these are written
            unwritten = sum(len(group) for _, group in batch)
            if ctx.outcomes_deadline is not None and loop.time() >= ctx.outcomes_deadline:
                # Only a stopping worker gets here: these messages stay `sending` and are sent
                # again once their lease expires.
                log.error("outcomes_unwritten", messages=unwritten, tries=tries, error=repr(exc))
                raise
            if tries == 1 or tries % RECORD_LOG_EVERY == 0:
                log.warning("record_retry", tries=tries, messages=unwritten, error=repr(exc))
            await asyncio.sleep(delay_s)
            delay_s = min(RECORD_RETRY_MAX_S, delay_s * 2)
        else:
            if tries:
                log.info("record_recovered", tries=tries, messages=sum(len(group) for _, group in batch))
            return


async def _record(ctx: WorkerContext, batch: list[tuple[uuid.UUID, list[Outcome]]]) -> None:
    # In id order: Postgres locks the rows in that order when it looks each id up in the
    # primary key (its plan on any sizeable table), as renew_leases does, so a lease renewal
    # running beside this write does not deadlock with it (a deadlock would only cost a retry).
    outcomes = sorted((o for _, group in batch for o in group), key=lambda o: o.message_id)
    # Sorted, so that two workers suppressing the same addresses take their locks in one order.
    suppressions = sorted(
        {(org_id, o.suppress.lower()): o for org_id, group in batch for o in group if o.suppress}.items(),
        key=lambda item: (str(item[0][0]), item[0][1]),
    )
    async with ctx.pool.acquire() as conn, conn.transaction():
        await conn.fetch(
            Q.record_outcomes,
            [o.message_id for o in outcomes],
            [o.status for o in outcomes],
            [o.external_message_id for o in outcomes],
            [o.error for o in outcomes],
            [o.next_attempt_at for o in outcomes],
            [o.attempt for o in outcomes],
        )
        for (org_id, address), o in suppressions:
            await conn.execute(Q.insert_suppression, org_id, address, "hard_bounce", o.error)
            # Its other unsent messages (scheduled ones above all) must not go out either.
            await conn.execute(
                Q.reject_unsent_to_address, org_id, address, f"address suppressed after a hard bounce: {o.error}"
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
    try:
        if message["channel"] == Channel.email:
            rendered_email = await ctx.renderer.render_email(
                message_id,
                body,
                data,
                to=message["to_address"],
                fallback_domain=ctx.settings.message_id_domain,
            )
            result: DeliveryResult = await ctx.email.send(rendered_email)
        else:
            rendered_wa = await ctx.renderer.render_whatsapp(body, data, to=message["to_address"])
            result = await ctx.whatsapp.send(rendered_wa)
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
        suppress = message["to_address"] if exc.hard_bounce and message["channel"] == Channel.email else None
        return Outcome(message_id, MessageStatus.failed, error=exc.detail, suppress=suppress)
    except DeliveryError as exc:  # a channel that did not sort its failure: treat as permanent
        return Outcome(message_id, MessageStatus.failed, error=exc.detail)
    except Exception as exc:
        # A bug, not a provider's answer: fail this message visibly rather than lose its
        # siblings' outcomes (already sent) by letting the exception end the whole job.
        log.exception("deliver_unexpected_error", message_id=str(message_id))
        return Outcome(message_id, MessageStatus.failed, error=f"internal error while sending: {type(exc).__name__}")
    return Outcome(message_id, MessageStatus.sent, external_message_id=result.external_message_id)
