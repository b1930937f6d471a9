-- name: apply_whatsapp_statuses
-- Apply a batch of WhatsApp status webhooks by wamid, never backwards, and log each applied step.
-- $1 wamids, $2 statuses, $3 Meta's timestamps, $4 details (the error text for `failed`),
-- $5 precedence (the batch winner per message is the highest: read over delivered over sent,
-- failed over all), $6 the progress order (shared.domain.STATUS_RANK, lowest first).
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::message_status[], $3::timestamptz[], $4::text[], $5::int[])
        AS u(wamid, status, at, detail, precedence)
), locked AS (
    -- Lock first, in id order: the old status read here is the one the update replaces, and two
    -- webhook batches naming the same messages cannot deadlock.
    SELECT m.id, m.created_at, m.external_message_id, m.status AS old_status
    FROM messages m
    -- Only WhatsApp messages: an email's Message-ID is an external id too, and a signed status
    -- naming one (by accident or by a forged wamid) must not move that email.
    WHERE m.external_message_id = ANY($1::text[]) AND m.channel = 'whatsapp'
    ORDER BY m.id
    FOR UPDATE
), applicable AS (
    -- Progress only moves forward (a late `delivered` after `read` is dropped); `failed` may
    -- follow `sent` or `delivered` (Meta reports most undeliverable numbers that way).
    SELECT l.id, l.created_at, u.status, u.at, u.detail, u.precedence
    FROM locked l
    JOIN u ON u.wamid = l.external_message_id
    WHERE (u.status = 'failed' AND l.old_status IN ('sent', 'delivered'))
       OR array_position($6::message_status[], l.old_status) < array_position($6::message_status[], u.status)
), winner AS (
    -- One row per message: UPDATE ... FROM with several matches would apply an arbitrary one.
    SELECT DISTINCT ON (id) id, created_at, status, at, detail, precedence
    FROM applicable
    ORDER BY id, precedence DESC, at DESC
), updated AS (
    UPDATE messages m
    SET status = w.status,
        error = CASE WHEN w.status = 'failed' THEN w.detail ELSE m.error END,
        updated_at = now()
    FROM winner w
    WHERE m.id = w.id AND m.created_at = w.created_at
    RETURNING m.id, w.precedence
), logged AS (
    -- Every step the batch moved a message through (delivered and read both, when Meta batched
    -- them), at Meta's time, in progress order.
    INSERT INTO message_events (message_id, status, at, detail, message_created_at)
    SELECT DISTINCT ON (a.id, a.status) a.id, a.status, a.at, a.detail, a.created_at
    FROM applicable a
    JOIN updated up ON up.id = a.id
    WHERE a.precedence <= up.precedence
    ORDER BY a.id, a.status, a.at
    RETURNING message_id
)
SELECT (SELECT count(*) FROM updated) AS messages_updated, (SELECT count(*) FROM logged) AS events_logged;
