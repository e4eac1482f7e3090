-- Session resumption (docs/protocol.rst, "Resumption").  The keys that
-- seal tickets live here so that a restart can open the tickets sealed
-- before it; they rotate, and old ones are deleted once no ticket sealed
-- under them can still be valid.
CREATE TABLE ticket_keys (
    id INTEGER PRIMARY KEY,
    secret BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
-- A ticket is single-use: the hash of each redeemed one stays here until
-- it would have expired anyway.  The ticket itself is not stored.
CREATE TABLE redeemed_tickets (
    ticket_hash BLOB PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX redeemed_tickets_expiry ON redeemed_tickets (expires_at);
