"""`tidings dev`: the whole stack on one machine that has nothing but Python.

Postgres and Redis come from DATABASE_URL / REDIS_URL, or are embedded servers kept under
`./.data/` and reused across runs. Email goes to a local inbox with a web page, WhatsApp to
a local Cloud API sandbox that calls our webhook back. Migrations are applied; a demo org,
key and active one-time-passcode broadcast (an email and a WhatsApp template) are made once
and remembered in `./.data/dev.json`; then one API, one worker and one bounce server
(`tidings bounces`) process run until Ctrl-C, which stops everything in reverse order. The
printed curl sends to both channels at once.

Emails carry VERP envelope senders under DEV_BOUNCE_DOMAIN, and the inbox's Bounce and Complain
buttons mail a real DSN or ARF report to the bounce server, as a bounce domain's MX would
receive it. A local webhook receiver gets the demo org's signed events: the stack registers an
endpoint for it through the api (when the api has webhook routes) and hands it the secret.

Everything listens on 127.0.0.1. Knobs (environment): PORT (API, 8080), DEV_SMTP_PORT (2525),
DEV_INBOX_PORT (8025), DEV_WHATSAPP_PORT (8090), DEV_BOUNCE_PORT (2526), DEV_WEBHOOKS_PORT
(8091), DEV_DATA_DIR (./.data), PUBLIC_BASE_URL, LOG_LEVEL, and DATABASE_URL / REDIS_URL to
use servers of your own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import structlog

from shared import keys, logs, orgs
from shared.migrate import migrate
from tidings.dev.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis, create_database
from tidings.dev.inbox import start_inbox
from tidings.dev.reports import BounceTarget
from tidings.dev.webhook_receiver import PATH as WEBHOOK_RECEIVER_PATH
from tidings.dev.webhook_receiver import WebhookReceiver, start_receiver
from tidings.dev.whatsapp_sandbox import start_sandbox

log = structlog.get_logger("tidings.dev")

# Fixed, public dev credentials: they only ever meet the local sandbox.
DEV_WHATSAPP_ACCESS_TOKEN = "dev-access-token"
DEV_WHATSAPP_PHONE_NUMBER_ID = "100000000000001"
DEV_WHATSAPP_APP_SECRET = "dev-app-secret"
DEV_WHATSAPP_VERIFY_TOKEN = "dev-verify-token"
# The bounce domain of the dev stack: `.localhost` names never leave the machine (RFC 6761), and
# the inbox routes reports for it straight to the bounce server, as the domain's MX would.
DEV_BOUNCE_DOMAIN = "bounces.tidings.localhost"
DEV_BOUNCE_SECRET = "dev-bounce-secret-local-only"

DEMO_ORG_NAME = "Demo"
DEMO_SCOPES = ["admin", "read", "write"]
DEMO_BROADCAST: dict[str, Any] = {
    "name": "One-time passcode",
    "type": "transactional",
    "variables": [{"name": "otp", "default": None}],
}
DEMO_EMAIL_TEMPLATE: dict[str, Any] = {
    "channel": "email",
    "from_email": "otp@tidings.local",
    "from_name": "Tidings demo",
    "subject": "Your code is {{ otp }}",
    "html_body": "<p>Hi {{ name | default: 'there' }},</p><p>Your one-time passcode is <strong>{{ otp }}</strong>.</p>",
    "preheader": "Your code: {{ otp }}",
}
# The sandbox accepts any template name but two (its failure triggers); an authentication
# template carries the code in its body and in its copy-code button, as Meta's do.
DEMO_WHATSAPP_TEMPLATE: dict[str, Any] = {
    "channel": "whatsapp",
    "template_name": "otp_code",
    "language": "en_US",
    "category": "authentication",
    "body_parameters": ["{{ otp }}"],
    "button_parameters": ["{{ otp }}"],
}
DEMO_TEMPLATES = (DEMO_EMAIL_TEMPLATE, DEMO_WHATSAPP_TEMPLATE)
# Both channels at once: the email lands in the inbox, the WhatsApp message in the sandbox.
# +1 415 555 01xx numbers are reserved for fiction, yet valid to the API's phone check.
DEMO_SEND_BODY: dict[str, Any] = {"email": "you@example.com", "phone": "+14155550100", "variables": {"otp": "123456"}}

READY_TIMEOUT_S = 60.0
CHILD_STOP_TIMEOUT_S = 20.0  # the API drains for up to 15 s (its shutdown_timeout)


class DevError(Exception):
    """A start-up problem with a plain explanation: reported in one line, no traceback."""


# Everything `tidings dev` serves listens on loopback only: it is a developer's machine, and
# HOST is not read because some shells export it as the machine's name.
LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True, slots=True)
class DevConfig:
    data_dir: Path
    api_port: int
    smtp_port: int
    inbox_port: int
    whatsapp_port: int
    database_url: str
    redis_url: str
    public_base_url: str
    bounce_port: int = 2526
    webhooks_port: int = 8091

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str], cwd: Path) -> DevConfig:
        def port(name: str, default: int) -> int:
            raw = env.get(name) or str(default)
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise DevError(f"{name}={raw!r} is not a port number")
            return int(raw)

        api_port = port("PORT", 8080)
        return cls(
            data_dir=Path(env.get("DEV_DATA_DIR") or cwd / ".data").resolve(),
            api_port=api_port,
            smtp_port=port("DEV_SMTP_PORT", 2525),
            inbox_port=port("DEV_INBOX_PORT", 8025),
            whatsapp_port=port("DEV_WHATSAPP_PORT", 8090),
            bounce_port=port("DEV_BOUNCE_PORT", 2526),
            webhooks_port=port("DEV_WEBHOOKS_PORT", 8091),
            database_url=env.get("DATABASE_URL", ""),
            redis_url=env.get("REDIS_URL", ""),
            public_base_url=env.get("PUBLIC_BASE_URL") or f"http://{LOOPBACK}:{api_port}",
        )


@dataclasses.dataclass(slots=True)
class DevState:
    """What re-runs reuse, in `<data>/dev.json`. The key is kept in clear: it is a local demo key."""

    org_id: str | None = None
    api_key: str | None = None
    broadcast_id: str | None = None
    # SECRET_KEY of the local stack when the environment sets none: made once and kept, so the
    # sending domains registered in one run still open in the next.
    secret_key: str | None = None
    # The demo org's endpoint for the local webhook receiver, and its secret (a local one too).
    webhook_endpoint_id: str | None = None
    webhook_secret: str | None = None

    @classmethod
    def load(cls, path: Path) -> DevState:
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields and isinstance(v, str)})

    def save(self, path: Path) -> None:
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        partial.chmod(0o600)  # it holds an admin key
        partial.replace(path)


async def run_dev(env: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> int:
    """Run the dev stack until SIGINT, SIGTERM or SIGHUP; returns the process exit code."""
    env = dict(os.environ if env is None else env)
    logs.configure(env.get("LOG_LEVEL") or "INFO", "console")
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    starting = True

    def on_signal(signame: str) -> None:
        if stopping.is_set():
            log.info("dev_already_stopping")
            return
        log.info("dev_stopping", signal=signame)
        stopping.set()
        if starting:
            main.cancel()  # abandon the start-up; what did start is stopped on the way out

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in handled:
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                config = DevConfig.from_env(env, cwd or Path.cwd())
                children = await _start(config, env, stack)
            except asyncio.CancelledError:
                if not stopping.is_set():
                    raise
                main.uncancel()  # our own cancellation, now handled: the clean-up must run uncancelled
                return 0
            except (DevError, EmbeddedError, OSError, asyncpg.PostgresError) as exc:
                # Causes outside the code (a busy port, an unreachable or refusing server): one line.
                log.error("dev_failed", error=str(exc) or type(exc).__name__)
                return 1
            finally:
                # From here on a signal only asks to stop; it must never cancel the clean-up.
                starting = False
            return await _supervise(children, stopping)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        log.info("dev_stopped")


async def _start(config: DevConfig, env: dict[str, str], stack: contextlib.AsyncExitStack) -> list[_Child]:
    """Start everything, registering each part's stop on `stack` as soon as it runs."""
    # Fail in a second on a busy port rather than after Postgres has started.
    for name, port in (
        ("PORT", config.api_port),
        ("DEV_SMTP_PORT", config.smtp_port),
        ("DEV_INBOX_PORT", config.inbox_port),
        ("DEV_WHATSAPP_PORT", config.whatsapp_port),
        ("DEV_BOUNCE_PORT", config.bounce_port),
        ("DEV_WEBHOOKS_PORT", config.webhooks_port),
    ):
        _ensure_port_free(LOOPBACK, port, name)
    config.data_dir.mkdir(parents=True, exist_ok=True)

    database_url = config.database_url or await _embedded_postgres(config, stack)
    redis_url = config.redis_url or await _embedded_redis(config, stack)
    await migrate(database_url)

    state_path = config.data_dir / "dev.json"
    state = await _ensure_org_and_key(database_url, DevState.load(state_path))
    if not env.get("SECRET_KEY") and not state.secret_key:
        state.secret_key = secrets.token_hex(32)
    state.save(state_path)

    inbox = await start_inbox(
        LOOPBACK,
        config.smtp_port,
        LOOPBACK,
        config.inbox_port,
        config.data_dir,
        bounce_target=BounceTarget(LOOPBACK, config.bounce_port, DEV_BOUNCE_DOMAIN, DEV_BOUNCE_SECRET),
    )
    stack.push_async_callback(inbox.close)
    receiver_runner, receiver_url, receiver = await start_receiver(LOOPBACK, config.webhooks_port)
    stack.push_async_callback(receiver_runner.cleanup)
    sandbox_runner, sandbox_url, _ = await start_sandbox(
        LOOPBACK,
        config.whatsapp_port,
        access_token=DEV_WHATSAPP_ACCESS_TOKEN,
        webhook_url=f"{config.api_url}/webhooks/whatsapp",
        app_secret=DEV_WHATSAPP_APP_SECRET,
        phone_number_id=DEV_WHATSAPP_PHONE_NUMBER_ID,
    )
    stack.push_async_callback(sandbox_runner.cleanup)

    child_env = env | {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HOST": LOOPBACK,
        "PORT": str(config.api_port),
        "PUBLIC_BASE_URL": config.public_base_url,
        "SMTP_HOST": LOOPBACK,
        "SMTP_PORT": str(inbox.smtp_port),
        "SMTP_TLS": "none",
        # The inbox takes no AUTH; credentials meant for a real relay must not be tried on it.
        "SMTP_USERNAME": "",
        "SMTP_PASSWORD": "",
        "SMTP_RELAYS": "",  # relays would replace the inbox
        "WHATSAPP_API_BASE_URL": sandbox_url,
        "WHATSAPP_ACCESS_TOKEN": DEV_WHATSAPP_ACCESS_TOKEN,
        "WHATSAPP_PHONE_NUMBER_ID": DEV_WHATSAPP_PHONE_NUMBER_ID,
        "WHATSAPP_APP_SECRET": DEV_WHATSAPP_APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": DEV_WHATSAPP_VERIFY_TOKEN,
        # VERP envelope senders, and `tidings bounces` reading the reports the inbox sends back.
        "BOUNCE_DOMAIN": DEV_BOUNCE_DOMAIN,
        "BOUNCE_SECRET": DEV_BOUNCE_SECRET,
        "BOUNCE_HOST": LOOPBACK,
        "BOUNCE_PORT": str(config.bounce_port),
        # The webhook receiver listens on 127.0.0.1, which production refuses (no SSRF).
        "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        "LOG_FORMAT": "console",
        "PYTHONUNBUFFERED": "1",
        "TIDINGS_DEV": "1",  # http://127.0.0.1 links are right here: no https warning
        "SECRET_KEY": env.get("SECRET_KEY") or state.secret_key or "",
    }
    children: list[_Child] = []
    stack.push_async_callback(_stop_children, children)
    for role in ("api", "worker", "bounces"):
        children.append(await _Child.spawn(role, child_env))
    await _wait_ready(config.api_url, children, smtp_ports=[config.bounce_port])

    async with aiohttp.ClientSession(
        config.api_url, headers={"Authorization": f"Bearer {state.api_key}"}, raise_for_status=False
    ) as http:
        state.broadcast_id = await ensure_demo_broadcast(http, state)
        await ensure_webhook_endpoint(http, state, receiver_url + WEBHOOK_RECEIVER_PATH, receiver)
    state.save(state_path)

    print(
        banner(config, state, inbox.web_url, sandbox_url, database_url, redis_url, webhooks=(receiver_url, receiver)),
        flush=True,
    )
    return children


async def _supervise(children: list[_Child], stopping: asyncio.Event) -> int:
    """Wait for a stop request (exit code 0) or for a process to die on its own (exit code 1)."""
    exits = {asyncio.ensure_future(child.process.wait()): child for child in children}
    stop = asyncio.ensure_future(stopping.wait())
    done, pending = await asyncio.wait({stop, *exits}, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if stop in done:
        return 0
    for future in done:
        child = exits[future]
        log.error("dev_process_exited", process=child.role, code=child.process.returncode)
    return 1


def _ensure_port_free(host: str, port: int, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves will: a port in TIME_WAIT is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DevError(f"{host}:{port} is not available ({exc.strerror}); set {setting} to another port") from None


async def _embedded_postgres(config: DevConfig, stack: contextlib.AsyncExitStack) -> str:
    log.info("dev_starting_postgres", data_dir=str(config.data_dir / "postgres"))
    server = EmbeddedPostgres(config.data_dir / "postgres")
    stack.push_async_callback(server.stop)
    # A database of our own rather than the server's maintenance database `postgres`.
    return await create_database(await server.start(), "tidings", exist_ok=True)


async def _embedded_redis(config: DevConfig, stack: contextlib.AsyncExitStack) -> str:
    server = EmbeddedRedis(config.data_dir / "redis")
    stack.push_async_callback(server.stop)
    return await server.start()


async def _ensure_org_and_key(database_url: str, state: DevState) -> DevState:
    """Reuse the remembered org and key while the database still knows them; else make new ones."""
    conn = await asyncpg.connect(database_url)
    try:
        if state.org_id and state.api_key:
            found = await orgs.find_key(conn, keys.hash_key(state.api_key))
            if found is not None and str(found["org_id"]) == state.org_id:
                return state
        org_id = await orgs.create_org(conn, DEMO_ORG_NAME)
        key = await orgs.create_key(conn, org_id, DEMO_SCOPES)
    finally:
        await conn.close()
    log.info("dev_demo_org_created", org_id=str(org_id))
    # A new org has none of the old one's broadcasts.
    return DevState(org_id=str(org_id), api_key=key, broadcast_id=None)


async def ensure_demo_broadcast(http: aiohttp.ClientSession, state: DevState) -> str:
    """The id of an active demo broadcast: the remembered one if it still exists, else a new one."""
    base = f"/orgs/{state.org_id}/broadcasts"
    if state.broadcast_id:
        async with http.get(f"{base}/{state.broadcast_id}") as r:
            if r.status == 200:
                broadcast = await r.json()
                # A broadcast made by an older `tidings dev` may lack a channel's template.
                await _add_missing_templates(http, f"{base}/{state.broadcast_id}", broadcast)
                status = broadcast["status"]
                if status == "active":
                    return state.broadcast_id
                # Someone paused or drafted it from the API; put it back in service.
                await _call(
                    http,
                    "POST",
                    f"{base}/{state.broadcast_id}/" + ("resume" if status == "paused" else "activate"),
                    expect=200,
                )
                return state.broadcast_id
            if r.status != 404:
                raise DevError(f"GET {base}/{state.broadcast_id} answered {r.status}: {await r.text()}")
    broadcast = await _call(http, "POST", base, DEMO_BROADCAST, expect=201)
    broadcast_id = str(broadcast["id"])
    await _add_missing_templates(http, f"{base}/{broadcast_id}", broadcast)
    await _call(http, "POST", f"{base}/{broadcast_id}/activate", expect=200)
    log.info("dev_demo_broadcast_created", broadcast_id=broadcast_id)
    return broadcast_id


WEBHOOK_DESCRIPTION = "tidings dev: the local webhook receiver"


async def ensure_webhook_endpoint(
    http: aiohttp.ClientSession, state: DevState, url: str, receiver: WebhookReceiver
) -> bool:
    """Make sure the demo org has an endpoint for the local receiver and give the receiver its
    secret: the remembered endpoint if the api still has it (its URL put right if a port
    changed), else a new one. Webhooks are a side show of the dev stack: when the api has no
    webhook routes (404) or refuses the endpoint, one log line says so, the receiver's page
    too, and the stack runs on (False)."""
    base = f"/orgs/{state.org_id}/webhooks"

    def unavailable(reason: str, note: str) -> bool:
        log.info("dev_webhooks_unavailable", reason=reason)
        receiver.note = note
        state.webhook_endpoint_id = state.webhook_secret = None
        return False

    if state.webhook_endpoint_id and state.webhook_secret:
        path = f"{base}/{state.webhook_endpoint_id}"
        async with http.get(path) as r:
            found = r.status == 200
            endpoint = await r.json() if found else None
        if endpoint is not None:
            if endpoint.get("url") != url or not endpoint.get("enabled", True):
                async with http.patch(path, json={"url": url, "enabled": True}) as r:
                    if r.status != 200:
                        return unavailable(
                            f"PATCH {path} answered {r.status}: {await r.text()}",
                            f"The api refused to point endpoint {state.webhook_endpoint_id} here ({r.status}).",
                        )
            receiver.set_secret(state.webhook_secret, f"Endpoint {state.webhook_endpoint_id} of the demo org.")
            return True
    async with http.post(base, json={"url": url, "description": WEBHOOK_DESCRIPTION}) as r:
        if r.status in (404, 405):
            # An api without outbound webhooks: the receiver runs and waits, nothing more.
            return unavailable(
                f"POST {base} answered {r.status}",
                "The api has no webhook routes, so no endpoint is registered and nothing will arrive.",
            )
        if r.status != 201:
            return unavailable(
                f"POST {base} answered {r.status}: {await r.text()}",
                f"The api refused to register this receiver ({r.status}); see the dev stack's log.",
            )
        endpoint = await r.json()
    state.webhook_endpoint_id, state.webhook_secret = str(endpoint["id"]), str(endpoint["secret"])
    receiver.set_secret(state.webhook_secret, f"Endpoint {state.webhook_endpoint_id} of the demo org.")
    log.info("dev_webhook_endpoint_created", endpoint_id=state.webhook_endpoint_id, url=url)
    return True


async def _add_missing_templates(http: aiohttp.ClientSession, path: str, broadcast: dict[str, Any]) -> None:
    """Add each demo template whose channel the broadcast has no template for."""
    present = {t["channel"] for t in broadcast.get("templates", [])}
    for template in DEMO_TEMPLATES:
        if template["channel"] not in present:
            await _call(http, "POST", f"{path}/templates", template, expect=201)


async def _call(
    http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None = None, *, expect: int
) -> dict[str, Any]:
    async with http.request(method, path, json=body) as r:
        if r.status != expect:
            raise DevError(f"{method} {path} answered {r.status}, not {expect}: {await r.text()}")
        data: dict[str, Any] = await r.json()
        return data


async def _wait_ready(api_url: str, children: list[_Child], *, smtp_ports: list[int] | None = None) -> None:
    """Until the api answers /readyz and each of `smtp_ports` on loopback accepts a connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            for child in children:
                if child.process.returncode is not None:
                    raise DevError(
                        f"the {child.role} process exited with code {child.process.returncode} "
                        f"while starting; its log is above"
                    )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{api_url}/readyz") as r:
                    if r.status == 200 and all([await _listening(port) for port in smtp_ports or []]):
                        return
            if loop.time() > deadline:
                raise DevError(f"{api_url}/readyz did not answer 200 within {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class _Child:
    """One `tidings <role>` process, its output relayed line by line with the role in front."""

    def __init__(self, role: str, process: asyncio.subprocess.Process, relay: asyncio.Task[None]) -> None:
        self.role = role
        self.process = process
        self._relay = relay

    @classmethod
    async def spawn(cls, role: str, env: dict[str, str]) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tidings.cli",
            role,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # A session of its own, so a Ctrl-C at the terminal reaches only us and we stop the
            # processes in order (they first, then what they use). Reading their output also
            # means that, were we killed outright, they fail on their next log line and exit.
            start_new_session=True,
            limit=1024 * 1024,
        )
        assert process.stdout is not None
        return cls(role, process, asyncio.create_task(_relay(role, process.stdout)))

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()  # SIGTERM: the API, the worker and the bounce server shut down gracefully
            try:
                await asyncio.wait_for(self.process.wait(), CHILD_STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("dev_process_killed", process=self.role, after_s=CHILD_STOP_TIMEOUT_S)
                self.process.kill()
                await self.process.wait()
        await self._relay  # the rest of its output, up to end of file


async def _relay(role: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{role:<6} | "
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line over the 1 MiB limit: asyncio has dropped it
            line = b"(an overlong line was dropped)\n"
        if not line:
            return
        sys.stderr.write(prefix + line.decode("utf-8", errors="replace"))
        sys.stderr.flush()


async def _stop_children(children: list[_Child]) -> None:
    if children:
        log.info("dev_stopping_processes", processes=[c.role for c in children])
    await asyncio.gather(*(child.stop() for child in children))


def banner(
    config: DevConfig,
    state: DevState,
    inbox_url: str,
    sandbox_url: str,
    database_url: str,
    redis_url: str,
    *,
    webhooks: tuple[str, WebhookReceiver | None] | None = None,
) -> str:
    assert state.api_key and state.org_id and state.broadcast_id
    receiver_url = webhooks[0] if webhooks else f"http://{LOOPBACK}:{config.webhooks_port}"
    receiver = webhooks[1] if webhooks else None
    registered = bool(receiver and receiver.secrets)
    rows = [
        ("API", f"{config.api_url}  (reference at {config.api_url}/docs, OpenAPI at /openapi.json)"),
        ("Console", f"{config.api_url}/console/  (sign in with the API key below)"),
        ("Inbox", f"{inbox_url}  (SMTP on {LOOPBACK}:{config.smtp_port}; Bounce and Complain buttons)"),
        (
            "Bounce server",
            f"smtp://{LOOPBACK}:{config.bounce_port}  (tidings bounces, BOUNCE_DOMAIN {DEV_BOUNCE_DOMAIN})",
        ),
        (
            "Webhooks",
            f"{receiver_url}  ("
            + (
                f"endpoint {state.webhook_endpoint_id}: signed events, verified with standardwebhooks"
                if registered
                else "no endpoint: " + (receiver.note if receiver else "not registered")
            )
            + ")",
        ),
        ("WhatsApp sandbox", f"{sandbox_url}  (status webhooks: sent, delivered, read)"),
        ("Postgres", database_url),
        ("Redis", redis_url),
        ("Org", f"{state.org_id}  ({DEMO_ORG_NAME})"),
        ("API key", f"{state.api_key}  ({', '.join(DEMO_SCOPES)}; kept in {config.data_dir / 'dev.json'})"),
        ("Broadcast", f"{state.broadcast_id}  (One-time passcode, email and WhatsApp)"),
    ]
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
    return (
        f"\ntidings dev is running\n\n{table}\n\n"
        f"Send a one-time passcode by email and by WhatsApp:\n\n  {demo_curl(config, state)}\n\n"
        f"then read the email at {inbox_url} and the WhatsApp message at {sandbox_url}\n"
        f"(each page also lists the addresses and numbers that fail on purpose).\n\n"
        f"Follow each message to its end:\n"
        f"  - the WhatsApp message goes sent, delivered, read within seconds: the sandbox posts Meta's\n"
        f"    status webhooks to tidings (GET /orgs/{state.org_id}/messages/<id> shows each step);\n"
        f"  - press Bounce or Complain beside the email in the inbox: it mails a real DSN or spam\n"
        f"    complaint to the bounce server, and the message becomes bounced or complained;\n"
        f"  - every change arrives as a signed event at {receiver_url}, its signature checked.\n\n"
        f"Ctrl-C stops everything.\n"
    )


def demo_curl(config: DevConfig, state: DevState) -> str:
    """The shell command the banner prints: the demo broadcast's send, to both channels."""
    send_url = f"{config.api_url}/orgs/{state.org_id}/broadcasts/{state.broadcast_id}/send"
    return " \\\n    ".join(
        [
            f"curl -sS -X POST {shlex.quote(send_url)}",
            "-H " + shlex.quote(f"Authorization: Bearer {state.api_key}"),
            "-H 'Content-Type: application/json'",
            "-d " + shlex.quote(orjson.dumps(DEMO_SEND_BODY).decode()),
        ]
    )
