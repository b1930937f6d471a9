-- Console sign-ins (api/console): one row per browser session. The cookie holds a random
-- token; only its sha256 is stored, as with API keys. The session names the key it was opened
-- with (by its hash, re-checked on every request through the api's key lookup), so that
-- revoking the key ends the session as it ends the key.
CREATE TABLE console_sessions (
    token_hash bytea PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    key_id uuid NOT NULL REFERENCES api_keys ON DELETE CASCADE,
    key_hash bytea NOT NULL,
    -- The session's CSRF token: every form carries it, every POST must present it.
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
