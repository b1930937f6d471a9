"""The names and arguments of arq jobs, in one place for the api, the CLI and the worker."""

from __future__ import annotations

import uuid

from arq.connections import ArqRedis

DELIVER_SEND = "deliver_send"


async def enqueue_send(
    redis: ArqRedis,
    queue_name: str,
    send_id: uuid.UUID,
    *,
    notify: bool,
    request_id: str | None,
    defer_s: float | None = None,
) -> bool:
    """Enqueue delivery of a send. The job id is the send id, so a second enqueue of the same
    send while one is pending is refused by arq and harmless. Returns whether it was new."""
    job = await redis.enqueue_job(
        DELIVER_SEND, str(send_id), notify, request_id, _job_id=str(send_id), _queue_name=queue_name, _defer_by=defer_s
    )
    return job is not None
