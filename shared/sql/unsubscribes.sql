-- name: insert_unsubscribe_token
-- A new unsubscribe link for an address (and the subscriber owning it, when there is one).
INSERT INTO unsubscribe_tokens (token, org_id, email, contact_id) VALUES ($1, $2, $3, $4);

-- name: select_unsubscribe_token
-- An unsubscribe link being opened, with the org's name for the page and the address's state.
SELECT t.token, t.org_id, t.email, t.used_at, o.name AS org_name,
       (SELECT c.status FROM contact_channels ch JOIN contacts c ON c.id = ch.contact_id
        WHERE ch.org_id = t.org_id AND ch.type = 'email' AND ch.address = t.email) AS contact_status
FROM unsubscribe_tokens t JOIN orgs o ON o.id = t.org_id
WHERE t.token = $1;

-- name: mark_unsubscribe_token_used
-- Remember when a link was first used.
UPDATE unsubscribe_tokens SET used_at = coalesce(used_at, now()) WHERE token = $1;
