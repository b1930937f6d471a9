-- Messages that carry their own content (the Transactionals API: no broadcast template),
-- and messages scheduled for later (queue_at).

-- The email template body to render for this message (same keys as an email template's
-- body, plus optional `headers`); NULL: render the broadcast template `template_id`.
ALTER TABLE messages ADD COLUMN content jsonb;
-- While status = 'scheduled': not before this time.
ALTER TABLE messages ADD COLUMN queue_at timestamptz;
CREATE INDEX messages_scheduled_due ON messages (queue_at) WHERE status = 'scheduled';
