"""Where a message is claimed: each worker's pump takes due messages from Postgres in batches.

Postgres is the queue. A pump claims up to `batch_size` due messages in one statement
(`claim_due`: queued or scheduled -> sending, with a lease; SKIP LOCKED, so pumps of many
workers never take the same row nor wait for each other), and hands each send's messages
to `worker.deliver.deliver_group`, keeping at most `capacity` messages in flight. Outcomes
are written by shared statements (`WorkerContext.outcomes`). While it holds messages it
renews their leases, so that only a dead worker's messages are ever taken back.

With nothing due it sleeps until the next message falls due, the doorbell rings (a Redis
pub/sub message published by whoever commits messages, `shared.doorbell`), or
`IDLE_CHECK_S` passes. The doorbell only saves latency: a ring lost with Redis delays
a message by at most `IDLE_CHECK_S`, and never loses it.

Why not one arq job per send: arq's per-job bookkeeping is four or five Redis round trips,
which caps a worker near arq's measured 300 jobs/s (tests/perf/README.md); a claim here
costs one statement per batch. arq still runs the reconciler (worker/reconcile.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import structlog

from shared.sql import Q
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
        # Claimed, outcome not yet written: message id -> the claim's attempt number.
        self._held: dict[uuid.UUID, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bell = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = False
        self._locked_streak = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._bell_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._bell_task = asyncio.create_task(self._listen())
        self._loop_task = asyncio.create_task(self._run())
        self._lease_task = asyncio.create_task(self._renew_leases())

    async def stop(self, drain_s: float) -> None:
        """Stop claiming; let messages in hand finish for up to `drain_s`; give back the rest."""
        self._stopping = True
        self._bell.set()
        self._room.set()
        deadline = asyncio.get_running_loop().time() + drain_s
        await _cancel(self._bell_task)
        if self._loop_task is not None:
            # Let a claim under way finish and dispatch (cancelled mid-statement, it could
            # commit with its rows unknown here, held until their lease expires).
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._loop_task, timeout=drain_s)
        if self._tasks:
            remaining_s = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait(list(self._tasks), timeout=remaining_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await _cancel(self._lease_task)  # leases were renewed through the drain; no longer needed
        # Outcomes submitted (also by groups cut short) are written before anything is given
        # back: the release is fenced to messages still `sending`, so none sent is sent again.
        await self.ctx.outcomes.close()
        if self._held:
            # Unfinished at the end of the drain: back to queued now, not when the lease expires.
            released = await self.ctx.pool.fetchval(Q.release_claims, list(self._held), list(self._held.values()))
            log.warning("pump_released_claims", released=released)
            self._held.clear()

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
            # Cleared before claiming: a ring that arrives during the claim is not lost.
            self._bell.clear()
            try:
                rows = await self.ctx.pool.fetch(Q.claim_due, min(room, self.batch_size), self.ctx.settings.lease_s)
                if rows:
                    self._locked_streak = 0
                    self._dispatch(rows)
                    continue
                wait_s = await self.ctx.pool.fetchval(Q.select_next_due)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("pump_claim_failed", error=str(exc))
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

    def _unrecorded_full(self) -> bool:
        return len(self._held) - self.in_flight >= self.capacity

    def _dispatch(self, rows: list[Any]) -> None:
        by_send: dict[uuid.UUID, list[Any]] = {}
        for row in rows:
            by_send.setdefault(row["send_id"], []).append(row)
            self._held[row["id"]] = row["attempts"]
        for group in by_send.values():
            self.in_flight += len(group)
            task = asyncio.create_task(self._deliver(group))
            self._tasks.add(task)

    async def _deliver(self, group: list[Any]) -> None:
        released = False

        def sent() -> None:
            # The channel is done with these: their slots go to the next claim while their
            # outcomes wait for the next shared write.
            nonlocal released
            if not released:
                released = True
                self.in_flight -= len(group)
                if self.in_flight <= self._refill_at:
                    self._room.set()

        try:
            await deliver_group(self.ctx, group, on_sent=sent)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Outcomes not written (the database went away): their leases bring them back.
            log.exception("pump_deliver_failed", send_id=str(group[0]["send_id"]))
            self._forget(group)
        else:
            self._forget(group)
        finally:
            sent()
            self._tasks.discard(asyncio.current_task())
            if not self._unrecorded_full():
                self._room.set()

    async def _renew_leases(self) -> None:
        """Every third of a lease, extend the leases of the messages still held: a message
        waiting behind a slow provider stays this worker's, and is never sent twice."""
        lease_s = self.ctx.settings.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            held = dict(self._held)
            if not held:
                continue
            try:
                await self.ctx.pool.execute(Q.renew_leases, list(held), list(held.values()), lease_s)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("lease_renewal_failed", error=str(exc))

    def _forget(self, group: list[Any]) -> None:
        # Cancelled groups are not forgotten: `stop` gives their messages back.
        for row in group:
            self._held.pop(row["id"], None)

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
