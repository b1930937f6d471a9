"""One settings object, read from the environment once and passed down.

Every variable has a default so that `tidings dev` and the test suite need nothing
set; production sets at least DATABASE_URL, REDIS_URL, PUBLIC_BASE_URL and SMTP_*.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

SmtpTls = Literal["none", "starttls", "tls"]
LogFormat = Literal["json", "console"]


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    # Empty DATABASE_URL / REDIS_URL mean "start embedded servers" (only `tidings dev` does).
    database_url: str = ""
    redis_url: str = ""
    public_base_url: str = "http://localhost:8080"
    host: str = "0.0.0.0"
    port: int = 8080
    # `tidings api` processes sharing the port (SO_REUSEPORT): one per spare core on a VM.
    api_processes: int = 1

    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_tls: SmtpTls = "starttls"
    smtp_timeout_s: float = 30.0
    smtp_pool_size: int = 8
    # Sender of Transactionals API emails (that API has no from field).
    default_from_email: str = "no-reply@tidings.local"
    default_from_name: str = ""
    # Domain used in Message-ID when the sender's domain cannot be parsed.
    message_id_domain: str = "tidings.local"

    # VERP: with a bounce domain, every email's envelope sender is bounces+{token}@{domain}, the
    # token naming the message and signed with BOUNCE_SECRET, so that a bounce or a complaint
    # read back finds its message (and cannot be forged for another).
    bounce_domain: str = ""
    bounce_secret: str = ""
    # `tidings bounces`, the SMTP server the bounce domain's MX points at.
    bounce_host: str = "0.0.0.0"
    bounce_port: int = 2525
    # Mail larger than this is refused at DATA (552): DSNs and ARF reports quote at most the
    # original's headers or its body, a few hundred kB.
    bounce_max_message_bytes: int = 1_048_576

    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_private_key_path: str = ""

    whatsapp_api_base_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "v21.0"
    whatsapp_access_token: str = ""
    whatsapp_phone_number_id: str = ""
    whatsapp_app_secret: str = ""
    whatsapp_verify_token: str = ""
    whatsapp_timeout_s: float = 15.0

    worker_concurrency: int = 100
    # Each worker serves Prometheus metrics here (0: off). One worker per host/pod in production.
    worker_metrics_port: int = 9100
    # A job running longer is cancelled; arq also keeps a dead worker's job id this long (+10 s).
    job_timeout_s: float = 60.0
    retry_base_delay_s: float = 5.0
    retry_max_delay_s: float = 600.0
    retry_max_attempts: int = 5
    # A claimed message whose worker died is reclaimed after this long.
    lease_s: float = 120.0
    # On SIGTERM a worker gives the messages in hand this long, then gives the rest back.
    worker_drain_s: float = 20.0
    sync_send_timeout_s: float = 10.0
    # A request running under an Idempotency-Key holds the key for this long and renews it
    # while it runs; a key whose request died (kill -9, a lost machine) is free to a retry
    # once this much time has passed, instead of answering 409 for the key's 24 hours.
    idempotency_lease_s: float = 10.0

    rate_limit_requests: int = 100
    rate_limit_window_s: int = 60
    # How long a resolved API key stays cached in one process; a revoked key works at most this long.
    key_cache_ttl_s: float = 5.0
    # How long an API process reuses a broadcast's templates; a pause is still honoured at once.
    broadcast_cache_ttl_s: float = 1.0

    db_pool_min_size: int = 2
    db_pool_max_size: int = 20
    max_body_bytes: int = 256 * 1024
    # A client must send a request's line and headers within HTTP_HEADER_TIMEOUT_S of opening the
    # connection (or of its first byte, on a kept-alive one), and the whole body within
    # HTTP_BODY_TIMEOUT_S of the headers: a slow client cannot hold connections open.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    # An idle kept-alive connection is closed after this long: longer than the usual proxy's
    # upstream keep-alive (60 s), so that a proxy never reuses a connection the api is closing.
    http_keepalive_timeout_s: float = 75.0
    queue_name: str = "tidings:queue"
    redis_prefix: str = "tidings:"
    # The api waits at most this long for one Redis command: a hung Redis answers 503
    # (retry later), never a request that hangs. The doorbell is simply skipped.
    redis_timeout_s: float = 2.0

    # ---- Outbound webhooks (Standard Webhooks) ----
    # An attempt that has not had its answer within this long has failed.
    webhook_timeout_s: float = 15.0
    # Delays before each retry after a failed attempt (seconds, comma-separated, each with up
    # to 10 % jitter); after the last one the delivery is `failed`.
    webhook_retry_schedule_s: str = "5,300,1800,7200,18000,36000,36000"
    # An endpoint whose every attempt has failed for this long is disabled.
    webhook_disable_after_s: float = 432000.0
    # After a rotation the previous secret signs beside the new one for this long.
    webhook_secret_overlap_s: float = 86400.0
    # Allow endpoint URLs on loopback, private, link-local... addresses (a local receiver).
    webhook_allow_private_urls: bool = False
    # Webhook requests one worker has in flight at most (0: this worker delivers no webhooks).
    webhook_max_in_flight: int = 64
    # Requests in flight to one endpoint at most, across every worker.
    webhook_endpoint_concurrency: int = 8
    # A delivery being posted is its worker's this long; a dead worker's is retried after it.
    webhook_lease_s: float = 60.0
    # Events and their deliveries (the delivery log) are kept this long, then deleted.
    webhook_retention_s: float = 2_592_000.0

    # Sending domains (per-org DKIM): their private keys are stored encrypted under a key
    # derived from SECRET_KEY (any secret string); required once a domain exists. Never printed.
    secret_key: str = dataclasses.field(default="", repr=False)
    # How long a worker reuses an org's domain key (or its absence) before looking again: a
    # domain added, removed or registered anew is signed with within this long, no restart.
    dkim_key_cache_ttl_s: float = 10.0
    # Relays and provider throughput (shared/relays.py, worker/throughput.py). SMTP_RELAYS, when
    # set, replaces SMTP_HOST/PORT/TLS/USERNAME/PASSWORD: mail goes to the first relay that is
    # up; one that refuses connections or times out is skipped for SMTP_RELAY_COOLDOWN_S.
    smtp_relays: str = ""
    smtp_relay_cooldown_s: float = 30.0
    # Messages a second to WhatsApp across every worker process together (Meta's default per
    # phone number is 80); 0: no ceiling.
    whatsapp_max_per_s: float = 80.0
    # Retention: message content (bodies, subjects, variables) older than this many days is
    # erased by the reconciler; statuses, timestamps and events stay. An org may have its own
    # (orgs.retention_days, the operator's setting).
    retention_days: int = 30
    # Message history (shared/partitions.py): messages and their events live in partitions
    # this many days wide (by created_at); the reconciler keeps partitions made this many days
    # ahead; and drops a whole partition once its newest possible row is MESSAGE_HISTORY_DAYS
    # old (0: never), unless it still holds a message that may go out. Unlike RETENTION_DAYS
    # (content erased, rows kept), this removes the rows: GET, search and the console no
    # longer find them.
    message_partition_days: int = 7
    message_partitions_ahead_days: int = 28
    message_history_days: int = 180

    log_level: str = "INFO"
    log_format: LogFormat = "json"
    # Set by `tidings dev` for the processes it starts: a local stack, where http links are fine.
    tidings_dev: bool = False

    # Batch sends (`POST .../send/batch`, `POST /api/v1/transactionals/batch.json`) take up to
    # 500 items a request: their bodies have this limit instead of MAX_BODY_BYTES, plus the base64 of
    # one email's MAX_ATTACHMENT_BYTES (api/routing.py batch_body_limit; 413 above it).
    batch_max_body_bytes: int = 8 * 1024 * 1024

    # Email attachments: at most this many bytes (decoded) in total per message. The body limit
    # of the routes that take them grows by their base64 (shared/attachments.py body_limit_bytes).
    max_attachment_bytes: int = 10 * 1024 * 1024

    # The console (/console/): a browser session ends this long after its sign-in (12 h).
    console_session_s: float = 43200.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from its upper-cased environment variable, converting by the field's type."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(field.name.upper())
            if raw is None or (raw == "" and field.type != "str"):
                continue
            values[field.name] = _convert(field.name, field.type, raw)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if self.smtp_tls not in ("none", "starttls", "tls"):
            raise ValueError(f"SMTP_TLS must be none, starttls or tls, not {self.smtp_tls!r}")
        if self.log_format not in ("json", "console"):
            raise ValueError(f"LOG_FORMAT must be json or console, not {self.log_format!r}")
        if self.retry_max_attempts < 1:
            raise ValueError("RETRY_MAX_ATTEMPTS must be at least 1")
        self.validate_webhooks()
        if self.message_history_days < 0:
            raise ValueError(f"MESSAGE_HISTORY_DAYS must be 0 (keep forever) or more, not {self.message_history_days}")
        base = urllib.parse.urlsplit(self.public_base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ValueError(
                f"PUBLIC_BASE_URL must be an http(s) URL, like https://mail.example.com, not {self.public_base_url!r}"
            )
        if self.bounce_domain and len(self.bounce_secret) < 16:
            raise ValueError(
                "BOUNCE_SECRET must be set (at least 16 characters, random) when BOUNCE_DOMAIN is: "
                "it signs the tokens of the envelope senders, so that bounces cannot be forged"
            )
        for name in ("port", "smtp_port", "worker_metrics_port", "bounce_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name.upper()} must be a port number (0-65535), not {getattr(self, name)}")
        for name in (
            "api_processes",
            "worker_concurrency",
            "smtp_pool_size",
            "db_pool_max_size",
            "max_body_bytes",
            "bounce_max_message_bytes",
            "batch_max_body_bytes",
            "max_attachment_bytes",
            "retention_days",
            "message_partition_days",
            "message_partitions_ahead_days",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be at least 1, not {getattr(self, name)}")
        for name in (
            "lease_s",
            "redis_timeout_s",
            "smtp_timeout_s",
            "whatsapp_timeout_s",
            "sync_send_timeout_s",
            "idempotency_lease_s",
            "http_header_timeout_s",
            "http_body_timeout_s",
            "http_keepalive_timeout_s",
            "console_session_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.upper()} must be a positive number of seconds, not {getattr(self, name)}")
        if self.dkim_key_cache_ttl_s < 0:
            raise ValueError(f"DKIM_KEY_CACHE_TTL_S must be 0 or more seconds, not {self.dkim_key_cache_ttl_s}")
        self._validate_relays()

    def _validate_relays(self) -> None:
        from shared.relays import parse_relays

        if self.smtp_relays.strip():
            parse_relays(self.smtp_relays)  # ValueError: one line naming the relay and what is wrong
        if not self.smtp_relay_cooldown_s >= 0:
            raise ValueError(f"SMTP_RELAY_COOLDOWN_S must be 0 or more seconds, not {self.smtp_relay_cooldown_s}")
        if not 0 <= self.whatsapp_max_per_s < float("inf"):
            raise ValueError(f"WHATSAPP_MAX_PER_S must be 0 (no ceiling) or more, not {self.whatsapp_max_per_s}")

    @property
    def webhook_retry_delays_s(self) -> tuple[float, ...]:
        """WEBHOOK_RETRY_SCHEDULE_S as numbers: the delay before retry 1, 2, ..."""
        return parse_delays(self.webhook_retry_schedule_s)

    def validate_webhooks(self) -> None:
        try:
            parse_delays(self.webhook_retry_schedule_s)
        except ValueError as exc:
            raise ValueError(
                f"WEBHOOK_RETRY_SCHEDULE_S must be comma-separated seconds (>= 0), like 5,300,1800, "
                f"not {self.webhook_retry_schedule_s!r}"
            ) from exc
        for name in ("webhook_timeout_s", "webhook_disable_after_s", "webhook_lease_s", "webhook_retention_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.upper()} must be a positive number of seconds, not {getattr(self, name)}")
        if self.webhook_secret_overlap_s < 0:
            raise ValueError(f"WEBHOOK_SECRET_OVERLAP_S must be >= 0, not {self.webhook_secret_overlap_s}")
        if self.webhook_lease_s <= self.webhook_timeout_s:
            raise ValueError(
                f"WEBHOOK_LEASE_S ({self.webhook_lease_s:g}) must be longer than WEBHOOK_TIMEOUT_S "
                f"({self.webhook_timeout_s:g}): a delivery still being posted would be taken over and sent twice"
            )
        if self.webhook_max_in_flight < 0:
            raise ValueError(f"WEBHOOK_MAX_IN_FLIGHT must be >= 0, not {self.webhook_max_in_flight}")
        if self.webhook_endpoint_concurrency < 1:
            raise ValueError(
                f"WEBHOOK_ENDPOINT_CONCURRENCY must be at least 1, not {self.webhook_endpoint_concurrency}"
            )

    @property
    def public_base(self) -> str:
        return self.public_base_url.rstrip("/")

    def public_base_warning(self) -> str | None:
        """What to warn about PUBLIC_BASE_URL at api start-up (None: nothing). Recipients open
        its links, and RFC 8058 one-click unsubscribe needs https: mailbox providers ignore
        List-Unsubscribe-Post on an http URL, and Gmail and Yahoo require one-click of bulk senders."""
        if self.tidings_dev or urllib.parse.urlsplit(self.public_base_url).scheme == "https":
            return None
        return (
            f"PUBLIC_BASE_URL is {self.public_base_url}, not https: one-click unsubscribe (RFC 8058) needs an https "
            "URL, and recipients open confirmation and unsubscribe links over plain http; set it to the https "
            "address where recipients reach this api"
        )


def _convert(name: str, type_name: Any, raw: str) -> Any:
    type_name = str(type_name)
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "bool":
            return raw.strip().lower() in ("1", "true", "yes", "on")
    except ValueError as exc:
        raise ValueError(f"{name.upper()}={raw!r} is not a valid {type_name}") from exc
    return raw


def parse_delays(raw: str) -> tuple[float, ...]:
    """ "5,300,1800" -> (5.0, 300.0, 1800.0); empty -> (); a negative or non-number: ValueError."""
    delays = tuple(float(part) for part in raw.replace(" ", "").split(",") if part)
    if any(not d >= 0 for d in delays):
        raise ValueError(raw)
    return delays
