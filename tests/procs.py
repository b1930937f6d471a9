"""Worker processes for the fault tests: the real `tidings worker`, killed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

from shared.config import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `Settings.from_env()` equal `settings` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "SMTP_", "WHATSAPP_"))}
    for field in dataclasses.fields(settings):
        env[field.name.upper()] = str(getattr(settings, field.name))
    env["LOG_FORMAT"] = "json"
    return env


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tidings.cli",
            "worker",
            env=settings_env(self.settings),
            stdout=log,
            stderr=log,
        )
        log.close()

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a machine dies."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, as an orchestrator does; returns the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                await self.kill()
        assert self.proc.returncode is not None
        return self.proc.returncode
