"""Serving the api from several processes on one port (`API_PROCESSES`, `tidings api --processes`).

One aiohttp process uses at most one core. On a machine with spare cores, N processes each
bind the same port with SO_REUSEPORT and the kernel spreads new connections across them.
The first process forks the others before any event loop or connection exists, so each
builds its own pools in its own lifecycle hooks. A SIGTERM to the first process (what an
orchestrator sends) is passed on to the others as its graceful shutdown begins, and it
waits for them; a child whose parent dies is sent SIGTERM by the kernel (Linux).

In Kubernetes prefer one process per pod and more replicas: each process keeps its own
Prometheus registry, so `/metrics` answers for whichever process took the scrape.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

from aiohttp import web

# prctl(PR_SET_PDEATHSIG, sig): the kernel signals a child when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def fork(processes: int) -> list[int]:
    """Fork `processes - 1` children: their pids in the parent, [] in a child."""
    children: list[int] = []
    for _ in range(max(0, processes - 1)):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            return []
        children.append(pid)
    return children


def stop_children_on_shutdown(app: web.Application, children: list[int]) -> None:
    """In the parent: pass the graceful shutdown on to the children as it begins."""

    async def forward(_app: web.Application) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    app.on_shutdown.append(forward)


def reap(children: list[int]) -> None:
    """Wait for the children to exit."""
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
