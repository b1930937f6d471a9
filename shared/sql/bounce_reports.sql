-- name: apply_bounce_report
-- A hard bounce or a complaint read back from mail, applied to its email message: found by
-- its VERP token's id ($1), or else by the original Message-ID the report quotes ($2), never
-- by the recipient address. The message moves to $3 (`bounced` or `complained`) only from one
-- of $4 (shared.domain.AFTER_SENT: a final status never changes, except into `complained`),
-- with $5 logged as the event's detail. Returns the message and whether it moved; a report
-- read twice finds it already moved and changes nothing.
WITH target AS (
    SELECT id, created_at, org_id, lower(to_address) AS address, contact_id, status
    FROM messages
    WHERE channel = 'email'
      -- By its id: its partition only (its id's time); by Message-ID ($1 NULL: no bounds),
      -- every partition's messages_external_id.
      AND created_at BETWEEN message_created_min($1::uuid) AND message_created_max($1::uuid)
      AND (($1::uuid IS NOT NULL AND id = $1::uuid)
           OR ($1::uuid IS NULL AND $2::text IS NOT NULL AND external_message_id = $2::text))
    ORDER BY id
    LIMIT 1
    FOR UPDATE
), moved AS (
    UPDATE messages m
    SET status = $3::message_status,
        error = CASE WHEN $3::message_status = 'bounced' THEN $5::text ELSE m.error END,
        updated_at = now()
    FROM target t
    WHERE m.id = t.id AND m.created_at = t.created_at AND t.status = ANY($4::message_status[])
    RETURNING m.id, m.created_at
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT id, $3::message_status, $5::text, created_at FROM moved
)
SELECT t.id, t.org_id, t.address, t.contact_id, t.status::text AS old_status,
       EXISTS (SELECT 1 FROM moved) AS moved
FROM target t;
