-- name: insert_subscriber
-- Create a contact as a Transactionals API subscriber (its email channel is inserted separately).
INSERT INTO contacts (id, org_id, name, status, properties, first_name, last_name, confirmed_at)
VALUES ($1, $2, $3, $4, '{}', $5, $6, $7)
RETURNING *;

-- name: select_subscriber
-- One contact of an org with its first email address.
SELECT c.*,
       (SELECT ch.address FROM contact_channels ch
        WHERE ch.contact_id = c.id AND ch.type = 'email' ORDER BY ch.created_at, ch.id LIMIT 1) AS email
FROM contacts c WHERE c.id = $1 AND c.org_id = $2;

-- name: select_subscriber_by_email
-- The contact owning an email address in an org, with that channel's id.
SELECT c.*, ch.address AS email, ch.id AS channel_id
FROM contact_channels ch JOIN contacts c ON c.id = ch.contact_id
WHERE ch.org_id = $1 AND ch.type = 'email' AND ch.address = $2;

-- name: fill_subscriber_names
-- Give a subscriber the names it lacks (names it has are never overwritten by a send).
UPDATE contacts
SET first_name = coalesce(first_name, $3),
    last_name = coalesce(last_name, $4),
    name = coalesce(name, $5),
    updated_at = now()
WHERE id = $1 AND org_id = $2
  AND ((first_name IS NULL AND $3::text IS NOT NULL) OR (last_name IS NULL AND $4::text IS NOT NULL)
       OR (name IS NULL AND $5::text IS NOT NULL))
RETURNING *;

-- name: unsubscribe_contact
-- An unsubscribe link was followed: a subscribed contact becomes unsubscribed (blocked stays blocked).
UPDATE contacts SET status = 'unsubscribed', updated_at = now()
WHERE id = $1 AND status = 'subscribed';

-- name: select_address_redacted
-- Whether an address (by its hash) belonged to a redacted subscriber of the org.
SELECT 1 FROM redacted_addresses WHERE org_id = $1 AND channel = $2 AND address_hash = $3;

-- name: lock_subscriber
-- Hold a contact of an org while it is redacted.
SELECT id FROM contacts WHERE id = $1 AND org_id = $2 FOR UPDATE;

-- name: insert_redacted_addresses
-- Keep the hashes of a redacted subscriber's addresses, so that they stay blocked.
INSERT INTO redacted_addresses (org_id, channel, address_hash)
SELECT $1, u.channel, u.address_hash FROM unnest($2::channel[], $3::bytea[]) AS u(channel, address_hash)
ON CONFLICT DO NOTHING;

-- name: erase_subscriber
-- Erase a subscriber's personal fields and mark it redacted (the row and its id stay).
UPDATE contacts
SET name = NULL, first_name = NULL, last_name = NULL, properties = '{}',
    redacted_at = coalesce(redacted_at, now()), updated_at = now()
WHERE id = $1
RETURNING *;

-- name: delete_subscriber_channels
-- A redacted subscriber keeps no address.
DELETE FROM contact_channels WHERE contact_id = $1;

-- name: select_messages_of_subscriber
-- Every message of an org addressed to a subscriber or to one of its addresses (redaction).
-- A scan of the org's messages: redaction is rare, and an index would tax every send.
SELECT id, send_id FROM messages
WHERE org_id = $1 AND (contact_id = $2 OR lower(to_address) = ANY($3::text[]))
FOR UPDATE;

-- name: reject_unsent_messages
-- Messages not yet handed to a worker are stopped: rejected, with the reason logged.
WITH rejected AS (
    UPDATE messages
    SET status = 'rejected', error = $2, next_attempt_at = NULL, updated_at = now()
    WHERE id = ANY($1::uuid[]) AND status IN ('scheduled', 'queued')
      AND created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) AND (SELECT message_ids_created_max($1::uuid[]))
    RETURNING id, created_at
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT id, 'rejected', $2, created_at FROM rejected
)
SELECT id FROM rejected;

-- name: erase_messages
-- Drop the address and content of messages; addresses quoted in errors become [redacted].
UPDATE messages
SET to_address = NULL, content = NULL,
    error = regexp_replace(error, $2, '[redacted]', 'gi'),
    updated_at = now()
WHERE id = ANY($1::uuid[]);

-- name: erase_message_events
-- Addresses quoted in timeline details (e.g. an SMTP refusal) become [redacted].
UPDATE message_events SET detail = regexp_replace(detail, $2, '[redacted]', 'gi')
WHERE message_id = ANY($1::uuid[]) AND detail IS NOT NULL;

-- name: erase_send_variables
-- The variables of the sends those messages belong to (names, addresses, links).
UPDATE sends SET variables = '{}'
WHERE id IN (SELECT send_id FROM messages WHERE id = ANY($1::uuid[]));

-- name: erase_transactionals
-- What the transactionals were asked to send may quote the subscriber: erase it.
UPDATE transactionals
SET recipient_email = NULL, recipient_name = NULL, subject = NULL, body = NULL, preheader = NULL
WHERE id = ANY($1::uuid[]);

-- name: delete_confirmations_of_contact
-- A redacted subscriber's confirmation links stop working.
DELETE FROM confirmations WHERE contact_id = $1;

-- name: delete_unsubscribe_tokens_of
-- A redacted subscriber's unsubscribe links (they name its address) are dropped.
DELETE FROM unsubscribe_tokens WHERE org_id = $1 AND (contact_id = $2 OR lower(email) = ANY($3::text[]));

-- name: delete_suppressions_of
-- The plain-text suppression entries of redacted addresses (the hash keeps blocking them).
DELETE FROM suppressions WHERE org_id = $1 AND email = ANY($2::text[]);

-- name: delete_idempotent_responses_naming
-- Stored API answers (kept 24 h for replays) that quote a redacted address.
DELETE FROM idempotency_keys
WHERE org_id = $1 AND response_body IS NOT NULL
  AND EXISTS (
      SELECT 1 FROM unnest($2::text[]) AS a(address)
      WHERE strpos(lower(convert_from(response_body, 'UTF8')), a.address) > 0
  );
