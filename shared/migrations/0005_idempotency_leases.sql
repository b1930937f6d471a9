-- An Idempotency-Key in flight is held under a lease that its request renews while it runs:
-- a key whose request died (kill -9, a lost machine) is taken over by a retry once the lease
-- lapses, instead of answering 409 for the key's 24 hours. `holder` names the request that
-- holds the key; a send is bound to its key (`send_id`) in the send's own commit, and only
-- while its request still holds the key, so a retry that takes the key over finds the send
-- already committed instead of making a second one. Keys claimed before this migration have
-- no holder and a lapsed lease: a retry takes them over.
ALTER TABLE idempotency_keys
    ADD COLUMN holder uuid,
    ADD COLUMN lease_expires_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN send_id uuid;
