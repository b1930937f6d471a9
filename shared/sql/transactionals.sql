-- name: insert_transactional_message
-- The one message of a transactional: inline content, no broadcast; queue_at while scheduled;
-- $11: made with a test key. Its created_at: its id's time (a v7 id), else now().
INSERT INTO messages (id, send_id, org_id, broadcast_id, template_id, contact_id, contact_channel_id,
                      channel, to_address, status, source, error, content, queue_at, test, created_at)
VALUES ($1, $2, $3, NULL, NULL, $4, $5, 'email', $6, $7, 'api', $8, $9, $10, $11, coalesce(uuid_v7_time($1), now()));

-- name: select_transactional
-- One transactional of an org with its message's progress and its confirmation's state; $3:
-- a test key's (test keys and live keys never see each other's messages).
SELECT t.id, t.recipient_email, t.recipient_name, t.subject, t.body, t.preheader, t.reply_to, t.queue_at,
       t.double_opt_in, t.confirmation_token,
       m.status, m.error, m.sent_at, m.created_at, m.updated_at, m.test,
       cf.expires_at <= now() AS confirmation_expired,
       (cf.confirmed_at IS NOT NULL OR c.confirmed_at IS NOT NULL) AS subscriber_confirmed,
       c.redacted_at IS NOT NULL AS subscriber_redacted
FROM transactionals t
JOIN messages m ON m.id = t.id AND m.created_at BETWEEN message_created_min($1) AND message_created_max($1)
LEFT JOIN confirmations cf ON cf.token = t.confirmation_token
LEFT JOIN contacts c ON c.id = m.contact_id
WHERE t.id = $1 AND t.org_id = $2 AND m.test = $3;

-- name: select_transactional_recipients
-- A batch's addresses at once, in input order: whether each belonged to a redacted subscriber
-- ($3: its address hash) and its suppression reason ($2: its suppression key), if any.
SELECT EXISTS (SELECT 1 FROM redacted_addresses r
               WHERE r.org_id = $1 AND r.channel = 'email' AND r.address_hash = u.hash) AS redacted,
       (SELECT s.reason FROM suppressions s WHERE s.org_id = $1 AND s.email = u.key) AS suppression
FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS u(key, hash, n)
ORDER BY u.n;

-- name: select_subscribers_by_emails
-- The contacts owning any of these email addresses in an org, with that channel's id (a batch's lookup).
SELECT c.*, ch.address AS email, ch.id AS channel_id
FROM contact_channels ch JOIN contacts c ON c.id = ch.contact_id
WHERE ch.org_id = $1 AND ch.type = 'email' AND ch.address = ANY($2::text[]);

-- name: insert_transactionals_batch
-- Many transactionals in one statement: each one's send, its one message (inline content, no
-- broadcast; queue_at while scheduled; $23: made with a test key; created_at its id's time, as
-- insert_sends_batch), the message's acceptance event when it says more than `queued`, and
-- what it was asked to send.
WITH s AS (
    INSERT INTO sends (id, org_id, broadcast_id, contact_id, source, request_id, variables)
    SELECT u.id, u.org_id, NULL, u.contact_id, 'api', u.request_id, u.variables
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::jsonb[])
        AS u(id, org_id, contact_id, request_id, variables)
), m AS (
    INSERT INTO messages (id, send_id, org_id, broadcast_id, template_id, contact_id, contact_channel_id,
                          channel, to_address, status, source, error, content, queue_at, test, created_at)
    SELECT u.id, u.send_id, u.org_id, NULL, NULL, u.contact_id, u.contact_channel_id, 'email', u.to_address,
           u.status, 'api', u.error, u.content, u.queue_at, u.test, coalesce(uuid_v7_time(u.id), now())
    FROM unnest($6::uuid[], $1::uuid[], $2::uuid[], $3::uuid[], $7::uuid[], $8::text[], $9::message_status[],
                $10::text[], $11::jsonb[], $12::timestamptz[], $23::boolean[])
        AS u(id, send_id, org_id, contact_id, contact_channel_id, to_address, status, error, content, queue_at, test)
    RETURNING id, status, error, created_at
), e AS (
    INSERT INTO message_events (message_id, status, detail, at, message_created_at)
    SELECT id, status, error, created_at, created_at FROM m WHERE status <> 'queued' OR error IS NOT NULL
)
INSERT INTO transactionals (id, org_id, recipient_email, recipient_name, subject, body, preheader, reply_to,
                            template_id, include_unsubscribe_link, double_opt_in, confirmation_token, queue_at)
SELECT * FROM unnest($6::uuid[], $2::uuid[], $8::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                     $17::text[], $18::uuid[], $19::boolean[], $20::boolean[], $21::text[], $22::timestamptz[]);

-- name: select_transactionals_by_ids
-- Transactionals by id, as `select_transactional` reads one (a batch's read-back; the ids are the
-- batch's own, just written with its key's mode, so no mode filter).
SELECT t.id, t.recipient_email, t.recipient_name, t.subject, t.body, t.preheader, t.reply_to, t.queue_at,
       t.double_opt_in, t.confirmation_token,
       m.status, m.error, m.sent_at, m.created_at, m.updated_at, m.test,
       cf.expires_at <= now() AS confirmation_expired,
       (cf.confirmed_at IS NOT NULL OR c.confirmed_at IS NOT NULL) AS subscriber_confirmed,
       c.redacted_at IS NOT NULL AS subscriber_redacted
FROM transactionals t
JOIN messages m ON m.id = t.id
  AND m.created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) AND (SELECT message_ids_created_max($1::uuid[]))
LEFT JOIN confirmations cf ON cf.token = t.confirmation_token
LEFT JOIN contacts c ON c.id = m.contact_id
WHERE t.id = ANY($1::uuid[]);

-- name: select_transactionals_page
-- An org's transactionals of one mode ($2), newest first, before the keyset cursor ($3, $4;
-- never NULL: +infinity and the greatest id for the first page), with what select_transactional
-- returns for each. Walks transactionals_org_recent.
SELECT t.id, t.recipient_email, t.recipient_name, t.subject, t.body, t.preheader, t.reply_to, t.queue_at,
       t.double_opt_in, t.confirmation_token, t.created_at AS listed_at,
       m.status, m.error, m.sent_at, m.created_at, m.updated_at, m.test,
       cf.expires_at <= now() AS confirmation_expired,
       (cf.confirmed_at IS NOT NULL OR c.confirmed_at IS NOT NULL) AS subscriber_confirmed,
       c.redacted_at IS NOT NULL AS subscriber_redacted
FROM transactionals t
JOIN messages m ON m.id = t.id AND m.created_at BETWEEN message_created_min(t.id) AND message_created_max(t.id)
LEFT JOIN confirmations cf ON cf.token = t.confirmation_token
LEFT JOIN contacts c ON c.id = m.contact_id
WHERE t.org_id = $1 AND m.test = $2 AND (t.created_at, t.id) < ($3::timestamptz, $4::uuid)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $5;
