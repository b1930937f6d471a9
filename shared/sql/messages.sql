-- name: select_message
-- One message of an org (the status_url target), of the key's mode ($3: test). The bounds on
-- created_at name its partition (its id's time: shared/ids.py new_message_id).
SELECT * FROM messages
WHERE id = $1 AND org_id = $2 AND test = $3 AND created_at BETWEEN message_created_min($1) AND message_created_max($1);

-- name: select_message_events
-- A message's timeline as stored, oldest first ($2: the message's created_at, its partition's key).
SELECT status, at, detail FROM message_events WHERE message_id = $1 AND message_created_at = $2 ORDER BY id;

-- name: select_recipients_page
-- A broadcast's messages newest first, filtered, after the cursor (created_at, id), of the
-- key's mode ($9: test).
SELECT * FROM messages
WHERE broadcast_id = $1 AND org_id = $2 AND test = $9
  AND ($3::message_status IS NULL OR status = $3)
  AND ($4::channel IS NULL OR channel = $4)
  AND ($5::uuid IS NULL OR contact_id = $5)
  AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $8;

-- name: search_messages
-- An org's messages of one mode ($2), newest first, before the keyset cursor ($3, $4) and in
-- [since $5, until $6); optional filters (NULL: any) status $7, channel $8, source $9,
-- broadcast $11, address $12 (compared lower-cased). Walks messages_org_recent: the cursor and
-- the time bounds are never NULL (the caller passes +/-infinity and the greatest id), so they
-- stay index conditions in a generic plan too. The by_* statements below take the same
-- parameters and make one filter required, so that they walk the index made for it.
SELECT * FROM messages
WHERE org_id = $1 AND test = $2
  AND (created_at, id) < ($3::timestamptz, $4::uuid)
  AND created_at >= $5::timestamptz AND created_at < $6::timestamptz
  AND ($7::message_status IS NULL OR status = $7)
  AND ($8::channel IS NULL OR channel = $8)
  AND ($9::message_source IS NULL OR source = $9)
  AND ($11::uuid IS NULL OR broadcast_id = $11)
  AND ($12::text IS NULL OR lower(to_address) = lower($12))
ORDER BY created_at DESC, id DESC
LIMIT $10;

-- name: search_messages_by_status
-- search_messages with a status ($7, required): walks messages_org_status_recent.
SELECT * FROM messages
WHERE org_id = $1 AND test = $2 AND status = $7::message_status
  AND (created_at, id) < ($3::timestamptz, $4::uuid)
  AND created_at >= $5::timestamptz AND created_at < $6::timestamptz
  AND ($8::channel IS NULL OR channel = $8)
  AND ($9::message_source IS NULL OR source = $9)
  AND ($11::uuid IS NULL OR broadcast_id = $11)
  AND ($12::text IS NULL OR lower(to_address) = lower($12))
ORDER BY created_at DESC, id DESC
LIMIT $10;

-- name: search_messages_by_to
-- search_messages to one address ($12, required, compared lower-cased): walks messages_org_to_recent.
SELECT * FROM messages
WHERE org_id = $1 AND test = $2 AND lower(to_address) = lower($12::text)
  AND (created_at, id) < ($3::timestamptz, $4::uuid)
  AND created_at >= $5::timestamptz AND created_at < $6::timestamptz
  AND ($7::message_status IS NULL OR status = $7)
  AND ($8::channel IS NULL OR channel = $8)
  AND ($9::message_source IS NULL OR source = $9)
  AND ($11::uuid IS NULL OR broadcast_id = $11)
ORDER BY created_at DESC, id DESC
LIMIT $10;

-- name: search_messages_by_broadcast
-- search_messages of one broadcast ($11, required): walks messages_org_broadcast_recent (0014),
-- never the org's timeline: org, mode and broadcast are all index conditions.
SELECT * FROM messages
WHERE broadcast_id = $11::uuid AND org_id = $1 AND test = $2
  AND (created_at, id) < ($3::timestamptz, $4::uuid)
  AND created_at >= $5::timestamptz AND created_at < $6::timestamptz
  AND ($7::message_status IS NULL OR status = $7)
  AND ($8::channel IS NULL OR channel = $8)
  AND ($9::message_source IS NULL OR source = $9)
  AND ($12::text IS NULL OR lower(to_address) = lower($12))
ORDER BY created_at DESC, id DESC
LIMIT $10;

-- name: cancel_scheduled_message
-- A scheduled message of an org and mode -> canceled, with its event. The one conditional
-- UPDATE is what settles a race with the worker's claim (claim_due): whichever locks the row
-- first wins; the other re-reads it (READ COMMITTED re-checks the WHERE on the new version)
-- and finds it no longer scheduled, or skips it (the claim's SKIP LOCKED). Never both.
WITH canceled AS (
    UPDATE messages
    SET status = 'canceled', updated_at = now(), next_attempt_at = NULL
    WHERE id = $1 AND org_id = $2 AND test = $3 AND status = 'scheduled' AND created_at BETWEEN message_created_min($1) AND message_created_max($1)
    RETURNING *
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT id, 'canceled', 'canceled by the API', created_at FROM canceled
)
SELECT * FROM canceled;

-- name: select_message_of_mode
-- One message of an org and mode (cancel's answer when the message was not scheduled).
SELECT id, status FROM messages WHERE id = $1 AND org_id = $2 AND test = $3 AND created_at BETWEEN message_created_min($1) AND message_created_max($1);
