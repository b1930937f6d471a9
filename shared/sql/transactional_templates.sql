-- name: insert_transactional_template
-- An email template of the Transactionals API.
INSERT INTO transactional_templates (id, org_id, name, subject, body, preheader)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: select_transactional_template
-- One template of an org (a template of another org is not found).
SELECT * FROM transactional_templates WHERE id = $1 AND org_id = $2;

-- name: select_transactional_templates_page
-- An org's templates newest first, after the cursor (created_at, id).
SELECT * FROM transactional_templates
WHERE org_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4;
