"""The far ends the bench delivers to, each in a process of its own (on loopback only).

    python tests/perf/sinks.py smtp --port 2599       # aiosmtpd, accepts and discards (fallback sink)
    python tests/perf/sinks.py whatsapp --port 8091   # the Cloud API sandbox, memory bounded

The SMTP fallback is for machines without Postfix's `smtp-sink` (the bench sink: a C
program made for this); a Python sink may be what limits P2, and the result says which ran.

The sandbox keeps no per-request record (`record_requests=False`) and at most `--keep`
messages (`keep_max`), and sends no webhooks, so its memory stays flat however many
messages a run sends; it prints its RSS at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import common


class _Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: discarded"


async def smtp_sink(port: int) -> None:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = _Discard()

    def protocol() -> SMTP:
        # An explicit hostname: the default, socket.getfqdn(), can block on DNS for seconds.
        return SMTP(handler, hostname="bench-sink", ident="bench sink", enable_SMTPUTF8=True)

    server = await loop.create_server(protocol, common.LOOPBACK, port, backlog=1024)
    try:
        await common.until_signalled()
    finally:
        server.close()


async def whatsapp(port: int, keep: int) -> None:
    from tidings.dev.whatsapp_sandbox import start_sandbox

    runner, base_url, sandbox = await start_sandbox(
        common.LOOPBACK,
        port,
        access_token=common.WA_ACCESS_TOKEN,
        phone_number_id=common.WA_PHONE_NUMBER_ID,
        record_requests=False,
        keep_max=keep,
    )
    print(base_url, flush=True)
    try:
        await common.until_signalled()
    finally:
        import psutil

        rss_mb = psutil.Process().memory_info().rss / 2**20
        print(
            f"sandbox: {sandbox.accepted_count} accepted, {sandbox.request_count} requests, "
            f"{len(sandbox.messages)} kept, rss {rss_mb:.1f} MB",
            file=sys.stderr,
            flush=True,
        )
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["smtp", "whatsapp"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keep", type=int, default=1000, help="sandbox: messages kept for inspection")
    args = parser.parse_args()
    if args.kind == "smtp":
        common.run(smtp_sink(args.port))
    else:
        common.run(whatsapp(args.port, args.keep))


if __name__ == "__main__":
    main()
