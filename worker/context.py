"""What a worker's pump, deliveries and reconciler share: made once when the worker starts
(worker/main.py `serve`), closed once when it stops, after the pump's drain."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from shared import db
from shared.config import Settings
from shared.domain import Channel
from shared.redis_keys import RedisKeys
from worker.attachments import AttachmentParts
from worker.channels.base import DeliveryChannel
from worker.channels.domain_keys import DomainKeys
from worker.channels.email import EmailChannel
from worker.channels.testmode import TestModeChannel
from worker.channels.whatsapp import WhatsAppChannel
from worker.outcomes import OutcomeWriter
from worker.render_sandbox import RenderPool
from worker.throughput import Throughput


def open_channels(
    settings: Settings, pool: db.Pool | None = None, throughput: Throughput | None = None
) -> dict[Channel, DeliveryChannel[Any]]:
    """One channel of each kind; they connect on first use and are closed by `close`. With a
    `pool`, email From an org's sending domain is signed with that domain's key. With
    `throughput`, they keep the ceilings shared by every worker (relays' max_per_s,
    WHATSAPP_MAX_PER_S); without, none."""
    domain_keys = DomainKeys(settings, pool) if pool is not None else None
    return {
        Channel.email: EmailChannel(settings, domain_keys, throughput),
        Channel.whatsapp: WhatsAppChannel(settings, throughput=throughput),
    }


@dataclasses.dataclass(slots=True)
class WorkerContext:
    settings: Settings
    pool: db.Pool
    # The doorbell's subscription (worker/pump.py) and the outcome notices to waiting callers.
    redis: Redis
    keys: RedisKeys
    # Each kind of message is sent through its own channel; the pipeline knows no other.
    channels: Mapping[Channel, DeliveryChannel[Any]]
    # Where a test key's messages go instead, whatever their kind (nothing leaves the process).
    test_channel: DeliveryChannel[Any] = dataclasses.field(default_factory=TestModeChannel)
    # Concurrent deliveries share their outcome writes (one statement and commit per batch),
    # retried until written (worker/outcomes.py).
    outcomes: OutcomeWriter = dataclasses.field(init=False)
    # Templates render in child processes bounded in CPU and memory (started on first use).
    renderer: RenderPool = dataclasses.field(default_factory=RenderPool)
    # The throughput ceilings the channels keep; the pump sizes its claims by them.
    throughput: Throughput | None = None
    # The attachments of the sends being delivered, loaded once per send (worker/attachments.py).
    attachments: AttachmentParts = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = OutcomeWriter(self.pool)
        self.attachments = AttachmentParts(self.pool)

    async def close(self) -> None:
        """After the pump has stopped: the outcome writes still under way end (at their next
        try if still failing), then the render processes and the channels' connections."""
        await self.outcomes.close()
        await self.renderer.close()
        for channel in self.channels.values():
            await channel.close()
        if self.throughput is not None:
            await self.throughput.close()
