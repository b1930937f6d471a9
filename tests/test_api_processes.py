"""`tidings api --processes 2`: two processes answer on one port, and SIGTERM stops both."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import psutil

from shared.config import Settings
from tests.procs import settings_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.laddr.port == port for c in process.net_connections() if c.status == psutil.CONN_LISTEN)
    except psutil.Error:
        return False


async def test_processes_share_the_port_and_stop_together(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings.cli",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--processes",
        "2",
        env={**settings_env(settings), "LOG_FORMAT": "json"},
        stdout=log,
        stderr=log,
    )
    log.close()
    try:
        pids: set[int] = set()
        async with aiohttp.ClientSession() as http:
            deadline = asyncio.get_running_loop().time() + 30
            while asyncio.get_running_loop().time() < deadline:
                # The api's children (the Liquid checker each process spawns is not one of them).
                children = [c for c in psutil.Process(proc.pid).children() if _listens(c, port)]
                try:
                    # A fresh connection each time: the kernel spreads connections, not requests.
                    async with http.get(f"http://127.0.0.1:{port}/readyz", headers={"Connection": "close"}) as response:
                        # Each process binds on its own once it has forked: wait for both.
                        parent_listens = _listens(psutil.Process(proc.pid), port)
                        if response.status == 200 and len(children) == 1 and parent_listens:
                            pids = {proc.pid, children[0].pid}
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
        assert len(pids) == 2, (tmp_path / "api.log").read_text()
        # Both are listening on the port (SO_REUSEPORT), each with its own socket.
        for pid in pids:
            ports = {c.laddr.port for c in psutil.Process(pid).net_connections() if c.status == psutil.CONN_LISTEN}
            assert port in ports, pid

        os.kill(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
