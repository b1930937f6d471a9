"""Where a message is claimed: each worker's pump takes due messages from Postgres in batches.

Postgres is the queue. A pump claims up to `batch_size` due messages in one statement
(`claim_due`: queued or scheduled -> sending, with a lease; SKIP LOCKED, so pumps of many
workers never take the same row nor wait for each other), and hands each send's messages
to `worker.deliver.deliver_group`, keeping at most `capacity` messages in flight. Outcomes
are written together (worker/outcomes.py). While it holds messages it renews their leases,
so that only a dead worker's messages are ever taken back. Its statements are
shared/delivery.py's; a database failure reaches it as `db.TryAgain` (it waits and tries
again) or `db.Refused`.

When Postgres goes away (stopped, restarting, unreachable), sends already under way finish,
and their outcomes are kept and retried until written, for as long as the process lives;
their messages stay held. Leases are renewed as soon as Postgres answers again (one the
reconciler took back meanwhile, and nobody claimed since, is taken back: `renew_leases`),
and nothing new is claimed until the held leases are renewed and every outcome owed is
written. So an outage sends nothing twice, however long it lasts (worker/deliver.py lists
where a duplicate can still happen).

On SIGTERM (`stop`) the pump stops claiming, gives the messages in hand the drain to finish,
writes the outcomes of those sent (trying until the drain ends, and at least
`STOP_WRITE_MIN_S` after the unfinished are cut short), and releases the unfinished, never
one that was sent.

With nothing due it sleeps until the next message falls due, the doorbell rings (a Redis
pub/sub message published by whoever commits messages, `shared.doorbell`), or
`IDLE_CHECK_S` passes. The doorbell only saves latency: a ring lost with Redis delays
a message by at most `IDLE_CHECK_S`, and never loses it.

Why not one arq job per send: arq's per-job bookkeeping is four or five Redis round trips,
which caps a worker near arq's measured 300 jobs/s (tests/perf/README.md); a claim here
costs one statement per batch. arq still runs the reconciler (worker/reconcile.py).

With throughput ceilings (a relay's max_per_s, WHATSAPP_MAX_PER_S), a worker holds per
throttled channel only what its share of the ceiling sends in a couple of seconds
(worker/throughput.py): claims are sized by it, and none is made while that many wait.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Collection
from typing import Any

import structlog

from shared import db, delivery
from worker.context import WorkerContext
from worker.deliver import deliver_group

log = structlog.get_logger("tidings.pump")

# The longest a pump sleeps without looking at Postgres: the worst-case delay of a message
# whose doorbell was lost (Redis down) or that was written by something that rang none.
IDLE_CHECK_S = 1.0
# A claim that found due rows locked by another worker's claim looks again after this long.
MIN_WAIT_S = 0.002
# After a database error, the pump retries this much later (it never exits on one).
ERROR_BACKOFF_S = 1.0
# A lease renewal that failed is tried again this soon, backing off to RENEW_RETRY_MAX_S:
# once Postgres answers again the leases held are renewed (or taken back) within about a
# second, well inside the grace the reconciler gives a reclaimed message
# (worker/reconcile.py RECLAIM_GRACE_S).
RENEW_RETRY_MIN_S = 0.1
RENEW_RETRY_MAX_S = 1.0
RENEW_LOG_EVERY = 20
# On stop, the outcomes of messages sent get at least this long to be written after the
# drain has cut the unfinished short (a send that finished at the last moment gets a few tries).
STOP_WRITE_MIN_S = 3.0


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class Pump:
    def __init__(self, ctx: WorkerContext, *, capacity: int, batch_size: int = 200) -> None:
        self.ctx = ctx
        self.capacity = max(1, capacity)
        self.batch_size = max(1, min(batch_size, self.capacity))
        # Claim again once this many have finished: batches stay large and the channel busy.
        self._refill_at = max(1, self.capacity // 2)
        self.in_flight = 0  # claimed, not yet sent
        self._pending: collections.Counter[str] = collections.Counter()  # the same, per channel
        # Claimed, outcome not yet written: message id -> the claim's attempt number.
        self._held: dict[uuid.UUID, int] = {}
        # Held and done with at the channel (their outcomes known): only the write is owed.
        # Never given back on stop: they would be sent again.
        self._unrecorded: set[uuid.UUID] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._bell = asyncio.Event()
        self._room = asyncio.Event()
        self._sent_some = asyncio.Event()  # held messages were done with (throughput ceilings)
        self._written = asyncio.Event()
        self._stopping = False
        self._locked_streak = 0
        # A database error was seen: before the next claim, renew the leases held and wait
        # for the outcomes owed to be written (`_catch_up`).
        self._trouble = False
        self._seen_write_failures = 0
        self._renewal_failures = 0  # in a row
        self._loop_task: asyncio.Task[None] | None = None
        self._bell_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._bell_task = asyncio.create_task(self._listen())
        self._loop_task = asyncio.create_task(self._run())
        self._lease_task = asyncio.create_task(self._renew_leases())

    async def stop(self, drain_s: float) -> None:
        """Stop claiming; let messages in hand finish for up to `drain_s`; give back the rest."""
        loop = asyncio.get_running_loop()
        self._stopping = True
        self._bell.set()
        self._room.set()
        self._sent_some.set()
        self._written.set()
        deadline = loop.time() + drain_s
        await _cancel(self._bell_task)
        if self._loop_task is not None:
            # Let a claim under way finish and dispatch (cancelled mid-statement, it could
            # commit with its rows unknown here, held until their lease expires).
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._loop_task, timeout=drain_s)
        if self._tasks:
            # Groups finish when their outcomes are written: this also waits for the writes.
            await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - loop.time()))
        # Writes still failing give up past this (the process is about to end).
        self.ctx.outcomes.deadline = max(deadline, loop.time() + STOP_WRITE_MIN_S)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Outcomes submitted (also by groups cut short) are written before anything is given
        # back, leases renewed meanwhile.
        await self.ctx.outcomes.close()
        await _cancel(self._lease_task)
        # Unfinished at the end of the drain: back to queued now, not when the lease expires.
        # Never one that was sent: if its outcome could not be written, it stays `sending` and
        # comes back (a duplicate) only when its lease expires.
        unsent = {m: attempt for m, attempt in self._held.items() if m not in self._unrecorded}
        if unsent:
            try:
                released = await delivery.release_claims(self.ctx.pool, unsent)
                log.warning("pump_released_claims", released=released)
            except db.TryAgain as exc:
                log.warning("pump_release_failed", messages=len(unsent), error=str(exc))
        self._held.clear()
        self._unrecorded.clear()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._claim_and_dispatch()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must not stop delivery for good: say so loudly, and keep going.
                log.exception("pump_error")
                await asyncio.sleep(ERROR_BACKOFF_S)

    async def _claim_and_dispatch(self) -> None:
        while not self._stopping:
            room = self.capacity - self.in_flight
            # Wait for room: for half the capacity (claims stay large and the channel busy),
            # and while outcomes not yet written pile up (the database is behind).
            if room <= 0 or (room < self.batch_size and self.in_flight > self._refill_at) or self._unrecorded_full():
                self._room.clear()
                await self._room.wait()
                continue
            if self._trouble or self.ctx.outcomes.write_failures != self._seen_write_failures:
                await self._catch_up()
                continue
            limit = self._throughput_limit()
            if limit is not None and limit <= 0:
                await self._wait_for_tokens()
                continue
            # Cleared before claiming: a ring that arrives during the claim is not lost.
            self._bell.clear()
            try:
                size = min(room, self.batch_size, limit if limit is not None else room)
                rows = await delivery.claim_due(self.ctx.pool, size, self.ctx.settings.lease_s)
                if rows:
                    self._locked_streak = 0
                    self._dispatch(rows)
                    continue
                wait_s = await delivery.seconds_to_next_due(self.ctx.pool)
            except db.TryAgain as exc:
                log.warning("pump_claim_failed", error=str(exc))
                self._trouble = True
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            if wait_s is not None and wait_s <= 0:
                # Due, yet nothing claimed: the rows are locked by another transaction (another
                # worker's claim, a redaction). Look again soon, backing off while it lasts.
                self._locked_streak += 1
                timeout_s = min(IDLE_CHECK_S, MIN_WAIT_S * 2**self._locked_streak)
            else:
                self._locked_streak = 0
                timeout_s = IDLE_CHECK_S if wait_s is None else min(IDLE_CHECK_S, max(MIN_WAIT_S, wait_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bell.wait(), timeout_s)

    async def _catch_up(self) -> None:
        """After a database error, before claiming anything new: renew the leases held (taking
        back any the reconciler took meanwhile), then wait until the outcomes of every message
        already sent are written. A claim first could take back this worker's own sent
        messages, had a reconciler requeued them, and send them again."""
        delay_s = RENEW_RETRY_MIN_S
        while not self._stopping:
            failures = self.ctx.outcomes.write_failures
            try:
                await self._renew()
            except db.TryAgain as exc:
                self._renewal_failed(exc)
                await asyncio.sleep(delay_s)
                delay_s = min(RENEW_RETRY_MAX_S, delay_s * 2)
                continue
            while self._unrecorded and not self._stopping:
                self._written.clear()
                # Bounded: a failed write is noticed on the next round, and the leases renewed again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._written.wait(), RENEW_RETRY_MAX_S)
                if self.ctx.outcomes.write_failures != failures:
                    break
            if not self._unrecorded and self.ctx.outcomes.write_failures == failures:
                self._trouble = False
                self._seen_write_failures = failures
                log.info("pump_caught_up", held=len(self._held))
                return

    def _throughput_limit(self) -> int | None:
        """With throughput ceilings, claim only what this worker's share sends in a couple of
        seconds, less what it holds unsent of each throttled channel (worker/throughput.py
        `claim_limit`): a throttled worker holds few messages, briefly, and never gives any
        back (no lease churn)."""
        throughput = self.ctx.throughput
        return throughput.claim_limit(self._pending) if throughput is not None else None

    async def _wait_for_tokens(self) -> None:
        """Until a held message is done with (or IDLE_CHECK_S, bounding any miss)."""
        self._sent_some.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sent_some.wait(), IDLE_CHECK_S)

    def _unrecorded_full(self) -> bool:
        return len(self._unrecorded) >= self.capacity

    def _dispatch(self, rows: list[Any]) -> None:
        by_send: dict[uuid.UUID, list[Any]] = {}
        for row in rows:
            by_send.setdefault(row["send_id"], []).append(row)
            self._held[row["id"]] = row["attempts"]
        for group in by_send.values():
            self.in_flight += len(group)
            self._pending.update(str(row["channel"]) for row in group)
            task = asyncio.create_task(self._deliver(group))
            self._tasks.add(task)

    async def _deliver(self, group: list[Any]) -> None:
        released = False

        def release_slots() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= len(group)
                self._pending.subtract(str(row["channel"]) for row in group)
                self._sent_some.set()
                if self.in_flight <= self._refill_at:
                    self._room.set()

        def sent(message_ids: Collection[uuid.UUID]) -> None:
            # The channel is done with these: their slots go to the next claim while their
            # outcomes wait for the next shared write.
            self._unrecorded.update(message_ids)
            release_slots()

        try:
            await deliver_group(self.ctx, group, on_sent=sent)
        except asyncio.CancelledError:
            # Stopped: kept as held; `stop` gives back those not sent.
            raise
        except Exception:
            # Outcomes refused by Postgres (not an outage: those are retried until written),
            # or a stopping worker's writes past its drain: their leases bring them back.
            log.exception("pump_deliver_failed", send_id=str(group[0]["send_id"]))
            self._forget(group)
        else:
            self._forget(group)
        finally:
            release_slots()
            self._tasks.discard(asyncio.current_task())
            if not self._unrecorded_full():
                self._room.set()

    async def _renew(self) -> None:
        held = dict(self._held)
        if not held:
            return
        taken_back = await delivery.renew_leases(self.ctx.pool, held, self.ctx.settings.lease_s)
        self._renewal_failures = 0
        if taken_back:
            log.warning("pump_took_back_reclaimed", messages=taken_back)

    def _renewal_failed(self, exc: BaseException) -> None:
        self._trouble = True
        self._renewal_failures += 1
        # Tried about every second while Postgres is away: logged when it starts, then now and then.
        if self._renewal_failures % RENEW_LOG_EVERY == 1:
            log.warning("lease_renewal_failed", tries=self._renewal_failures, held=len(self._held), error=str(exc))

    async def _renew_leases(self) -> None:
        """Every third of a lease, extend the leases of the messages still held: a message
        waiting behind a slow provider stays this worker's, and is never sent twice. After a
        failure, try again within a second, so that a held message is this worker's again as
        soon as Postgres answers."""
        period_s = self.ctx.settings.lease_s / 3
        retry_s = RENEW_RETRY_MIN_S
        delay_s = period_s
        while True:
            await asyncio.sleep(delay_s)
            try:
                await self._renew()
            except db.TryAgain as exc:
                self._renewal_failed(exc)
                delay_s = min(period_s, retry_s)
                retry_s = min(RENEW_RETRY_MAX_S, retry_s * 2)
            else:
                delay_s, retry_s = period_s, RENEW_RETRY_MIN_S

    def _forget(self, group: list[Any]) -> None:
        # Cancelled groups are not forgotten: `stop` gives back those of their messages not sent.
        for row in group:
            self._held.pop(row["id"], None)
            self._unrecorded.discard(row["id"])
        self._written.set()

    async def _listen(self) -> None:
        """Ring the bell on every doorbell message; resubscribe if Redis goes away."""
        channel = self.ctx.keys.doorbell_channel
        while True:
            pubsub = self.ctx.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                async for _message in pubsub.listen():
                    self._bell.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis gone (or anything else): the pump polls meanwhile
                log.warning("doorbell_reconnect", exc_info=True)
                await asyncio.sleep(ERROR_BACKOFF_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
