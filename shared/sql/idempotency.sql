-- name: claim_idempotency_key
-- Take a key for a first request; returns nothing when the key is already taken.
INSERT INTO idempotency_keys (org_id, key, request_hash) VALUES ($1, $2, $3)
ON CONFLICT (org_id, key) DO NOTHING
RETURNING key;

-- name: select_idempotency_key
-- What the first request with this key asked and (once finished) was answered.
SELECT request_hash, response_status, response_body, created_at > now() - interval '24 hours' AS live
FROM idempotency_keys WHERE org_id = $1 AND key = $2;

-- name: store_idempotent_response
-- Keep the first request's answer for repeats.
UPDATE idempotency_keys SET response_status = $3, response_body = $4 WHERE org_id = $1 AND key = $2;

-- name: release_idempotency_key
-- Forget a key whose request did not finish (a crash, a rate limit): a repeat runs afresh.
DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2 AND response_status IS NULL;

-- name: delete_expired_idempotency_keys
-- Keys are honoured for 24 hours.
DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours';

-- name: delete_idempotency_key
-- Drop an expired key before reusing it.
DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2;
