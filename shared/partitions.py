"""Messages and their events live in time partitions (shared/migrations/0017): made ahead by
the reconciler, and dropped whole once past MESSAGE_HISTORY_DAYS instead of deleted row by row.

Making: partitions MESSAGE_PARTITION_DAYS wide, each beginning where the last one ends, until
one reaches MESSAGE_PARTITIONS_AHEAD_DAYS from now: a message is written into the partition of
its created_at, and one with no partition to go to would be refused, so the reconciler keeps
weeks of them ready (a stopped reconciler has that long before accepts fail).

Dropping: a partition whose upper bound is MESSAGE_HISTORY_DAYS in the past goes with its
events' partition and its messages' transactionals, unless it still holds an unsettled
(queued, scheduled, sending) message: that one may still go out, so the partition is kept and
logged, and tried again next run. The per-org `retention_days` content erasure
(shared/retention.py) is separate: it is the GDPR lever; this is the database's size.

Both take locks on the parent tables (ATTACH: SHARE UPDATE EXCLUSIVE, which writes do not wait
for; DROP: ACCESS EXCLUSIVE, for a moment) under a short lock_timeout: a chore that cannot have
its lock at once gives way to the hot path and is tried again on the next run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg
import structlog

from shared import db
from shared.sql import Q

log = structlog.get_logger("tidings.partitions")

# How long a partition chore waits for its lock before giving way (and trying next run).
LOCK_TIMEOUT = "500ms"


@dataclasses.dataclass
class Dropped:
    dropped: list[str] = dataclasses.field(default_factory=list)
    # Partition name -> unsettled messages that kept it.
    kept: dict[str, int] = dataclasses.field(default_factory=dict)
    # Partitions whose lock was not to be had at once (tried again next run).
    busy: list[str] = dataclasses.field(default_factory=list)


@db.translated
async def make_ahead(pool: asyncpg.Pool, partition_days: int, ahead_days: int) -> int:
    """Make partitions until one reaches `ahead_days` from now; returns how many were made."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchval(Q.set_lock_timeout, LOCK_TIMEOUT)
        made: int = await conn.fetchval(Q.make_message_partitions, ahead_days, partition_days)
    if made:
        log.info("partitions_made", count=made)
    return made


@db.translated
async def drop_expired(pool: asyncpg.Pool, history_days: int) -> Dropped:
    """Drop every partition past `history_days` that holds no unsettled message, oldest first."""
    out = Dropped()
    for row in await pool.fetch(Q.select_expired_partitions, history_days):
        name: str = row["name"]
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetchval(Q.set_lock_timeout, LOCK_TIMEOUT)
                unsettled: int = await conn.fetchval(Q.drop_message_partition, name)
        except asyncpg.LockNotAvailableError:
            out.busy.append(name)
            log.info("partition_busy", partition=name)
            continue
        if unsettled:
            out.kept[name] = unsettled
            log.warning(
                "partition_kept",
                partition=name,
                upper_bound=_iso(row["upper_bound"]),
                unsettled=unsettled,
                why="it holds messages that may still go out (queued, scheduled or sending)",
            )
        else:
            out.dropped.append(name)
            log.info("partition_dropped", partition=name, upper_bound=_iso(row["upper_bound"]))
    return out


@db.translated
async def listing(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every partition of messages with its bounds, oldest first."""
    return list(await pool.fetch(Q.select_message_partitions))


def _iso(at: dt.datetime) -> str:
    return at.isoformat()
