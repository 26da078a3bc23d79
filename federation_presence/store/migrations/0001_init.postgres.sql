-- Initial schema (PostgreSQL). Kept in step with 0001_init.sqlite.sql: same
-- tables and columns. Stream ids come from presence_stream_seq; writers take a
-- transaction advisory lock before drawing from it, so ids commit in order
-- even with several workers on one database.

CREATE SEQUENCE presence_stream_seq AS BIGINT START WITH 1 MINVALUE 1 NO CYCLE;

-- Combined presence per user; the row's stream_id is its place on the
-- coalescing presence stream (0: stored without notify, not on the stream).
CREATE TABLE user_presence (
    user_id TEXT NOT NULL PRIMARY KEY,
    state TEXT NOT NULL,
    last_active_ts BIGINT NOT NULL,
    status_msg TEXT,
    currently_active BOOLEAN NOT NULL,
    last_federation_update_ts BIGINT NOT NULL,
    last_user_sync_ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL
);
CREATE INDEX user_presence_stream_id ON user_presence (stream_id);

-- Local devices only (never remote ones).
CREATE TABLE device_presence (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    state TEXT NOT NULL,
    last_active_ts BIGINT NOT NULL,
    last_sync_ts BIGINT NOT NULL,
    syncing INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Answers to inbound /send transactions, for dedup; bounded by prune_txns.
CREATE TABLE inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response BYTEA NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX inbound_txns_received_ts ON inbound_txns (received_ts);

-- Remote servers' verify keys (current and old), cached by the keyring.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- Persisted positions of stream readers (senders, sync readers).
CREATE TABLE stream_positions (
    name TEXT NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL
);

-- Per-destination outbound transaction counters.
CREATE TABLE destination_txn_ids (
    destination TEXT NOT NULL PRIMARY KEY,
    last_txn_id BIGINT NOT NULL
);
