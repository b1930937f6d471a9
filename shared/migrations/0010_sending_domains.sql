-- Sending domains (per-org DKIM) and the org's default sender for /api/v1 sends.
--
-- A domain belongs to one org in the whole service (a second registration, in any org, is a
-- conflict): two orgs signing as the same d= would each vouch for the other's mail. Its
-- RSA private key is stored only encrypted (AES-GCM under a key derived from SECRET_KEY,
-- bound to the row's id); the public half is stored in clear to build the DNS record.
CREATE TABLE org_domains (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs ON DELETE CASCADE,
    -- Lower-case ASCII (IDNA), no trailing dot: compared as stored.
    domain text NOT NULL,
    selector text NOT NULL,
    private_key_encrypted bytea NOT NULL,
    public_key_der bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT org_domains_domain UNIQUE (domain)
);
CREATE INDEX org_domains_org ON org_domains (org_id, created_at, id);

-- NULL: DEFAULT_FROM_EMAIL / DEFAULT_FROM_NAME.
ALTER TABLE orgs ADD COLUMN from_email text;
ALTER TABLE orgs ADD COLUMN from_name text;
