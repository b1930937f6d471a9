-- name: ping
-- Readiness: Postgres answers a statement on a pooled connection.
SELECT 1;

-- name: plan_for_these_values
-- This transaction's statements are planned for their values, never generically (shared/db.py fetch_custom_planned).
SET LOCAL plan_cache_mode = force_custom_plan;
