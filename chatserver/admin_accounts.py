"""The admin tool's account and room commands: ``chatserver-admin user
...`` and ``chatserver-admin room ...``.

Each change is one transaction on the server's database, with its audit
row (``storage/admin_queries.py``); then one line in audit.log, and then
the running server is told (``control.py``), so that live sessions see
the change at once: a disabled, deleted or signed-out account's sessions
end, a new role applies from the next login, which the closing asks the
client to make.  The commands print text for people, or with ``--json``
one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from chatserver import control, logs
from chatserver.accounts import ROLES
from chatserver.storage import admin_queries
from chatserver.storage.direct import DirectDatabase
from chatserver.wire import crypto, validation

#: Exit statuses: done; nothing done (no such user, refused); bad usage.
OK, REFUSED, USAGE = 0, 1, 2


class Refused(Exception):
    """The command cannot be done as asked; the message says why (one line)."""

    status = REFUSED


class Usage(Refused):
    """What was given is not valid (a name, a password): exit status 2."""

    status = USAGE


def _when(ts: int | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """Tab-separated, a header line first: for people and for ``cut``."""
    return "\n".join("\t".join(str(cell) for cell in row) for row in [header, *rows])


def _name(text: str) -> str:
    try:
        return validation.username(text)
    except validation.RequestError as e:
        raise Usage(e.message) from None


class AccountCommands:
    """The commands on one open database, for the operator ``actor``."""

    def __init__(
        self,
        db: DirectDatabase,
        settings: Any,
        actor: str,
        as_json: bool,
        password: str | None = None,
        out: Any = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.actor = actor
        self.as_json = as_json
        #: The new password of ``add`` and ``passwd``, read and checked by
        #: the caller before the database was opened.
        self.password = password
        self.out = out or sys.stdout

    # --- output -------------------------------------------------------------

    def emit(self, data: dict[str, Any], text: str) -> None:
        print(json.dumps(data, sort_keys=True) if self.as_json else text, file=self.out)

    def _audit(self, action: str, target: str, detail: str = "", room: str | None = None) -> Any:
        return ("add_audit", (int(time.time() * 1000), self.actor, action, room, target, detail))

    def _changed(self, action: str, target: str, detail: str = "", room: str | None = None) -> None:
        """After a commit: the audit.log line (a failure to write it is said,
        not fatal: the row is in the database's audit table)."""
        try:
            logs.append_audit_line(
                self.settings.log_path,
                self.settings.log_format == "json",
                self.actor,
                action,
                target,
                detail,
                room or "-",
            )
        except OSError as e:
            print(
                f"warning: cannot write {self.settings.log_path / 'audit.log'}: {e.strerror}; "
                "the change is in the database's audit table",
                file=sys.stderr,
            )

    def _tell(self, user: str, close: str | None, rooms: list[str] = ()) -> list[str]:  # type: ignore[assignment]
        """Tell the running server; the processes that confirmed (none: no
        server runs here, or it will read the account at the next login)."""
        try:
            return control.tell_servers(
                self.settings.data_path,
                {"op": "account_changed", "user": user, "close": close, "rooms": list(rooms)},
            )
        except RuntimeError as e:
            print(f"warning: {e}; the change applies to live sessions at their next login", file=sys.stderr)
            return []

    # --- users ----------------------------------------------------------------

    def _hashed_password(self) -> str:
        assert self.password is not None, "add and passwd are given the password"
        return str(crypto.hash_password(self.password, self.settings.password_hash_cost))

    def add(self, name: str, admin: bool) -> int:
        name = _name(name)
        role = "admin" if admin else "user"
        hashed = self._hashed_password()
        if not self.db.run(admin_queries.add_user, name, hashed, role, self._audit("add_user", name, role)):
            raise Refused(f"user {name} already exists")
        self._changed("add_user", name, role)
        self.emit({"user": name, "role": role, "added": True}, f"added {role} {name}")
        return OK

    def passwd(self, name: str, keep_sessions: bool) -> int:
        name = _name(name)
        hashed = self._hashed_password()
        detail = "sessions kept" if keep_sessions else "signed out everywhere"
        done = self.db.run(
            admin_queries.set_password, name, hashed, not keep_sessions, self._audit("passwd", name, detail)
        )
        self._found(done, name)
        self._changed("passwd", name, detail)
        told = [] if keep_sessions else self._tell(name, "signed_out")
        self.emit(
            {"user": name, "password_changed": True, "signed_out": not keep_sessions, "servers_told": told},
            f"changed the password of {name}" + ("" if keep_sessions else ", and signed it out everywhere"),
        )
        return OK

    def _found(self, result: Any, name: str) -> None:
        if result is None:
            raise Refused(f"there is no user {name}")
        if result is False:
            raise Refused(f"user {name} is deleted")

    def list(self) -> int:
        users = self.db.run(admin_queries.list_users)
        rows = [
            (
                u["name"],
                u["role"],
                u["state"],
                _when(u["last_login_at"]),
                _when(u["created_at"]),
                u["rooms"],
                u["devices"],
            )
            for u in users
        ]
        self.emit(
            {"users": users},
            _table(("name", "role", "state", "last login", "created", "rooms", "devices"), rows),
        )
        return OK

    def show(self, name: str) -> int:
        name = _name(name)
        user = self.db.run(admin_queries.show_user, name)
        if user is None:
            raise Refused(f"there is no user {name}")
        lines = [
            f"user:           {user['name']}",
            f"role:           {user['role']}",
            f"state:          {user['state']}"
            + (f" (since {_when(user['deleted_at'])})" if user["deleted_at"] else ""),
            f"created:        {_when(user['created_at'])}",
            f"last login:     {_when(user['last_login_at'])}",
            f"session tokens: {user['session_tokens']}",
            "rooms:          " + (", ".join(f"{r['room']} ({r['role']})" for r in user["rooms"]) or "-"),
            "devices:        " + (", ".join(f"{d['device']} {d['name']!r}" for d in user["devices"]) or "-"),
        ]
        if user["recent_audit"]:
            lines.append("recent audit:")
            for entry in user["recent_audit"]:
                lines.append(
                    f"  {_when(entry['ts'])} {entry['actor']} "
                    f"{entry['action']}"
                    + (f" room={entry['room']}" if entry["room"] else "")
                    + (f" {entry['detail']}" if entry["detail"] else "")
                )
        self.emit({"user": user}, "\n".join(lines))
        return OK

    def set_role(self, name: str, role: str) -> int:
        name = _name(name)
        if role not in ROLES:
            raise Refused(f"the role is one of {', '.join(ROLES)}")
        before = self.db.run(admin_queries.set_role, name, role, self._audit("set_role", name, role))
        self._found(before, name)
        self._changed("set_role", name, role)
        # Its sessions end so that every process applies the role: the
        # clients log in again (with their token) and are told it.
        told = self._tell(name, "account_changed") if before != role else []
        self.emit(
            {"user": name, "role": role, "was": before, "servers_told": told},
            f"{name} is now {role}" + (f" (was {before})" if before != role else " (unchanged)"),
        )
        return OK

    def set_disabled(self, name: str, disabled: bool) -> int:
        name = _name(name)
        action = "disable" if disabled else "enable"
        done = self.db.run(admin_queries.set_disabled, name, disabled, self._audit(action, name))
        self._found(done, name)
        self._changed(action, name)
        told = self._tell(name, "account_disabled") if disabled else []
        self.emit(
            {"user": name, "disabled": disabled, "servers_told": told},
            f"{action}d {name}" + (" (its sessions and tokens ended)" if disabled else ""),
        )
        return OK

    def revoke_tokens(self, name: str) -> int:
        name = _name(name)
        count = self.db.run(admin_queries.revoke_all_tokens, name, self._audit("revoke_tokens", name))
        if count is None:
            raise Refused(f"there is no user {name}")
        self._changed("revoke_tokens", name, f"{count} tokens")
        told = self._tell(name, "signed_out")
        self.emit(
            {"user": name, "revoked": count, "servers_told": told},
            f"revoked {count} session token{'s' if count != 1 else ''} of {name}, and ended its sessions",
        )
        return OK

    def delete(self, name: str, confirmed: bool) -> int:
        name = _name(name)
        if not confirmed:
            if not sys.stdin.isatty():
                raise Refused("deleting an account needs --yes (or a terminal to confirm on)")
            typed = input(f"Delete the account {name}? Its messages stay, under its name. Type the name: ")
            if typed.strip() != name:
                raise Refused("not confirmed; nothing was deleted")
        now = int(time.time())
        result = self.db.run(admin_queries.delete_user, name, now, self._audit("delete_user", name))
        if result is None:
            raise Refused(f"there is no user {name}")
        if result["owns"]:
            raise Refused(
                f"{name} owns {', '.join(result['owns'])}: give "
                f"{'each' if len(result['owns']) > 1 else 'it'} another owner first (room set-owner)"
            )
        if not result["deleted"]:
            raise Refused(f"user {name} is deleted already")
        self._changed("delete_user", name)
        told = self._tell(name, "account_deleted", result["rooms"])
        self.emit(
            {"user": name, "deleted": True, "left_rooms": result["rooms"], "servers_told": told},
            f"deleted {name}: its sessions, tokens, devices and memberships are gone; "
            "its messages stay under its name, which nobody can register again",
        )
        return OK

    # --- rooms ----------------------------------------------------------------

    def rooms(self) -> int:
        rooms = self.db.run(admin_queries.list_rooms)
        rows = [
            (
                r["name"],
                r["kind"],
                r["owner"] or "-",
                "yes" if r["encrypted"] else "no",
                r["members"],
                r["last_id"],
                _when(r["created_at"]),
            )
            for r in rooms
        ]
        header = ("name", "kind", "owner", "encrypted", "members", "messages up to", "created")
        self.emit({"rooms": rooms}, _table(header, rows))
        return OK

    def room(self, name: str) -> int:
        room = self.db.run(admin_queries.show_room, name)
        if room is None:
            raise Refused(f"there is no room {name!r}")
        lines = [
            f"room:      {room['name']}",
            f"kind:      {room['kind']}" + (", end-to-end encrypted" if room["encrypted"] else ""),
            f"owner:     {room['owner'] or '-'}",
            f"topic:     {room['topic'] or '-'}",
            f"messages:  up to id {room['last_id']}",
            "members:   " + (", ".join(f"{m['user']} ({m['role']})" for m in room["members"]) or "-"),
            "sanctions: " + (", ".join(f"{s['user']} {s['kind']}" for s in room["sanctions"]) or "-"),
            "invites:   " + (", ".join(f"{i['user']} (by {i['by']})" for i in room["invites"]) or "-"),
        ]
        self.emit({"room": room}, "\n".join(lines))
        return OK

    def _room_name(self, text: str) -> str:
        try:
            return validation.room(text)
        except validation.RequestError as e:
            raise Usage(e.message) from None

    def _through_server(self, request: dict[str, Any], offline: bool) -> dict[str, Any] | None:
        """Ask a running server to make a room change, so that its members
        see it; its answer's ``result``, or None if no server runs (and it
        may be made in the database directly)."""
        try:
            answer = control.ask_server(self.settings.data_path, {**request, "actor": self.actor})
        except RuntimeError as e:
            raise Refused(f"{e}; nothing was changed") from None
        if answer is None:
            if self.settings.uses_postgres and not offline:
                raise Refused(
                    "no server of this data directory answers here, but with PostgreSQL one may run on "
                    "another machine, which would not see the change: run this where a server runs, "
                    "or give --offline if none runs anywhere"
                )
            return None
        if not answer.get("ok"):
            raise Refused(str(answer.get("error")))
        result = answer["result"]
        result["done_by"] = answer["process"]
        return dict(result)

    def set_owner(self, room: str, user: str, offline: bool) -> int:
        room, user = self._room_name(room), _name(user)
        result = self._through_server({"op": "set_owner", "room": room, "user": user}, offline)
        if result is None:
            now = int(time.time() * 1000)
            done = self.db.run(
                admin_queries.set_room_owner, room, user, now, self._audit("set_owner", user, "", room)
            )
            if isinstance(done, str):
                raise Refused(
                    {
                        "no_such_room": f"there is no room {room!r}",
                        "no_such_user": f"there is no user {user}",
                        "not_active": f"{user} is disabled or deleted: it cannot own a room",
                        "banned": f"{user} is banned from {room!r}: lift the ban first",
                    }[done]
                )
            detail = f"was {done['was'] or '-'}"
            if done["changed"]:
                self._changed("set_owner", user, detail, room)
            result = {"room": room, "owner": user, "was": done["was"], "changed": done["changed"]}
            result["done_by"] = "database"
        was = result["was"]
        self.emit(
            result,
            f"{user} owns {room} now" + (f" (was {was or 'nobody'}" + (", now a moderator)" if was else ")"))
            if result["changed"]
            else f"{user} owns {room} already",
        )
        return OK

    def delete_room(self, room: str, confirmed: bool, offline: bool) -> int:
        room = self._room_name(room)
        default = self.settings.default_room
        if room == default:
            raise Refused(f"{room!r} is the default room, where every account is put: it stays")
        if not confirmed:
            if not sys.stdin.isatty():
                raise Refused("deleting a room needs --yes (or a terminal to confirm on)")
            typed = input(
                f"Delete the room {room}? Its members are put out and its history is deleted. "
                "Type the room's name: "
            )
            if typed.strip() != room:
                raise Refused("not confirmed; nothing was deleted")
        result = self._through_server({"op": "delete_room", "room": room}, offline)
        if result is None:
            members = self.db.run(admin_queries.delete_room, room, self._audit("delete_room", room, "", room))
            if members is None:
                raise Refused(f"there is no room {room!r}")
            self._changed("delete_room", room, f"{len(members)} members", room)
            result = {"room": room, "members": members, "done_by": "database"}
        result["deleted"] = True
        count = len(result["members"])
        self.emit(
            result,
            f"deleted {room}: its {count} member{'s are' if count != 1 else ' is'} out of it, "
            "and its history is gone",
        )
        return OK


def add_parsers(sub: Any, parent: argparse.ArgumentParser) -> None:
    """The ``user`` and ``room`` command groups."""
    users = sub.add_parser(
        "user", help="accounts: add, passwd, list, show, set-role, disable, enable, delete, revoke-tokens"
    )
    usub = users.add_subparsers(dest="action", required=True)
    add = usub.add_parser(
        "add", parents=[parent], help="create an account (the password asked twice, or from a file)"
    )
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the account the server role admin")
    add.add_argument("--password-file", help="read the password from this file's first line")
    pw = usub.add_parser(
        "passwd", parents=[parent], help="set a new password (and sign the account out everywhere)"
    )
    pw.add_argument("name")
    pw.add_argument("--password-file", help="read the password from this file's first line")
    pw.add_argument(
        "--keep-sessions", action="store_true", help="do not revoke its tokens or end its sessions"
    )
    usub.add_parser("list", parents=[parent], help="every account: role, state, last login, rooms, devices")
    show = usub.add_parser(
        "show", parents=[parent], help="one account in full (never its password or tokens)"
    )
    show.add_argument("name")
    role = usub.add_parser("set-role", parents=[parent], help="make an account an admin, or a user again")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    for verb, what in (
        ("disable", "refuse its logins and end its sessions and tokens"),
        ("enable", "allow it again"),
    ):
        p = usub.add_parser(verb, parents=[parent], help=f"{verb} an account: {what}")
        p.add_argument("name")
    delete = usub.add_parser(
        "delete",
        parents=[parent],
        help="delete an account: its messages stay under its name, which cannot be registered again",
    )
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="do not ask to confirm")
    revoke = usub.add_parser("revoke-tokens", parents=[parent], help="sign an account out everywhere")
    revoke.add_argument("name")
    rooms = sub.add_parser("room", help="rooms: list, show, set-owner, delete")
    rsub = rooms.add_subparsers(dest="action", required=True)
    rsub.add_parser("list", parents=[parent], help="every room: kind, owner, encryption, members")
    rshow = rsub.add_parser(
        "show", parents=[parent], help="one room: members, sanctions, invites (never messages)"
    )
    rshow.add_argument("name")
    offline = argparse.ArgumentParser(add_help=False)
    offline.add_argument(
        "--offline",
        action="store_true",
        help="with PostgreSQL: no server runs anywhere, change the database directly",
    )
    owner = rsub.add_parser(
        "set-owner",
        parents=[parent, offline],
        help="give a room a new owner (a member first if need be); the old owner becomes a moderator",
    )
    owner.add_argument("name")
    owner.add_argument("user")
    rdelete = rsub.add_parser(
        "delete",
        parents=[parent, offline],
        help="delete a room: its members are put out and its history is deleted (not the default room)",
    )
    rdelete.add_argument("name")
    rdelete.add_argument("--yes", action="store_true", help="do not ask to confirm")


def run(commands: AccountCommands, args: argparse.Namespace) -> int:
    if args.command == "user":
        action = args.action
        if action == "add":
            return commands.add(args.name, args.admin)
        if action == "passwd":
            return commands.passwd(args.name, args.keep_sessions)
        if action == "list":
            return commands.list()
        if action == "show":
            return commands.show(args.name)
        if action == "set-role":
            return commands.set_role(args.name, args.role)
        if action in ("disable", "enable"):
            return commands.set_disabled(args.name, action == "disable")
        if action == "delete":
            return commands.delete(args.name, args.yes)
        if action == "revoke-tokens":
            return commands.revoke_tokens(args.name)
    if args.command == "room":
        if args.action == "list":
            return commands.rooms()
        if args.action == "show":
            return commands.room(args.name)
        if args.action == "set-owner":
            return commands.set_owner(args.name, args.user, args.offline)
        if args.action == "delete":
            return commands.delete_room(args.name, args.yes, args.offline)
    raise AssertionError(f"unknown command {args.command} {getattr(args, 'action', '')}")
