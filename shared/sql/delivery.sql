-- name: record_outcomes
-- Settle claimed messages: sent, failed, or back to queued for a retry; log each event.
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::message_status[], $3::text[], $4::text[], $5::timestamptz[])
        AS u(id, status, external_message_id, error, next_attempt_at)
), updated AS (
    UPDATE messages m
    SET status = u.status,
        external_message_id = coalesce(u.external_message_id, m.external_message_id),
        error = u.error,
        next_attempt_at = u.next_attempt_at,
        lease_expires_at = NULL,
        sent_at = CASE WHEN u.status = 'sent' THEN now() ELSE m.sent_at END,
        updated_at = now()
    FROM u
    WHERE m.id = u.id AND m.status = 'sending'
    RETURNING m.id, m.status, m.error
), logged AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, status, error FROM updated
)
SELECT id FROM updated;

-- name: select_pending_for_send
-- Whether a send still has messages waiting for a later attempt, and the earliest.
SELECT min(next_attempt_at) AS next_at, count(*) AS n
FROM messages WHERE send_id = $1 AND status = 'queued';

-- name: reclaim_expired_leases
-- Messages whose worker died mid-send go back to queued (and are logged) so they are retried.
WITH reclaimed AS (
    UPDATE messages
    SET status = 'queued', lease_expires_at = NULL, updated_at = now(),
        error = 'the worker handling this message stopped; retrying'
    WHERE status = 'sending' AND lease_expires_at < now()
    RETURNING id, send_id
), logged AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'queued', 'the worker handling this message stopped; retrying' FROM reclaimed
)
SELECT DISTINCT send_id FROM reclaimed;

-- name: select_stranded_sends
-- Sends with due queued messages untouched for longer than the grace period (their job was lost).
SELECT DISTINCT send_id FROM messages
WHERE status = 'queued' AND updated_at < now() - make_interval(secs => $1)
  AND (next_attempt_at IS NULL OR next_attempt_at < now() - make_interval(secs => $1))
LIMIT $2;

-- name: promote_due_scheduled
-- Scheduled messages whose time has come become queued (one send, or every send when $1 is NULL).
WITH due AS (
    UPDATE messages SET status = 'queued', updated_at = now()
    WHERE status = 'scheduled' AND queue_at <= now() AND ($1::uuid IS NULL OR send_id = $1)
    RETURNING id, send_id
), logged AS (
    INSERT INTO message_events (message_id, status) SELECT id, 'queued' FROM due
)
SELECT DISTINCT send_id FROM due;

-- name: release_claims
-- Give back claimed messages a stopping worker did not finish (they are retried, not lost).
WITH released AS (
    UPDATE messages
    SET status = 'queued', lease_expires_at = NULL, updated_at = now(),
        attempts = greatest(attempts - 1, 0)
    WHERE id = ANY($1::uuid[]) AND status = 'sending'
    RETURNING id
), logged AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'queued', 'released by a worker shutting down' FROM released
)
SELECT count(*) FROM released;

-- name: claim_sends_batch
-- Claim the due messages of several sends at once (queued -> sending, attempts + 1, a lease),
-- log the events, and return with each what rendering needs: the send's variables and the
-- template body (NULL when the message carries its own content).
WITH claimed AS (
    UPDATE messages
    SET status = 'sending', attempts = attempts + 1, updated_at = now(),
        lease_expires_at = now() + make_interval(secs => $2), next_attempt_at = NULL
    WHERE send_id = ANY($1::uuid[]) AND status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
    RETURNING id, send_id, org_id, template_id, contact_id, channel, to_address, attempts, content
), logged AS (
    INSERT INTO message_events (message_id, status) SELECT id, 'sending' FROM claimed
)
SELECT c.*, s.variables, t.body AS template_body
FROM claimed c
JOIN sends s ON s.id = c.send_id
LEFT JOIN templates t ON t.id = c.template_id;

-- name: promote_due_scheduled_batch
-- Scheduled messages of these sends whose time has come become queued.
WITH due AS (
    UPDATE messages SET status = 'queued', updated_at = now()
    WHERE send_id = ANY($1::uuid[]) AND status = 'scheduled' AND queue_at <= now()
    RETURNING id
)
INSERT INTO message_events (message_id, status) SELECT id, 'queued' FROM due;
