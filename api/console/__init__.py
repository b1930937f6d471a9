"""The console: the operator's view of one org in a browser, at /console/.

Server-rendered pages (aiohttp-jinja2, autoescaped) over the same domain functions the JSON
APIs call; forms posted to the server, each with a CSRF token; htmx (vendored, no build step)
only refreshes the live parts of a broadcast's page. See docs/console.md.
"""

from api.console.setup import setup

__all__ = ["setup"]
