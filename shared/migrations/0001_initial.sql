-- The core schema: orgs and keys, broadcasts and their templates, contacts and their
-- channels, sends and the messages they fan out into, each message's event timeline.
-- Enum values must match the StrEnums in shared/domain.py (tests/test_schema.py checks).

CREATE TYPE broadcast_type AS ENUM ('transactional', 'marketing');
CREATE TYPE broadcast_status AS ENUM ('draft', 'active', 'paused');
CREATE TYPE channel AS ENUM ('email', 'whatsapp');
CREATE TYPE contact_status AS ENUM ('subscribed', 'unsubscribed', 'blocked');
CREATE TYPE message_status AS ENUM (
    'scheduled', 'queued', 'sending', 'sent', 'delivered', 'read',
    'failed', 'bounced', 'rejected', 'skipped'
);
CREATE TYPE message_source AS ENUM ('api', 'manual');

CREATE TABLE orgs (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    -- NULL: the service-wide default from settings.
    rate_limit_requests integer CHECK (rate_limit_requests > 0),
    rate_limit_window_s integer CHECK (rate_limit_window_s > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    -- sha256 of the whole key: keys carry 256 random bits, so a fast hash is enough.
    key_hash bytea NOT NULL UNIQUE,
    key_prefix text NOT NULL,
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE broadcasts (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    name text NOT NULL,
    type broadcast_type NOT NULL,
    status broadcast_status NOT NULL DEFAULT 'draft',
    variables jsonb NOT NULL DEFAULT '[]',
    activated_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX broadcasts_org_created ON broadcasts (org_id, created_at DESC, id DESC);

CREATE TABLE templates (
    id uuid PRIMARY KEY,
    broadcast_id uuid NOT NULL REFERENCES broadcasts ON DELETE CASCADE,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    channel channel NOT NULL,
    -- The template as the client sent it (minus id and channel): fields differ per channel.
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX templates_broadcast ON templates (broadcast_id, created_at);

CREATE TABLE contacts (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    name text,
    status contact_status NOT NULL DEFAULT 'subscribed',
    properties jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contact_channels (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    contact_id uuid NOT NULL REFERENCES contacts ON DELETE CASCADE,
    type channel NOT NULL,
    -- E.164 for whatsapp, domain lower-cased for email.
    address text NOT NULL,
    -- clock_timestamp: channels added in one transaction keep their order (the first is primary).
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- One contact per email and per phone in an org; this is what makes find-or-create race-safe.
    CONSTRAINT contact_channels_org_address UNIQUE (org_id, type, address)
);
CREATE INDEX contact_channels_contact ON contact_channels (contact_id, created_at);

CREATE TABLE sends (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    broadcast_id uuid REFERENCES broadcasts ON DELETE SET NULL,
    contact_id uuid REFERENCES contacts ON DELETE SET NULL,
    source message_source NOT NULL,
    request_id text,
    -- Everything rendering needs, resolved at trigger time: trigger > contact property > default,
    -- plus name/email/phone after per-send overrides.
    variables jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id uuid PRIMARY KEY,
    send_id uuid NOT NULL REFERENCES sends ON DELETE CASCADE,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    broadcast_id uuid REFERENCES broadcasts ON DELETE SET NULL,
    template_id uuid,
    contact_id uuid REFERENCES contacts ON DELETE SET NULL,
    contact_channel_id uuid REFERENCES contact_channels ON DELETE SET NULL,
    channel channel NOT NULL,
    to_address text,
    status message_status NOT NULL,
    source message_source NOT NULL,
    external_message_id text,
    error text,
    attempts integer NOT NULL DEFAULT 0,
    -- While status = 'sending': when the claim expires and the reconciler may take it back.
    lease_expires_at timestamptz,
    -- While status = 'queued' after a transient failure: not before this time.
    next_attempt_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz
);
CREATE INDEX messages_send ON messages (send_id);
CREATE INDEX messages_broadcast_recent ON messages (broadcast_id, created_at DESC, id DESC);
CREATE INDEX messages_external_id ON messages (external_message_id) WHERE external_message_id IS NOT NULL;
-- The reconciler's scan: only messages not yet settled.
CREATE INDEX messages_unsettled ON messages (updated_at) WHERE status IN ('queued', 'sending', 'scheduled');

CREATE TABLE message_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid NOT NULL REFERENCES messages ON DELETE CASCADE,
    status message_status NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail text
);
CREATE INDEX message_events_message ON message_events (message_id, id);

CREATE TABLE suppressions (
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    email text NOT NULL,
    reason text NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'manual')),
    detail text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, email)
);

CREATE TABLE idempotency_keys (
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    -- NULL while the first request is in flight.
    response_status integer,
    response_body bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, key)
);
