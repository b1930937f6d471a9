"""Accepting a send: the one way both APIs and the CLI turn a request into committed messages.

A send goes through five steps, here and nowhere else:

1. validate and resolve it alone (`sending.prepare` for a Broadcasts trigger,
   `transactionals.validate` and `prepare` for an `/api/v1` email): every rejection is
   raised before anything is written;
2. commit it in a batch: sends that arrive while a batch is being written go together in
   the next one, so under load the cost of a commit (its fsync) is shared. A batch may
   hold both kinds; each kind writes its part in one transaction (`commit_many`);
3. ring the doorbell, once per batch (`shared.doorbell`): Postgres is the delivery queue,
   and the ring only wakes idle workers' pumps at once;
4. optionally wait for the outcome: the worker publishes it when the messages settle
   (`shared.send_waiter`, registered before the commit so that nothing is missed);
5. answer with the send as it stands: `sending.send_json` or `transactionals.transactional_json`.

One `Acceptor` is made per process (the api's state, or `tidings send`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Sequence

import asyncpg
from redis.asyncio import Redis

from shared import doorbell, metrics, sending, sending_domains, transactionals
from shared.batching import Batcher
from shared.broadcast_cache import NO_CACHE, BroadcastCache
from shared.config import Settings
from shared.contact_cache import NO_CONTACT_CACHE, ContactCache
from shared.redis_keys import RedisKeys
from shared.send_waiter import SendWaiter

Prepared = sending.PreparedSend | transactionals.PreparedTransactional


class Acceptor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        keys: RedisKeys,
        settings: Settings,
        waiter: SendWaiter | None,
        *,
        commit_pool: asyncpg.Pool | None = None,
        broadcast_cache: BroadcastCache = NO_CACHE,
        contact_cache: ContactCache = NO_CONTACT_CACHE,
    ) -> None:
        """`pool` serves validation and lookups; `commit_pool` (default: `pool`) the batch
        commits. Without a `waiter`, no one waits for outcomes (`wait` is ignored)."""
        self.pool = pool
        self.commit_pool = commit_pool or pool
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.waiter = waiter
        self.broadcast_cache = broadcast_cache
        self.contact_cache = contact_cache
        # The orgs' default senders for /api/v1 sends (`tidings org update --from-email`).
        self.senders = sending_domains.SenderCache(settings.broadcast_cache_ttl_s)
        # One batch at a time: measured, it beats two in flight (each request waits for at
        # most one commit before its own, and batches grow instead of splitting).
        self.batcher: Batcher[Prepared, asyncio.Future[bool]] = Batcher(self._flush, max_in_flight=1)
        self._rings: set[asyncio.Future[bool]] = set()

    # ---- the Broadcasts API and the CLI ----

    async def trigger(
        self,
        org_id: uuid.UUID,
        broadcast_id: uuid.UUID,
        trigger: sending.Trigger,
        *,
        source: str,
        request_id: str | None,
        wait: bool,
        claim: sending.KeyClaim | None = None,
    ) -> tuple[sending.PreparedSend, bool]:
        """Accept one trigger; returns the send as it stands and whether it is settled (every
        message has its outcome: with `wait`, as reported by the worker within
        `sync_send_timeout_s`). Raises the error that refused it."""
        if claim is not None and claim.committed_send_id is not None:
            # This key's first request committed a send and died before answering: that send
            # is the answer (as it stands now), never a second one.
            committed = await sending.load_committed(self.pool, org_id, claim.committed_send_id)
            if committed is not None:
                return committed, committed.settled
        prepared = await sending.prepare(
            self.pool,
            org_id,
            broadcast_id,
            trigger,
            cache=self.broadcast_cache,
            contact_cache=self.contact_cache,
            public_base=self.settings.public_base,
            source=source,
            request_id=request_id,
        )
        if claim is not None:
            prepared.fence = claim.fence
        return prepared, await self._accept_send(prepared, wait=wait)

    async def _accept_send(self, prepared: sending.PreparedSend, *, wait: bool) -> bool:
        waiter = self.waiter if wait else None
        queued = prepared.queued
        if waiter is None or not queued:
            await self._commit(prepared)
            return prepared.settled
        key = str(prepared.send_id)
        # Registered before the send is committed, so the worker's "done" cannot be missed.
        outcome = waiter.register(key, (str(r.id) for r in queued))
        prepared.notify = True
        try:
            ring = await self._commit(prepared)
            if len(prepared.queued) < len(queued):
                # The commit rejected some (suppressed or redacted): nothing will come for them.
                waiter.expect(key, (str(r.id) for r in prepared.queued))
            if not prepared.queued:
                return prepared.settled
            if not await asyncio.shield(ring):
                # Kept, and delivered, but Redis is unreachable: no outcome will be published.
                return False
            try:
                reported = await asyncio.wait_for(outcome, timeout=self.settings.sync_send_timeout_s)
            except TimeoutError:
                # Not all settled in time: the send as far as it was reported.
                prepared.apply_outcome(waiter.reported(key))
                return False
            prepared.apply_outcome(reported)
            return prepared.settled
        finally:
            waiter.forget(key)

    # ---- the Transactionals API (`/api/v1`) ----

    async def transactional(
        self,
        org_id: uuid.UUID,
        submission: transactionals.Submission,
        *,
        request_id: str | None,
        claim: sending.KeyClaim | None = None,
    ) -> asyncpg.Record:
        """Accept one transactional email; returns it as `transactionals.get` reads it."""
        if claim is not None and claim.committed_send_id is not None:
            # This key's first request committed the email and died before answering: that
            # email is the answer, never a second one.
            committed = await transactionals.get_by_send(self.pool, org_id, claim.committed_send_id)
            if committed is not None:
                return committed
        request = await transactionals.validate(self.pool, org_id, submission)
        prepared = await transactionals.prepare(
            self.pool,
            self.settings,
            org_id,
            request,
            request_id=request_id,
            fence=claim.fence if claim is not None else None,
            sender=await self.senders.get(self.pool, org_id),
        )
        ring = await self._commit(prepared)
        # This API answers once the workers were rung, as it always has (the ring is bounded
        # by doorbell.RING_TIMEOUT_S, and a failed one only means a worker looks later).
        await asyncio.shield(ring)
        assert prepared.row is not None
        return prepared.row

    # ---- the batch: commit, then one ring ----

    async def _commit(self, prepared: Prepared) -> asyncio.Future[bool]:
        """Commit in the next batch; returns the batch's ring (True: Redis took it). Committed
        means accepted, rung or not: a failed ring is never an error to the caller (that would
        invite a retry and a duplicate)."""
        return await self.batcher.submit(prepared)

    async def _flush(self, batch: list[Prepared]) -> list[asyncio.Future[bool] | BaseException]:
        sends = [p for p in batch if isinstance(p, sending.PreparedSend)]
        emails = [p for p in batch if isinstance(p, transactionals.PreparedTransactional)]
        # Each kind commits its part in one transaction; the two side by side, each on a
        # connection of its own. Per send: None (committed) or the error that refused it.
        parts: list[tuple[Sequence[Prepared], Awaitable[Sequence[BaseException | None]]]] = []
        if sends:
            parts.append((sends, sending.commit_many(self.commit_pool, sends)))
        if emails:
            parts.append((emails, transactionals.commit_many(self.commit_pool, emails)))
        results = await asyncio.gather(*(commit for _, commit in parts), return_exceptions=True)
        refusals: dict[int, BaseException | None] = {}
        for (items, _), result in zip(parts, results, strict=True):
            # A part that raised (Postgres unreachable) refuses all of its sends with that error.
            outcomes = [result] * len(items) if isinstance(result, BaseException) else result
            refusals.update((id(item), outcome) for item, outcome in zip(items, outcomes, strict=True))
        accepted = [p for p in batch if refusals[id(p)] is None]
        metrics.SENDS_ACCEPTED.inc(len(accepted))
        ring = self._ring() if any(_wakes_workers(p) for p in accepted) else _already(True)
        return [ring if (refusal := refusals[id(p)]) is None else refusal for p in batch]

    def _ring(self) -> asyncio.Future[bool]:
        # The one place where the doorbell is rung after a send is accepted. It runs beside the
        # next batch's commit, not before it: only a caller that waits for it waits for it.
        ring: asyncio.Future[bool] = asyncio.ensure_future(doorbell.ring(self.redis, self.keys))
        self._rings.add(ring)
        ring.add_done_callback(self._rings.discard)
        return ring

    async def close(self) -> None:
        await self.batcher.close()
        if self._rings:
            await asyncio.gather(*self._rings, return_exceptions=True)


def _wakes_workers(p: Prepared) -> bool:
    if isinstance(p, sending.PreparedSend):
        return bool(p.queued)
    return p.wakes_workers


def _already(value: bool) -> asyncio.Future[bool]:
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    done.set_result(value)
    return done
