"""The real `tidings api` in a child process on a loopback port, its log lines in a file."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from shared.config import Settings
from tests.procs import settings_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def api_process(settings: Settings, log_path: Path, **env: str) -> AsyncIterator[str]:
    """Yields the base URL once /healthz answers; SIGTERM (then SIGKILL) on the way out."""
    port = free_port()
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings.cli",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={**settings_env(settings), "LOG_FORMAT": "json", **env},
        stdout=log,
        stderr=log,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None or loop.time() > deadline:
                    raise AssertionError(await asyncio.to_thread(log_path.read_text))
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield base
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
