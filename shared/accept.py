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

A batch request (`trigger_many`, `transactional_many`: up to 500 items) takes the same
steps: each item is validated and resolved alone (a refusal answers that item only), and
the accepted ones are submitted as one group, committed together in one flush (one
statement for Broadcasts sends, one transaction of a statement per table for `/api/v1`
emails), then one ring.

One `Acceptor` is made per process (the api's state, or `tidings send`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog
from redis.asyncio import Redis

from shared import contacts, doorbell, errors, ids, metrics, sending, sending_domains, transactionals
from shared.batching import Batcher
from shared.broadcast_cache import NO_CACHE, BroadcastCache
from shared.config import Settings
from shared.contact_cache import NO_CONTACT_CACHE, ContactCache, PreloadedContacts
from shared.domain import Channel
from shared.redis_keys import RedisKeys
from shared.send_waiter import SendWaiter

log = structlog.get_logger("tidings.accept")

Prepared = sending.PreparedSend | transactionals.PreparedTransactional
T = TypeVar("T")

# A batch request holds 1 to this many items (both APIs).
MAX_BATCH_ITEMS = 500

# Batch requests commit through a batcher of their own (the same flush), so that a batch's
# hundreds of sends never delay a single send's commit: up to this many sends a commit, and two
# commits at a time (a commit of hundreds of sends is Postgres work that a second core can
# share; single sends measured better one commit at a time).
GROUP_FLUSH_MAX_SENDS = 500
GROUP_FLUSHES_IN_FLIGHT = 2

# How many of a batch's items are validated and resolved at once: most cost no round trip
# (the caches), the others one or two each, and each holds a pool connection meanwhile.
PREPARE_CONCURRENCY = 8


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
        self.batcher: Batcher[Prepared, asyncio.Future[bool]] = Batcher(
            self._flush, max_in_flight=1, observe=_observer("single")
        )
        self.group_batcher: Batcher[Prepared, asyncio.Future[bool]] = Batcher(
            self._flush,
            max_size=GROUP_FLUSH_MAX_SENDS,
            max_in_flight=GROUP_FLUSHES_IN_FLIGHT,
            observe=_observer("group"),
        )
        self._rings: set[asyncio.Future[bool]] = set()
        # A batch request's sends refused at commit for their own reason, until it reads them.
        self._refusals: dict[int, errors.TidingsError] = {}

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
        test: bool = False,
    ) -> tuple[sending.PreparedSend, bool]:
        """Accept one trigger; returns the send as it stands and whether it is settled (every
        message has its outcome: with `wait`, as reported by the worker within
        `sync_send_timeout_s`). Raises the error that refused it. `test`: a test key's send,
        whose messages reach no provider."""
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
            max_attachment_bytes=self.settings.max_attachment_bytes,
        )
        if claim is not None:
            prepared.fence = claim.fence
        prepared.test = test
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
        test: bool = False,
    ) -> asyncpg.Record:
        """Accept one transactional email; returns it as `transactionals.get` reads it. `test`:
        a test key's, which reaches no provider."""
        if claim is not None and claim.committed_send_id is not None:
            # This key's first request committed the email and died before answering: that
            # email is the answer, never a second one.
            committed = await transactionals.get_by_send(self.pool, org_id, claim.committed_send_id)
            if committed is not None:
                return committed
        request = await transactionals.validate(
            self.pool, org_id, submission, max_attachment_bytes=self.settings.max_attachment_bytes
        )
        prepared = await transactionals.prepare(
            self.pool,
            self.settings,
            org_id,
            request,
            request_id=request_id,
            fence=claim.fence if claim is not None else None,
            sender=await self.senders.get(self.pool, org_id),
        )
        prepared.test = test
        ring = await self._commit(prepared)
        # This API answers once the workers were rung, as it always has (the ring is bounded
        # by doorbell.RING_TIMEOUT_S, and a failed one only means a worker looks later).
        await asyncio.shield(ring)
        assert prepared.row is not None
        return prepared.row

    # ---- batch requests: many sends, each resolved alone, committed together ----

    async def trigger_many(
        self,
        org_id: uuid.UUID,
        broadcast_id: uuid.UUID,
        triggers: Sequence[sending.Trigger | errors.TidingsError],
        *,
        source: str,
        request_id: str | None,
        claim: sending.KeyClaim | None = None,
        test: bool = False,
    ) -> list[sending.PreparedSend | errors.TidingsError]:
        """Accept a batch of triggers of one broadcast, in the background (no one waits for
        outcomes). Per item, in order: its send as accepted, or the error that refused it
        alone (an item given as an error, e.g. a body that did not decode, stays refused).
        All accepted sends are committed in one statement. Raises what refuses the whole
        request: the broadcast cannot send, Postgres is unreachable, the key was taken over.
        `test`: a test key's batch, whose messages reach no provider (as `trigger`)."""
        sendable = await sending.sendable_broadcast(self.pool, org_id, broadcast_id, self.broadcast_cache)
        send_ids, committed = await self._batch_ids(
            claim, len(triggers), lambda ids_: sending.load_committed_many(self.pool, org_id, ids_)
        )

        contact_cache = await self._preload_contacts(org_id, triggers)
        Item = sending.PreparedSend | errors.TidingsError

        async def one(i: int, trigger: sending.Trigger | errors.TidingsError) -> Item:
            if isinstance(trigger, errors.TidingsError):
                return trigger
            done = committed.get(send_ids[i])
            if done is not None:
                return done  # committed by this key's first request, which died before answering
            try:
                prepared = await sending.prepare(
                    self.pool,
                    org_id,
                    broadcast_id,
                    trigger,
                    cache=self.broadcast_cache,
                    contact_cache=contact_cache,
                    public_base=self.settings.public_base,
                    source=source,
                    request_id=request_id,
                    max_attachment_bytes=self.settings.max_attachment_bytes,
                    sendable=sendable,
                )
            except errors.TidingsError as exc:
                if not _item_refusal(exc):
                    raise
                return exc
            prepared.send_id = send_ids[i]
            if claim is not None:
                prepared.fence = claim.fence
            prepared.test = test
            return prepared

        items = await _in_lanes(len(triggers), lambda i: one(i, triggers[i]), PREPARE_CONCURRENCY)
        fresh = [p for p in items if isinstance(p, sending.PreparedSend) and p.send_id not in committed]
        await self._commit_group(fresh)
        return [self._refusals.pop(id(p), p) if isinstance(p, sending.PreparedSend) else p for p in items]

    async def transactional_many(
        self,
        org_id: uuid.UUID,
        submissions: Sequence[transactionals.Submission | errors.TidingsError],
        *,
        request_id: str | None,
        claim: sending.KeyClaim | None = None,
        test: bool = False,
    ) -> list[asyncpg.Record | errors.TidingsError]:
        """Accept a batch of `/api/v1` emails. Per item, in order: the transactional as
        accepted (as `transactionals.get` reads it), or the error that refused it alone. Each
        is validated alone; their recipients are looked up together and all accepted ones
        committed in one transaction. Raises what refuses the whole request. `test`: a test
        key's batch, which reaches no provider (as `transactional`)."""
        send_ids, committed = await self._batch_ids(
            claim, len(submissions), lambda ids_: transactionals.get_many_by_sends(self.pool, org_id, ids_)
        )

        async def check(i: int, s: transactionals.Submission | errors.TidingsError) -> object:
            if isinstance(s, errors.TidingsError) or send_ids[i] in committed:
                return s
            try:
                return await transactionals.validate(
                    self.pool, org_id, s, max_attachment_bytes=self.settings.max_attachment_bytes
                )
            except errors.TidingsError as exc:
                if not _item_refusal(exc):
                    raise
                return exc

        checked = await _in_lanes(len(submissions), lambda i: check(i, submissions[i]), PREPARE_CONCURRENCY)
        valid = [(i, r) for i, r in enumerate(checked) if isinstance(r, transactionals.Request)]
        prepared = await transactionals.prepare_many(
            self.pool,
            self.settings,
            org_id,
            [r for _, r in valid],
            request_id=request_id,
            fence=claim.fence if claim is not None else None,
            sender=await self.senders.get(self.pool, org_id),
        )
        for (i, _), p in zip(valid, prepared, strict=True):
            p.send_id = send_ids[i]
            p.test = test
        ring = await self._commit_group(prepared)
        if ring is not None:
            # As a single send does: answered once the workers were rung (bounded).
            await asyncio.shield(ring)
        out: list[asyncpg.Record | errors.TidingsError] = []
        by_index = {i: p for (i, _), p in zip(valid, prepared, strict=True)}
        for i, item in enumerate(checked):
            accepted = by_index.get(i)
            if accepted is not None:
                refusal = self._refusals.pop(id(accepted), None)
                if refusal is not None:
                    out.append(refusal)
                else:
                    assert accepted.row is not None
                    out.append(accepted.row)
            elif send_ids[i] in committed:
                out.append(committed[send_ids[i]])
            else:
                assert isinstance(item, errors.TidingsError)
                out.append(item)
        return out

    async def _preload_contacts(
        self, org_id: uuid.UUID, triggers: Sequence[sending.Trigger | errors.TidingsError]
    ) -> ContactCache:
        """The known recipients of a batch given by address, found in one query instead of one
        or two per item; the process cache's fresh entries are not asked again, and are kept
        for the batch as they are now (one that expired while the batch's items were being
        prepared would otherwise cost its item a query after all)."""
        wanted: dict[tuple[uuid.UUID, str | None, str | None], None] = {}
        cached: dict[tuple[uuid.UUID, str | None, str | None], Any] = {}
        for t in triggers:
            if isinstance(t, errors.TidingsError) or t.contact_channel_id or t.contact_id:
                continue
            try:
                email = contacts.normalize(Channel.email, t.email) if t.email else None
                phone = contacts.normalize(Channel.whatsapp, t.phone) if t.phone else None
            except errors.TidingsError:
                continue  # `prepare` refuses it
            key = (org_id, email, phone)
            if not (email or phone) or key in cached or key in wanted:
                continue
            hit = self.contact_cache.peek(key)
            if hit is not None:
                cached[key] = hit
            else:
                wanted[key] = None
        known = cached
        if len(wanted) >= 2:
            keys = list(wanted)
            found = await contacts.find_many(self.pool, org_id, [(email, phone) for _, email, phone in keys])
            # Into the process's cache too, as a single trigger's lookup goes: the next batches to
            # the same recipients within its TTL skip this query (a batch of repeat recipients
            # otherwise paid it every time, about a sixth of the api's CPU per batch).
            for key, value in zip(keys, found, strict=True):
                if value is not None:
                    known[key] = value
                    self.contact_cache.put(key, value)
        return PreloadedContacts(known, self.contact_cache) if known else self.contact_cache

    async def _batch_ids(
        self,
        claim: sending.KeyClaim | None,
        count: int,
        load: Callable[[list[uuid.UUID]], Awaitable[dict[uuid.UUID, T]]],
    ) -> tuple[list[uuid.UUID], dict[uuid.UUID, T]]:
        """The send ids of a batch's items, and those a first request under the same key
        committed before it died (`load`ed): those items are answered from what was
        committed; the rest run again under the same ids (never a second send per item)."""
        if claim is not None and claim.committed_send_id is not None:
            send_ids = ids.batch_ids(ids.batch_base(claim.committed_send_id), count)
            return send_ids, await load(send_ids)
        return ids.batch_ids(ids.new_id(), count), {}

    async def _commit_group(self, group: Sequence[Prepared]) -> asyncio.Future[bool] | None:
        """Commit a batch request's sends together (one flush, never split); a send refused
        for its own reason is kept in `_refusals` for its caller to pick up. Returns the
        flush's ring (None: nothing committed). Raises what refuses the whole request."""
        if not group:
            return None
        results = await self.group_batcher.submit_group(group)
        ring: asyncio.Future[bool] | None = None
        failed: list[tuple[Prepared, BaseException]] = []
        for p, result in zip(group, results, strict=True):
            if isinstance(result, asyncio.Future):
                ring = result
            elif isinstance(result, errors.TidingsError) and _item_refusal(result):
                self._refusals[id(p)] = result
            else:
                failed.append((p, result))
        if failed and ring is None:
            # Nothing of the group was committed: the request fails whole, and may be retried.
            for p in group:
                self._refusals.pop(id(p), None)
            raise failed[0][1]
        for p, exc in failed:
            # Others of the group were committed (written one by one after the group's statement
            # failed): failing the request would invite a retry that sends them twice. This item
            # alone is answered as not sent.
            log.error("batch_item_not_committed", error=repr(exc))
            self._refusals[id(p)] = errors.Unavailable(ITEM_NOT_STORED)
        return ring

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
        await self.group_batcher.close()
        if self._rings:
            await asyncio.gather(*self._rings, return_exceptions=True)


ITEM_NOT_STORED = "this item could not be stored and nothing was sent for it; send it again"


def _item_refusal(exc: BaseException) -> bool:
    """A refusal of one item of a batch, answered in that item's place; anything else (an
    unreachable Postgres, a key taken over) refuses the whole request."""
    return isinstance(exc, errors.ValidationFailed | errors.NotFound | errors.Conflict) and not isinstance(
        exc, errors.IdempotencyKeyInFlight
    )


async def _in_lanes(count: int, job: Callable[[int], Awaitable[T]], lanes: int) -> list[T]:
    """`job(i)` for i in range(count), at most `lanes` at a time (each may hold a pool
    connection), results in order. A few tasks, each taking every `lanes`-th item in turn,
    not a task per item: most items cost no round trip, and a task would cost more than
    the item. The first exception stops the other lanes and is raised."""
    out: list[Any] = [None] * count

    async def lane(start: int) -> None:
        for i in range(start, count, lanes):
            out[i] = await job(i)

    tasks = [asyncio.ensure_future(lane(start)) for start in range(min(lanes, count))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return out


def _observer(batcher: str) -> Callable[[int, float, float], None]:
    """Each commit's size, its oldest send's wait and its duration, into the api's metrics."""
    sends = metrics.ACCEPT_FLUSH_SENDS.labels(batcher)
    wait = metrics.ACCEPT_FLUSH_WAIT.labels(batcher)
    duration = metrics.ACCEPT_FLUSH_DURATION.labels(batcher)

    def observe(size: int, waited_s: float, took_s: float) -> None:
        sends.observe(size)
        wait.observe(waited_s)
        duration.observe(took_s)

    return observe


def _wakes_workers(p: Prepared) -> bool:
    if isinstance(p, sending.PreparedSend):
        return bool(p.queued)
    return p.wakes_workers


def _already(value: bool) -> asyncio.Future[bool]:
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    done.set_result(value)
    return done
