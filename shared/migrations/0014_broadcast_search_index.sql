-- ?broadcast_id= searches (search_messages_by_broadcast) and a broadcast's recipients
-- (select_recipients_page) get the same shape of index as the other searches (0009):
-- (org_id, test, <equality>, created_at DESC, id DESC). messages_broadcast_recent (0001)
-- lacks org_id and test, so it left the planner two near-equal ways to answer a broadcast's
-- page, and which one won depended on statistics: with many orgs and few broadcasts, the
-- generic plan of the prepared statement (planned for any org and broadcast, from n_distinct)
-- walked the org's whole timeline (messages_org_recent) filtering on the broadcast, i.e. an
-- org's entire history for an old or small broadcast. With org, mode and broadcast all in the
-- index condition this index is the best choice under any statistics.
CREATE INDEX IF NOT EXISTS messages_org_broadcast_recent
    ON messages (org_id, test, broadcast_id, created_at DESC, id DESC);
