"""Start-up misconfiguration reads as one line naming the variable, with a non-zero exit:
the real `tidings` commands, run as an operator runs them, with the mistakes operators make."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from typing import Any

import aiohttp
import pytest


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once the socket is closed


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "PUBLIC_", "PORT"))}
    return subprocess.run(
        [sys.executable, "-m", "tidings.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def good_db(database_url: str) -> str:
    return database_url


@pytest.mark.parametrize("command", [["api"], ["worker"], ["send", "--org", "x", "--broadcast", "y"]])
def test_a_missing_redis_url_is_one_line(command: list[str], good_db: str) -> None:
    line = one_line(run(command, DATABASE_URL=good_db))
    assert "REDIS_URL is not set" in line


@pytest.mark.parametrize("command", [["api"], ["worker"], ["migrate"]])
def test_an_unreachable_database_is_one_line(command: list[str], redis_url: str) -> None:
    port = closed_port()
    url = f"postgresql://tidings:s3cret-password@127.0.0.1:{port}/tidings"
    line = one_line(run(command, DATABASE_URL=url, REDIS_URL=redis_url))
    assert line.startswith("configuration error: DATABASE_URL")
    assert f"127.0.0.1:{port}" in line and "connection refused" in line
    assert "s3cret-password" not in line  # the password is never printed


def test_a_database_that_does_not_exist_is_named(admin_dsn: str, redis_url: str) -> None:
    url = admin_dsn.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:8]}"
    line = one_line(run(["worker"], DATABASE_URL=url, REDIS_URL=redis_url))
    assert "DATABASE_URL" in line and "no such database" in line


def test_an_unknown_database_host_is_named(redis_url: str) -> None:
    line = one_line(run(["api"], DATABASE_URL="postgresql://u@no-such-host.invalid:5432/x", REDIS_URL=redis_url))
    assert "DATABASE_URL" in line and "no-such-host.invalid" in line


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "mysql://localhost/x"}, "DATABASE_URL must start with postgresql://"),
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL must start with redis://"),
        ({"PORT": "eighty"}, "PORT='eighty' is not a valid int"),
        ({"PORT": "70000"}, "PORT must be a port number"),
        ({"LEASE_S": "-1"}, "LEASE_S must be a positive number of seconds"),
        ({"PUBLIC_BASE_URL": "mail.example.com"}, "PUBLIC_BASE_URL must be an http(s) URL"),
        ({"SMTP_TLS": "maybe"}, "SMTP_TLS must be none, starttls or tls"),
    ],
)
def test_a_malformed_variable_is_one_line(env: dict[str, str], expected: str, good_db: str, redis_url: str) -> None:
    line = one_line(run(["api"], **{"DATABASE_URL": good_db, "REDIS_URL": redis_url, **env}))
    assert line.startswith("configuration error:") and expected in line


def test_migrate_without_a_database_url_is_one_line() -> None:
    line = one_line(run(["migrate"]))
    assert "DATABASE_URL is not set" in line


async def test_an_api_started_while_redis_is_down_serves_and_answers_503(settings: Any, tmp_path: Any) -> None:
    # Redis is waited for, not required at start: a restart during a Redis outage must come up.
    from tests.api_process import api_process

    redis_down = f"redis://127.0.0.1:{closed_port()}/0"
    async with (
        api_process(settings.replace(redis_url=redis_down), tmp_path / "api.log") as base,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.post(f"{base}/api/v1/transactionals.json", json={}, headers={"Authorization": "Bearer x"}) as r:
            assert r.status in (401, 503)  # the key is checked in Postgres; nothing hangs
    log = (tmp_path / "api.log").read_text()
    assert "send_waiter_not_subscribed" in log
