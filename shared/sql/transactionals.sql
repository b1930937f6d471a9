-- name: insert_transactional_message
-- The one message of a transactional: inline content, no broadcast; queue_at while scheduled;
-- $11: made with a test key.
INSERT INTO messages (id, send_id, org_id, broadcast_id, template_id, contact_id, contact_channel_id,
                      channel, to_address, status, source, error, content, queue_at, test)
VALUES ($1, $2, $3, NULL, NULL, $4, $5, 'email', $6, $7, 'api', $8, $9, $10, $11);

-- name: insert_transactional
-- What the transactional was asked to send, as the API answers it back.
INSERT INTO transactionals (id, org_id, recipient_email, recipient_name, subject, body, preheader, reply_to,
                            template_id, include_unsubscribe_link, double_opt_in, confirmation_token, queue_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13);

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
JOIN messages m ON m.id = t.id
LEFT JOIN confirmations cf ON cf.token = t.confirmation_token
LEFT JOIN contacts c ON c.id = m.contact_id
WHERE t.id = $1 AND t.org_id = $2 AND m.test = $3;

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
JOIN messages m ON m.id = t.id
LEFT JOIN confirmations cf ON cf.token = t.confirmation_token
LEFT JOIN contacts c ON c.id = m.contact_id
WHERE t.org_id = $1 AND m.test = $2 AND (t.created_at, t.id) < ($3::timestamptz, $4::uuid)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $5;
