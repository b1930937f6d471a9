-- Message search across both surfaces (GET /orgs/{org_id}/messages), the /api/v1 list of
-- transactionals, and retention (an org's bodies and variables erased after some days).
-- docs/design.md ("Message search") shows the plans these indexes give.

-- Test mode marks its messages (0008 adds the column); repeated here, idempotently, because
-- every search index below includes it.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS test boolean NOT NULL DEFAULT false;

-- The search's one order is newest first, (created_at, id) descending, the keyset cursor's
-- key; every query names its org and its mode (a key sees only its own mode's messages).
-- So each index is (org_id, test, <equality filter>, created_at DESC, id DESC): the filter
-- and the cursor are both index conditions and a page is LIMIT rows read in order, however
-- deep the page and however many million messages the org has.
-- No filter, or filters too common to deserve an index (channel, source): the org's timeline.
CREATE INDEX IF NOT EXISTS messages_org_recent ON messages (org_id, test, created_at DESC, id DESC);
-- ?to=: every message to one address, across broadcasts and /api/v1 (support's first question).
-- lower(): email addresses are found whatever their case.
CREATE INDEX IF NOT EXISTS messages_org_to_recent
    ON messages (org_id, test, lower(to_address), created_at DESC, id DESC);
-- ?status=: the rare statuses (failed, bounced, complained, canceled) are what people look
-- for, and without this a page of them walks the org's whole history past the sent ones.
CREATE INDEX IF NOT EXISTS messages_org_status_recent ON messages (org_id, test, status, created_at DESC, id DESC);
-- ?broadcast_id= uses messages_broadcast_recent (0001): a broadcast belongs to one org.

-- The /api/v1 list of transactionals, newest first (its keyset cursor's order).
CREATE INDEX IF NOT EXISTS transactionals_org_recent ON transactionals (org_id, created_at DESC, id DESC);

-- Retention: NULL = the service-wide RETENTION_DAYS. Set by the operator, not the tenant.
ALTER TABLE orgs ADD COLUMN IF NOT EXISTS retention_days integer CHECK (retention_days > 0);
-- When the reconciler erased this message's content (its send's variables, its transactional's
-- subject and body, its own rendered content); NULL: not yet.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS erased_at timestamptz;
-- The retention sweep's scan: per org, the oldest messages not yet erased. Partial, so erased
-- history drops out of it and the scan never walks it again.
CREATE INDEX IF NOT EXISTS messages_unerased ON messages (org_id, created_at) WHERE erased_at IS NULL;
