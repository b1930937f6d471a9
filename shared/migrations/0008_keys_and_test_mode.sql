-- Keys as an API (named, live or test, listed by prefix, last use recorded) and test mode.
--
-- `key_prefix` becomes `prefix`, the name the API shows: existing keys keep the prefix they
-- were stored with (`tdg_` and 6 random characters; keys made from now on show 12).
ALTER TABLE api_keys RENAME COLUMN key_prefix TO prefix;
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS name text;
-- A test key's sends run the whole pipeline but reach no provider (messages.test below).
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS mode text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test'));
-- Written by the api at most about once a minute per key and process, never per request.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS last_used_at timestamptz;
-- The org's key list, newest first (keyset pagination).
CREATE INDEX IF NOT EXISTS api_keys_org_created ON api_keys (org_id, created_at DESC, id DESC);

-- Made with a test key: never handed to SMTP or WhatsApp, seen only by test keys. A constant
-- default adds the column without rewriting the table. IF NOT EXISTS: migration 0009 (search)
-- adds the same column, whichever runs first.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS test boolean NOT NULL DEFAULT false;

-- The per-org send budget (`tidings org update --rate-limit`) is orgs.rate_limit_requests and
-- orgs.rate_limit_window_s, there since 0001: nothing to add.
