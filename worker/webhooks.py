"""Outbound webhook delivery: each worker posts the org's events to their endpoints.

Events and their deliveries are written by Postgres triggers in the transaction of the change
they report (shared/migrations/0007_webhooks.sql); this task only sends them. It claims due
deliveries in batches (`claim_webhook_deliveries`: SKIP LOCKED, each one leased for
WEBHOOK_LEASE_S and counted as an attempt), posts each one signed the Standard Webhooks way,
and writes the outcome, fenced by the attempt number. A worker killed mid-request loses
nothing: its lease runs out and any worker posts the same delivery again, with the same
`webhook-id` (at-least-once; receivers dedupe on it).

Isolation: the task runs beside the pump with its own small Postgres pool and its own HTTP
client, so a slow or dead endpoint never holds what message delivery needs. At most
WEBHOOK_MAX_IN_FLIGHT requests per worker, and WEBHOOK_ENDPOINT_CONCURRENCY per endpoint
across every worker (the claim counts the leased ones), so one slow endpoint takes a few slots
and no more; the others' deliveries are claimed around it.

Every attempt is bounded: WEBHOOK_TIMEOUT_S for the whole request, at most
`MAX_RESPONSE_BYTES` of the answer read (the connection is then closed), redirects never
followed (a 3xx is a failed attempt). Unless WEBHOOK_ALLOW_PRIVATE_URLS, the URL is checked
again at each attempt and the client connects only to addresses its resolver checked
(`GuardedResolver`), so a name re-pointed at a private address (DNS rebinding) gets a failed
attempt, never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import time
import uuid
from typing import Any

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from shared import db, metrics, webhook_deliveries, webhook_events, webhook_urls
from shared.config import Settings

log = structlog.get_logger("tidings.webhooks")

# Of an answer, this much is read (for the log's excerpt) before the connection is closed:
# a receiver answering 5 MB costs 64 KiB.
MAX_RESPONSE_BYTES = 64 * 1024
# What of the answer's body is kept in `last_error`.
ERROR_EXCERPT_CHARS = 300
# Each retry's delay is stretched by up to this fraction, so that a burst that failed together
# does not retry together.
JITTER = 0.1
# Claims per statement at most.
CLAIM_BATCH = 100
# With nothing due, the task looks at Postgres this often (and whenever a request ends, but
# not more often than every CLAIM_MIN_INTERVAL_S while requests are in flight: requests that
# end together are refilled by one claim).
IDLE_POLL_S = 0.25
CLAIM_MIN_INTERVAL_S = 0.002
# Successful attempts are written together, at most this long after the first of them.
SUCCESS_FLUSH_S = 0.002
ERROR_BACKOFF_S = 1.0
# The backlog and events gauges are sampled, and old events pruned, this often.
SAMPLE_EVERY_S = 15.0
# Rows pruned per statement (several statements per round while there are more).
PRUNE_BATCH = 5000
PRUNE_MAX_ROUNDS = 20
# The task's own Postgres pool: claims and outcome writes only (never held during a request).
POOL_MAX_SIZE = 4
USER_AGENT = "tidings-webhooks/1"
SESSION = {"synchronous_commit": "off"}  # a lost write re-sends an event: at-least-once anyway


class RefusedTarget(OSError):
    """A webhook host resolved to an address tidings does not post to."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name any of whose addresses is not public: the client
    connects to the addresses returned here, so what was checked is what is connected to."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        for info in infos:
            kind = webhook_urls.refused_kind(ipaddress.ip_address(info["host"]))
            if kind is not None:
                raise RefusedTarget(f"{host} resolves to a {kind} address, {info['host']}")
        return infos

    async def close(self) -> None:
        await self._inner.close()


class Attempt:
    """How one request ended."""

    __slots__ = ("error", "response_status")

    def __init__(self, response_status: int | None, error: str | None) -> None:
        self.response_status = response_status
        self.error = error

    @property
    def succeeded(self) -> bool:
        return self.error is None


async def _read_bounded(content: aiohttp.StreamReader, limit_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit_bytes:
        chunk = await content.read(limit_bytes - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _excerpt(raw: bytes) -> str:
    text = " ".join(raw[: ERROR_EXCERPT_CHARS * 4].decode("utf-8", "replace").split())
    return text[:ERROR_EXCERPT_CHARS]


def retry_delay_s(schedule: tuple[float, ...], attempt: int) -> float | None:
    """The delay before the next attempt after failed attempt number `attempt` (1-based), with
    up to JITTER more; None when the schedule is used up."""
    if attempt > len(schedule):
        return None
    return schedule[attempt - 1] * (1 + random.uniform(0, JITTER))  # jitter, not a secret


class SuccessWriter:
    """Writes successful attempts in batches (one statement and commit for all that ended within
    SUCCESS_FLUSH_S); each caller waits for its own write, and gets its failure if it failed."""

    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool
        self._waiting: list[tuple[uuid.UUID, int, int, asyncio.Future[None]]] = []
        self._flush: asyncio.Task[None] | None = None

    async def record(self, delivery_id: uuid.UUID, attempt: int, response_status: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((delivery_id, attempt, response_status, done))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._write_soon())
        await done

    async def close(self) -> None:
        """Let the write under way finish (its callers may be gone: the write still counts)."""
        if self._flush is not None:
            with contextlib.suppress(Exception):
                await self._flush

    async def _write_soon(self) -> None:
        # Loops while callers keep arriving: those that came during a write are written next
        # (no await between the last check and the end, so none is left behind).
        while self._waiting:
            await asyncio.sleep(SUCCESS_FLUSH_S)
            batch, self._waiting = self._waiting, []
            try:
                await webhook_deliveries.record_successes(self._pool, [(d, a, st) for d, a, st, _ in batch])
            except BaseException as exc:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else db.TryAgain("stopped"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for *_, fut in batch:
                if not fut.done():
                    fut.set_result(None)


class WebhookDeliverer:
    """The worker's webhook task: `start` it once, `stop` it once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.capacity = settings.webhook_max_in_flight
        self._pool: db.Pool | None = None
        self._successes: SuccessWriter | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[asyncio.Task[None], tuple[uuid.UUID, int]] = {}
        # Requests under way (a delivery whose answer is in hand and only being written no
        # longer takes a slot: its write is batched with others').
        self._posting = 0
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._sample_task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    async def start(self) -> None:
        if not self.enabled:
            log.info("webhook_delivery_off", reason="WEBHOOK_MAX_IN_FLIGHT is 0")
            return
        s = self.settings
        self._pool = await db.create_pool(s.database_url, min_size=1, max_size=POOL_MAX_SIZE, server_settings=SESSION)
        self._successes = SuccessWriter(self._pool)
        connector = aiohttp.TCPConnector(
            resolver=None if s.webhook_allow_private_urls else GuardedResolver(),
            # Resolved (and checked) again for every new connection: DNS may have changed.
            use_dns_cache=False,
            limit=self.capacity,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=s.webhook_timeout_s),
            headers={"User-Agent": USER_AGENT},
            # The answer is read only for an excerpt: never inflate what the receiver compressed.
            auto_decompress=False,
        )
        self._loop_task = asyncio.create_task(self._run(), name="webhooks")
        self._sample_task = asyncio.create_task(self._sample(), name="webhooks-metrics")

    async def stop(self, drain_s: float) -> None:
        """Stop claiming; give the requests in flight `drain_s`, then give the rest back (due
        again at once, for any worker) and close the client and the pool."""
        if not self.enabled:
            return
        for task in (self._loop_task, self._sample_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=drain_s)
        unfinished = list(self._tasks.items())
        for task, _ in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*(t for t, _ in unfinished), return_exceptions=True)
        if self._successes is not None:
            await self._successes.close()
        if unfinished:
            try:
                assert self._pool is not None
                await webhook_deliveries.release(self._pool, [held for _, held in unfinished])
                log.info("webhook_deliveries_released", deliveries=len(unfinished))
            except (db.TryAgain, db.Refused) as exc:
                # Their leases run out and they are retried all the same.
                log.warning("webhook_release_failed", deliveries=len(unfinished), error=str(exc))
        if self._session is not None:
            await self._session.close()
        if self._pool is not None:
            await self._pool.close()

    # ---- claiming ----

    async def _run(self) -> None:
        s = self.settings
        assert self._pool is not None
        while True:
            # Cleared before the claim: a request that ends while it runs wakes the wait below.
            self._wake.clear()
            room = min(self.capacity - self._posting, CLAIM_BATCH)
            if room > 0:
                try:
                    rows = await webhook_deliveries.claim(
                        self._pool, room, s.webhook_lease_s, s.webhook_endpoint_concurrency
                    )
                except (db.TryAgain, db.Refused) as exc:
                    log.warning("webhook_claim_failed", error=str(exc))
                    await asyncio.sleep(ERROR_BACKOFF_S)
                    continue
                except Exception:  # a bug: logged, and the loop goes on (it must never die)
                    log.exception("webhook_loop_error")
                    await asyncio.sleep(ERROR_BACKOFF_S)
                    continue
                for row in rows:
                    self._dispatch(row)
                if len(rows) == room:
                    await asyncio.sleep(0)
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()
            if self._posting:
                await asyncio.sleep(CLAIM_MIN_INTERVAL_S)

    def _dispatch(self, row: Any) -> None:
        task = asyncio.create_task(self._deliver(row))
        self._tasks[task] = (row["id"], row["attempts"])
        self._posting += 1
        metrics.WEBHOOK_IN_FLIGHT.set(self._posting)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.pop(t, None)
            # Its lease is released (written): the endpoint has room for another.
            self._wake.set()
            if not t.cancelled() and t.exception() is not None:
                log.error("webhook_delivery_crashed", delivery_id=str(row["id"]), error=repr(t.exception()))

        task.add_done_callback(done)

    # ---- one delivery ----

    async def _deliver(self, row: Any) -> None:
        started = time.monotonic()
        try:
            attempt = await self.post(row)
        finally:
            self._posting -= 1
            metrics.WEBHOOK_IN_FLIGHT.set(self._posting)
            self._wake.set()
        elapsed_s = time.monotonic() - started
        metrics.WEBHOOK_LATENCY.observe(elapsed_s)
        await self._record(row, attempt, elapsed_s, deadline=started + self.settings.webhook_lease_s)

    async def post(self, row: Any) -> Attempt:
        """One signed POST of the claimed delivery `row`; never raises for the receiver's sake."""
        s = self.settings
        assert self._session is not None
        url: str = row["url"]
        try:
            parts = webhook_urls.parse(url)
            literal = webhook_urls.literal_address(parts.hostname or "")
            if literal is not None and not s.webhook_allow_private_urls:
                webhook_urls.refuse_address(parts.hostname or "", literal)
        except webhook_urls.UrlRefused as exc:
            return Attempt(None, f"refused: url {exc.problem}")
        try:
            body = webhook_events.body(row["type"], row["data"], row["occurred_at"])
            secrets = [row["secret"]] + ([row["previous_secret"]] if row["previous_secret"] else [])
            headers = webhook_events.headers(secrets, row["event_id"], int(time.time()), body)
        except Exception as exc:  # a bug or a stored value it cannot shape: fail it, never loop on it
            log.exception("webhook_body_failed", delivery_id=str(row["id"]), event_id=row["event_id"])
            return Attempt(None, f"internal error building the request: {type(exc).__name__}")
        try:
            # The client's total timeout covers connecting and the answer's head; this one the
            # body read too, whatever the receiver trickles.
            async with asyncio.timeout(s.webhook_timeout_s):
                async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    excerpt = await _read_bounded(resp.content, MAX_RESPONSE_BYTES)
                    status = resp.status
                    location = resp.headers.get("Location")
                    # Never drain the rest of a large answer: drop the connection.
                    resp.close()
        except TimeoutError:
            return Attempt(None, f"no answer within {s.webhook_timeout_s:g} s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedTarget):
                return Attempt(None, f"refused: {exc.os_error}")
            return Attempt(None, f"cannot connect: {exc.os_error or exc}"[:500])
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return Attempt(status, None)
        if 300 <= status < 400:
            return Attempt(status, f"HTTP {status}: redirect to {location or '(no Location)'} not followed"[:500])
        text = _excerpt(excerpt)
        return Attempt(status, f"HTTP {status}" + (f": {text}" if text else ""))

    async def _record(self, row: Any, attempt: Attempt, elapsed_s: float, *, deadline: float) -> None:
        s = self.settings
        assert self._pool is not None
        fields = {
            "delivery_id": str(row["id"]),
            "event_id": row["event_id"],
            "event_type": row["type"],
            "endpoint_id": str(row["endpoint_id"]),
            "attempt": row["attempts"],
            "response_status": attempt.response_status,
            "duration_ms": round(elapsed_s * 1000, 1),
        }
        retry_in_s = None if attempt.succeeded else retry_delay_s(s.webhook_retry_delays_s, row["attempts"])
        reason = (
            f"disabled by tidings: every attempt failed for {s.webhook_disable_after_s:g} s "
            f"(WEBHOOK_DISABLE_AFTER_S); last error: {attempt.error}"
        )[:1000]
        while True:
            try:
                if attempt.succeeded:
                    assert attempt.response_status is not None and self._successes is not None
                    await self._successes.record(row["id"], row["attempts"], attempt.response_status)
                    failure = None
                else:
                    failure = await webhook_deliveries.record_failure(
                        self._pool,
                        row["id"],
                        row["attempts"],
                        response_status=attempt.response_status,
                        error=attempt.error or "failed",
                        retry_in_s=retry_in_s,
                        disable_after_s=s.webhook_disable_after_s,
                        disabled_reason=reason,
                    )
                break
            except (db.TryAgain, db.Refused) as exc:
                if isinstance(exc, db.Refused) or time.monotonic() + ERROR_BACKOFF_S >= deadline:
                    # Its lease runs out and the delivery is attempted again: at-least-once.
                    log.warning("webhook_outcome_not_written", error=str(exc), **fields)
                    return
                await asyncio.sleep(ERROR_BACKOFF_S)
        if attempt.succeeded:
            metrics.WEBHOOK_DELIVERIES.labels("succeeded").inc()
            # Debug: one line per event at thousands a second would cost more than the post.
            log.debug("webhook_delivered", **fields)
            return
        outcome = "retry" if retry_in_s is not None else "failed"
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        log.info(
            "webhook_attempt_failed",
            outcome=outcome,
            error=attempt.error,
            retry_in_s=None if retry_in_s is None else round(retry_in_s, 2),
            **fields,
        )
        if failure is not None and failure.disabled_now:
            metrics.WEBHOOK_ENDPOINTS_DISABLED.inc()
            log.warning("webhook_endpoint_disabled", reason=reason, endpoint_id=fields["endpoint_id"])

    # ---- metrics ----

    async def _sample(self) -> None:
        # Metrics first, then pruning, every SAMPLE_EVERY_S.
        assert self._pool is not None
        while True:
            try:
                by_state, by_type = await webhook_deliveries.backlog(self._pool)
                for state in ("healthy", "failing", "disabled"):
                    metrics.WEBHOOK_BACKLOG.labels(state).set(by_state.get(state, 0))
                for event_type in webhook_events.EVENT_TYPES:
                    metrics.WEBHOOK_EVENTS_RECENT.labels(event_type).set(by_type.get(event_type, 0))
            except (db.TryAgain, db.Refused) as exc:
                log.warning("webhook_backlog_sample_failed", error=str(exc))
            await self._prune()
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def _prune(self) -> None:
        """Events and deliveries past WEBHOOK_RETENTION_S go, a bounded amount per round."""
        assert self._pool is not None
        for _ in range(PRUNE_MAX_ROUNDS):
            try:
                deleted = await webhook_deliveries.prune(self._pool, self.settings.webhook_retention_s, PRUNE_BATCH)
            except (db.TryAgain, db.Refused) as exc:
                log.warning("webhook_prune_failed", error=str(exc))
                return
            if deleted < PRUNE_BATCH:
                return
