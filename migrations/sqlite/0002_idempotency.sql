-- `Idempotency-Key`: a caller's key, per principal, and the operation it created. The
-- fingerprint is the request (action and targets): the same key for another request is refused.
CREATE TABLE idempotency_keys (
    principal    TEXT NOT NULL,            -- '' for callers without a token
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
