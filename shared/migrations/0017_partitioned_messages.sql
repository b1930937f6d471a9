-- Messages and their events partitioned by time (issue #19, "a database that stays small and
-- fast"): history is removed by dropping whole partitions (shared/partitions.py) instead of
-- deleting rows, and every hot-path statement reaches only the partition it needs.
-- docs/design.md ("Partitioned messages") has the choices and the plans.
--
-- - messages: RANGE on created_at. Existing rows keep their random (v4) ids, so the id
--   cannot be the key; new message ids are UUIDv7 (shared/ids.py new_message_id) and a new
--   message's created_at is its id's own millisecond timestamp (uuid_v7_time below), so a
--   statement that knows only an id still names its partition: created_at BETWEEN
--   message_created_min(id) AND message_created_max(id) (one partition for a v7 id, every
--   partition for an old v4 one).
-- - message_events: RANGE on message_created_at, its message's created_at, carried on the
--   event: a message and its events live in partitions of the same range, dropped together,
--   and a timeline read prunes to one partition.
-- - Partitions are weekly by default (MESSAGE_PARTITION_DAYS), made ahead by the reconciler
--   (make_message_partitions) and by this migration. One partition below them all holds
--   whatever is older than the first week (rows written with an old created_at).
--
-- Everything in one transaction (the migration's): the tables are swapped under their old
-- names with their rows, indexes, keys and triggers, so a reader sees the old tables or the new.

-- The millisecond timestamp of a UUIDv7 (RFC 9562: the first 48 bits), NULL for any other
-- version (or NULL). IMMUTABLE: folded into a constant when the id is one, so the planner
-- prunes. Not STRICT, and one expression, so that Postgres inlines it (a called SQL function
-- costs several microseconds a row; the accept path computes it for every message).
CREATE FUNCTION uuid_v7_time(p_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN get_byte(uuid_send(p_id), 6) >> 4 = 7
                THEN to_timestamp(('x' || encode(substring(uuid_send(p_id) FROM 1 FOR 6), 'hex'))::bit(48)::bigint
                                  / 1000.0)
           END
$$;
-- The range a message's created_at lies in, knowing only its id: exactly its id's time for a
-- v7 id; anything for another (written before this migration, or by hand).
CREATE FUNCTION message_created_min(p_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT coalesce(uuid_v7_time(p_id), '-infinity'::timestamptz) $$;
CREATE FUNCTION message_created_max(p_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT coalesce(uuid_v7_time(p_id), 'infinity'::timestamptz) $$;

-- The upper bound of a partition (NULL for a table that is not one).
CREATE FUNCTION partition_upper_bound(p_table regclass) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'))[1]::timestamptz
    FROM pg_class c WHERE c.oid = p_table
$$;

-- ---- messages ----

ALTER TABLE transactionals DROP CONSTRAINT transactionals_id_fkey;

CREATE TABLE messages_partitioned (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
CREATE TABLE message_events_partitioned (
    LIKE message_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY,
    message_created_at timestamptz NOT NULL
) PARTITION BY RANGE (message_created_at);

DO $$
DECLARE
    -- The first week: the one of the oldest message (or this one), Monday 00:00 UTC.
    v_oldest timestamptz;
    v_newest timestamptz;
    v_lower timestamptz;
    v_until timestamptz;
BEGIN
    SELECT min(created_at), max(created_at) INTO v_oldest, v_newest FROM messages;
    v_lower := date_trunc('week', least(now(), v_oldest) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    -- Four weeks ahead (the reconciler keeps them so), or past the newest row (a clock that ran ahead).
    v_until := greatest(now() + interval '28 days', v_newest);
    EXECUTE format('CREATE TABLE messages_p_min PARTITION OF messages_partitioned FOR VALUES FROM (MINVALUE) TO (%L)',
                   v_lower);
    EXECUTE format('CREATE TABLE message_events_p_min PARTITION OF message_events_partitioned'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', v_lower);
    WHILE v_lower < v_until LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF messages_partitioned FOR VALUES FROM (%L) TO (%L)',
                       'messages_p' || to_char(v_lower AT TIME ZONE 'UTC', 'YYYYMMDD'), v_lower, v_lower + interval '7 days');
        EXECUTE format('CREATE TABLE %I PARTITION OF message_events_partitioned FOR VALUES FROM (%L) TO (%L)',
                       'message_events_p' || to_char(v_lower AT TIME ZONE 'UTC', 'YYYYMMDD'), v_lower,
                       v_lower + interval '7 days');
        v_lower := v_lower + interval '7 days';
    END LOOP;
END
$$;

INSERT INTO messages_partitioned SELECT * FROM messages;
-- Each event with its message's created_at. A message's acceptance event (its first) is
-- stamped with that created_at: that is how a timeline read tells a stored acceptance event
-- from a message accepted `queued`, whose acceptance is no longer stored (shared/messages.py).
INSERT INTO message_events_partitioned (id, message_id, status, at, detail, message_created_at)
OVERRIDING SYSTEM VALUE
SELECT e.id, e.message_id, e.status,
       CASE WHEN e.id = min(e.id) OVER (PARTITION BY e.message_id) AND m.created_at IS NOT NULL
            THEN m.created_at ELSE e.at END,
       e.detail, coalesce(m.created_at, e.at)
FROM message_events e
LEFT JOIN messages m ON m.id = e.message_id;
SELECT setval(pg_get_serial_sequence('message_events_partitioned', 'id'),
              greatest((SELECT max(id) FROM message_events_partitioned), 1));

DROP TABLE message_events;
DROP TABLE messages;
ALTER TABLE messages_partitioned RENAME TO messages;
ALTER TABLE message_events_partitioned RENAME TO message_events;
ALTER SEQUENCE message_events_partitioned_id_seq RENAME TO message_events_id_seq;

-- Keys: the primary key includes the partition key (Postgres requires it of a unique index).
ALTER TABLE messages ADD PRIMARY KEY (id, created_at);
ALTER TABLE messages ADD FOREIGN KEY (send_id) REFERENCES sends ON DELETE CASCADE;
ALTER TABLE messages ADD FOREIGN KEY (contact_channel_id) REFERENCES contact_channels ON DELETE SET NULL;
-- The indexes of 0001-0014, per partition, except messages_broadcast_recent (0001):
-- messages_org_broadcast_recent (0014) answers every query it did (a broadcast is one org's),
-- and is one index less to write per message.
CREATE INDEX messages_send ON messages (send_id);
CREATE INDEX messages_external_id ON messages (external_message_id) WHERE external_message_id IS NOT NULL;
CREATE INDEX messages_due ON messages ((coalesce(next_attempt_at, queue_at, created_at)))
    WHERE status IN ('queued', 'scheduled');
CREATE INDEX messages_leased ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX messages_org_recent ON messages (org_id, test, created_at DESC, id DESC);
CREATE INDEX messages_org_to_recent ON messages (org_id, test, lower(to_address), created_at DESC, id DESC);
CREATE INDEX messages_org_status_recent ON messages (org_id, test, status, created_at DESC, id DESC);
CREATE INDEX messages_org_broadcast_recent ON messages (org_id, test, broadcast_id, created_at DESC, id DESC);
CREATE INDEX messages_unerased ON messages (org_id, created_at) WHERE erased_at IS NULL;

-- message_events: no primary key. Events are only ever read by their message (this index);
-- a unique index on the id would be one more index entry written per event for nothing.
CREATE INDEX message_events_message ON message_events (message_id, id);

-- ---- What referred to the old tables ----

-- transactionals.id -> messages: a foreign key to a partitioned table must name its whole
-- key (id, created_at), so it goes; a transactional goes with its message instead: on delete
-- (below) and with its message's partition (drop_message_partition).
CREATE OR REPLACE FUNCTION message_events_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- = ANY(ARRAY(...)): an index scan whatever the planner guesses of the transition table
    -- (a cascade from sends deletes a few messages at a time, many times over).
    DELETE FROM message_events WHERE message_id = ANY (ARRAY(SELECT id FROM deleted_messages));
    DELETE FROM transactionals WHERE id = ANY (ARRAY(SELECT id FROM deleted_messages));
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_delete_events
    AFTER DELETE ON messages
    REFERENCING OLD TABLE AS deleted_messages
    FOR EACH STATEMENT EXECUTE FUNCTION message_events_cascade();

-- broadcasts: ON DELETE SET NULL on messages.broadcast_id, now through
-- messages_org_broadcast_recent (the broadcast's org and both modes name its entries).
CREATE OR REPLACE FUNCTION messages_forget_broadcasts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE messages SET broadcast_id = NULL
    WHERE org_id = ANY (ARRAY(SELECT org_id FROM deleted_broadcasts)) AND test IN (false, true)
      AND broadcast_id = ANY (ARRAY(SELECT id FROM deleted_broadcasts))
      AND EXISTS (SELECT 1 FROM sends s WHERE s.id = messages.send_id);
    RETURN NULL;
END
$$;

-- The webhook trigger (0007) probes each event's message by its whole key: one partition.
CREATE OR REPLACE FUNCTION webhook_message_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The common case costs one probe: no enabled endpoint anywhere.
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
        RETURN NULL;
    END IF;
    WITH relevant AS (
        SELECT n.id AS seq, n.message_id, n.message_created_at, n.status, n.at, n.detail
        FROM new_message_events n
        WHERE n.status IN ('sent', 'delivered', 'read', 'failed', 'bounced', 'complained', 'rejected')
    ), fresh AS (
        SELECT m.org_id,
               m.id AS message_id,
               'message.' || r.status::text AS type,
               r.at,
               (to_jsonb(m) - 'content' - 'lease_expires_at' - 'next_attempt_at' - 'queue_at')
                   || jsonb_build_object('status', r.status, 'updated_at', r.at)
                   || CASE WHEN r.status = 'bounced'
                           THEN jsonb_build_object('bounce', jsonb_build_object('type', 'hard', 'diagnostic', r.detail))
                           ELSE '{}'::jsonb END AS data,
               r.seq
        FROM relevant r
        -- LATERAL: one primary-key probe per event, in its message's partition only (run-time
        -- pruning on created_at). The planner has no statistics for a transition table and
        -- would otherwise hash-join against the whole messages table (LIMIT keeps the
        -- subquery from being flattened into such a join).
        CROSS JOIN LATERAL (
            SELECT * FROM messages WHERE id = r.message_id AND created_at = r.message_created_at LIMIT 1
        ) m
        WHERE EXISTS (
            SELECT 1 FROM webhook_endpoints e
            WHERE e.org_id = m.org_id AND e.enabled
              AND (cardinality(e.events) = 0 OR 'message.' || r.status::text = ANY (e.events))
        )
    ), created AS (
        INSERT INTO webhook_events (id, org_id, type, subject_id, data, occurred_at)
        SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), org_id, type, message_id, data, at
        FROM fresh ORDER BY seq
        RETURNING id, org_id, type
    )
    INSERT INTO webhook_deliveries (event_id, endpoint_id)
    SELECT c.id, e.id
    FROM created c
    JOIN webhook_endpoints e
      ON e.org_id = c.org_id AND e.enabled AND (cardinality(e.events) = 0 OR c.type = ANY (e.events));
    RETURN NULL;
END
$$;
CREATE TRIGGER message_events_webhooks
    AFTER INSERT ON message_events
    REFERENCING NEW TABLE AS new_message_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_message_events();

-- ---- Partitions: made ahead, dropped when expired ----

-- Every partition of messages with its bounds (the one below them all: lower NULL).
CREATE VIEW message_partitions AS
SELECT c.relname::text AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\)'))[1]::timestamptz AS lower_bound,
       partition_upper_bound(c.oid) AS upper_bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'messages'::regclass;

-- Make partitions of messages and message_events `p_width` wide, each beginning where the
-- last one ends, until one reaches past `p_until`. Returns how many were made. Several
-- reconcilers may run it at once: the advisory lock makes them take turns (the second
-- finds nothing to do). A table is made on its own and then attached: ATTACH takes only a
-- SHARE UPDATE EXCLUSIVE lock on the parent, which the hot path's writes do not wait for.
CREATE FUNCTION make_message_partitions(p_until timestamptz, p_width interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_lower timestamptz;
    v_upper timestamptz;
    v_suffix text;
    v_made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(1953063012, 17);
    SELECT max(upper_bound) INTO v_lower FROM message_partitions;
    WHILE v_lower < p_until LOOP
        v_upper := v_lower + p_width;
        v_suffix := to_char(v_lower AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF to_char(v_lower AT TIME ZONE 'UTC', 'HH24MISS') <> '000000' THEN
            v_suffix := to_char(v_lower AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MISS');
        END IF;
        EXECUTE format('CREATE TABLE %I (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', 'messages_p' || v_suffix);
        EXECUTE format('ALTER TABLE messages ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       'messages_p' || v_suffix, v_lower, v_upper);
        EXECUTE format('CREATE TABLE %I (LIKE message_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       'message_events_p' || v_suffix);
        EXECUTE format('ALTER TABLE message_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       'message_events_p' || v_suffix, v_lower, v_upper);
        v_lower := v_upper;
        v_made := v_made + 1;
    END LOOP;
    RETURN v_made;
END
$$;

-- Drop one expired partition of messages (by name) with its events' partition and its
-- messages' transactionals, unless it still holds an unsettled message (queued, scheduled or
-- sending: it may still go out). Returns how many unsettled messages kept it (0: dropped).
-- Dropping a partition takes an ACCESS EXCLUSIVE lock on its parent: the caller sets a short
-- lock_timeout, so that the hot path is never queued behind it for longer (the next run tries again).
CREATE FUNCTION drop_message_partition(p_name text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_suffix text := substr(p_name, length('messages_') + 1);
    v_unsettled bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM message_partitions WHERE name = p_name) THEN
        RETURN 0;  -- dropped meanwhile by another reconciler
    END IF;
    -- Both partial indexes (messages_due, messages_leased): a probe each, not a scan.
    EXECUTE format(
        'SELECT (SELECT count(*) FROM %1$I WHERE status IN (''queued'', ''scheduled''))'
        ' + (SELECT count(*) FROM %1$I WHERE status = ''sending'')', p_name)
        INTO v_unsettled;
    IF v_unsettled > 0 THEN
        RETURN v_unsettled;
    END IF;
    -- Before the lock: deleting rows of another table is no reason to hold up the hot path.
    EXECUTE format('DELETE FROM transactionals t USING %I m WHERE t.id = m.id', p_name);
    LOCK TABLE messages, message_events IN ACCESS EXCLUSIVE MODE;
    -- Settled is final for anything this old, but the answer above was read without the lock.
    EXECUTE format('SELECT count(*) FROM %I WHERE status IN (''queued'', ''scheduled'', ''sending'')', p_name)
        INTO v_unsettled;
    IF v_unsettled > 0 THEN
        RAISE EXCEPTION 'partition % holds % unsettled messages again', p_name, v_unsettled;
    END IF;
    EXECUTE format('DROP TABLE %I', p_name);
    EXECUTE format('DROP TABLE IF EXISTS %I', 'message_events_' || v_suffix);
    RETURN 0;
END
$$;

-- A batch's bounds: the range every message of these ids lies in (-infinity/infinity as soon
-- as one is not a v7 id; an empty batch: an empty range). Statements call them as a scalar
-- subquery, `(SELECT message_ids_created_min($1))`: computed once per execution (an InitPlan;
-- called per row of a join it would be a hundred calls a row), and the Append under the
-- statement's join then reads only the partitions the batch spans (run-time pruning), whatever
-- join the planner picked.
CREATE FUNCTION message_ids_created_min(p_ids uuid[]) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(min(message_created_min(i)), 'infinity'::timestamptz) FROM unnest(p_ids) AS i
$$;
CREATE FUNCTION message_ids_created_max(p_ids uuid[]) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(max(message_created_max(i)), '-infinity'::timestamptz) FROM unnest(p_ids) AS i
$$;
