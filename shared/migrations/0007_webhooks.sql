-- Outbound webhooks (Standard Webhooks): an org's endpoints, an outbox of the events that
-- concern them, and one delivery per event x endpoint that workers claim and retry.
--
-- Durability: events are written by triggers in the transaction of the change they report,
-- so an event exists if and only if its change committed. Every message status change already
-- logs a row in message_events (delivery, WhatsApp statuses, bounce reports, sends, cancels):
-- a statement-level trigger on that table turns the rows that matter into events. Contacts
-- becoming unsubscribed (page, one-click, API, complaint) or confirmed (double opt-in link)
-- are caught by a row trigger on contacts, which runs only for a row that just became so.
-- The message trigger costs one index probe per statement while no enabled endpoint exists
-- anywhere; only orgs with an enabled endpoint pay more.

CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    url text NOT NULL,
    -- Event types sent to it; empty means every type.
    events text[] NOT NULL DEFAULT '{}',
    description text,
    enabled boolean NOT NULL DEFAULT true,
    -- `whsec_` + base64 of 32 random bytes. Stored as is: signing needs the key itself.
    secret text NOT NULL,
    -- After a rotation the previous secret signs beside the new one until this time.
    previous_secret text,
    previous_secret_expires_at timestamptz,
    -- Why it was disabled by tidings (NULL when enabled, or disabled by its org).
    disabled_reason text,
    -- The first failed attempt since its last success: failing for WEBHOOK_DISABLE_AFTER_S
    -- without a success disables it.
    failing_since timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_org_created ON webhook_endpoints (org_id, created_at DESC, id DESC);
-- The triggers' question: does this org have an enabled endpoint?
CREATE INDEX webhook_endpoints_enabled_org ON webhook_endpoints (org_id) WHERE enabled;

CREATE TABLE webhook_events (
    -- The `webhook-id` header: `evt_` + 32 hex digits (122 random bits).
    id text PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    type text NOT NULL,
    -- The message or contact the event is about (NULL for webhook.test): GDPR redaction of a
    -- subscriber finds and erases the addresses its events quote.
    subject_id uuid,
    -- What the body's `data` is built from. For message.* events: the message row as it was
    -- (without its content) with the event's status and time; shared/webhook_events.py shapes
    -- it into the message object at delivery.
    data jsonb NOT NULL,
    -- When the change happened (the body's `timestamp`).
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Pruning by age and the metrics' "events in the last five minutes": BRIN, a few bytes per
-- block of an append-only table, nearly free to maintain on the message path.
CREATE INDEX webhook_events_created ON webhook_events USING brin (created_at);
CREATE INDEX webhook_events_subject ON webhook_events (subject_id) WHERE subject_id IS NOT NULL;

CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- No foreign key: events and their deliveries are pruned together by age
    -- (WEBHOOK_RETENTION_S), and a key would cost a lookup per delivery on the message path.
    event_id text NOT NULL,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- Every attempt, counted when it is claimed: an attempt whose worker died counts too.
    attempts integer NOT NULL DEFAULT 0,
    last_response_status integer,
    last_error text,
    -- While pending: not before this time (while being posted: when its lease runs out).
    next_attempt_at timestamptz DEFAULT now(),
    -- While a worker is posting it: until when it is that worker's; then anyone's again.
    lease_expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- (No unique (event_id, endpoint_id): the triggers write each pair once, and every index is
-- one more insert on the message path.)
-- The claim: each endpoint's due deliveries, oldest due first.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
-- The claim's first question, one probe when nothing is due: is anything due at all?
CREATE INDEX webhook_deliveries_next ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- The claim's per-endpoint cap: deliveries being posted now.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (endpoint_id, lease_expires_at)
    WHERE status = 'pending' AND lease_expires_at IS NOT NULL;
-- The delivery log, newest first.
CREATE INDEX webhook_deliveries_endpoint_recent ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
-- Pruning by age (BRIN: nearly free to maintain on an append-mostly table).
CREATE INDEX webhook_deliveries_created ON webhook_deliveries USING brin (created_at);

-- One event for an org, delivered to each enabled endpoint subscribed to its type (or, with
-- `only_endpoint`, to that endpoint alone, whatever its types: the test route). Returns the
-- event's id, NULL when no endpoint wants it (and nothing is written).
CREATE FUNCTION webhook_enqueue(
    p_org_id uuid, p_type text, p_data jsonb, p_at timestamptz, p_subject_id uuid, p_only_endpoint uuid DEFAULT NULL
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_id text := 'evt_' || replace(gen_random_uuid()::text, '-', '');
BEGIN
    IF p_only_endpoint IS NULL AND NOT EXISTS (
        SELECT 1 FROM webhook_endpoints e
        WHERE e.org_id = p_org_id AND e.enabled AND (cardinality(e.events) = 0 OR p_type = ANY (e.events))
    ) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (id, org_id, type, subject_id, data, occurred_at)
    VALUES (v_id, p_org_id, p_type, p_subject_id, p_data, p_at);
    INSERT INTO webhook_deliveries (event_id, endpoint_id)
    SELECT v_id, e.id FROM webhook_endpoints e
    WHERE e.org_id = p_org_id
      AND CASE WHEN p_only_endpoint IS NULL
               THEN e.enabled AND (cardinality(e.events) = 0 OR p_type = ANY (e.events))
               ELSE e.id = p_only_endpoint END;
    RETURN v_id;
END
$$;

-- Message status changes -> message.* events. Only statuses a client cares about (not the
-- queue's own steps). `data` is the message row as the statement left it, without its
-- content, but with this event's status and time: a statement that logs several steps at
-- once (WhatsApp's delivered and read in one batch) makes one event per step.
CREATE FUNCTION webhook_message_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The common case costs one probe: no enabled endpoint anywhere.
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH relevant AS (
        SELECT n.id AS seq, n.message_id, n.status, n.at, n.detail
        FROM new_message_events n
        WHERE n.status IN ('sent', 'delivered', 'read', 'failed', 'bounced', 'complained', 'rejected')
    ), fresh AS (
        SELECT m.org_id,
               m.id AS message_id,
               'message.' || r.status::text AS type,
               r.at,
               (to_jsonb(m) - 'content' - 'lease_expires_at' - 'next_attempt_at' - 'queue_at')
                   || jsonb_build_object('status', r.status, 'updated_at', r.at)
                   || CASE WHEN r.status = 'bounced'
                           THEN jsonb_build_object('bounce', jsonb_build_object('type', 'hard', 'diagnostic', r.detail))
                           ELSE '{}'::jsonb END AS data,
               r.seq
        FROM relevant r
        -- LATERAL: one primary-key probe per event. The planner has no statistics for a
        -- transition table and would otherwise hash-join against the whole messages table
        -- (LIMIT keeps the subquery from being flattened into such a join).
        CROSS JOIN LATERAL (SELECT * FROM messages WHERE id = r.message_id LIMIT 1) m
        WHERE EXISTS (
            SELECT 1 FROM webhook_endpoints e
            WHERE e.org_id = m.org_id AND e.enabled
              AND (cardinality(e.events) = 0 OR 'message.' || r.status::text = ANY (e.events))
        )
    ), created AS (
        INSERT INTO webhook_events (id, org_id, type, subject_id, data, occurred_at)
        SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), org_id, type, message_id, data, at
        FROM fresh ORDER BY seq
        RETURNING id, org_id, type
    )
    INSERT INTO webhook_deliveries (event_id, endpoint_id)
    SELECT c.id, e.id
    FROM created c
    JOIN webhook_endpoints e
      ON e.org_id = c.org_id AND e.enabled AND (cardinality(e.events) = 0 OR c.type = ANY (e.events));
    RETURN NULL;
END
$$;

CREATE TRIGGER message_events_webhooks
    AFTER INSERT ON message_events
    REFERENCING NEW TABLE AS new_message_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_message_events();

-- A contact's primary email or phone (its first channel of that type, as the API shows it).
CREATE FUNCTION webhook_contact_address(p_contact_id uuid, p_type channel) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT address FROM contact_channels WHERE contact_id = p_contact_id AND type = p_type
    ORDER BY created_at LIMIT 1
$$;

-- contact.unsubscribed (whatever made it so) and subscriber.confirmed (a confirmation link).
CREATE FUNCTION webhook_contact_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'unsubscribed' AND OLD.status IS DISTINCT FROM 'unsubscribed' THEN
        PERFORM webhook_enqueue(
            NEW.org_id, 'contact.unsubscribed',
            jsonb_build_object(
                'contact_id', NEW.id,
                'email', webhook_contact_address(NEW.id, 'email'),
                'phone', webhook_contact_address(NEW.id, 'whatsapp')
            ),
            clock_timestamp(),
            NEW.id
        );
    END IF;
    IF NEW.confirmed_at IS NOT NULL AND OLD.confirmed_at IS NULL THEN
        PERFORM webhook_enqueue(
            NEW.org_id, 'subscriber.confirmed',
            jsonb_build_object('contact_id', NEW.id, 'email', webhook_contact_address(NEW.id, 'email')),
            clock_timestamp(),
            NEW.id
        );
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER contacts_webhooks
    AFTER UPDATE OF status, confirmed_at ON contacts
    FOR EACH ROW
    WHEN ((NEW.status = 'unsubscribed' AND OLD.status IS DISTINCT FROM 'unsubscribed')
          OR (NEW.confirmed_at IS NOT NULL AND OLD.confirmed_at IS NULL))
    EXECUTE FUNCTION webhook_contact_events();
