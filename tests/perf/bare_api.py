"""The P1 ceiling: a bare aiohttp app that parses the trigger's JSON body and answers 202.

No authentication, no I/O: the most one aiohttp process on uvloop (as `tidings api` runs)
can answer on this machine with the same load generator. Every POST path is accepted, so
the load generator's script is the same for the ceiling and the figure.

    python tests/perf/bare_api.py --port 8099
"""

from __future__ import annotations

import argparse

import common
import orjson
from aiohttp import web

ACCEPTED = orjson.dumps({"accepted": True})


async def accept(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    if not isinstance(body, dict) or "variables" not in body:
        return web.Response(status=422, body=b'{"error":"bad body"}', content_type="application/json")
    return web.Response(status=202, body=ACCEPTED, content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/{tail:.*}", accept)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, common.LOOPBACK, port).start()
    try:
        await common.until_signalled()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = parser.parse_args()
    common.run(serve(args.port), args.loop)


if __name__ == "__main__":
    main()
