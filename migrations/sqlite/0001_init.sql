-- The audit trail: one row per operation, the whole record as JSON in `body` (the API's shape),
-- with the columns the list filters need pulled out beside it.
CREATE TABLE operations (
    id          TEXT PRIMARY KEY,          -- op_<ULID>: sorts by creation time
    action      TEXT NOT NULL,
    state       TEXT NOT NULL,
    ip          TEXT NOT NULL,             -- the (first) target IP, canonical
    app         TEXT,                      -- the target's app filter, if any
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX operations_state ON operations (state, id);
CREATE INDEX operations_ip ON operations (ip, id);
CREATE INDEX operations_app ON operations (app, id);

-- Which instances an operation touched, for `?ip=` and `?app=` over batches and resolved apps.
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
    registered_at INTEGER,                 -- the registration held; a newer one is not held
    operation_id  TEXT NOT NULL,
    since         TEXT NOT NULL,
    PRIMARY KEY (app, instance_id)
);
CREATE INDEX holds_ip ON holds (ip);

-- Statuses of the `file` registry kind, which has no registry to keep them in.
CREATE TABLE file_registry_status (
    app         TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (app, instance_id)
);
