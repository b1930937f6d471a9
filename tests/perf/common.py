"""What the benchmark's processes share: the bench templates and bodies, loopback checks,
child processes that die with the driver, small statistics, and the driver's log line.

Every script in this folder is run as `python tests/perf/<script>.py`, so this module is
imported as `common` (the folder is the script's `sys.path[0]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"

# The bench's one email template (the same shape `tidings dev` uses for its demo) and the
# variables every trigger carries.
EMAIL_TEMPLATE: dict[str, Any] = {
    "channel": "email",
    "from_email": "otp@bench.tidings.test",
    "from_name": "Tidings bench",
    "subject": "Your code is {{ otp }}",
    "html_body": "<p>Hi {{ name | default: 'there' }},</p><p>Your one-time passcode is <strong>{{ otp }}</strong>.</p>",
    "preheader": "Your code: {{ otp }}",
}
WHATSAPP_TEMPLATE: dict[str, Any] = {
    "channel": "whatsapp",
    "template_name": "otp_code",
    "language": "en_US",
    "category": "authentication",
    "body_parameters": ["{{ otp }}"],
    "button_parameters": ["{{ otp }}"],
}
BROADCAST_VARIABLES = [{"name": "otp", "default": None}]

# Fixed credentials: they only ever meet the bench's own sandbox on loopback.
WA_ACCESS_TOKEN = "bench-access-token"
WA_PHONE_NUMBER_ID = "100000000000777"

# How many distinct recipients the load cycles through (a new contact per request would
# measure contact creation, not a trigger; one would hide per-recipient work).
RECIPIENTS = 100


def recipient_email(i: int) -> str:
    return f"bench-{i % RECIPIENTS}@example.com"


def recipient_phone(i: int) -> str:
    # +1 415 2xx xxxx: valid to phonenumbers, and no suffix the sandbox treats as an error trigger.
    i %= RECIPIENTS
    return f"+1415{200 + i % 700:03d}{1000 + i:04d}"


def otp(i: int) -> str:
    return f"{(i * 7919) % 1_000_000:06d}"


def send_body(i: int, *, background: bool) -> dict[str, Any]:
    return {"email": recipient_email(i), "variables": {"otp": otp(i)}, "background": background}


def batch_body(i: int, size: int) -> dict[str, Any]:
    """P1b's body: `size` triggers (no `background`: a batch is always), from recipient i on."""
    return {"items": [{"email": recipient_email(n), "variables": {"otp": otp(n)}} for n in range(i, i + size)]}


def log(message: str) -> None:
    """The driver's progress line, on stderr (stdout ends with the result)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Loopback only


def require_loopback(url_or_host: str) -> None:
    """Refuse any target that is not this machine's loopback: the bench never sends elsewhere."""
    host = urllib.parse.urlsplit(url_or_host).hostname if "://" in url_or_host else url_or_host
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host or "").is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing to send load to {url_or_host!r}: the benchmark targets loopback only")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_port(port: int, timeout_s: float, proc: asyncio.subprocess.Process | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout_s} s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


# --------------------------------------------------------------------------------------
# Child processes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: the child gets SIGKILL when the driver dies, however it dies (even SIGKILL), so a
    # killed benchmark leaves no load generator or server behind.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Child:
    """One long-running child process in a session of its own, its output in a log file.

    A session of its own: a Ctrl-C at the terminal reaches only the driver, which then stops
    the children itself, in order. `stop()` signals the whole process group.
    """

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    async def stop(self, timeout_s: float = 25.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                _killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        # Anything the process left in its group (it should leave nothing).
        _killpg(proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def run_json(
    argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None, log_path: Path | None = None
) -> dict[str, Any]:
    """Run a program that prints one JSON object as its last stdout line; bounded in time."""
    log = log_path.open("ab") if log_path is not None else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log if log is not None else asyncio.subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        if log is not None:
            log.close()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:  # a timeout, or the driver being cancelled: the child goes too
        _killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await proc.wait()
        raise
    text = out.decode(errors="replace")
    if log_path is not None:
        with log_path.open("a") as f:
            f.write(text)
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"{argv[0]} (exit {proc.returncode}) printed no JSON result; see {log_path}")


async def until_signalled() -> None:
    """Wait for SIGTERM or SIGINT (how the driver stops a server it started)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --------------------------------------------------------------------------------------
# Numbers


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, by linear interpolation."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return float(sorted_values[lo])
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo))


def slope_per_min(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per minute (0 with fewer than 3)."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mx) * (v - my) for t, v in samples)
    return cov / var * 60.0


def run(coro: Coroutine[Any, Any, T], loop_name: str = "uvloop") -> T:
    """Run `coro` on uvloop (`uvloop`) or on the stdlib event loop (`asyncio`)."""
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)
    if loop_name != "asyncio":
        coro.close()
        raise SystemExit(f"unknown loop {loop_name!r}: uvloop or asyncio")
    return asyncio.run(coro)
