-- name: claim_webhook_deliveries
-- Claim up to $1 due deliveries, at most $3 being posted per endpoint at once (across every
-- worker: an endpoint's row is held while its deliveries are claimed, and a claim that finds
-- it held skips it), each leased for $2 seconds and counted as an attempt. Endpoints in random
-- order, so that one with a long backlog cannot starve the others. A claimed delivery is due
-- again when its lease runs out (its worker died). Returns with each what
-- posting it needs: the event, the url and the secrets that sign (the previous one while its
-- overlap lasts).
WITH endpoints AS (
    SELECT e.id, e.url, e.secret,
           CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret,
           $3 - (SELECT count(*) FROM webhook_deliveries b
                 WHERE b.endpoint_id = e.id AND b.status = 'pending' AND b.lease_expires_at > now()) AS room
    FROM webhook_endpoints e
    WHERE e.enabled
      -- Evaluated once: with nothing due anywhere, the claim is one index probe.
      AND EXISTS (SELECT 1 FROM webhook_deliveries n WHERE n.status = 'pending' AND n.next_attempt_at <= now())
      AND EXISTS (SELECT 1 FROM webhook_deliveries d
                  WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                    AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now()))
    FOR NO KEY UPDATE OF e SKIP LOCKED
), picked AS (
    SELECT p.id, en.url, en.secret, en.previous_secret
    FROM (SELECT * FROM endpoints WHERE room > 0 ORDER BY random()) en
    CROSS JOIN LATERAL (
        SELECT d.id FROM webhook_deliveries d
        WHERE d.endpoint_id = en.id AND d.status = 'pending' AND d.next_attempt_at <= now()
          AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
        ORDER BY d.next_attempt_at
        LIMIT en.room
        FOR UPDATE OF d SKIP LOCKED
    ) p
    LIMIT $1
), claimed AS (
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, lease_expires_at = now() + $2 * interval '1 second',
        next_attempt_at = now() + $2 * interval '1 second', updated_at = now()
    FROM picked
    WHERE d.id = picked.id
    RETURNING d.id, d.event_id, d.endpoint_id, d.attempts, d.created_at, picked.url, picked.secret, picked.previous_secret
)
SELECT c.id, c.event_id, c.endpoint_id, c.attempts, c.created_at, c.url, c.secret, c.previous_secret,
       ev.type, ev.data, ev.occurred_at
FROM claimed c JOIN webhook_events ev ON ev.id = c.event_id;

-- name: record_webhook_successes
-- Attempts that answered 2xx (ids, the claims' attempt numbers, the answers' statuses): the
-- deliveries succeeded, and their endpoints are no longer failing. Fenced by the attempt
-- number: an attempt whose lease ran out and was taken over writes nothing.
WITH done AS (
    UPDATE webhook_deliveries d
    SET status = 'succeeded', last_response_status = c.response_status, last_error = NULL,
        next_attempt_at = NULL, lease_expires_at = NULL, updated_at = now()
    FROM unnest($1::uuid[], $2::int[], $3::int[]) AS c(id, attempts, response_status)
    WHERE d.id = c.id AND d.attempts = c.attempts AND d.status = 'pending'
    RETURNING d.endpoint_id
)
UPDATE webhook_endpoints e SET failing_since = NULL
FROM (SELECT DISTINCT endpoint_id FROM done) ok
WHERE e.id = ok.endpoint_id AND e.failing_since IS NOT NULL;

-- name: record_webhook_failure
-- An attempt failed ($3: the answer's status, if any; $4: why): pending again after $5
-- seconds, or failed when $5 is NULL (no retry left). Fenced like record_webhook_successes. The
-- endpoint's failing streak starts now if it was not failing; one that has failed without a
-- success for $6 seconds is disabled, saying why ($7). Returns whether this disabled it.
WITH done AS (
    UPDATE webhook_deliveries
    SET status = CASE WHEN $5::float8 IS NULL THEN 'failed' ELSE 'pending' END,
        last_response_status = $3, last_error = $4,
        next_attempt_at = now() + $5::float8 * interval '1 second',
        lease_expires_at = NULL, updated_at = now()
    WHERE id = $1 AND attempts = $2 AND status = 'pending'
    RETURNING endpoint_id
), before AS (
    SELECT e.id, e.failing_since,
           coalesce(e.enabled AND e.failing_since <= now() - $6::float8 * interval '1 second', false) AS disable
    FROM webhook_endpoints e JOIN done ON e.id = done.endpoint_id
), changed AS (
    UPDATE webhook_endpoints e
    SET failing_since = coalesce(e.failing_since, now()),
        enabled = e.enabled AND NOT b.disable,
        disabled_reason = CASE WHEN b.disable THEN $7 ELSE e.disabled_reason END,
        updated_at = CASE WHEN b.disable THEN now() ELSE e.updated_at END
    FROM before b
    WHERE e.id = b.id AND (b.failing_since IS NULL OR b.disable)
)
SELECT id, disable AS disabled_now, failing_since FROM before;

-- name: release_webhook_deliveries
-- A stopping worker gives back the deliveries it did not finish: due again at once, their
-- attempt still counted (it may have reached the endpoint).
UPDATE webhook_deliveries d
SET lease_expires_at = NULL, next_attempt_at = now(), updated_at = now()
FROM unnest($1::uuid[], $2::int[]) AS c(id, attempts)
WHERE d.id = c.id AND d.attempts = c.attempts AND d.status = 'pending';

-- name: select_webhook_backlog
-- Pending deliveries by the state of their endpoint (for the backlog gauge), and events made
-- in the last five minutes by type.
SELECT 'backlog' AS kind,
       CASE WHEN NOT e.enabled THEN 'disabled' WHEN e.failing_since IS NOT NULL THEN 'failing' ELSE 'healthy' END
           AS label,
       count(*) AS n
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.status = 'pending'
GROUP BY 2
UNION ALL
SELECT 'events', type, count(*) FROM webhook_events WHERE created_at > now() - interval '5 minutes' GROUP BY type;

-- name: prune_webhook_outbox
-- Events and deliveries older than $1 seconds go (the delivery log keeps that long), at most
-- $2 of each per statement. A delivery still pending then (its endpoint disabled for that
-- long) goes too.
WITH events AS (
    DELETE FROM webhook_events
    WHERE id IN (SELECT id FROM webhook_events WHERE created_at < now() - $1::float8 * interval '1 second' LIMIT $2)
    RETURNING 1
), deliveries AS (
    DELETE FROM webhook_deliveries
    WHERE id IN (
        SELECT id FROM webhook_deliveries WHERE created_at < now() - $1::float8 * interval '1 second' LIMIT $2
    )
    RETURNING 1
)
SELECT (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM deliveries) AS deliveries;
