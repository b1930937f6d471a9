"""Subscription clients keep their idle connections alive with TCP keepalive probes."""

from __future__ import annotations

import socket

from shared import redis_clients


async def test_subscriber_connections_probe_idle_flows(redis_url: str) -> None:
    client = redis_clients.subscriber(redis_url)
    try:
        assert await client.ping()
        conn = await client.connection_pool.get_connection()
        try:
            sock = conn._writer.get_extra_info("socket")  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
                assert idle == redis_clients.KEEPALIVE_IDLE_S
        finally:
            await client.connection_pool.release(conn)
    finally:
        await client.aclose()
