"""The email channel's SMTP transaction (MAIL, RCPT, DATA on a pooled session: `_transaction`
in worker/channels/email.py) against real servers: the dev inbox (aiosmtpd), which can refuse
at each step, and Postfix's smtp-sink, the bench's sink. What it must keep from aiosmtplib's
`sendmail`: the bytes arrive exactly as built (DKIM signs them), refusals are sorted by the
step that refused, and a session is reused only after a clean transaction."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.config import Settings
from worker.channels.base import PermanentDeliveryError, RenderedEmail, TransientDeliveryError
from worker.channels.email import EmailChannel, message_bytes


def rendered(to: str, text: str = "Your code is 123456.\n") -> RenderedEmail:
    return RenderedEmail(
        message_id=f"<{uuid.uuid4()}@acme.test>",
        from_email="otp@acme.test",
        from_name="Acme",
        to=to,
        to_name=None,
        reply_to=None,
        subject="Your code",
        html=None,
        text=text,
    )


def recipient() -> str:
    return f"ada-{uuid.uuid4().hex[:10]}@example.com"


async def test_the_bytes_arrive_as_built_dot_lines_included(settings: Settings, smtp_server: Any) -> None:
    to = recipient()
    # Lines starting with a dot are stuffed on the wire and unstuffed by the server.
    msg = rendered(to, text=".\n.hidden\n..two\nend\n")
    channel = EmailChannel(settings)
    try:
        await channel.send(msg)
    finally:
        await channel.close()
    (received,) = [m for m in smtp_server.messages if to in m.rcpt_tos]
    assert received.mail_from == "otp@acme.test"
    built = message_bytes(msg)
    # The Date header may have turned a second between the two builds: compare the rest.
    strip_date = lambda raw: b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"Date:"))  # noqa: E731
    assert strip_date(received.raw) == strip_date(built)


@pytest.mark.parametrize(
    ("hook", "reply", "error", "hard_bounce"),
    [
        ("reject_rcpt", "550 5.1.1 no such user", PermanentDeliveryError, True),
        ("reject_rcpt", "451 4.3.0 try later", TransientDeliveryError, None),
        ("reject_data", "554 5.6.0 content refused", PermanentDeliveryError, True),
        ("fail_data_once", "451 4.7.1 greylisted", TransientDeliveryError, None),
    ],
)
async def test_a_refusal_is_sorted_by_the_step_that_refused(
    settings: Settings, smtp_server: Any, hook: str, reply: str, error: type[Exception], hard_bounce: bool | None
) -> None:
    to = recipient()
    getattr(smtp_server, hook)[to] = reply
    channel = EmailChannel(settings)
    try:
        with pytest.raises(error) as raised:
            await channel.send(rendered(to))
        assert reply.split()[0] in str(raised.value)
        if hard_bounce is not None:
            assert isinstance(raised.value, PermanentDeliveryError)
            assert raised.value.hard_bounce is hard_bounce
        # The session that saw the refusal was closed; the next message gets a fresh one.
        getattr(smtp_server, hook).pop(to, None)
        other = recipient()
        await channel.send(rendered(other))
    finally:
        getattr(smtp_server, hook).pop(to, None)
        await channel.close()
    assert [m for m in smtp_server.messages if other in m.rcpt_tos]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    sink = shutil.which("smtp-sink")
    if sink is None:
        pytest.skip("Postfix's smtp-sink is not installed")
    port = _free_port()
    argv = [sink, *(["-u", "nobody"] if os.geteuid() == 0 else []), f"127.0.0.1:{port}", "64"]
    proc = subprocess.Popen(argv)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"smtp-sink exited with {proc.returncode}")
                subprocess.run(["sleep", "0.05"], check=True)
        yield port
    finally:
        proc.kill()
        proc.wait()


async def test_many_messages_over_pooled_sessions_to_smtp_sink(settings: Settings, smtp_sink: int) -> None:
    """The bench's sink (it advertises PIPELINING, SIZE and 8BITMIME): every message of a
    burst is taken, over the pool's few sessions, each reused message after message."""
    channel = EmailChannel(settings.replace(smtp_port=smtp_sink, smtp_pool_size=3))
    try:
        await asyncio.gather(*(channel.send(rendered(recipient())) for _ in range(200)))
        (relay,) = channel.relays
        assert relay._idle.qsize() <= 3  # no more sessions than the pool allows
    finally:
        await channel.close()
