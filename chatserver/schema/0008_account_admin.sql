-- What the admin tool shows and keeps of an account: when it last logged
-- in (by password or session token; NULL: never since this version), and
-- when it was deleted.  A deleted account stays as a row with no password
-- and no tokens, devices or memberships, so that its name, under which
-- its messages stay in the history, can never be registered again by
-- someone else.
ALTER TABLE users ADD COLUMN last_login_at INTEGER;
ALTER TABLE users ADD COLUMN deleted_at INTEGER;
