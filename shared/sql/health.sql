-- name: ping
-- Readiness: Postgres answers a statement on a pooled connection.
SELECT 1;
