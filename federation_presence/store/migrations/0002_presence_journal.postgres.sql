-- The presence journal (PostgreSQL). Kept in step with the SQLite schema;
-- the PostgreSQL store does not journal yet (its upserts run in the server
-- process, not on the worker's core), so the table stays empty.
CREATE TABLE presence_journal (
    seq BIGINT NOT NULL PRIMARY KEY,
    payload BYTEA NOT NULL
);
