-- End-to-end encryption: the device directory, and encrypted rooms.
--
-- The server keeps each device's public keys, as the device signed them,
-- and never a private key or a plaintext.  A device's inbox (the messages
-- sent to that one device: room keys, verification) is an ordinary stream
-- of `events`, "device:USER:DEVICE", trimmed as the device confirms.

CREATE TABLE devices (
    "user"       TEXT NOT NULL,
    device     TEXT NOT NULL,
    name       TEXT NOT NULL DEFAULT '',
    curve25519 TEXT NOT NULL,
    ed25519    TEXT NOT NULL,
    signature  TEXT NOT NULL,       -- the device's signature of its identity
    created_at BIGINT NOT NULL,
    -- A removed device stays as a tombstone: its id cannot be registered
    -- again, so a device that was removed (lost, logged out) cannot come
    -- back as itself; it must be a new device, which its peers are told of.
    removed_at BIGINT,
    PRIMARY KEY ("user", device)
);

-- One-time keys are handed out once each (claimed, then deleted); a
-- device's fallback key (fallback = 1, at most one) is handed out when
-- it has none left, and stays until the device replaces it.
CREATE TABLE device_keys (
    "user"      TEXT NOT NULL,
    device    TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key       TEXT NOT NULL,
    signature TEXT NOT NULL,
    fallback  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY ("user", device, fallback, key_id)
);

ALTER TABLE rooms ADD COLUMN encrypted BIGINT NOT NULL DEFAULT 0;
