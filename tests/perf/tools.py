"""The bench's external tools: Postfix's `smtp-sink` and `wrk`, else Python stand-ins.

This is the only file of the benchmark that may run `apt-get` (through `sudo -n` when not
root), and only when asked: `BENCH_INSTALL=1` (`install=True`). Otherwise a missing tool is
named in a note and its Python stand-in (`sinks.py smtp`, `loadgen.py closed`) is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from common import log


def _find_smtp_sink() -> str | None:
    found = shutil.which("smtp-sink")
    if found:
        return found
    return "/usr/sbin/smtp-sink" if os.access("/usr/sbin/smtp-sink", os.X_OK) else None


def _apt_install(packages: list[str]) -> None:
    if not shutil.which("apt-get"):
        log(f"warning: apt-get is not available; cannot install {', '.join(packages)}")
        return
    sudo: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            log(f"warning: not root and no sudo; cannot install {', '.join(packages)}")
            return
        sudo = ["sudo", "-n"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {', '.join(packages)} with apt-get (BENCH_INSTALL=1)")
    try:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=True, timeout=600)
        if "postfix" in packages:
            # "No configuration": the package only brings its programs (smtp-sink); no mail server starts.
            subprocess.run(
                [*sudo, "debconf-set-selections"],
                input=b"postfix postfix/main_mailer_type select No configuration\n",
                check=True,
                timeout=60,
            )
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], env=env, check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"warning: installing {', '.join(packages)} failed ({exc}); falling back to Python tools")


def find_tools(*, python_tools: bool, install: bool) -> tuple[str | None, str | None]:
    """(smtp-sink path, wrk path); None where the Python stand-in is used. `install`: try
    apt-get for what is missing (BENCH_INSTALL=1); `python_tools`: the stand-ins, always."""
    if python_tools:
        return None, None
    sink, wrk = _find_smtp_sink(), shutil.which("wrk")
    missing = [pkg for pkg, found in (("postfix", sink), ("wrk", wrk)) if not found]
    if missing and install:
        _apt_install(missing)
        sink, wrk = _find_smtp_sink(), shutil.which("wrk")
    if missing and not install:
        log(f"note: {', '.join(missing)} not installed (BENCH_INSTALL=1 installs them with apt-get)")
    if sink is None:
        log("warning: no smtp-sink; using an aiosmtpd sink, which may itself limit P2")
    if wrk is None:
        log("warning: no wrk; using the Python load generator, which may itself limit P1")
    return sink, wrk


def ensure_iproute2(*, install: bool) -> None:
    """P10's `ip` and `tc` (Debian's iproute2): installed with apt-get when missing, and only
    when asked (BENCH_INSTALL=1); otherwise P10 says it was skipped and why."""
    if install and not (shutil.which("ip") and shutil.which("tc")):
        _apt_install(["iproute2"])
