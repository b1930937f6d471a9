-- Less work per accepted send (issue #16, the batch route's throughput). Each accepted send
-- writes a send, a message per template and the message's first event in one statement, and
-- every foreign key on those rows is an extra lookup and row lock per row, run by Postgres as
-- a separate query (an RI trigger). Four of them only repeat what another key of the same
-- statement already checked, so they go, and the ON DELETE actions they carried are done
-- once per deleting statement instead (statement-level triggers below), so a delete behaves
-- exactly as before. docs/design.md ("Fewer checks per accepted send") has the trade-off.
--
-- messages.org_id, broadcast_id, contact_id: every message is written with its send's own
-- values (insert_sends_batch takes them from the send it just inserted; the /api/v1 batch
-- from the same arrays), and sends keeps its keys to orgs, broadcasts and contacts, which
-- lock the referenced rows for the transaction exactly as the message's keys did.
ALTER TABLE messages
    DROP CONSTRAINT messages_org_id_fkey,
    DROP CONSTRAINT messages_broadcast_id_fkey,
    DROP CONSTRAINT messages_contact_id_fkey;
-- message_events.message_id: events are written only beside their message (in the statement
-- that inserts it, or in one that updates it and so holds its row lock).
ALTER TABLE message_events DROP CONSTRAINT message_events_message_id_fkey;
-- Kept: sends -> orgs, broadcasts, contacts; messages -> sends (the cascade that deletes an
-- org's messages with its sends); messages -> contact_channels (a message's channel is not
-- its send's, and redaction deletes channels while sends may be accepted).

-- What the dropped keys did on delete. An org's messages go with its sends (messages.send_id
-- cascades), so messages.org_id needs nothing. The service itself deletes neither broadcasts
-- nor contacts (a redacted contact keeps its row), but an operator or a cascade may. A
-- cascade from a deleted org runs these after it deleted the org's sends: their messages are
-- about to go with them (messages.send_id), so they are left alone (an update would re-check
-- the send's key and fail).

-- broadcasts: ON DELETE SET NULL on messages.broadcast_id (messages_broadcast_recent finds them).
CREATE FUNCTION messages_forget_broadcasts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- = ANY(ARRAY(...)): an index scan whatever the planner guesses of the transition table.
    UPDATE messages SET broadcast_id = NULL
    WHERE broadcast_id = ANY (ARRAY(SELECT id FROM deleted_broadcasts))
      AND EXISTS (SELECT 1 FROM sends s WHERE s.id = messages.send_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER broadcasts_forget_in_messages
    AFTER DELETE ON broadcasts
    REFERENCING OLD TABLE AS deleted_broadcasts
    FOR EACH STATEMENT EXECUTE FUNCTION messages_forget_broadcasts();

-- contacts: ON DELETE SET NULL on messages.contact_id. No index on it (it would tax every
-- send): one scan per deleting statement, where the key's action scanned once per contact.
CREATE FUNCTION messages_forget_contacts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE messages SET contact_id = NULL
    WHERE contact_id IN (SELECT id FROM deleted_contacts)
      AND EXISTS (SELECT 1 FROM sends s WHERE s.id = messages.send_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER contacts_forget_in_messages
    AFTER DELETE ON contacts
    REFERENCING OLD TABLE AS deleted_contacts
    FOR EACH STATEMENT EXECUTE FUNCTION messages_forget_contacts();

-- messages: ON DELETE CASCADE to message_events (message_events_message finds them).
CREATE FUNCTION message_events_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- = ANY(ARRAY(...)): an index scan whatever the planner guesses of the transition table
    -- (a cascade from sends deletes a few messages at a time, many times over).
    DELETE FROM message_events WHERE message_id = ANY (ARRAY(SELECT id FROM deleted_messages));
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_delete_events
    AFTER DELETE ON messages
    REFERENCING OLD TABLE AS deleted_messages
    FOR EACH STATEMENT EXECUTE FUNCTION message_events_cascade();
