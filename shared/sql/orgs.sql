-- name: insert_org
-- Create an org; NULL rate limits mean the service-wide default.
INSERT INTO orgs (id, name, rate_limit_requests, rate_limit_window_s)
VALUES ($1, $2, $3, $4)
RETURNING id, name, rate_limit_requests, rate_limit_window_s, created_at;

-- name: insert_api_key
-- Store a new key by its hash; the key itself is never stored.
INSERT INTO api_keys (id, org_id, key_hash, prefix, scopes, name, mode)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id, name, scopes, mode, prefix, created_at;

-- name: select_key_by_hash
-- Authenticate: the org, scopes and mode of a live key, with the org's rate limit.
SELECT k.id, k.org_id, k.scopes, k.mode, o.rate_limit_requests, o.rate_limit_window_s
FROM api_keys k JOIN orgs o ON o.id = k.org_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL;

-- name: select_keys_page
-- An org's keys newest first, revoked ones included, after the cursor (created_at, id).
SELECT id, name, scopes, mode, prefix, created_at, last_used_at, revoked_at
FROM api_keys
WHERE org_id = $1
  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4;

-- name: revoke_api_key
-- Revoke a key of the org (again: no change, the first revocation's time stays); NULL: no such key.
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1 AND org_id = $2
RETURNING id, revoked_at;

-- name: touch_api_keys
-- Record keys' last use, batched by each api process (never one write per request); a
-- later time never goes back to an earlier one.
UPDATE api_keys k SET last_used_at = u.at
FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)
WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at);

-- name: select_org
-- One org by id.
SELECT id, name, rate_limit_requests, rate_limit_window_s, created_at FROM orgs WHERE id = $1;

-- name: update_org_rate_limit
-- Change an org's send budget (NULL: back to the default).
UPDATE orgs SET rate_limit_requests = $2, rate_limit_window_s = $3 WHERE id = $1
RETURNING id, name, rate_limit_requests, rate_limit_window_s, created_at;

-- name: update_org_retention_days
-- Change how many days an org's message content is kept (NULL: back to RETENTION_DAYS).
UPDATE orgs SET retention_days = $2 WHERE id = $1 RETURNING id, retention_days;
