"""The admin tool's queries: what it lists, shows and changes of accounts
and rooms, written once for SQLite and PostgreSQL as ``queries.py`` is.

Each is a function of a DB-API cursor, run in one transaction by
``DirectDatabase.run``; a change writes its audit row in the same
transaction (``audit``: the ``add_audit`` change), so the row exists if
and only if the change does.  Times are Unix seconds, except the audit
rows' (milliseconds, as the server writes them).
"""

from __future__ import annotations

from typing import Any

from chatserver.storage import queries
from chatserver.storage.interface import Change
from chatserver.storage.queries import add_audit, apply, revoke_tokens

#: What ``state`` says of an account.
ACTIVE, DISABLED, DELETED = "active", "disabled", "deleted"


def _seconds(ts: Any) -> Any:
    """A time in Unix seconds: the server writes rooms' and most audit
    rows' times in milliseconds, accounts' and invites' in seconds."""
    return ts // 1000 if isinstance(ts, int) and ts > 10**11 else ts


def add_user(cursor: Any, name: str, password_hash: str, role: str, audit: Change) -> bool:
    """Create an account with its audit row; False if the name is taken
    (by an account, or a deleted one)."""
    if not queries.add_user(cursor, name, password_hash, role):
        return False
    apply(cursor, audit)
    return True


def _state(disabled: Any, deleted_at: Any) -> str:
    if deleted_at is not None:
        return DELETED
    return DISABLED if disabled else ACTIVE


def list_users(cursor: Any) -> list[dict[str, Any]]:
    """Every account, in name order, with its role, state, creation and
    last login, and how many rooms and devices it has."""
    cursor.execute(
        "SELECT name, role, disabled, deleted_at, created_at, last_login_at, "
        "(SELECT COUNT(*) FROM room_members m WHERE m.user = users.name), "
        "(SELECT COUNT(*) FROM devices d WHERE d.user = users.name AND d.removed_at IS NULL) "
        "FROM users ORDER BY name"
    )
    return [
        {
            "name": name,
            "role": role,
            "state": _state(disabled, deleted_at),
            "created_at": created_at,
            "last_login_at": last_login_at,
            "rooms": rooms,
            "devices": devices,
        }
        for name, role, disabled, deleted_at, created_at, last_login_at, rooms, devices in cursor.fetchall()
    ]


def show_user(cursor: Any, name: str) -> dict[str, Any] | None:
    """One account in full (never its password hash or tokens), or None."""
    cursor.execute(
        "SELECT name, role, disabled, deleted_at, created_at, last_login_at FROM users WHERE name = ?",
        (name,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    user = {
        "name": row[0],
        "role": row[1],
        "state": _state(row[2], row[3]),
        "created_at": row[4],
        "last_login_at": row[5],
        "deleted_at": row[3],
    }
    cursor.execute("SELECT room, role FROM room_members WHERE user = ? ORDER BY room", (name,))
    user["rooms"] = [{"room": room, "role": role} for room, role in cursor.fetchall()]
    cursor.execute(
        "SELECT device, name, created_at FROM devices WHERE user = ? AND removed_at IS NULL ORDER BY device",
        (name,),
    )
    user["devices"] = [{"device": d, "name": n, "created_at": c} for d, n, c in cursor.fetchall()]
    cursor.execute("SELECT COUNT(*) FROM session_tokens WHERE user = ?", (name,))
    user["session_tokens"] = cursor.fetchone()[0]
    cursor.execute(
        "SELECT ts, actor, action, room, detail FROM audit WHERE target = ? ORDER BY id DESC LIMIT 10",
        (name,),
    )
    user["recent_audit"] = [
        {"ts": _seconds(ts), "actor": actor, "action": action, "room": room, "detail": detail}
        for ts, actor, action, room, detail in cursor.fetchall()
    ]
    return user


def _live(cursor: Any, name: str) -> bool | None:
    """True if ``name`` is an account that is not deleted, False if it is
    deleted, None if there is no such account."""
    cursor.execute("SELECT deleted_at FROM users WHERE name = ?", (name,))
    row = cursor.fetchone()
    return None if row is None else row[0] is None


def set_password(cursor: Any, name: str, password_hash: str, sign_out: bool, audit: Change) -> bool | None:
    """A new password for a live account (and, with ``sign_out``, every
    session token of it revoked): True, or False if the account is
    deleted, None if there is none."""
    live = _live(cursor, name)
    if not live:
        return live
    cursor.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))
    if sign_out:
        revoke_tokens(cursor, name)
    apply(cursor, audit)
    return True


def set_role(cursor: Any, name: str, role: str, audit: Change) -> str | bool | None:
    """Give a live account the server role ``role``: its previous role
    (False if the account is deleted, None if there is none)."""
    cursor.execute("SELECT role, deleted_at FROM users WHERE name = ?", (name,))
    row = cursor.fetchone()
    if row is None:
        return None
    if row[1] is not None:
        return False
    cursor.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
    apply(cursor, audit)
    return str(row[0])


def set_disabled(cursor: Any, name: str, disabled: bool, audit: Change) -> bool | None:
    """Disable (revoking every token) or enable a live account: True, or
    False if it is deleted, None if there is none."""
    live = _live(cursor, name)
    if not live:
        return live
    cursor.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
    if disabled:
        revoke_tokens(cursor, name)
    apply(cursor, audit)
    return True


def revoke_all_tokens(cursor: Any, name: str, audit: Change) -> int | None:
    """Revoke every session token of an account: how many there were, or
    None if there is no such account."""
    if _live(cursor, name) is None:
        return None
    cursor.execute("SELECT COUNT(*) FROM session_tokens WHERE user = ?", (name,))
    count = int(cursor.fetchone()[0])
    revoke_tokens(cursor, name)
    apply(cursor, audit)
    return count


def owned_rooms(cursor: Any, name: str) -> list[str]:
    cursor.execute("SELECT name FROM rooms WHERE owner = ? ORDER BY name", (name,))
    return [row[0] for row in cursor.fetchall()]


def delete_user(cursor: Any, name: str, now: int, audit: Change) -> dict[str, Any] | None:
    """Delete an account that owns no room: its password, tokens, devices
    (with their keys and inboxes), memberships, invites and sanctions go;
    its messages stay in the history under its name, and the name stays
    taken (the row is kept, marked deleted), so that nobody else can
    register it and seem to have written them.  Its direct-message
    conversations stay readable by the other side.

    Returns None if there is no such account, else ``{"deleted": bool,
    "owns": [rooms], "rooms": [rooms it was in]}``; nothing is changed
    when it owns rooms (they need another owner first) or is deleted
    already."""
    live = _live(cursor, name)
    if live is None:
        return None
    owns = owned_rooms(cursor, name)
    cursor.execute("SELECT room FROM room_members WHERE user = ? ORDER BY room", (name,))
    rooms = [row[0] for row in cursor.fetchall()]
    if not live or owns:
        return {"deleted": False, "owns": owns, "rooms": rooms}
    cursor.execute(
        # The role as a parameter: postgres_sql quotes the word user anywhere.
        "UPDATE users SET password_hash = '', disabled = 1, deleted_at = ?, role = ? WHERE name = ?",
        (now, "user", name),
    )
    revoke_tokens(cursor, name)
    cursor.execute("SELECT device FROM devices WHERE user = ? AND removed_at IS NULL", (name,))
    for (device,) in cursor.fetchall():
        cursor.execute("DELETE FROM events WHERE stream = ?", (f"device:{name}:{device}",))
    cursor.execute(
        "UPDATE devices SET removed_at = ?, name = '' WHERE user = ? AND removed_at IS NULL", (now, name)
    )
    cursor.execute("DELETE FROM device_keys WHERE user = ?", (name,))
    cursor.execute("DELETE FROM room_members WHERE user = ?", (name,))
    cursor.execute("DELETE FROM invites WHERE user = ?", (name,))
    cursor.execute("DELETE FROM sanctions WHERE user = ?", (name,))
    apply(cursor, audit)
    return {"deleted": True, "owns": [], "rooms": rooms}


def list_rooms(cursor: Any) -> list[dict[str, Any]]:
    """Every room, in name order: kind, owner, whether it is end-to-end
    encrypted, members, and its last event's id and time."""
    cursor.execute(
        "SELECT name, kind, owner, encrypted, created_at, "
        "(SELECT COUNT(*) FROM room_members m WHERE m.room = rooms.name), "
        "(SELECT last_id FROM streams s WHERE s.stream = 'room:' || rooms.name) "
        "FROM rooms ORDER BY name"
    )
    return [
        {
            "name": name,
            "kind": kind,
            "owner": owner,
            "encrypted": bool(encrypted),
            "created_at": _seconds(created_at),
            "members": members,
            "last_id": last_id or 0,
        }
        for name, kind, owner, encrypted, created_at, members, last_id in cursor.fetchall()
    ]


def show_room(cursor: Any, name: str) -> dict[str, Any] | None:
    """One room in full (members and their roles, sanctions, invites; never
    its messages), or None."""
    cursor.execute(
        "SELECT name, kind, owner, topic, encrypted, created_at FROM rooms WHERE name = ?", (name,)
    )
    row = cursor.fetchone()
    if row is None:
        return None
    room: dict[str, Any] = {
        "name": row[0],
        "kind": row[1],
        "owner": row[2],
        "topic": row[3],
        "encrypted": bool(row[4]),
        "created_at": _seconds(row[5]),
    }
    cursor.execute("SELECT user, role FROM room_members WHERE room = ? ORDER BY user", (name,))
    room["members"] = [{"user": user, "role": role} for user, role in cursor.fetchall()]
    cursor.execute("SELECT user, kind, until FROM sanctions WHERE room = ? ORDER BY user, kind", (name,))
    room["sanctions"] = [{"user": u, "kind": k, "until": _seconds(t)} for u, k, t in cursor.fetchall()]
    cursor.execute("SELECT user, invited_by FROM invites WHERE room = ? ORDER BY user", (name,))
    room["invites"] = [{"user": u, "by": b} for u, b in cursor.fetchall()]
    cursor.execute("SELECT last_id FROM streams WHERE stream = ?", (f"room:{name}",))
    last = cursor.fetchone()
    room["last_id"] = last[0] if last else 0
    return room


def set_room_owner(cursor: Any, room: str, user: str, now: int, audit: Change) -> dict[str, Any] | str:
    """With no server running: make the live account ``user`` the owner of
    ``room`` (a member first if need be), the old owner a moderator.
    ``{"was": OLD, "changed": bool}``, or why not: ``no_such_room``,
    ``no_such_user``, ``not_active`` (disabled or deleted), ``banned``.
    ``now`` in milliseconds, as the server writes rooms' times."""
    cursor.execute("SELECT owner FROM rooms WHERE name = ?", (room,))
    row = cursor.fetchone()
    if row is None:
        return "no_such_room"
    cursor.execute("SELECT disabled, deleted_at FROM users WHERE name = ?", (user,))
    account = cursor.fetchone()
    if account is None:
        return "no_such_user"
    if account[0] or account[1] is not None:
        return "not_active"
    cursor.execute(
        "SELECT 1 FROM sanctions WHERE room = ? AND user = ? AND kind = ? AND (until IS NULL OR until > ?)",
        (room, user, "ban", now),
    )
    if cursor.fetchone() is not None:
        return "banned"
    old = row[0]
    if old == user:
        return {"was": old, "changed": False}
    queries.set_member(cursor, room, user, "owner", now)
    if old is not None:
        cursor.execute(
            "UPDATE room_members SET role = ? WHERE room = ? AND user = ? AND role = ?",
            ("moderator", room, old, "owner"),
        )
    queries.set_owner(cursor, room, user)
    name, args = audit
    apply(cursor, (name, (*args[:5], f"was {old or '-'}")))  # the detail names the old owner
    return {"was": old, "changed": True}


def delete_room(cursor: Any, room: str, audit: Change) -> list[str] | None:
    """With no server running: delete ``room`` as the server does (the
    ``delete_room`` change); its members as they were, or None if there
    is no such room."""
    cursor.execute("SELECT 1 FROM rooms WHERE name = ?", (room,))
    if cursor.fetchone() is None:
        return None
    cursor.execute("SELECT user FROM room_members WHERE room = ? ORDER BY user", (room,))
    members = [row[0] for row in cursor.fetchall()]
    queries.delete_room(cursor, room)
    apply(cursor, audit)
    return members


def consistency_problems(cursor: Any) -> list[str]:
    """What ``check`` finds wrong in our own bookkeeping, on either
    backend: a stream whose stored events go past its recorded last id
    (the next id would repeat one)."""
    cursor.execute(
        "SELECT e.stream, MAX(e.id), s.last_id FROM events e LEFT JOIN streams s ON s.stream = e.stream "
        "GROUP BY e.stream, s.last_id HAVING s.last_id IS NULL OR MAX(e.id) > s.last_id"
    )
    return [
        f"stream {stream}: events up to id {top}, but its last id is {last}"
        for stream, top, last in cursor.fetchall()
    ]


__all__ = [
    "ACTIVE",
    "DELETED",
    "DISABLED",
    "add_audit",
    "add_user",
    "consistency_problems",
    "delete_user",
    "list_rooms",
    "list_users",
    "owned_rooms",
    "revoke_all_tokens",
    "set_disabled",
    "set_password",
    "set_role",
    "show_room",
    "show_user",
]
