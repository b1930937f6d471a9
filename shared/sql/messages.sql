-- name: select_message
-- One message of an org (the status_url target), of the key's mode ($3: test).
SELECT * FROM messages WHERE id = $1 AND org_id = $2 AND test = $3;

-- name: select_message_events
-- A message's timeline, oldest first.
SELECT status, at, detail FROM message_events WHERE message_id = $1 ORDER BY id;

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
