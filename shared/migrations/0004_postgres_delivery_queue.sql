-- Delivery is driven from Postgres: workers claim due messages in batches (worker/pump.py)
-- instead of running one arq job per send. Redis only rings a doorbell.

-- Someone is waiting for this send's outcome (`background: false`, `tidings send --wait`):
-- the worker publishes it on Redis once the send's messages are settled.
ALTER TABLE sends ADD COLUMN notify boolean NOT NULL DEFAULT false;

-- The claim's scan: messages waiting to go out, in the order they fall due (a retry's
-- next attempt, a scheduled message's queue_at, else when it was accepted).
CREATE INDEX messages_due ON messages ((coalesce(next_attempt_at, queue_at, created_at)))
    WHERE status IN ('queued', 'scheduled');

-- The reconciler's scan for leases that expired with their worker.
CREATE INDEX messages_leased ON messages (lease_expires_at) WHERE status = 'sending';

-- Both replaced by messages_due (one index less to maintain on every status change).
DROP INDEX messages_unsettled;
DROP INDEX messages_scheduled_due;
