"""Prometheus metrics: the api's /metrics, and the worker's counters after a real send."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.helpers import make_broadcast, unique_email


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_requests_and_deliveries(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    route = "/orgs/{org_id}/broadcasts/{broadcast_id}/send"
    requests_before = sample("tidings_http_requests_total", {"method": "POST", "route": route, "status": "200"})
    sent_before = sample("tidings_messages_total", {"channel": "email", "outcome": "sent"})
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": unique_email(), "variables": {"otp": "1"}},
    )
    assert r.status == 200
    assert sample("tidings_http_requests_total", {"method": "POST", "route": route, "status": "200"}) == (
        requests_before + 1
    )
    assert sample("tidings_messages_total", {"channel": "email", "outcome": "sent"}) == sent_before + 1

    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    assert "tidings_http_request_duration_seconds_bucket" in text
    assert f'route="{route}"' in text
    assert str(org.id) not in text  # labels are route templates, never ids
