-- name: record_outcomes
-- Settle claimed messages: sent, failed, or back to queued for a retry; log each event; erase
-- the attachments of the sends this leaves with no message to go out (shared/attachments.py).
-- Fenced by the claim ($6, the attempt number it made): an outcome whose claim was taken
-- back and claimed again changes nothing. One taken back by the reconciler and not claimed
-- since (its lease stamp kept, attempts unchanged; see reclaim_expired_leases) still lands:
-- the worker that held it was cut off from Postgres, not dead, and the message went out.
-- Partitions: only those the batch's ids span (their created_at, message_ids_created_min/max).
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::message_status[], $3::text[], $4::text[], $5::timestamptz[], $6::int[])
        AS u(id, status, external_message_id, error, next_attempt_at, attempts)
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
    WHERE m.id = u.id AND m.attempts = u.attempts
      AND m.created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) AND (SELECT message_ids_created_max($1::uuid[]))
      AND (m.status = 'sending' OR (m.status IN ('queued', 'failed') AND m.lease_expires_at IS NOT NULL))
    RETURNING m.id, m.send_id, m.status, m.error, m.created_at
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT id, status, error, created_at FROM updated
), erased AS (
    -- A send's attachments are erased by the write that settles its last unsettled message
    -- (this statement sees the other messages as they were before it: those it writes are
    -- judged by their new status). One index probe per send when it has none.
    DELETE FROM attachments a
    USING (SELECT DISTINCT send_id FROM updated) d
    WHERE a.send_id = d.send_id
      AND NOT EXISTS (
          SELECT 1 FROM updated x
          WHERE x.send_id = d.send_id AND x.status IN ('queued', 'scheduled', 'sending'))
      AND NOT EXISTS (
          -- A send's messages are made by one request, within moments of each other: a day
          -- either side of the batch's span holds every sibling.
          SELECT 1 FROM messages m
          WHERE m.send_id = d.send_id AND m.status IN ('queued', 'scheduled', 'sending')
            AND m.created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) - interval '1 day'
                                 AND (SELECT message_ids_created_max($1::uuid[])) + interval '1 day'
            AND m.id NOT IN (SELECT id FROM updated))
)
SELECT id FROM updated;

-- name: record_test_follow_ups
-- Test mode: right after record_outcomes, in its transaction, a test message just `sent` moves
-- on to the status its address picked ($2: bounced, complained or delivered; $4 the event's
-- detail). Only a test message, only from `sent` with this outcome's `test-` id ($3): a write
-- repeated after an unknown result, or fenced out by a later claim, changes nothing. Never a
-- suppression nor a contact's status.
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::message_status[], $3::text[], $4::text[])
        AS u(id, status, external_message_id, detail)
), moved AS (
    UPDATE messages m
    SET status = u.status,
        error = CASE WHEN u.status = 'bounced' THEN u.detail ELSE m.error END,
        updated_at = now()
    FROM u
    WHERE m.id = u.id AND m.test AND m.status = 'sent' AND m.external_message_id = u.external_message_id
      AND m.created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) AND (SELECT message_ids_created_max($1::uuid[]))
    RETURNING m.id, m.status, m.created_at
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT moved.id, moved.status, u.detail, moved.created_at FROM moved JOIN u ON u.id = moved.id
)
SELECT count(*) FROM moved;

-- name: reclaim_expired_leases
-- Messages whose worker died mid-send go back to queued (and are logged) so they are retried;
-- one that has had $1 attempts already fails instead (a message that kills its worker, or
-- whose outcome can never be written, is not sent forever). A queued one is due only $2
-- seconds later, and keeps its (expired) lease stamp and attempt number until claimed again:
-- a lease also expires when Postgres itself was away, and the worker still holding the
-- message (alive, reconnecting) then writes its outcome or takes it back (record_outcomes,
-- renew_leases) before anyone claims it again.
-- SKIP LOCKED: a row locked by its worker's outcome write or lease renewal under way is
-- left alone (that worker is alive); the reclaim never waits for it nor deadlocks with it.
-- Every partition is looked in, each through its messages_leased; the update then reaches only
-- the partitions the expired messages span.
WITH expired AS (
    SELECT id, created_at FROM messages
    WHERE status = 'sending' AND lease_expires_at < now()
    FOR UPDATE SKIP LOCKED
), reclaimed AS (
    UPDATE messages m
    SET status = CASE WHEN m.attempts >= $1 THEN 'failed'::message_status ELSE 'queued'::message_status END,
        next_attempt_at = CASE WHEN m.attempts >= $1 THEN NULL ELSE now() + make_interval(secs => $2) END,
        updated_at = now(),
        error = CASE WHEN m.attempts >= $1
            THEN format('gave up after %s attempts: the worker handling it stopped each time', m.attempts)
            ELSE 'the worker handling this message stopped; retrying' END
    FROM expired
    WHERE m.id = expired.id AND m.created_at = expired.created_at
      AND m.created_at BETWEEN (SELECT min(created_at) FROM expired) AND (SELECT max(created_at) FROM expired)
    RETURNING m.id, m.status, m.error, m.created_at
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT id, status, error, created_at FROM reclaimed
)
SELECT count(*) FROM reclaimed;

-- name: release_claims
-- Give back claimed messages a stopping worker did not finish (they are retried, not lost);
-- fenced by the claim's attempt number ($2) like record_outcomes.
WITH released AS (
    UPDATE messages m
    SET status = 'queued', lease_expires_at = NULL, updated_at = now(),
        attempts = greatest(m.attempts - 1, 0)
    FROM unnest($1::uuid[], $2::int[]) AS c(id, attempts)
    WHERE m.id = c.id AND m.status = 'sending' AND m.attempts = c.attempts
      AND m.created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) AND (SELECT message_ids_created_max($1::uuid[]))
    RETURNING m.id, m.created_at
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT id, 'queued', 'released by a worker shutting down', created_at FROM released
)
SELECT count(*) FROM released;

-- name: claim_due
-- Claim up to $1 messages whose time has come, oldest due first (queued or scheduled ->
-- sending, attempts + 1, a lease of $2 seconds), log the events, and return with each what
-- rendering and reporting need: the send's variables, request id and notify flag, whether a
-- test key made it (worker/channels/testmode.py), the template body (NULL when the
-- message carries its own content), and for an email whose send has attachments their
-- size in bytes (else NULL). SKIP LOCKED: workers claiming at the same moment take
-- different rows and never wait for each other. Every partition that may hold a due message
-- is looked in (a retry or a scheduled message may be old), each through its messages_due;
-- the update then reaches only the partitions the claimed messages span.
WITH due AS (
    SELECT id, status, created_at FROM messages
    WHERE status IN ('queued', 'scheduled') AND coalesce(next_attempt_at, queue_at, created_at) <= now()
    ORDER BY coalesce(next_attempt_at, queue_at, created_at)
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE messages m
    SET status = 'sending', attempts = m.attempts + 1, updated_at = now(),
        lease_expires_at = now() + make_interval(secs => $2), next_attempt_at = NULL
    FROM due
    WHERE m.id = due.id AND m.created_at = due.created_at
      AND m.created_at BETWEEN (SELECT min(created_at) FROM due) AND (SELECT max(created_at) FROM due)
    RETURNING m.id, m.send_id, m.org_id, m.template_id, m.contact_id, m.channel, m.to_address, m.attempts,
              m.content, m.test, due.status AS was, m.created_at
), logged AS (
    -- A scheduled message passes through queued, as it always has on its timeline.
    INSERT INTO message_events (message_id, status, message_created_at)
    SELECT id, 'queued'::message_status, created_at FROM claimed WHERE was = 'scheduled'
    UNION ALL
    SELECT id, 'sending'::message_status, created_at FROM claimed
)
SELECT c.id, c.send_id, c.org_id, c.template_id, c.contact_id, c.channel, c.to_address, c.attempts, c.content,
       c.test, s.variables, s.notify, s.request_id, t.body AS template_body,
       CASE WHEN c.channel = 'email' THEN
           (SELECT sum(a.size_bytes)::bigint FROM attachments a WHERE a.send_id = c.send_id)
       END AS attachment_bytes
FROM claimed c
JOIN sends s ON s.id = c.send_id
LEFT JOIN templates t ON t.id = c.template_id;

-- name: select_next_due
-- Seconds until the next waiting message falls due, by the database's clock (NULL: none is
-- waiting; negative: due already). One step down messages_due.
SELECT extract(epoch FROM min(coalesce(next_attempt_at, queue_at, created_at)) - clock_timestamp())::float8
FROM messages WHERE status IN ('queued', 'scheduled');

-- name: count_due
-- The backlog: messages due now and not yet claimed (bounded, for a gauge).
SELECT count(*) FROM (
    SELECT 1 FROM messages
    WHERE status IN ('queued', 'scheduled') AND coalesce(next_attempt_at, queue_at, created_at) <= now()
    LIMIT $1
) AS due;

-- name: renew_leases
-- A live worker extends the leases of the messages it still holds (claim $1 with attempt
-- number $2), so that a slow provider never lets the reconciler hand them to another worker.
-- One the reconciler took back while this worker could not reach Postgres, and nobody has
-- claimed since (lease stamp kept, same attempt), is taken back to `sending` and logged:
-- this worker is sending it or has sent it. Returns how many were taken back.
WITH held AS (
    SELECT m.id, m.created_at, m.status AS was
    FROM messages m
    JOIN unnest($1::uuid[], $2::int[]) AS c(id, attempts) ON m.id = c.id AND m.attempts = c.attempts
    WHERE (m.status = 'sending' OR (m.status IN ('queued', 'failed') AND m.lease_expires_at IS NOT NULL))
      AND m.created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) AND (SELECT message_ids_created_max($1::uuid[]))
    -- In id order, as the worker sorts its outcome writes: the two run side by side on the
    -- same rows, and must not deadlock.
    ORDER BY m.id
    FOR UPDATE OF m
), renewed AS (
    UPDATE messages m
    SET lease_expires_at = now() + make_interval(secs => $3),
        status = 'sending',
        next_attempt_at = NULL,
        error = CASE WHEN held.was = 'sending' THEN m.error ELSE NULL END,
        updated_at = CASE WHEN held.was = 'sending' THEN m.updated_at ELSE now() END
    FROM held
    WHERE m.id = held.id AND m.created_at = held.created_at
      AND m.created_at BETWEEN (SELECT message_ids_created_min($1::uuid[])) AND (SELECT message_ids_created_max($1::uuid[]))
    RETURNING m.id, held.was, m.created_at
), logged AS (
    INSERT INTO message_events (message_id, status, detail, message_created_at)
    SELECT id, 'sending', 'taken back by the worker still sending it (it had lost Postgres for a while)', created_at
    FROM renewed WHERE was <> 'sending'
)
SELECT count(*) FROM renewed WHERE was <> 'sending';
