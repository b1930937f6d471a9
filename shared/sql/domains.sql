-- name: insert_org_domain
-- Register a sending domain with its key (the private key already encrypted).
INSERT INTO org_domains (id, org_id, domain, selector, private_key_encrypted, public_key_der)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, domain, selector, public_key_der, created_at;

-- name: select_org_domains
-- An org's sending domains, oldest first.
SELECT id, domain, selector, public_key_der, created_at
FROM org_domains WHERE org_id = $1
ORDER BY created_at, id;

-- name: select_org_domain
-- One sending domain of an org.
SELECT id, domain, selector, public_key_der, created_at
FROM org_domains WHERE org_id = $1 AND id = $2;

-- name: delete_org_domain
-- Remove a sending domain (its key goes with it).
DELETE FROM org_domains WHERE org_id = $1 AND id = $2 RETURNING id;

-- name: select_signing_key
-- The worker: the key that signs an org's mail From this domain, if the org registered it.
SELECT id, domain, selector, private_key_encrypted
FROM org_domains WHERE org_id = $1 AND domain = $2;

-- name: select_any_signing_key
-- Start-up: one stored key, to check that SECRET_KEY decrypts it.
SELECT id, private_key_encrypted FROM org_domains ORDER BY created_at LIMIT 1;

-- name: select_org_sender
-- The org's default sender for /api/v1 sends (NULL: the service-wide default).
SELECT from_email, from_name FROM orgs WHERE id = $1;

-- name: update_org_sender
-- Set the org's default sender (the operator, `tidings org update`).
-- $2/$4: whether from_email/from_name is given; an empty value clears it (back to the default).
UPDATE orgs SET
    from_email = CASE WHEN $2::bool THEN NULLIF($3::text, '') ELSE from_email END,
    from_name = CASE WHEN $4::bool THEN NULLIF($5::text, '') ELSE from_name END
WHERE id = $1
RETURNING id, from_email, from_name;
