-- Rooms, membership, durable history, direct messages, moderation and
-- session tokens.
--
-- Every message-like event lives in `events`, keyed by its stream and its
-- per-stream id.  A stream is a room ("room:NAME") or the conversation of
-- two users ("dm:A:B", names sorted).  Ids increase by one per stream.

CREATE TABLE rooms (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('public', 'private', 'readonly')),
    owner      TEXT,
    topic      TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);

CREATE TABLE room_members (
    room      TEXT NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    user      TEXT NOT NULL,
    role      TEXT NOT NULL CHECK (role IN ('member', 'moderator', 'owner')),
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (room, user)
);
CREATE INDEX room_members_by_user ON room_members (user);

CREATE TABLE invites (
    room       TEXT NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    user       TEXT NOT NULL,
    invited_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room, user)
);

CREATE TABLE events (
    stream TEXT NOT NULL,
    id     INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    event  TEXT NOT NULL,            -- the event as JSON, as clients get it
    PRIMARY KEY (stream, id)
) WITHOUT ROWID;

-- The last id of every stream, kept in the same transaction as its events
-- so start-up does not scan the history.
CREATE TABLE streams (
    stream  TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
) WITHOUT ROWID;

-- Direct-message conversations, and how far each side has been delivered.
CREATE TABLE dm_streams (
    user      TEXT NOT NULL,
    peer      TEXT NOT NULL,
    stream    TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, peer)
);

-- A ban or mute with until NULL lasts until lifted.
CREATE TABLE sanctions (
    room       TEXT NOT NULL,
    user       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('ban', 'mute')),
    until      INTEGER,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room, user, kind)
);

CREATE TABLE session_tokens (
    token_hash TEXT PRIMARY KEY,     -- SHA-256 of the token, hex
    user       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX session_tokens_by_user ON session_tokens (user);

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    room   TEXT,
    target TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
