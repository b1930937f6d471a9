"""Where outcomes are written: those of concurrent deliveries together, retried until written.

A message sent has an outcome that must reach Postgres: lost, its lease would expire and
the message be sent again. So `OutcomeWriter` writes the outcomes of many deliveries in one
statement and commit (`shared.delivery.record_outcomes`), and a write that fails for a
passing reason (`db.TryAgain`: Postgres stopped, restarting or failing over, a lost
connection, a deadlock) is tried again for as long as the process lives. Only a stopping
worker gives up, at `deadline` (the end of its drain). Meanwhile the pump claims nothing new
(worker/pump.py watches `write_failures`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import structlog

from shared import db, delivery
from shared.batching import Batcher
from shared.delivery import Outcome

log = structlog.get_logger("tidings.worker")

# A failed write is tried again backing off from RECORD_RETRY_MIN_S to RECORD_RETRY_MAX_S.
RECORD_RETRY_MIN_S = 0.1
RECORD_RETRY_MAX_S = 1.0
# A long outage is logged on the first failed try and then every this many.
RECORD_LOG_EVERY = 20
# Outcomes written in one statement at most.
MAX_BATCH = 500

Delivery = tuple[uuid.UUID, Sequence[Outcome]]  # org id, the outcomes of one delivered group


class OutcomeWriter:
    def __init__(self, pool: db.Pool) -> None:
        self.pool = pool
        # One write at a time: outcomes that finish meanwhile go together in the next, so a
        # write carries what arrived during the last one (at 500 emails/s and a 10 ms write,
        # about 5; with two in flight each carried half as many, and every statement costs
        # Postgres about as much as a few more rows).
        self._batcher: Batcher[Delivery, None] = Batcher(self._write_batch, max_size=MAX_BATCH, max_in_flight=1)
        # Failed tries so far (each is retried until written): the pump claims nothing new
        # after one until what it owes is written.
        self.write_failures = 0
        # When set (a loop time), writes still failing past it give up: a stopping worker's
        # drain is over. Unset, they are retried for as long as the process lives.
        self.deadline: float | None = None

    async def submit(self, org_id: uuid.UUID, outcomes: Sequence[Outcome]) -> None:
        """Returns once written; raises `db.Refused` if Postgres refused them (a bug, not an
        outage: logged, not retried), or `db.TryAgain` past the deadline."""
        await self._batcher.submit((org_id, outcomes))

    async def close(self) -> None:
        """Wait for the writes under way. Without a deadline set (a drain sets one, see
        `Pump.stop`), writes still failing end at their next try."""
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().time()
        await self._batcher.close()

    async def _write_batch(self, batch: list[Delivery]) -> list[BaseException | None]:
        """One statement for the whole batch. Safe to repeat: the write is fenced by each
        claim, so a retry after an unknown result changes nothing twice. One that Postgres
        refuses is the caller's, per delivery: the batch is then written delivery by
        delivery, so that one refused outcome does not take its neighbours' with it."""
        try:
            await self._write_until_written(batch)
            return [None] * len(batch)
        except db.Refused as exc:
            if len(batch) == 1:
                return [exc]
        results: list[BaseException | None] = []
        for item in batch:
            try:
                await self._write_until_written([item])
                results.append(None)
            except db.Refused as exc:
                log.error("record_refused", error=str(exc), messages=[str(o.message_id) for o in item[1]])
                results.append(exc)
        return results

    async def _write_until_written(self, batch: list[Delivery]) -> None:
        loop = asyncio.get_running_loop()
        delay_s = RECORD_RETRY_MIN_S
        tries = 0
        while True:
            try:
                await delivery.record_outcomes(self.pool, batch)
            except db.TryAgain as exc:
                tries += 1
                self.write_failures += 1  # the pump claims nothing new until these are written
                unwritten = sum(len(group) for _, group in batch)
                if self.deadline is not None and loop.time() >= self.deadline:
                    # Only a stopping worker gets here: these messages stay `sending` and are
                    # sent again once their lease expires.
                    log.error("outcomes_unwritten", messages=unwritten, tries=tries, error=str(exc))
                    raise
                if tries == 1 or tries % RECORD_LOG_EVERY == 0:
                    log.warning("record_retry", tries=tries, messages=unwritten, error=str(exc))
                await asyncio.sleep(delay_s)
                delay_s = min(RECORD_RETRY_MAX_S, delay_s * 2)
            else:
                if tries:
                    log.info("record_recovered", tries=tries, messages=sum(len(group) for _, group in batch))
                return
