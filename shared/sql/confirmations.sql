-- name: lock_confirmation
-- A confirmation link being followed, with its subscriber's state (both rows held).
SELECT cf.token, cf.org_id, cf.contact_id, cf.confirmation_template_id, cf.expires_at, cf.confirmed_at,
       c.confirmed_at AS contact_confirmed_at, cf.expires_at <= now() AS expired
FROM confirmations cf JOIN contacts c ON c.id = cf.contact_id
WHERE cf.token = $1
FOR UPDATE OF cf, c;

-- name: confirm_subscriber
-- The link is followed in time: the link and the subscriber are confirmed; a subscriber who
-- had unsubscribed has just asked to subscribe again.
WITH link AS (
    UPDATE confirmations SET confirmed_at = now() WHERE token = $1
)
UPDATE contacts
SET confirmed_at = coalesce(confirmed_at, now()),
    status = CASE WHEN status = 'unsubscribed' THEN 'subscribed'::contact_status ELSE status END,
    updated_at = now()
WHERE id = $2;

-- name: insert_confirmation_template
-- Page copy for the confirmation page, per state.
INSERT INTO confirmation_templates (id, org_id, name, pages, is_default)
VALUES ($1, $2, $3, $4, $5)
RETURNING *;

-- name: clear_default_confirmation_template
-- Another template becomes the org's default: this one stops being it.
UPDATE confirmation_templates SET is_default = false, updated_at = now()
WHERE org_id = $1 AND is_default;

-- name: select_confirmation_template
-- One confirmation template of an org.
SELECT * FROM confirmation_templates WHERE id = $1 AND org_id = $2;

-- name: select_confirmation_pages
-- The copy a confirmation page may use: the link's own template, then the org's default.
SELECT (SELECT pages FROM confirmation_templates WHERE id = $2 AND org_id = $1) AS chosen,
       (SELECT pages FROM confirmation_templates WHERE org_id = $1 AND is_default) AS org_default;

-- name: insert_confirmations
-- Many double opt-in links at once (a batch of transactionals): token, org, subscriber, page copy, expiry.
INSERT INTO confirmations (token, org_id, contact_id, confirmation_template_id, expires_at)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[]);
