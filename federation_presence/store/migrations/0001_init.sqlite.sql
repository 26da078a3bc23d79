-- Initial schema (SQLite). Kept in step with 0001_init.postgres.sql: same
-- tables and columns; SQLite has no sequences, so the stream id is allocated
-- as MAX(stream_id) + 1 under the write lock (BEGIN IMMEDIATE).

-- Combined presence per user; the row's stream_id is its place on the
-- coalescing presence stream (0: stored without notify, not on the stream).
CREATE TABLE user_presence (
    user_id TEXT NOT NULL PRIMARY KEY,
    state TEXT NOT NULL,
    last_active_ts INTEGER NOT NULL,
    status_msg TEXT,
    currently_active INTEGER NOT NULL,
    last_federation_update_ts INTEGER NOT NULL,
    last_user_sync_ts INTEGER NOT NULL,
    stream_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX user_presence_stream_id ON user_presence (stream_id);

-- Local devices only (never remote ones).
CREATE TABLE device_presence (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    state TEXT NOT NULL,
    last_active_ts INTEGER NOT NULL,
    last_sync_ts INTEGER NOT NULL,
    syncing INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

-- Answers to inbound /send transactions, for dedup; bounded by prune_txns.
CREATE TABLE inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response BLOB NOT NULL,
    received_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
) WITHOUT ROWID;
CREATE INDEX inbound_txns_received_ts ON inbound_txns (received_ts);

-- Remote servers' verify keys (current and old), cached by the keyring.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    expired_ts INTEGER,
    fetched_ts INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
) WITHOUT ROWID;

-- Persisted positions of stream readers (senders, sync readers).
CREATE TABLE stream_positions (
    name TEXT NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;

-- Per-destination outbound transaction counters.
CREATE TABLE destination_txn_ids (
    destination TEXT NOT NULL PRIMARY KEY,
    last_txn_id INTEGER NOT NULL
) WITHOUT ROWID;
