-- The Transactionals API (/api/v1, modelled on Broadcast): subscribers with names,
-- double opt-in and GDPR redaction; email templates and confirmation page copy;
-- confirmation and unsubscribe tokens; what each transactional was asked to send.

-- Subscribers are contacts. Unconfirmed until a confirmation link is followed (or the
-- client creates them confirmed); a redacted one keeps its row (its id still answers)
-- with every personal field erased.
ALTER TABLE contacts
    ADD COLUMN first_name text,
    ADD COLUMN last_name text,
    ADD COLUMN confirmed_at timestamptz,
    ADD COLUMN redacted_at timestamptz;

-- What redaction keeps of an address: a hash, so the address stays blocked without
-- being stored. One row per redacted address (a subscriber may have had several).
CREATE TABLE redacted_addresses (
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    channel channel NOT NULL,
    -- sha256(org id || channel || lower-cased address): see shared/subscribers.py.
    address_hash bytea NOT NULL,
    redacted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, channel, address_hash)
);

-- Email templates of the Transactionals API (`template_id`): Liquid subject, body, preheader.
CREATE TABLE transactional_templates (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    name text NOT NULL,
    subject text,
    body text,
    preheader text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transactional_templates_org_created ON transactional_templates (org_id, created_at DESC, id DESC);

-- Copy of the public confirmation page, per page state:
-- {"confirmed": {"heading", "body"}, "already_confirmed": {...}, "invalid": {...}}.
CREATE TABLE confirmation_templates (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    name text NOT NULL,
    pages jsonb NOT NULL,
    -- The org's default, used when a send names no confirmation template.
    is_default boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX confirmation_templates_one_default ON confirmation_templates (org_id) WHERE is_default;

-- One double opt-in link. The token is the whole credential (random, 256 bits).
CREATE TABLE confirmations (
    token text PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    contact_id uuid NOT NULL REFERENCES contacts ON DELETE CASCADE,
    confirmation_template_id uuid REFERENCES confirmation_templates ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    confirmed_at timestamptz
);
CREATE INDEX confirmations_contact ON confirmations (contact_id);

-- One unsubscribe link (List-Unsubscribe and {{ unsubscribe_url }}). It names an address,
-- not only a contact: following it unsubscribes the address even if no contact had it.
CREATE TABLE unsubscribe_tokens (
    token text PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    email text NOT NULL,
    contact_id uuid REFERENCES contacts ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at timestamptz
);
CREATE INDEX unsubscribe_tokens_email ON unsubscribe_tokens (org_id, lower(email));

-- What a transactional was asked to send, as the API answers it back; its id is the
-- message's (status, sent_at and updated_at come from the message).
CREATE TABLE transactionals (
    id uuid PRIMARY KEY REFERENCES messages ON DELETE CASCADE,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    recipient_email text,
    recipient_name text,
    subject text,
    body text,
    preheader text,
    reply_to text,
    template_id uuid REFERENCES transactional_templates ON DELETE SET NULL,
    include_unsubscribe_link boolean NOT NULL,
    double_opt_in boolean NOT NULL,
    confirmation_token text REFERENCES confirmations ON DELETE SET NULL,
    queue_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
