-- name: claim_idempotency_key
-- Take a key for a first request, held by $4 for a lease of $5 seconds; returns nothing when the key is already taken.
INSERT INTO idempotency_keys (org_id, key, request_hash, holder, lease_expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (org_id, key) DO NOTHING
RETURNING key;

-- name: select_idempotency_key
-- What the first request with this key asked and (once finished) was answered, and how long its lease still runs.
SELECT request_hash, response_status, response_body, send_id,
       created_at > now() - interval '24 hours' AS live,
       extract(epoch FROM lease_expires_at - now())::float8 AS lease_left_s
FROM idempotency_keys WHERE org_id = $1 AND key = $2;

-- name: take_over_idempotency_key
-- Hold a key whose request is gone (no answer stored, its lease lapsed); returns the send that request committed, if any.
UPDATE idempotency_keys SET holder = $3, lease_expires_at = now() + make_interval(secs => $4)
WHERE org_id = $1 AND key = $2 AND response_status IS NULL AND lease_expires_at <= now()
RETURNING send_id;

-- name: renew_idempotency_lease
-- The request holding a key still runs: extend its lease; returns nothing once the key was taken over.
UPDATE idempotency_keys SET lease_expires_at = now() + make_interval(secs => $4)
WHERE org_id = $1 AND key = $2 AND holder = $3 AND response_status IS NULL
RETURNING key;

-- name: bind_idempotency_keys
-- Tie sends to their keys inside the sends' transaction, only while their requests still hold
-- the keys: (send, org, key, holder) per send; sends sharing a key (a batch) bind it to the
-- first of them. Returns the keys still held: a send under any other is refused.
UPDATE idempotency_keys ik SET send_id = f.send_id
FROM (SELECT DISTINCT ON (org_id, key) *
      FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[]) WITH ORDINALITY AS f(send_id, org_id, key, holder, n)
      ORDER BY org_id, key, n) AS f
WHERE ik.org_id = f.org_id AND ik.key = f.key AND ik.holder = f.holder AND ik.response_status IS NULL
RETURNING ik.org_id, ik.key, ik.holder;

-- name: select_idempotency_holder
-- Which request holds a key now (a send refused at commit: was its key taken over?).
SELECT holder FROM idempotency_keys WHERE org_id = $1 AND key = $2;

-- name: store_idempotent_response
-- Keep the answer for repeats; a request that lost its key to a retry stores nothing.
UPDATE idempotency_keys SET response_status = $4, response_body = $5
WHERE org_id = $1 AND key = $2 AND holder = $3;

-- name: release_idempotency_key
-- Forget a key whose request did not finish and committed no send (a rate limit, an outage): a repeat runs afresh.
DELETE FROM idempotency_keys
WHERE org_id = $1 AND key = $2 AND holder = $3 AND response_status IS NULL AND send_id IS NULL;

-- name: delete_expired_idempotency_keys
-- Keys are honoured for 24 hours.
DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours';

-- name: delete_expired_idempotency_key
-- Drop one expired key before reusing it (a key claimed again meanwhile is kept).
DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2 AND created_at < now() - interval '24 hours';
