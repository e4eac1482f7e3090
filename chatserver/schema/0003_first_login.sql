-- Whether a user has been put in the default room once.  A new account
-- joins it at its first login; someone who later leaves it, or is kicked
-- from it, stays out.  Users who are in any room already were welcomed
-- under version 2; users from version 1 (no rooms then) join at their
-- next login.
ALTER TABLE users ADD COLUMN welcomed INTEGER NOT NULL DEFAULT 0;
UPDATE users SET welcomed = 1 WHERE name IN (SELECT DISTINCT user FROM room_members);
