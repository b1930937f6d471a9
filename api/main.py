"""The api process: `tidings api` starts here, as `tidings worker` starts in worker/main.py.

One process, or `processes` sharing the port (SO_REUSEPORT), forked before any event loop or
connection exists so that each builds its own; the app itself is built in api/app.py and
served by api/server.py (header and body deadlines for slow clients).
"""

from __future__ import annotations

import structlog
import uvloop

from api import processes as api_processes
from api import server
from api.app import create_app
from shared.config import Settings
from shared.runtime import tune_gc


def run(settings: Settings, *, host: str | None = None, port: int | None = None, processes: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT (each child process too)."""
    warning = settings.public_base_warning()
    if warning:  # once, before the processes fork
        structlog.get_logger("tidings.api").warning("public_base_url_not_https", detail=warning)
    count = processes or settings.api_processes
    children = api_processes.fork(count)
    tune_gc()
    uvloop.install()
    app = create_app(settings)
    api_processes.stop_children_on_shutdown(app, children)
    try:
        server.run(app, settings, host or settings.host, port or settings.port, reuse_port=count > 1)
    finally:
        api_processes.reap(children)
