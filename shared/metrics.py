"""Prometheus metrics: every name in one place, for the api and the workers.

The api serves them at `GET /metrics`; each worker on `WORKER_METRICS_PORT`. Labels are
bounded sets (route templates, channels, outcomes), never ids or addresses.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# ---- api ----
HTTP_REQUESTS = Counter("tidings_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "tidings_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RATE_LIMITED = Counter("tidings_rate_limited_total", "Send requests refused by the per-org rate limit")
SENDS_ACCEPTED = Counter("tidings_sends_accepted_total", "Triggers committed (both APIs)")
# The accept service's commits (`shared.accept`): `single` for single sends, `group` for batch requests.
ACCEPT_FLUSH_SENDS = Histogram(
    "tidings_accept_flush_sends",
    "Sends per commit of the accept service",
    ["batcher"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
ACCEPT_FLUSH_WAIT = Histogram(
    "tidings_accept_flush_wait_seconds",
    "How long a commit's oldest send waited for the commit to start (a commit in flight before it)",
    ["batcher"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
ACCEPT_FLUSH_DURATION = Histogram(
    "tidings_accept_flush_duration_seconds",
    "How long a commit of the accept service took (its statement's round trip and Postgres's work)",
    ["batcher"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# ---- worker ----
MESSAGES = Counter("tidings_messages_total", "Delivery attempts by channel and outcome", ["channel", "outcome"])
DELIVERY_LATENCY = Histogram(
    "tidings_delivery_duration_seconds",
    "Time to hand one message to its provider",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0),
)
RETRIES = Counter("tidings_retries_total", "Transient failures scheduled for another attempt", ["channel"])
QUEUE_DEPTH = Gauge("tidings_queue_depth", "Messages due and not yet claimed (sampled by the reconciler)")
SMTP_IN_USE = Gauge("tidings_smtp_connections_in_use", "SMTP connections of this worker busy sending")
RECONCILED = Counter("tidings_reconciled_messages_total", "Messages the reconciler took back", ["reason"])

# ---- outbound webhooks (worker) ----
WEBHOOK_EVENTS_RECENT = Gauge(
    "tidings_webhook_events_recent",
    "Webhook events created in the last five minutes, by type (sampled from Postgres by each worker)",
    ["type"],
)
WEBHOOK_DELIVERIES = Counter(
    "tidings_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (succeeded; retry: failed, another attempt is due; failed: no retry left)",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "tidings_webhook_delivery_duration_seconds",
    "Time of one webhook attempt, from the request to the answer (or the failure)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
)
WEBHOOK_BACKLOG = Gauge(
    "tidings_webhook_backlog",
    "Pending webhook deliveries by the state of their endpoint (healthy, failing, disabled)",
    ["endpoint_state"],
)
WEBHOOK_IN_FLIGHT = Gauge("tidings_webhook_in_flight", "Webhook requests this worker has in flight")
WEBHOOK_ENDPOINTS_DISABLED = Counter(
    "tidings_webhook_endpoints_disabled_total", "Endpoints disabled after failing for WEBHOOK_DISABLE_AFTER_S"
)
# ---- relays and throughput ceilings (worker/channels/email.py, worker/throughput.py) ----
# `relay` is the relay's host:port, never its credentials; `ceiling` is `smtp:host:port` or
# `whatsapp`. Both are bounded: they come from the configuration.
SMTP_RELAY_MESSAGES = Counter(
    "tidings_smtp_relay_messages_total",
    "Emails each relay answered: accepted, or refused with a 4xx/5xx (the recipient's)",
    ["relay", "result"],
)
SMTP_RELAY_DOWN = Counter(
    "tidings_smtp_relay_down_total",
    "Connections to a relay refused or timed out: the relay is skipped for SMTP_RELAY_COOLDOWN_S",
    ["relay"],
)
SMTP_RELAY_UP = Gauge("tidings_smtp_relay_up", "1 while the relay takes mail, 0 while it cools down", ["relay"])
SMTP_RELAY_IN_USE = Gauge(
    "tidings_smtp_relay_connections_in_use", "SMTP connections busy sending, per relay", ["relay"]
)
THROUGHPUT_WAIT = Counter(
    "tidings_throughput_wait_seconds_total", "Time sends waited for a token of a throughput ceiling", ["ceiling"]
)
THROUGHPUT_LOCAL = Gauge(
    "tidings_throughput_local_share",
    "1 while Redis is unreachable and this worker keeps its equal share of the ceiling alone",
    ["ceiling"],
)
