-- Room memberships, set through the admin API (PUT/DELETE
-- /_presence/admin/v1/rooms/{roomId}): who shares a room with whom, the
-- interest graph of routing/. Local and remote members alike. Portable SQL.
CREATE TABLE room_members (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user_id ON room_members (user_id);
