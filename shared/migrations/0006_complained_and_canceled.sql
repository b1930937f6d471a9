-- Two statuses join the message lifecycle: `complained` (the recipient reported the email as
-- spam after it was sent) and `canceled` (a scheduled message canceled before its time).
-- Appended at the end so the enum's order stays equal to shared/domain.py's MessageStatus
-- (tests/test_schema.py checks). Postgres 12+ allows ADD VALUE inside the migration's
-- transaction; nothing in this migration uses the new labels, so that is safe.
ALTER TYPE message_status ADD VALUE IF NOT EXISTS 'complained';
ALTER TYPE message_status ADD VALUE IF NOT EXISTS 'canceled';
