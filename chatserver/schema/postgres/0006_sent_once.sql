-- Exactly-once sending: the client's id of a message it sent (say, dm),
-- as "<user> <txn_id>", so that a resend after a lost acknowledgement
-- finds the message stored the first time instead of storing it again.
-- Kept with the event, so for as long as the event is (longer than any
-- session token lives).
ALTER TABLE events ADD COLUMN txn TEXT;
CREATE INDEX events_by_txn ON events (txn) WHERE txn IS NOT NULL;
