-- name: insert_org
-- Create an org; NULL rate limits mean the service-wide default.
INSERT INTO orgs (id, name, rate_limit_requests, rate_limit_window_s)
VALUES ($1, $2, $3, $4)
RETURNING id, name, rate_limit_requests, rate_limit_window_s, created_at;

-- name: insert_api_key
-- Store a new key by its hash; the key itself is never stored.
INSERT INTO api_keys (id, org_id, key_hash, key_prefix, scopes)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, org_id, key_prefix, scopes, created_at;

-- name: select_key_by_hash
-- Authenticate: the org and scopes of a live key, with the org's rate limit.
SELECT k.id, k.org_id, k.scopes, o.rate_limit_requests, o.rate_limit_window_s
FROM api_keys k JOIN orgs o ON o.id = k.org_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL;

-- name: select_org
-- One org by id.
SELECT id, name, rate_limit_requests, rate_limit_window_s, created_at FROM orgs WHERE id = $1;

-- name: update_org_rate_limit
-- Change an org's send budget (NULL: back to the default).
UPDATE orgs SET rate_limit_requests = $2, rate_limit_window_s = $3 WHERE id = $1
RETURNING id, name, rate_limit_requests, rate_limit_window_s, created_at;
