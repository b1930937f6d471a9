"""Every Redis key and channel name tidings uses, built from one prefix in one place."""

from __future__ import annotations

import uuid


class RedisKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def rate_limit(self, org_id: uuid.UUID, window_start_s: int) -> str:
        return f"{self.prefix}rl:{org_id}:{window_start_s}"

    def send_done_channel(self, send_id: uuid.UUID | str) -> str:
        return f"{self.prefix}done:{send_id}"

    @property
    def send_done_pattern(self) -> str:
        return f"{self.prefix}done:*"

    @property
    def doorbell_channel(self) -> str:
        """Rung when messages are committed or fall due: wakes the workers' idle pumps."""
        return f"{self.prefix}doorbell"

    def console_sign_in(self, client: str, window_start_s: int) -> str:
        """Sign-in attempts at the console from one client address in one window."""
        return f"{self.prefix}console:signin:{client}:{window_start_s}"
