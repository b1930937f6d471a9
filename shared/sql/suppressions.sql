-- name: add_suppression
-- Suppress an address; returns nothing when it already was (the first reason stays).
INSERT INTO suppressions (org_id, email, reason, detail) VALUES ($1, $2, $3, $4)
ON CONFLICT (org_id, email) DO NOTHING
RETURNING email, reason, detail, created_at;

-- name: select_suppression_entry
-- One suppression list entry of an org.
SELECT email, reason, detail, created_at FROM suppressions WHERE org_id = $1 AND email = $2;

-- name: remove_suppression
-- Take an address off the suppression list.
DELETE FROM suppressions WHERE org_id = $1 AND email = $2 RETURNING email;

-- name: select_suppressions_page
-- The suppression list newest first, optionally one reason, after the cursor (created_at, email).
SELECT email, reason, detail, created_at FROM suppressions
WHERE org_id = $1
  AND ($2::text IS NULL OR reason = $2)
  AND ($3::timestamptz IS NULL OR (created_at, email) < ($3, $4::text))
ORDER BY created_at DESC, email DESC
LIMIT $5;

-- name: reject_unsent_to_address
-- A newly suppressed address: its messages not yet handed to a worker (scheduled ones
-- above all) are rejected, with the reason logged.
WITH rejected AS (
    UPDATE messages
    SET status = 'rejected', error = $3, next_attempt_at = NULL, updated_at = now()
    WHERE org_id = $1 AND status IN ('scheduled', 'queued') AND channel = 'email' AND lower(to_address) = $2
    RETURNING id, created_at
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT id, 'rejected', $3, created_at FROM rejected
)
SELECT id FROM rejected;
