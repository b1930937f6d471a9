-- name: insert_webhook_endpoint
-- A new endpoint of an org (enabled).
INSERT INTO webhook_endpoints (id, org_id, url, events, description, secret)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: select_webhook_endpoint
-- One endpoint of an org.
SELECT * FROM webhook_endpoints WHERE id = $1 AND org_id = $2;

-- name: select_webhook_endpoints_page
-- An org's endpoints newest first, after the cursor (created_at, id).
SELECT * FROM webhook_endpoints
WHERE org_id = $1
  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4;

-- name: update_webhook_endpoint
-- Change url, events, description, enabled (NULL: unchanged; $7 says whether description was
-- given, since it may be set to NULL). Enabling again clears why it was disabled and its
-- failing streak: it gets a fresh WEBHOOK_DISABLE_AFTER_S.
UPDATE webhook_endpoints
SET url = coalesce($3, url),
    events = coalesce($4, events),
    description = CASE WHEN $7 THEN $5 ELSE description END,
    enabled = coalesce($6, enabled),
    disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END,
    failing_since = CASE WHEN $6 AND NOT enabled THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = $1 AND org_id = $2
RETURNING *;

-- name: delete_webhook_endpoint
-- Remove an endpoint; its deliveries go with it, so nothing more is sent to it.
DELETE FROM webhook_endpoints WHERE id = $1 AND org_id = $2 RETURNING id;

-- name: rotate_webhook_secret
-- A new secret; the current one keeps signing beside it for $4 seconds.
UPDATE webhook_endpoints
SET previous_secret = secret,
    previous_secret_expires_at = now() + $4 * interval '1 second',
    secret = $3,
    updated_at = now()
WHERE id = $1 AND org_id = $2
RETURNING id;

-- name: enqueue_webhook_test
-- A webhook.test event for this endpoint alone (the endpoint is the org's: checked by the caller).
SELECT webhook_enqueue($1, 'webhook.test', jsonb_build_object('endpoint_id', $2::uuid), clock_timestamp(), NULL, $2::uuid);

-- name: select_webhook_deliveries_page
-- An endpoint's delivery log newest first, filtered by status, after the cursor.
SELECT d.id, d.event_id, ev.type AS event_type, d.status, d.attempts, d.last_response_status, d.last_error,
       d.next_attempt_at, d.created_at, d.updated_at
FROM webhook_deliveries d
JOIN webhook_events ev ON ev.id = d.event_id
WHERE d.endpoint_id = $1
  AND ($2::text IS NULL OR d.status = $2)
  AND ($3::timestamptz IS NULL OR (d.created_at, d.id) < ($3, $4::uuid))
ORDER BY d.created_at DESC, d.id DESC
LIMIT $5;

-- name: retry_webhook_delivery
-- Send a delivery's event again now: one more attempt of the same delivery (same event, so
-- the same webhook-id). A delivery being posted right now is left to that attempt, whose
-- answer decides what follows.
WITH retried AS (
    UPDATE webhook_deliveries
    SET status = 'pending', next_attempt_at = now(), updated_at = now()
    WHERE id = $1 AND endpoint_id = $2
    RETURNING *
)
SELECT r.id, r.event_id, ev.type AS event_type, r.status, r.attempts, r.last_response_status, r.last_error,
       r.next_attempt_at, r.created_at, r.updated_at
FROM retried r JOIN webhook_events ev ON ev.id = r.event_id;

-- name: erase_webhook_events
-- GDPR redaction: the events about a subscriber ($2) and its messages ($3) lose the addresses
-- they quote (any matching $4 in an error or a bounce's diagnostic becomes [redacted]), so that
-- an event still to be posted, or posted again, carries none.
UPDATE webhook_events
SET data = CASE
    WHEN type LIKE 'message.%' THEN
        data || jsonb_build_object('to_address', NULL, 'error', regexp_replace(data->>'error', $4, '[redacted]', 'gi'))
             || CASE WHEN data ? 'bounce'
                     THEN jsonb_build_object('bounce', jsonb_build_object(
                         'type', data->'bounce'->'type',
                         'diagnostic', regexp_replace(data->'bounce'->>'diagnostic', $4, '[redacted]', 'gi')))
                     ELSE '{}'::jsonb END
    WHEN type = 'contact.unsubscribed' THEN data || jsonb_build_object('email', NULL, 'phone', NULL)
    ELSE data || jsonb_build_object('email', NULL)
END
WHERE org_id = $1 AND (subject_id = $2 OR subject_id = ANY ($3::uuid[]));
