-- name: insert_contact
-- Create a contact (its channels are inserted separately).
INSERT INTO contacts (id, org_id, name, status, properties)
VALUES ($1, $2, $3, $4, $5)
RETURNING *;

-- name: select_contact
-- One contact of an org.
SELECT * FROM contacts WHERE id = $1 AND org_id = $2;

-- name: update_contact
-- Change name, status, properties; $6 says whether name was given (it may be set to NULL).
UPDATE contacts
SET name = CASE WHEN $6 THEN $3 ELSE name END,
    status = coalesce($4, status),
    properties = coalesce($5, properties),
    updated_at = now()
WHERE id = $1 AND org_id = $2
RETURNING *;

-- name: select_contact_channels
-- The channels of some contacts, oldest first (the first of each type is the contact's address).
SELECT id, contact_id, type, address FROM contact_channels
WHERE contact_id = ANY($1::uuid[]) ORDER BY created_at, id;

-- name: insert_contact_channel
-- Add a channel; returns nothing when the org already has this address (see the unique key).
INSERT INTO contact_channels (id, org_id, contact_id, type, address)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT ON CONSTRAINT contact_channels_org_address DO NOTHING
RETURNING id, contact_id, type, address;

-- name: select_channel_with_contact
-- One channel of an org with its contact's status, name and properties.
SELECT ch.id, ch.contact_id, ch.type, ch.address, c.status, c.name, c.properties
FROM contact_channels ch JOIN contacts c ON c.id = ch.contact_id
WHERE ch.id = $1 AND ch.org_id = $2;

-- name: select_contact_by_addresses
-- The contact owning an email (preferred) or a phone in an org, with all its channels, in one trip.
SELECT c.id, c.org_id, c.name, c.status, c.properties, c.created_at, c.updated_at,
       (SELECT jsonb_agg(jsonb_build_object('id', ch.id, 'contact_id', ch.contact_id, 'type', ch.type,
                                            'address', ch.address) ORDER BY ch.created_at, ch.id)
        FROM contact_channels ch WHERE ch.contact_id = c.id) AS channels
FROM contacts c
WHERE c.id = (
    SELECT contact_id FROM contact_channels
    WHERE org_id = $1 AND ((type = 'email' AND address = $2) OR (type = 'whatsapp' AND address = $3))
    ORDER BY type = 'email' DESC
    LIMIT 1
);

-- name: select_contacts_by_addresses_batch
-- `select_contact_by_addresses` for many (email, phone) pairs of an org at once (a batch's
-- recipients), in input order; a pair no contact owns has a row of NULLs.
SELECT c.id, c.org_id, c.name, c.status, c.properties, c.created_at, c.updated_at,
       (SELECT jsonb_agg(jsonb_build_object('id', ch.id, 'contact_id', ch.contact_id, 'type', ch.type,
                                            'address', ch.address) ORDER BY ch.created_at, ch.id)
        FROM contact_channels ch WHERE ch.contact_id = c.id) AS channels
FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(email, phone, n)
LEFT JOIN LATERAL (
    SELECT contact_id FROM contact_channels
    WHERE org_id = $1 AND ((type = 'email' AND address = u.email) OR (type = 'whatsapp' AND address = u.phone))
    ORDER BY type = 'email' DESC
    LIMIT 1
) owner ON true
LEFT JOIN contacts c ON c.id = owner.contact_id
ORDER BY u.n;
