-- name: insert_unsubscribe_tokens
-- Many links at once (the Broadcasts API's batched sends): token, org, address, contact.
INSERT INTO unsubscribe_tokens (token, org_id, email, contact_id)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::uuid[]);

-- name: select_unsubscribe_token
-- An unsubscribe link being opened, with the org's name for the page and the state of the
-- contact it names (the contact it was sent to, else the one owning the address).
SELECT t.token, t.org_id, t.email, t.contact_id, t.used_at, o.name AS org_name,
       coalesce(
           (SELECT c.status FROM contacts c WHERE c.id = t.contact_id),
           (SELECT c.status FROM contact_channels ch JOIN contacts c ON c.id = ch.contact_id
            WHERE ch.org_id = t.org_id AND ch.type = 'email' AND ch.address = t.email)
       ) AS contact_status
FROM unsubscribe_tokens t JOIN orgs o ON o.id = t.org_id
WHERE t.token = $1;

-- name: mark_unsubscribe_token_used
-- Remember when a link was first used.
UPDATE unsubscribe_tokens SET used_at = coalesce(used_at, now()) WHERE token = $1;
