-- One row that `/readyz` and the start rewrite: a store that takes this write takes the
-- journal's, and one that does not (a full disk, a read-only mount) is known at once,
-- rather than at the next caller's offline.
CREATE TABLE liveness (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    written_at INTEGER NOT NULL
);
INSERT INTO liveness (id, written_at) VALUES (1, 0);
