-- name: insert_broadcast
-- Create a broadcast in draft.
INSERT INTO broadcasts (id, org_id, name, type, variables)
VALUES ($1, $2, $3, $4, $5)
RETURNING *;

-- name: select_broadcast
-- One broadcast of an org.
SELECT * FROM broadcasts WHERE id = $1 AND org_id = $2;

-- name: select_broadcast_for_update
-- One broadcast of an org, locked for a configuration change.
SELECT * FROM broadcasts WHERE id = $1 AND org_id = $2 FOR UPDATE;

-- name: select_broadcasts_page
-- An org's broadcasts, newest first, after the cursor (created_at, id).
SELECT * FROM broadcasts
WHERE org_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4;

-- name: update_broadcast
-- Change name and/or variables (NULL leaves a field as it is).
UPDATE broadcasts
SET name = coalesce($3, name), variables = coalesce($4, variables), updated_at = now()
WHERE id = $1 AND org_id = $2
RETURNING *;

-- name: update_broadcast_status
-- Activate, pause or resume; activated_at is when it last became active ("active since").
UPDATE broadcasts
SET status = $3,
    activated_at = CASE WHEN $3 = 'active'::broadcast_status THEN now() ELSE activated_at END,
    updated_at = now()
WHERE id = $1 AND org_id = $2
RETURNING *;

-- name: touch_broadcast
-- Bump updated_at after a template change.
UPDATE broadcasts SET updated_at = now() WHERE id = $1;

-- name: select_templates
-- The templates of some broadcasts, oldest first.
SELECT id, broadcast_id, channel, body, created_at, updated_at
FROM templates WHERE broadcast_id = ANY($1::uuid[])
ORDER BY created_at, id;

-- name: select_template
-- One template of a broadcast of an org.
SELECT t.id, t.broadcast_id, t.channel, t.body, t.created_at, t.updated_at
FROM templates t
WHERE t.id = $1 AND t.broadcast_id = $2 AND t.org_id = $3;

-- name: insert_template
-- Add a channel template to a broadcast.
INSERT INTO templates (id, broadcast_id, org_id, channel, body)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, broadcast_id, channel, body, created_at, updated_at;

-- name: update_template
-- Replace a template's body.
UPDATE templates SET body = $4, updated_at = now()
WHERE id = $1 AND broadcast_id = $2 AND org_id = $3
RETURNING id, broadcast_id, channel, body, created_at, updated_at;

-- name: delete_template
-- Remove a template from a broadcast.
DELETE FROM templates WHERE id = $1 AND broadcast_id = $2 AND org_id = $3 RETURNING id;

-- name: select_message_counts
-- Per broadcast, channel and status: how many messages (the summary's raw numbers). Through
-- messages_org_broadcast_recent (org, both modes, broadcast: every column an index condition;
-- = ANY(ARRAY(...)): the broadcasts' orgs as one array, whatever the planner guesses).
SELECT broadcast_id, channel, status, count(*) AS n
FROM messages
WHERE org_id = ANY (ARRAY(SELECT org_id FROM broadcasts WHERE id = ANY($1::uuid[])))
  AND test IN (false, true) AND broadcast_id = ANY($1::uuid[])
GROUP BY broadcast_id, channel, status;
