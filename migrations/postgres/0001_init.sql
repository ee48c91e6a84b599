-- The PostgreSQL store: the same journal and desired state as SQLite's, for several replicas.
-- Times are timestamptz; an operation's record is its API shape as JSON text in `body` (text,
-- not jsonb: it is only ever read whole, and parsing it on every journal write is time on a
-- caller's path), with the columns the list filters need beside it.
CREATE TABLE operations (
    id          TEXT PRIMARY KEY,          -- op_<ULID>: sorts by creation time
    action      TEXT NOT NULL,
    state       TEXT NOT NULL,
    ip          TEXT NOT NULL,             -- the (first) target IP, canonical
    app         TEXT,                      -- the target's app filter, if any
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        TEXT NOT NULL
);
-- Kept out of line uncompressed: a 100-node operation is about 20 KB of JSON, written twice
-- on the path of the callers (journaled, settled); compressing it each time costs more than
-- the disk it saves.
ALTER TABLE operations ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE INDEX operations_state ON operations (state, id);
CREATE INDEX operations_ip ON operations (ip, id);
CREATE INDEX operations_app ON operations (app, id);

-- Which instances an operation touched, for `?ip=` and `?app=` over batches and resolved apps;
-- written by the statement that journals the operation.
CREATE TABLE operation_instances (
    operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    app          TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    ip           TEXT NOT NULL,
    port         INTEGER NOT NULL,
    PRIMARY KEY (operation_id, app, instance_id)
);
CREATE INDEX operation_instances_ip ON operation_instances (ip, operation_id);
CREATE INDEX operation_instances_app ON operation_instances (app, operation_id);

-- Desired state: the instances synchspeed holds out of service, by registry identity.
CREATE TABLE holds (
    app           TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    ip            TEXT NOT NULL,
    port          INTEGER NOT NULL,
    registered_at BIGINT,                  -- the registration held; a newer one is not held
    operation_id  TEXT NOT NULL,
    since         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (app, instance_id)
);
CREATE INDEX holds_ip ON holds (ip);

-- Statuses of the `file` registry kind, which has no registry to keep them in.
CREATE TABLE file_registry_status (
    app         TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (app, instance_id)
);

-- `Idempotency-Key`: a caller's key, per principal, and the operation it created.
CREATE TABLE idempotency_keys (
    principal    TEXT NOT NULL,            -- '' for callers without a token
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The row `/readyz` rewrites: a server that takes this write takes the journal's (a hot
-- standby promoted back to read-only, a full disk are known at once).
CREATE TABLE liveness (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    written_at TIMESTAMPTZ NOT NULL
);
INSERT INTO liveness (id, written_at) VALUES (1, now());

-- Leadership: the one replica that works (journal, registry, gateways, reconciler) holds this
-- lease until `expires_at`, by the database's clock. `epoch` grows by one at every takeover:
-- each journal write of the leader checks it under a share lock, so a replica whose lease
-- another took over can no longer write.
CREATE TABLE leadership (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    advertise  TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO leadership (id, holder, advertise, epoch, expires_at)
VALUES (1, '', '', 0, '-infinity');

-- What a replica that relays a call to the leader proves itself with (so the leader believes
-- the caller address it names). Random at creation; never leaves the database and the
-- replicas' memory.
CREATE TABLE relay_secret (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    secret TEXT NOT NULL
);
INSERT INTO relay_secret (id, secret)
VALUES (1, replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
