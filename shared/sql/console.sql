-- name: insert_console_session
-- Open a console session (the cookie's token is stored by its hash only).
INSERT INTO console_sessions (token_hash, org_id, key_id, key_hash, csrf_token, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6));

-- name: select_console_session
-- A live console session by its token's hash.
SELECT org_id, key_id, key_hash, csrf_token, expires_at
FROM console_sessions WHERE token_hash = $1 AND expires_at > now();

-- name: delete_console_session
-- Sign out (or a session whose key no longer works).
DELETE FROM console_sessions WHERE token_hash = $1;

-- name: delete_expired_console_sessions
-- Sweep sessions past their expiry (run at each sign-in; a bounded batch).
DELETE FROM console_sessions
WHERE token_hash IN (SELECT token_hash FROM console_sessions WHERE expires_at <= now() LIMIT 1000);

-- name: message_counts_over_time
-- Messages created since $3 per time bucket of $4 seconds and status, of an org or one of its
-- broadcasts ($2 NULL: all), of one mode ($5: test): the console's chart.
SELECT date_bin(make_interval(secs => $4), created_at, $3::timestamptz) AS bucket, status, count(*)::int AS n
FROM messages
WHERE org_id = $1 AND ($2::uuid IS NULL OR broadcast_id = $2) AND created_at >= $3 AND test = $5
GROUP BY 1, 2
ORDER BY 1;

-- name: select_contacts_page
-- An org's contacts newest first, optionally only those with an address containing $2, with
-- their channels as JSON; after the cursor (created_at, id).
SELECT c.id, c.name, c.status, c.created_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object('type', ch.type, 'address', ch.address) ORDER BY ch.created_at)
                 FROM contact_channels ch WHERE ch.contact_id = c.id), '[]'::jsonb) AS channels
FROM contacts c
WHERE c.org_id = $1
  AND ($2::text IS NULL OR EXISTS (
      SELECT 1 FROM contact_channels ch WHERE ch.contact_id = c.id AND ch.address ILIKE '%' || $2 || '%'))
  AND ($3::timestamptz IS NULL OR (c.created_at, c.id) < ($3, $4::uuid))
ORDER BY c.created_at DESC, c.id DESC
LIMIT $5;

-- name: select_broadcast_names
-- Id and name of an org's broadcasts, newest first (the console's filter choices).
SELECT id, name FROM broadcasts WHERE org_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2;
