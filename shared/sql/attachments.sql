-- name: insert_attachments
-- A batch's files, in the transaction that wrote their sends and messages, and only for a send
-- with an email message that may still go out (none for a refused or all-rejected send).
INSERT INTO attachments (id, org_id, send_id, position, filename, content_type, size_bytes, content)
SELECT u.id, u.org_id, u.send_id, u.position, u.filename, u.content_type, octet_length(u.content), u.content
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::smallint[], $5::text[], $6::text[], $7::bytea[])
    AS u(id, org_id, send_id, position, filename, content_type, content)
WHERE EXISTS (
    SELECT 1 FROM messages m
    WHERE m.send_id = u.send_id AND m.channel = 'email' AND m.status IN ('queued', 'scheduled', 'sending')
);

-- name: select_send_attachments
-- A send's files, in the order the request gave them (the worker builds its emails with them).
SELECT id, filename, content_type, content FROM attachments WHERE send_id = $1 ORDER BY position;

-- name: count_send_attachments
-- How many files of a send are still stored.
SELECT count(*) FROM attachments WHERE send_id = $1;

-- name: delete_settled_attachments
-- The reconciler's sweep: erase the files of sends none of whose messages can go out any more
-- (record_outcomes erases most at once; this catches a send settled by two concurrent outcome
-- writes, each seeing the other's message unsettled, and sends canceled or rejected outside it).
WITH erased AS (
    DELETE FROM attachments a
    WHERE NOT EXISTS (
        SELECT 1 FROM messages m
        WHERE m.send_id = a.send_id AND m.status IN ('queued', 'scheduled', 'sending')
    )
    RETURNING 1
)
SELECT count(*) FROM erased;
