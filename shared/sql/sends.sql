-- name: insert_send
-- One trigger: who, where from, and the variables resolved for rendering.
INSERT INTO sends (id, org_id, broadcast_id, contact_id, source, request_id, variables)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: insert_messages
-- The messages of one send (one per template fired), in one statement.
INSERT INTO messages (id, send_id, org_id, broadcast_id, template_id, contact_id, contact_channel_id,
                      channel, to_address, status, source, error)
SELECT u.id, $1, $2, $3, u.template_id, $4, u.contact_channel_id, u.channel, u.to_address, u.status, $5, u.error
FROM unnest($6::uuid[], $7::uuid[], $8::uuid[], $9::channel[], $10::text[], $11::message_status[], $12::text[])
    AS u(id, template_id, contact_channel_id, channel, to_address, status, error);

-- name: insert_events
-- Timeline entries for several messages at once.
INSERT INTO message_events (message_id, status, detail)
SELECT * FROM unnest($1::uuid[], $2::message_status[], $3::text[]);

-- name: select_suppression
-- Whether an address is on the org's suppression list, and why.
SELECT reason FROM suppressions WHERE org_id = $1 AND email = $2;

-- name: insert_suppression
-- Suppress an address (a hard bounce, a complaint, or by hand); the first reason stays.
INSERT INTO suppressions (org_id, email, reason, detail) VALUES ($1, $2, $3, $4)
ON CONFLICT (org_id, email) DO NOTHING;
