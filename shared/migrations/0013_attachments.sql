-- Email attachments (`"attachments"` on both APIs' sends): stored once per send, whatever
-- number of email messages the send has, and only until none of them can go out any more
-- (erased by the outcome write that settles the send's last message, or by the reconciler).
CREATE TABLE attachments (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    send_id uuid NOT NULL REFERENCES sends ON DELETE CASCADE,
    -- The file's place in the request's list: the email's parts keep that order.
    position smallint NOT NULL CHECK (position >= 0),
    filename text NOT NULL,
    content_type text NOT NULL,
    size_bytes integer NOT NULL CHECK (size_bytes > 0),
    content bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (send_id, position)
);
-- Large values go out of line (TOAST) anyway; EXTERNAL skips compressing them: most
-- attachments (PDF, images, archives) are compressed already, and the worker reads them whole.
ALTER TABLE attachments ALTER COLUMN content SET STORAGE EXTERNAL;
