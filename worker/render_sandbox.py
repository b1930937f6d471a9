"""Rendering in child processes that a template cannot hang, nor fill with memory.

The environment bounds what it can (shared/templating.py: loop, output, namespace, range
and filter-size limits), but a filter can still be handed work far past them (`replace`
with a long replacement over a long value, a chain of them...), and a render runs in C for
most of that work, where no Python-level check can interrupt it. So the worker renders in
a few child processes (`RENDER_PROCESSES`), each with:

- a CPU-time limit per message: `setitimer(ITIMER_PROF)`, whose SIGPROF raises out of the
  render when the message has used `CPU_LIMIT_S` of CPU (the kernel counts it); the child
  reports it and exits. A render stuck in one long C call, where no Python handler runs, is
  ended by `RLIMIT_CPU` (SIGXCPU) a little later, set afresh before each message;
- an address-space limit (`RLIMIT_AS`, `MEMORY_LIMIT_MB` above its size once started):
  an allocation past it fails with MemoryError, reported, then the child exits;
- a wall-clock deadline (`WALL_LIMIT_S`), for a child starved or stuck otherwise: killed.

A child that ended is replaced; the message it was rendering fails with the reason (and is
never sent); the messages queued behind it go to the new child. The worker's event loop
only writes and reads pipes, so lease renewal and other messages carry on meanwhile.

Protocol: frames of a 4-byte big-endian length and a pickle, in order both ways (a job is
the channel's kind, the `Draft` and the fallback domain; `worker.render.render` dispatches
by kind): a child renders one job at a time, so the first job without a reply is the one it
was on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import pickle
import resource
import signal
import struct
import sys
import time
from typing import Any, BinaryIO

import structlog

from shared import errors
from shared.domain import Channel
from worker import render
from worker.channels.base import Draft, Rendered

log = structlog.get_logger("tidings.render")

RENDER_PROCESSES = 2
CPU_LIMIT_S = 2.0
MEMORY_LIMIT_MB = 256
WALL_LIMIT_S = 15.0
_WATCH_EVERY_S = 0.25
_HEADER = struct.Struct(">I")


class _Job:
    __slots__ = ("draft", "fallback_domain", "future", "kind", "started")

    def __init__(self, kind: Channel, draft: Draft, fallback_domain: str, future: asyncio.Future[Any]) -> None:
        self.kind = kind
        self.draft = draft
        self.fallback_domain = fallback_domain
        self.future = future
        self.started = 0.0  # when the child began on it (monotonic); 0: not yet


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.jobs: collections.deque[_Job] = collections.deque()
        self.killed_for: str | None = None
        self.reader: asyncio.Task[None] | None = None


class RenderPool:
    """Renders through `RENDER_PROCESSES` children, started on first use."""

    def __init__(self, processes: int = RENDER_PROCESSES) -> None:
        self.processes = max(1, processes)
        self._children: list[_Child] = []
        self._starting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    async def render(self, kind: Channel, draft: Draft, *, fallback_domain: str) -> Rendered:
        """What `worker.render.render` makes of `draft`, made in a child; raises
        `errors.ValidationFailed` with the reason when it cannot be (or the child gave up).

        A template bounded by construction (only output tags with filters that cannot amplify)
        is rendered here, in the worker: it cannot spin nor fill memory, and a round trip to a
        child would cost more than the render (measured in the same bench, P2 0.325 -> 0.338, P7 0.224 -> 0.255)."""
        if render.bounded_by_construction(kind, draft.body):
            return render.render(kind, draft, fallback_domain=fallback_domain)
        await self._ensure_started()
        # Plain dicts: what the claim handed over may be any mapping, and this one is pickled.
        draft = dataclasses.replace(draft, body=dict(draft.body), variables=dict(draft.variables))
        job = _Job(kind, draft, fallback_domain, asyncio.get_running_loop().create_future())
        self._send(job)
        result: Rendered = await job.future
        return result

    async def _ensure_started(self) -> None:
        if len(self._children) >= self.processes:
            return
        if self._closed:
            raise RuntimeError("the render pool is closed")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            while len(self._children) < self.processes:
                self._children.append(await self._spawn())
            if self._watchdog is None:
                self._watchdog = asyncio.create_task(self._watch())

    async def _spawn(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker.render_sandbox",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        child = _Child(proc)
        child.reader = asyncio.create_task(self._read(child))
        return child

    def _send(self, job: _Job) -> None:
        child = min(self._children, key=lambda c: len(c.jobs))
        if not child.jobs:
            job.started = time.monotonic()
        child.jobs.append(job)
        payload = pickle.dumps((job.kind, job.draft, job.fallback_domain), protocol=pickle.HIGHEST_PROTOCOL)
        assert child.proc.stdin is not None
        child.proc.stdin.write(_HEADER.pack(len(payload)) + payload)

    async def _read(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        stdout = child.proc.stdout
        reported: str | None = None
        try:
            while True:
                (size,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
                status, value = pickle.loads(await stdout.readexactly(size))
                job = child.jobs.popleft()
                if child.jobs:
                    child.jobs[0].started = time.monotonic()
                if status == "ok":
                    _settle(job, result=value)
                elif status == "invalid":
                    _settle(job, error=errors.ValidationFailed(value))
                elif status == "fatal":  # the child stops after this reply (out of memory)
                    reported = value
                    _settle(job, error=errors.ValidationFailed(value))
                else:
                    _settle(job, error=RuntimeError(value))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child is gone
        except asyncio.CancelledError:
            return
        await self._replace(child, reported)

    async def _replace(self, child: _Child, reported: str | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()
        returncode = await child.proc.wait()
        if child in self._children:
            self._children.remove(child)
        pending = list(child.jobs)
        child.jobs.clear()
        if pending and reported is None:
            # The first job without a reply is the one the child was rendering.
            culprit = pending.pop(0)
            reason = _why_ended(returncode, child.killed_for)
            log.warning("render_stopped", reason=reason, returncode=returncode)
            _settle(culprit, error=errors.ValidationFailed(reason))
        if self._closed:
            for job in pending:
                _settle(job, error=RuntimeError("the render pool was closed"))
            return
        try:
            self._children.append(await self._spawn())
        except Exception as exc:
            for job in pending:
                _settle(job, error=exc)
            raise
        for job in pending:
            self._send(job)

    async def _watch(self) -> None:
        """Kill a child whose current job has run past the wall-clock deadline."""
        while True:
            await asyncio.sleep(_WATCH_EVERY_S)
            now = time.monotonic()
            for child in list(self._children):
                if child.jobs and child.jobs[0].started and now - child.jobs[0].started > WALL_LIMIT_S:
                    child.killed_for = f"rendering stopped: took longer than {WALL_LIMIT_S:g} s"
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for child in list(self._children):
            if child.reader is not None:
                child.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.reader
            if child.proc.stdin is not None:
                child.proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()
            for job in child.jobs:
                _settle(job, error=RuntimeError("the render pool was closed"))
        self._children.clear()


def _settle(job: _Job, *, result: Any = None, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


def _why_ended(returncode: int, killed_for: str | None) -> str:
    if killed_for is not None:
        return killed_for
    if returncode in (-signal.SIGPROF, -signal.SIGXCPU):
        return f"rendering stopped: it used more than {CPU_LIMIT_S:g} s of CPU"
    if returncode == -signal.SIGKILL:
        # Not ours: the kernel's OOM killer, most likely.
        return "rendering stopped: the render process was killed (out of memory?)"
    return f"rendering stopped: the render process ended unexpectedly (exit status {returncode})"


# ---- the child ----

_OUT_OF_MEMORY = f"rendering stopped: it needed more than {MEMORY_LIMIT_MB} MB of memory"
_OUT_OF_CPU = f"rendering stopped: it used more than {CPU_LIMIT_S:g} s of CPU"
# Slack of the backstop over the per-message limit: the handler normally ends the render first.
_CPU_BACKSTOP_SLACK_S = 2


class _CpuExceeded(BaseException):
    """Raised by the SIGPROF handler; a BaseException, so that no `except Exception` in a
    template engine or filter can swallow it."""


def _on_cpu_limit(signum: int, frame: object) -> None:
    raise _CpuExceeded


def _arm_cpu_backstop() -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft_s = int(usage.ru_utime + usage.ru_stime + CPU_LIMIT_S) + _CPU_BACKSTOP_SLACK_S
    resource.setrlimit(resource.RLIMIT_CPU, (soft_s, resource.RLIM_INFINITY))


def _limit_memory() -> None:
    with open("/proc/self/status") as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = size_kb * 1024 + MEMORY_LIMIT_MB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    # The CPU limit: SIGPROF raises out of whatever Python code is rendering, and the child
    # says why before it exits; RLIMIT_CPU (SIGXCPU, which ends the process) is the backstop for
    # a long C call during which no Python handler can run.
    signal.signal(signal.SIGPROF, _on_cpu_limit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the worker, which stops us
    _limit_memory()
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the worker closed the pipe, or died
        (size,) = _HEADER.unpack(header)
        kind, draft, fallback_domain = pickle.loads(stdin.read(size))
        fatal = False
        _arm_cpu_backstop()
        signal.setitimer(signal.ITIMER_PROF, CPU_LIMIT_S)
        try:
            reply: tuple[str, Any] = ("ok", render.render(kind, draft, fallback_domain=fallback_domain))
        except errors.ValidationFailed as exc:
            reply = ("invalid", exc.message)
        except MemoryError:
            reply, fatal = ("fatal", _OUT_OF_MEMORY), True
        except _CpuExceeded:
            reply, fatal = ("fatal", _OUT_OF_CPU), True
        except Exception as exc:
            reply = ("bug", f"{type(exc).__name__}: {exc}")
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        try:
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            payload, fatal = pickle.dumps(("fatal", _OUT_OF_MEMORY)), True
        stdout.write(_HEADER.pack(len(payload)) + payload)
        stdout.flush()
        if fatal:
            return  # a process that ran out of memory is not trusted with the next message


if __name__ == "__main__":
    # Replies go to the real stdout; anything printed by accident goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, out)
