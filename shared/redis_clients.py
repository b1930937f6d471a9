"""The Redis clients tidings makes: for commands, and for subscriptions.

A command client bounds each command (`commands`): a hung Redis fails a request, never
blocks it. A subscription's reads block by design, so its client has no such bound;
instead, a subscription sits idle for as long as nothing is published, and a NAT or load balancer
on the way may drop an idle flow without telling either end (AWS NLB after 350 s): the
subscriber would then wait forever on a dead connection. TCP keepalive probes every
`KEEPALIVE_*` keep such a flow alive, and notice a dead peer within about 90 s; the
reader then fails and resubscribes.
"""

from __future__ import annotations

import socket

from redis.asyncio import Redis

KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 3
CONNECT_TIMEOUT_S = 1.0


def commands(url: str, timeout_s: float) -> Redis:
    """A client whose every command gives up after `timeout_s`."""
    client: Redis = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=CONNECT_TIMEOUT_S)
    return client


def subscriber(url: str) -> Redis:
    """A client for subscriptions (and the few publishes made beside them, bounded where made)."""
    options: dict[int, int] = {}
    # Linux names; elsewhere the system's keepalive defaults apply.
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, name):
            options[getattr(socket, name)] = value
    client: Redis = Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_keepalive=True, socket_keepalive_options=options
    )
    return client
