-- Invite codes for registration ([accounts] allow_registration = invite),
-- made by the admin tool (chatserver-admin invite).  Each code is single
-- use: it is consumed in the transaction that creates its account.  Only
-- the SHA-256 of a code is kept (like session tokens), so the database, or
-- a backup of it, holds no usable code.  A code is usable while used_at,
-- revoked_at are NULL and expires_at is in the future.  (Not the table
-- "invites": that one holds invitations to private rooms.)
CREATE TABLE registration_invites (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    code_hash  TEXT NOT NULL UNIQUE,   -- SHA-256 of the code, hex
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_by    TEXT,                   -- the account it created
    used_at    INTEGER,
    revoked_at INTEGER
);
