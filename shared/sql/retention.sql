-- name: select_retention_cutoffs
-- Every org with the moment before which its messages' content is erased: its own
-- retention_days, else the service-wide default ($1 days).
SELECT id, now() - make_interval(days => coalesce(retention_days, $1)) AS cutoff FROM orgs;

-- name: erase_expired_content
-- Erase the content of up to $3 messages of org $1 created before $2 and done with (no longer
-- scheduled, queued or sending: rendering needs nothing from them again): the message's own
-- rendered content, its transactional's subject, body, preheader and recipient name, and its
-- send's variables once every message of that send is done. Status, timestamps, addresses and
-- events are kept. One short statement per batch: SKIP LOCKED leaves a row a worker or a
-- webhook is updating for the next run, and the hot path never waits on this.
-- The rows are passed on as arrays (= ANY): each table is then reached through its primary key
-- (or messages_send), whatever the planner guesses of the batch's size, never by a scan.
WITH batch AS (
    SELECT array_agg(id) AS ids FROM (
        SELECT id FROM messages
        WHERE org_id = $1 AND erased_at IS NULL AND created_at < $2
          AND status NOT IN ('scheduled', 'queued', 'sending')
        ORDER BY created_at
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) AS due
), erased AS (
    UPDATE messages m SET content = NULL, erased_at = now()
    WHERE m.id = ANY((SELECT ids FROM batch)::uuid[]) AND m.created_at < $2
    RETURNING m.id, m.send_id
), erased_ids AS (
    SELECT array_agg(id) AS ids, array_agg(DISTINCT send_id) AS send_ids FROM erased
), transactionals_erased AS (
    UPDATE transactionals t SET subject = NULL, body = NULL, preheader = NULL, recipient_name = NULL
    WHERE t.id = ANY((SELECT ids FROM erased_ids)::uuid[])
), sends_erased AS (
    -- A send fans out into several messages; a sibling still on its way needs the variables.
    UPDATE sends s SET variables = '{}'::jsonb
    WHERE s.id = ANY((SELECT send_ids FROM erased_ids)::uuid[]) AND s.variables <> '{}'::jsonb
      AND NOT EXISTS (
          -- OFFSET 0 keeps this a per-send look-up through messages_send (the planner may not
          -- turn it into an anti-join, which could scan messages for the statuses instead).
          SELECT 1 FROM messages o
          WHERE o.send_id = s.id AND o.status IN ('scheduled', 'queued', 'sending')
          OFFSET 0
      )
)
SELECT count(*) FROM erased;
