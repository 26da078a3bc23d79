-- The presence journal (SQLite): each group commit appends its coalesced
-- user and device rows as ONE entry (orjson payload, see store/journal.py);
-- folds move the oldest entries into user_presence / device_presence and
-- delete them. seq is assigned by the store, increasing in commit order.
CREATE TABLE presence_journal (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL
);
