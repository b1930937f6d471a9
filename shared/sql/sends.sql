-- name: insert_send
-- One trigger: who, where from, and the variables resolved for rendering.
INSERT INTO sends (id, org_id, broadcast_id, contact_id, source, request_id, variables)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: insert_events
-- Timeline entries for several messages at once (each filed with its message's created_at).
INSERT INTO message_events (message_id, status, detail, message_created_at)
SELECT u.id, u.status, u.detail, m.created_at
FROM unnest($1::uuid[], $2::message_status[], $3::text[]) AS u(id, status, detail)
JOIN messages m ON m.id = u.id
  AND m.created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) AND (SELECT message_ids_created_max($1::uuid[]));

-- name: select_suppression
-- Whether an address is on the org's suppression list, and why.
SELECT reason FROM suppressions WHERE org_id = $1 AND email = $2;

-- name: insert_suppression
-- Suppress an address (a hard bounce, a complaint, or by hand); the first reason stays.
INSERT INTO suppressions (org_id, email, reason, detail) VALUES ($1, $2, $3, $4)
ON CONFLICT (org_id, email) DO NOTHING;

-- name: insert_sends_batch
-- Many triggers in one statement (one fsync): the sends whose broadcast is still active, their
-- messages and their acceptance events (only those that say more than `queued`: a message's
-- created_at is its acceptance, see shared/messages.py). A message's created_at is its id's
-- time (a v7 id, shared/ids.py), which is how a statement knowing only the id finds its
-- partition; any other id is stamped now(). An email to a suppressed or redacted address is written
-- `rejected` here, so the check costs nothing per request. Returns each message written
-- with its final status and error; a send with no rows was refused (its broadcast paused, or
-- its contact unsubscribed or blocked, after the request looked, or its Idempotency-Key taken
-- over by a retry). $22: per message, whether a test key made it. A send made under an
-- Idempotency-Key ($18-$21: send, org, key, holder) is
-- bound to its key by this same statement, and only while its request still holds the key:
-- a retry that takes the key over then finds this send, and one that took it first refuses it.
-- A batch request's sends share one key: the key is bound to the first of them (in input
-- order) and every send under a key still held is written.
WITH f AS (
    SELECT * FROM unnest($18::uuid[], $19::uuid[], $20::text[], $21::uuid[]) WITH ORDINALITY
        AS f(send_id, org_id, key, holder, n)
), k AS (
    UPDATE idempotency_keys ik SET send_id = first.send_id
    FROM (SELECT DISTINCT ON (org_id, key) * FROM f ORDER BY org_id, key, n) AS first
    WHERE ik.org_id = first.org_id AND ik.key = first.key AND ik.holder = first.holder
      AND ik.response_status IS NULL
    RETURNING ik.org_id, ik.key, ik.holder
), s AS (
    INSERT INTO sends (id, org_id, broadcast_id, contact_id, source, request_id, variables, notify)
    SELECT u.id, u.org_id, u.broadcast_id, u.contact_id, u.source, u.request_id, u.variables, u.notify
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::message_source[], $6::text[], $7::jsonb[],
                $17::boolean[])
        AS u(id, org_id, broadcast_id, contact_id, source, request_id, variables, notify)
    WHERE EXISTS (SELECT 1 FROM broadcasts b WHERE b.id = u.broadcast_id AND b.status = 'active')
      AND EXISTS (SELECT 1 FROM contacts c WHERE c.id = u.contact_id AND c.status = 'subscribed')
      AND (u.id <> ALL($18::uuid[]) OR u.id IN (SELECT f.send_id FROM f JOIN k USING (org_id, key, holder)))
    RETURNING id, org_id, broadcast_id, contact_id, source
), v AS (
    SELECT v.*, s.org_id, s.broadcast_id, s.contact_id, s.source,
           CASE WHEN v.status = 'queued' AND v.channel = 'email' THEN
               coalesce(
                   (SELECT format('%s is on the suppression list (%s); nothing was sent', v.to_address, sup.reason)
                    FROM suppressions sup WHERE sup.org_id = s.org_id AND sup.email = lower(v.to_address)),
                   (SELECT 'the address belonged to a redacted subscriber; nothing was sent'
                    FROM redacted_addresses r
                    WHERE r.org_id = s.org_id AND r.channel = 'email' AND r.address_hash = v.address_hash))
           END AS block
    FROM unnest($8::uuid[], $9::uuid[], $10::uuid[], $11::uuid[], $12::channel[], $13::text[],
                $14::message_status[], $15::text[], $16::bytea[], $22::boolean[])
        AS v(id, send_id, template_id, contact_channel_id, channel, to_address, status, error, address_hash, test)
    JOIN s ON s.id = v.send_id
), m AS (
    INSERT INTO messages (id, send_id, org_id, broadcast_id, template_id, contact_id, contact_channel_id,
                          channel, to_address, status, source, error, test, created_at)
    SELECT v.id, v.send_id, v.org_id, v.broadcast_id, v.template_id, v.contact_id, v.contact_channel_id,
           v.channel, v.to_address,
           CASE WHEN v.block IS NULL THEN v.status ELSE 'rejected'::message_status END,
           v.source, coalesce(v.block, v.error), v.test, coalesce(uuid_v7_time(v.id), now())
    FROM v
    RETURNING id, send_id, status, error, created_at
), e AS (
    INSERT INTO message_events (message_id, status, detail, at, message_created_at)
    SELECT id, status, error, created_at, created_at FROM m WHERE status <> 'queued' OR error IS NOT NULL
)
SELECT id, send_id, status, error FROM m;

-- name: select_send_refusals
-- Why refused sends were refused: their broadcast's and contact's status now, in input order.
SELECT b.status AS broadcast_status, c.status AS contact_status
FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(broadcast_id, contact_id, n)
LEFT JOIN broadcasts b ON b.id = u.broadcast_id
LEFT JOIN contacts c ON c.id = u.contact_id
ORDER BY u.n;

-- name: select_sends_messages
-- Committed sends' messages as their answer shows them (after a commit's lost reply, or for a retry that took a key over).
SELECT m.send_id, s.org_id, s.broadcast_id, s.contact_id, m.id, m.template_id, m.channel, m.contact_channel_id, m.to_address,
       m.status, m.error, m.external_message_id, m.test
FROM messages m
JOIN sends s ON s.id = m.send_id
LEFT JOIN templates t ON t.id = m.template_id
WHERE m.send_id = ANY($1::uuid[])
ORDER BY m.send_id, t.created_at, t.id;
