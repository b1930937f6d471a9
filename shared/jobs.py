"""The names and arguments of arq jobs, in one place for the api, the CLI and the worker."""

from __future__ import annotations

import time
import uuid

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job

DELIVER_SEND = "deliver_send"


async def enqueue_send(
    redis: ArqRedis,
    queue_name: str,
    send_id: uuid.UUID,
    *,
    notify: bool,
    request_id: str | None,
    defer_s: float | None = None,
    retry_tag: str | None = None,
) -> bool:
    """Enqueue delivery of a send. The job id is the send id, so a second enqueue of the same
    send while one is pending is refused by arq and harmless. Returns whether it was new.

    `retry_tag` makes a distinct job id: the reconciler uses it for sends whose job died
    with its worker, since arq refuses the original id until that job's keys expire. A
    second job for a send is harmless: jobs only act on messages they claim."""
    job_id = str(send_id) if retry_tag is None else f"{send_id}:{retry_tag}"
    job = await redis.enqueue_job(
        DELIVER_SEND, str(send_id), notify, request_id, _job_id=job_id, _queue_name=queue_name, _defer_by=defer_s
    )
    return job is not None


async def enqueue_sends(redis: ArqRedis, queue_name: str, items: list[tuple[uuid.UUID, bool, str | None]]) -> None:
    """Enqueue many sends (send id, notify, request id) in one Redis round trip.

    The same job records arq's `enqueue_job` writes, without its WATCH/MULTI per job:
    `SET NX` keeps the "one pending job per send id" rule (an existing job is left alone).
    """
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for send_id, notify, request_id in items:
            job_id = str(send_id)
            payload = serialize_job(DELIVER_SEND, (job_id, notify, request_id), {}, None, now_ms)
            pipe.set(job_key_prefix + job_id, payload, px=redis.expires_extra_ms, nx=True)
            pipe.zadd(queue_name, {job_id: now_ms}, nx=True)
        await pipe.execute()
