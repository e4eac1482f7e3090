"""The queries of ``Storage``, written once for SQLite and PostgreSQL.

Each is a function of a DB-API cursor, run inside the caller's
transaction: ``SqliteStorage`` runs them on its writer thread (and the
admin tool on a plain connection), ``PostgresStorage`` on its pool's
connections.  The SQL is the common ground of the two dialects (``ON
CONFLICT`` upserts, ``RETURNING``, ``CASE`` rather than two-argument
``MAX``), spelt as SQLite takes it: ``?`` placeholders and the column name
``user``.  ``postgres.postgres_sql`` respells those two for PostgreSQL
(``%s``, and ``"user"``, a reserved word there); nothing else differs, and
the Storage contract tests run every query against both.  What cannot be
common (how the ids of new events are assigned) lives with each storage.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from chatserver.storage.group_commit import Row
from chatserver.storage.interface import (
    Change,
    ClaimedKey,
    DeviceRecord,
    InviteRecord,
    RoomRecord,
    SignedKey,
    TicketKey,
    UserRecord,
)


class InviteRace(Exception):
    """An invite was consumed by another transaction between the check and the use."""


def get_user(cursor: Any, name: str) -> UserRecord | None:
    cursor.execute("SELECT name, password_hash, role, disabled FROM users WHERE name = ?", (name,))
    row = cursor.fetchone()
    if row is None:
        return None
    return UserRecord(row[0], row[1], row[2], bool(row[3]))


def add_user(cursor: Any, name: str, password_hash: str, role: str) -> bool:
    """Insert a user; False if the name is taken."""
    cursor.execute(
        "INSERT INTO users (name, password_hash, role, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name) DO NOTHING",
        (name, password_hash, role, int(time.time())),
    )
    return bool(cursor.rowcount == 1)


def load_rooms(cursor: Any) -> dict[str, RoomRecord]:
    rooms: dict[str, RoomRecord] = {}
    cursor.execute("SELECT name, kind, owner, topic, encrypted FROM rooms")
    for name, kind, owner, topic, encrypted in cursor.fetchall():
        rooms[name] = RoomRecord(name, kind, owner, topic, {}, set(), {}, bool(encrypted))
    cursor.execute("SELECT room, user, role FROM room_members ORDER BY joined_at, rowid")
    for room, user, role in cursor.fetchall():
        rooms[room].members[user] = role
    cursor.execute("SELECT room, user FROM invites")
    for room, user in cursor.fetchall():
        rooms[room].invites.add(user)
    cursor.execute("SELECT room, user, kind, until FROM sanctions")
    for room, user, kind, until in cursor.fetchall():
        if room in rooms:
            rooms[room].sanctions[(kind, user)] = until
    return rooms


def load_stream_ids(cursor: Any) -> dict[str, int]:
    cursor.execute("SELECT stream, last_id FROM streams")
    return dict(cursor.fetchall())


def load_dm_streams(cursor: Any) -> dict[str, dict[str, tuple[str, int]]]:
    """user -> {peer: (stream, delivered id)}"""
    result: dict[str, dict[str, tuple[str, int]]] = {}
    cursor.execute("SELECT user, peer, stream, delivered FROM dm_streams")
    for user, peer, stream, delivered in cursor.fetchall():
        result.setdefault(user, {})[peer] = (stream, delivered)
    return result


def dm_streams(cursor: Any, user: str) -> dict[str, tuple[str, int]]:
    """One user's {peer: (stream, delivered id)}: what another process may
    have added since this one loaded them all."""
    cursor.execute("SELECT peer, stream, delivered FROM dm_streams WHERE user = ?", (user,))
    return {peer: (stream, delivered) for peer, stream, delivered in cursor.fetchall()}


def set_owner(cursor: Any, room: str, owner: str | None) -> None:
    cursor.execute("UPDATE rooms SET owner = ? WHERE name = ?", (owner, room))


def create_room(
    cursor: Any, name: str, kind: str, owner: str | None, topic: str, now: int, encrypted: bool = False
) -> None:
    cursor.execute(
        "INSERT INTO rooms (name, kind, owner, topic, created_at) VALUES (?, ?, ?, ?, ?)",
        (name, kind, owner, topic, now),
    )
    if encrypted:
        # Apart, so that the query stays good for databases older than
        # encrypted rooms (the migration tests seed those with it).
        cursor.execute("UPDATE rooms SET encrypted = 1 WHERE name = ?", (name,))


def ensure_room(cursor: Any, name: str, kind: str, owner: str | None, topic: str, now: int) -> None:
    """``create_room`` unless the room exists: processes starting together
    on one new database each make the default room, and one of them wins."""
    cursor.execute(
        "INSERT INTO rooms (name, kind, owner, topic, created_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO NOTHING",
        (name, kind, owner, topic, now),
    )


def set_member(cursor: Any, room: str, user: str, role: str | None, now: int) -> None:
    """Add, re-role (role given) or remove (role None) a member."""
    if role is None:
        cursor.execute("DELETE FROM room_members WHERE room = ? AND user = ?", (room, user))
    else:
        cursor.execute(
            "INSERT INTO room_members (room, user, role, joined_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (room, user) DO UPDATE SET role = excluded.role",
            (room, user, role, now),
        )
    cursor.execute("DELETE FROM invites WHERE room = ? AND user = ?", (room, user))


def set_topic(cursor: Any, room: str, topic: str) -> None:
    cursor.execute("UPDATE rooms SET topic = ? WHERE name = ?", (topic, room))


def add_invite(cursor: Any, room: str, user: str, by: str, now: int) -> None:
    cursor.execute(
        "INSERT INTO invites (room, user, invited_by, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (room, user) DO UPDATE SET invited_by = excluded.invited_by, "
        "created_at = excluded.created_at",
        (room, user, by, now),
    )


def set_sanction(
    cursor: Any, room: str, user: str, kind: str, until: int | None, by: str | None, now: int
) -> None:
    """Impose (``by`` given) or lift (``by`` None) a ban or mute."""
    if by is None:
        cursor.execute("DELETE FROM sanctions WHERE room = ? AND user = ? AND kind = ?", (room, user, kind))
    else:
        cursor.execute(
            "INSERT INTO sanctions (room, user, kind, until, created_by, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (room, user, kind) DO UPDATE SET "
            "until = excluded.until, created_by = excluded.created_by, created_at = excluded.created_at",
            (room, user, kind, until, by, now),
        )


def is_welcomed(cursor: Any, name: str) -> bool:
    """Whether the user's first login has happened (:func:`mark_welcomed`)."""
    cursor.execute("SELECT welcomed FROM users WHERE name = ?", (name,))
    row = cursor.fetchone()
    return row is None or bool(row[0])


def mark_welcomed(cursor: Any, name: str) -> None:
    cursor.execute("UPDATE users SET welcomed = 1 WHERE name = ?", (name,))


def load_welcomed(cursor: Any) -> set[str]:
    """Users whose first login has happened (see :func:`mark_welcomed`)."""
    cursor.execute("SELECT name FROM users WHERE welcomed = 1")
    return {name for (name,) in cursor.fetchall()}


def load_admins(cursor: Any) -> set[str]:
    cursor.execute("SELECT name FROM users WHERE role = 'admin'")
    return {name for (name,) in cursor.fetchall()}


def set_dm_stream(cursor: Any, user: str, peer: str, stream: str, delivered: int) -> None:
    cursor.execute(
        "INSERT INTO dm_streams (user, peer, stream, delivered) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user, peer) DO UPDATE SET delivered = "
        "CASE WHEN excluded.delivered > dm_streams.delivered "
        "THEN excluded.delivered ELSE dm_streams.delivered END",
        (user, peer, stream, delivered),
    )


def apply(cursor: Any, change: Change) -> None:
    """One named state change (interface.CHANGES)."""
    name, args = change
    CHANGE_QUERIES[name](cursor, *args)


def commit_batch(cursor: Any, rows: list[Row], changes: list[Change], notes: list[Change]) -> None:
    """One group commit (one transaction): events, the state changes they
    stand for, then bookkeeping.  adbapi rolls it all back if any fails."""
    if rows:
        append_events(cursor, rows)
    for change in changes:
        apply(cursor, change)
    for change in notes:
        apply(cursor, change)


def append_events(cursor: Any, rows: list[tuple[str, int, int, str]]) -> None:
    """One group commit: the events and their streams' last ids."""
    cursor.executemany("INSERT INTO events (stream, id, ts, event) VALUES (?, ?, ?, ?)", rows)
    last: dict[str, int] = {}
    for stream, event_id, _, _ in rows:
        last[stream] = max(event_id, last.get(stream, 0))
    cursor.executemany(
        "INSERT INTO streams (stream, last_id) VALUES (?, ?) "
        "ON CONFLICT (stream) DO UPDATE SET last_id = "
        "CASE WHEN excluded.last_id > streams.last_id THEN excluded.last_id ELSE streams.last_id END",
        list(last.items()),
    )


def set_txn(cursor: Any, txn: str, stream: str, event_id: int) -> None:
    """Mark a committed event with the sender's id for it (exactly-once)."""
    cursor.execute("UPDATE events SET txn = ? WHERE stream = ? AND id = ?", (txn, stream, event_id))


def find_sent(cursor: Any, txn: str) -> str | None:
    """The event a sender's id was first stored with, if any."""
    cursor.execute("SELECT event FROM events WHERE txn = ?", (txn,))
    row = cursor.fetchone()
    return None if row is None else str(row[0])


def history(cursor: Any, stream: str, after: int | None, before: int | None, limit: int) -> list[str]:
    """Event JSON texts of ``stream``, ascending by id.  With ``after``,
    the first ``limit`` events after it; otherwise the last ``limit``
    events before ``before`` (scroll-back)."""
    if after is not None:
        cursor.execute(
            "SELECT event FROM events WHERE stream = ? AND id > ? AND id < ? ORDER BY id LIMIT ?",
            (stream, after, before if before is not None else 1 << 62, limit),
        )
        return [row[0] for row in cursor.fetchall()]
    cursor.execute(
        "SELECT event FROM events WHERE stream = ? AND id < ? ORDER BY id DESC LIMIT ?",
        (stream, before if before is not None else 1 << 62, limit),
    )
    return [row[0] for row in reversed(cursor.fetchall())]


def add_token(cursor: Any, token_hash: str, user: str, now: int, expires_at: int) -> None:
    cursor.execute(
        "INSERT INTO session_tokens (token_hash, user, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (token_hash, user, now, expires_at),
    )


def token_account(cursor: Any, token_hash: str, now: int) -> UserRecord | None:
    """The account of a live session token, in one query: a token login
    is one trip to the database thread."""
    cursor.execute(
        "SELECT u.name, u.password_hash, u.role, u.disabled FROM session_tokens AS t "
        "JOIN users AS u ON u.name = t.user WHERE t.token_hash = ? AND t.expires_at > ?",
        (token_hash, now),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    return UserRecord(row[0], row[1], row[2], bool(row[3]))


def revoke_tokens(cursor: Any, user: str | None = None, token_hash: str | None = None) -> None:
    if token_hash is not None:
        cursor.execute("DELETE FROM session_tokens WHERE token_hash = ?", (token_hash,))
    else:
        cursor.execute("DELETE FROM session_tokens WHERE user = ?", (user,))


def set_disabled(cursor: Any, user: str, disabled: bool, audit: Change | None = None) -> bool:
    """Disable (and revoke every token of) or enable an account, with its
    audit row, in one transaction; False if there is no such user."""
    # A deleted account (admin tool) stays disabled: it has no password.
    cursor.execute(
        "UPDATE users SET disabled = ? WHERE name = ? AND deleted_at IS NULL", (int(disabled), user)
    )
    if cursor.rowcount == 0:
        return False
    if disabled:
        revoke_tokens(cursor, user)
    if audit is not None:
        apply(cursor, audit)
    return True


def set_last_login(cursor: Any, name: str, now: int) -> None:
    """The account's last login (password or token), in Unix seconds."""
    cursor.execute("UPDATE users SET last_login_at = ? WHERE name = ?", (now, name))


def add_audit(
    cursor: Any, now: int, actor: str, action: str, room: str | None, target: str | None, detail: str
) -> None:
    cursor.execute(
        "INSERT INTO audit (ts, actor, action, room, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (now, actor, action, room, target, detail),
    )


def user_exists(cursor: Any, name: str) -> bool:
    cursor.execute("SELECT 1 FROM users WHERE name = ?", (name,))
    return cursor.fetchone() is not None


# --- resumption tickets ---------------------------------------------------


def ticket_keys(cursor: Any) -> list[TicketKey]:
    """Every ticket key: (id, secret, created_at), oldest first."""
    cursor.execute("SELECT id, secret, created_at FROM ticket_keys ORDER BY id")
    return [(row[0], bytes(row[1]), row[2]) for row in cursor.fetchall()]


def rotate_ticket_keys(cursor: Any, secret: bytes, now: int, drop_before: int) -> list[TicketKey]:
    """Add a ticket key, delete those made before ``drop_before``, and
    return the keys as they are now."""
    cursor.execute("INSERT INTO ticket_keys (secret, created_at) VALUES (?, ?)", (secret, now))
    cursor.execute("DELETE FROM ticket_keys WHERE created_at < ?", (drop_before,))
    cursor.execute("DELETE FROM redeemed_tickets WHERE expires_at <= ?", (now,))
    return ticket_keys(cursor)


def ticket_state(
    cursor: Any, ticket_hash: bytes, token_hash: str, now: int
) -> tuple[UserRecord | None, bool]:
    """(the account of the live session token a ticket was issued with,
    or None; whether the ticket was taken before): reads only, no commit
    to wait for.  The account is what the token login that follows a
    resumption needs, so that login makes no second trip."""
    record = token_account(cursor, token_hash, now)
    cursor.execute("SELECT 1 FROM redeemed_tickets WHERE ticket_hash = ?", (ticket_hash,))
    return record, cursor.fetchone() is not None


def add_redeemed_tickets(cursor: Any, rows: list[tuple[bytes, int]]) -> None:
    """Remember taken tickets (hash, expires_at), many in one commit."""
    cursor.executemany(
        "INSERT INTO redeemed_tickets (ticket_hash, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING", rows
    )


# --- registration invites ------------------------------------------------------


def add_registration_invites(
    cursor: Any, code_hashes: list[str], by: str, now: int, expires_at: int
) -> list[int]:
    """Store invite codes (their hashes), with an audit row for each; the
    ids of the new invites, in order."""
    ids = []
    for code_hash in code_hashes:
        cursor.execute(
            "INSERT INTO registration_invites (code_hash, created_by, created_at, expires_at) "
            "VALUES (?, ?, ?, ?) RETURNING id",
            (code_hash, by, now, expires_at),
        )
        ids.append(cursor.fetchone()[0])
        add_audit(cursor, now, by, "invite_create", None, None, f"invite {ids[-1]} expires_at {expires_at}")
    return ids


def register_with_invite(
    cursor: Any, code_hash: str, name: str, password_hash: str, now: int
) -> tuple[str, int | None]:
    """In one transaction: check the invite, create the account and consume
    the invite.  (``ok``, invite id); (``invite_invalid``, None) for a code
    that is unknown, used, revoked or expired, whatever the name; or
    (``username_taken``, id), in which case the invite stays unused."""
    cursor.execute(
        "SELECT id FROM registration_invites WHERE code_hash = ? "
        "AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?",
        (code_hash, now),
    )
    row = cursor.fetchone()
    if row is None:
        return ("invite_invalid", None)
    invite_id = row[0]
    if not add_user(cursor, name, password_hash, "user"):
        return ("username_taken", invite_id)
    cursor.execute(
        "UPDATE registration_invites SET used_by = ?, used_at = ? WHERE id = ? AND used_at IS NULL",
        (name, now, invite_id),
    )
    if cursor.rowcount != 1:  # cannot happen with one writer; never two accounts from one code
        raise InviteRace(f"invite {invite_id} was consumed meanwhile")
    add_audit(cursor, now, name, "register", None, name, f"invite {invite_id}")
    return ("ok", invite_id)


def list_registration_invites(cursor: Any) -> list[InviteRecord]:
    cursor.execute(
        "SELECT id, created_by, created_at, expires_at, used_by, used_at, revoked_at "
        "FROM registration_invites ORDER BY id"
    )
    return [InviteRecord(*row) for row in cursor.fetchall()]


def revoke_registration_invite(
    cursor: Any, by: str, now: int, code_hash: str | None = None, invite_id: int | None = None
) -> int | None:
    """Revoke an unused, unrevoked invite given by its code's hash or its
    id, with an audit row; its id, or None if there is no such invite that
    could still be revoked."""
    if code_hash is not None:
        cursor.execute("SELECT id FROM registration_invites WHERE code_hash = ?", (code_hash,))
        row = cursor.fetchone()
        if row is None:
            return None
        invite_id = row[0]
    cursor.execute(
        "UPDATE registration_invites SET revoked_at = ? "
        "WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL",
        (now, invite_id),
    )
    if cursor.rowcount != 1:
        return None
    add_audit(cursor, now, by, "invite_revoke", None, None, f"invite {invite_id}")
    return invite_id


# --- the device directory ---------------------------------------------------


def devices(cursor: Any, users: list[str]) -> dict[str, list[DeviceRecord]]:
    found: dict[str, list[DeviceRecord]] = {}
    if not users:
        return found
    marks = ", ".join("?" * len(users))
    cursor.execute(
        "SELECT user, device, name, curve25519, ed25519, signature, created_at FROM devices "
        f"WHERE user IN ({marks}) AND removed_at IS NULL ORDER BY created_at, device",
        tuple(users),
    )
    for row in cursor.fetchall():
        found.setdefault(row[0], []).append(DeviceRecord(*row))
    return found


def _key_count(cursor: Any, user: str, device: str) -> int:
    cursor.execute(
        "SELECT COUNT(*) FROM device_keys WHERE user = ? AND device = ? AND fallback = 0", (user, device)
    )
    return int(cursor.fetchone()[0])


def put_device(
    cursor: Any,
    user: str,
    device: str,
    name: str | None,
    identity: tuple[str, str, str] | None,
    keys: list[SignedKey],
    fallback: SignedKey | None,
    now: int,
    max_devices: int,
    max_keys: int,
) -> tuple[str, int]:
    """See ``Storage.put_device``."""
    cursor.execute(
        "SELECT curve25519, ed25519, removed_at FROM devices WHERE user = ? AND device = ?", (user, device)
    )
    row = cursor.fetchone()
    if row is not None and row[2] is not None:
        return ("removed", 0)
    if row is None and identity is None:
        return ("unknown", 0)
    if row is not None and identity is not None and tuple(row[:2]) != identity[:2]:
        return ("conflict", 0)
    held = 0
    fresh = keys
    if row is not None:
        held = _key_count(cursor, user, device)
        cursor.execute(
            "SELECT key_id FROM device_keys WHERE user = ? AND device = ? AND fallback = 0", (user, device)
        )
        have = {key_id for (key_id,) in cursor.fetchall()}
        fresh = [key for key in keys if key[0] not in have]
    if held + len(fresh) > max_keys:
        return ("too_many_keys", held)
    if row is None:
        assert identity is not None
        cursor.execute("SELECT COUNT(*) FROM devices WHERE user = ? AND removed_at IS NULL", (user,))
        if cursor.fetchone()[0] >= max_devices:
            return ("too_many_devices", 0)
        cursor.execute(
            "INSERT INTO devices (user, device, name, curve25519, ed25519, signature, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user, device, name or "", *identity, now),
        )
    elif name is not None:
        cursor.execute("UPDATE devices SET name = ? WHERE user = ? AND device = ?", (name, user, device))
    if fresh:
        cursor.executemany(
            "INSERT INTO device_keys (user, device, key_id, key, signature, fallback) "
            "VALUES (?, ?, ?, ?, ?, 0)",
            [(user, device, *key) for key in fresh],
        )
    if fallback is not None:
        cursor.execute(
            "DELETE FROM device_keys WHERE user = ? AND device = ? AND fallback = 1", (user, device)
        )
        cursor.execute(
            "INSERT INTO device_keys (user, device, key_id, key, signature, fallback) "
            "VALUES (?, ?, ?, ?, ?, 1)",
            (user, device, *fallback),
        )
    return ("ok", held + len(fresh))


def claim_keys(cursor: Any, wanted: list[tuple[str, str]]) -> list[ClaimedKey]:
    """See ``Storage.claim_keys``.  A one-time key is deleted as it is
    handed out; if another transaction deleted it first (PostgreSQL), the
    next one is taken."""
    claimed = []
    for user, device in wanted:
        for _ in range(8):
            cursor.execute(
                "SELECT key_id, key, signature FROM device_keys "
                "WHERE user = ? AND device = ? AND fallback = 0 ORDER BY key_id LIMIT 1",
                (user, device),
            )
            row = cursor.fetchone()
            if row is None:
                break
            cursor.execute(
                "DELETE FROM device_keys WHERE user = ? AND device = ? AND fallback = 0 AND key_id = ?",
                (user, device, row[0]),
            )
            if cursor.rowcount == 1:
                claimed.append(ClaimedKey(user, device, row[0], row[1], row[2], False))
                break
        else:
            row = None
        if row is None:
            cursor.execute(
                "SELECT key_id, key, signature FROM device_keys "
                "WHERE user = ? AND device = ? AND fallback = 1",
                (user, device),
            )
            fallback = cursor.fetchone()
            if fallback is not None:
                claimed.append(ClaimedKey(user, device, fallback[0], fallback[1], fallback[2], True))
    return claimed


def remove_device(cursor: Any, user: str, device: str, now: int, audit: Change | None = None) -> bool:
    cursor.execute(
        "UPDATE devices SET removed_at = ?, name = '' WHERE user = ? AND device = ? AND removed_at IS NULL",
        (now, user, device),
    )
    if cursor.rowcount == 0:
        return False
    cursor.execute("DELETE FROM device_keys WHERE user = ? AND device = ?", (user, device))
    # The stream's row stays (as the device's does): its ids go on from
    # where they were.
    cursor.execute("DELETE FROM events WHERE stream = ?", (f"device:{user}:{device}",))
    if audit is not None:
        apply(cursor, audit)
    return True


def event_counts(cursor: Any, streams: list[str]) -> dict[str, int]:
    """See ``Storage.event_counts``."""
    if not streams:
        return {}
    marks = ", ".join("?" * len(streams))
    cursor.execute(
        f"SELECT stream, COUNT(*) FROM events WHERE stream IN ({marks}) GROUP BY stream", tuple(streams)
    )
    return {row[0]: int(row[1]) for row in cursor.fetchall()}


def drop_inbox(cursor: Any, stream: str, upto: int) -> None:
    cursor.execute("DELETE FROM events WHERE stream = ? AND id <= ?", (stream, upto))


def delete_room(cursor: Any, room: str) -> None:
    # Members and invites go with the row (ON DELETE CASCADE); sanctions
    # and events do not refer to it.  The streams row stays: ids of a room
    # made again under this name go on from it, so that a client that
    # remembers the old room's ids reads the new one's events as new.
    cursor.execute("DELETE FROM sanctions WHERE room = ?", (room,))
    cursor.execute("DELETE FROM rooms WHERE name = ?", (room,))
    cursor.execute("DELETE FROM events WHERE stream = ?", (f"room:{room}",))


def drop_history(cursor: Any, room: str) -> None:
    cursor.execute(
        "DELETE FROM events WHERE stream = ? AND NOT EXISTS (SELECT 1 FROM rooms WHERE name = ?)",
        (f"room:{room}", room),
    )


#: The queries that apply interface.CHANGES, by name.
CHANGE_QUERIES: dict[str, Callable[..., None]] = {
    "set_last_login": set_last_login,
    "create_room": create_room,
    "ensure_room": ensure_room,
    "set_member": set_member,
    "set_owner": set_owner,
    "set_topic": set_topic,
    "add_invite": add_invite,
    "set_sanction": set_sanction,
    "mark_welcomed": mark_welcomed,
    "set_dm_stream": set_dm_stream,
    "add_audit": add_audit,
    "set_txn": set_txn,
    "drop_inbox": drop_inbox,
    "delete_room": delete_room,
    "drop_history": drop_history,
}
