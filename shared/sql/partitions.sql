-- name: set_lock_timeout
-- This transaction waits at most $1 (e.g. '500ms') for a lock: partition chores give way to the hot path.
SELECT set_config('lock_timeout', $1, true);

-- name: make_message_partitions
-- Partitions of messages and message_events $2 days wide until one reaches $1 days from now
-- (make_message_partitions in 0017); returns how many were made.
SELECT make_message_partitions(now() + make_interval(days => $1), make_interval(days => $2));

-- name: select_expired_partitions
-- Partitions of messages whose every row is older than $1 days (upper bound at or before
-- now - $1 days), oldest first.
SELECT name, upper_bound FROM message_partitions
WHERE upper_bound <= now() - make_interval(days => $1)
ORDER BY upper_bound;

-- name: drop_message_partition
-- Drop partition $1 with its events and transactionals unless it holds unsettled messages;
-- returns how many kept it (0: dropped).
SELECT drop_message_partition($1);

-- name: select_message_partitions
-- Every partition of messages with its bounds, oldest first (lower bound NULL: the one below them all).
SELECT name, lower_bound, upper_bound FROM message_partitions ORDER BY upper_bound;
