"""Administration from the shell: chatserver-admin (python -m chatserver.admin).

    chatserver-admin [--config FILE | --data-dir DIR] [--create] add-user NAME [--admin] [--password-file F]
    chatserver-admin [...] user add|passwd|list|show|set-role|disable|enable|delete|revoke-tokens ... [--json]
    chatserver-admin [...] room list|show ... [--json]
    chatserver-admin [...] room set-owner ROOM USER | room delete ROOM [--yes] [--offline]
    chatserver-admin [...] fingerprint | status | check | backup DEST [--json]
    chatserver-admin [...] make-cert [--dir DIR] [--name HOST]... [--ip IP]... [--days N] [--force]
    chatserver-admin write-config DIR [--data-dir DIR] [--log-dir DIR] [--force]
    chatserver-admin [...] invite [--count N] [--expires DURATION]
    chatserver-admin [...] invite --list | --revoke CODE | --revoke-id ID
    chatserver-admin [...] migrate-store --to postgresql://HOST/DB [--to-password-file F]

It opens the same database as the server ([store] database: SQLite, whose
WAL mode lets it do so while the server runs, or PostgreSQL), checks it as
the server does at start-up and applies pending schema migrations first.
Give it the server's --config (relative paths in it are relative to the
file), or --data-dir or --database; it refuses to create a SQLite database
that does not exist unless told to (--create).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from chatserver import __version__, accounts, admin_accounts, admin_install, admin_server, admin_tls, logs
from chatserver.config import (
    PASSWORD_ENV,
    POSTGRES_SCHEMES,
    ConfigError,
    check_database_url,
    find_config,
    load_settings,
)
from chatserver.storage import queries
from chatserver.storage.direct import DirectDatabase, UnusableDatabase, open_direct
from chatserver.wire import validation


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chatserver-admin", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"chatserver-admin {__version__}")
    # Every command takes --json (after its name): one JSON object on stdout.
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    p.add_argument(
        "--config",
        help="the server's configuration file (default: $CHATSERVER_CONFIG, else "
        "/etc/chatserver/chatserver.ini if it exists, else the built-in defaults)",
    )
    p.add_argument("--data-dir", help="the server's data directory (default: from the config, var/lib)")
    p.add_argument(
        "--database", help="the server's [store] database: sqlite:PATH or a postgresql:// URL (no password)"
    )
    p.add_argument(
        "--create",
        action="store_true",
        help="create the database if it does not exist (a new installation, or starting over on purpose)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-user", parents=[json_flag], help="create an account (as: user add)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the account the admin role")
    add.add_argument("--password-file", type=Path, help="read the password from this file")
    inv = sub.add_parser(
        "invite",
        help="make (or list, or revoke) single-use invite codes for [accounts] allow_registration = invite",
    )
    action = inv.add_mutually_exclusive_group()
    action.add_argument(
        "--list", action="store_true", help="list the invites (not their codes) and their state"
    )
    action.add_argument("--revoke", metavar="CODE", help="revoke the unused invite with this code")
    action.add_argument("--revoke-id", metavar="ID", type=int, help="revoke the unused invite with this id")
    inv.add_argument(
        "--count", type=int, default=None, help="how many codes to make (default 1, at most 1000)"
    )
    inv.add_argument(
        "--expires",
        default=None,
        help="how long the codes are valid: a number of seconds or e.g. 30m, 12h, 7d, 2w (default 7d)",
    )
    admin_accounts.add_parsers(sub, json_flag)
    admin_server.add_parsers(sub, json_flag)
    admin_tls.add_parser(sub, json_flag)
    admin_install.add_parser(sub, json_flag)
    move = sub.add_parser(
        "migrate-store",
        help="copy the server's SQLite database into an empty PostgreSQL database (the server stopped)",
    )
    move.add_argument("--to", required=True, metavar="URL", help="postgresql://[USER@]HOST[:PORT]/DATABASE")
    move.add_argument(
        "--to-password-file",
        type=Path,
        help=f"read the target's password from this file (else ${PASSWORD_ENV}, else none)",
    )
    return p.parse_args(argv)


DEFAULT_INVITE_TTL = "7d"
MAX_INVITE_TTL = 365 * 86400
MAX_INVITES = 1000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``30m``, ``12h``, ``7d``, ``2w`` -> seconds; ValueError if
    not positive or longer than a year."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(
            f"--expires {text!r}: a number of seconds, or a number and s, m, h, d or w"
        ) from None
    if not 0 < seconds <= MAX_INVITE_TTL:
        raise ValueError(f"--expires {text!r}: must be more than 0 and at most 365 days")
    return seconds


def _when(ts: int | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _who() -> str:
    """The actor of the admin tool's audit rows: the tool and the OS user."""
    try:
        return f"chatserver-admin:{getpass.getuser()}"
    except (KeyError, OSError):
        return "chatserver-admin"


def invite(args: argparse.Namespace, db: DirectDatabase, mode: str) -> int:
    """The ``invite`` command on an open database; ``mode``: the
    configuration's allow_registration."""
    now = int(time.time())
    if args.list:
        invites = db.run(queries.list_registration_invites)
        print("id\tstate\tcreated\texpires\tused_by\tused_at")
        for record in invites:
            print(
                f"{record.id}\t{record.state(now)}\t{_when(record.created_at)}\t{_when(record.expires_at)}"
                f"\t{record.used_by or '-'}\t{_when(record.used_at)}"
            )
        return 0
    if args.revoke is not None or args.revoke_id is not None:
        code_hash = accounts.invite_hash(args.revoke) if args.revoke is not None else None
        revoked = db.run(queries.revoke_registration_invite, _who(), now, code_hash, args.revoke_id)
        if revoked is None:
            print("error: no such invite, or it was used or revoked already", file=sys.stderr)
            return 1
        print(f"revoked invite {revoked}")
        return 0
    made = accounts.make_invites_now(db, args.count, args.ttl, _who(), now)
    print(
        f"made {len(made)} single-use invite code{'s' if len(made) != 1 else ''} "
        f"(ids {made[0][0]}-{made[-1][0]}), valid until {_when(made[0][2])}",
        file=sys.stderr,
    )
    if args.config and mode != "invite":
        print(
            f"note: {args.config} has [accounts] allow_registration = {mode}: "
            "the server does not ask for these codes until it is invite (a SIGHUP applies it)",
            file=sys.stderr,
        )
    for _, code, _ in made:
        print(code)
    return 0


# A missing database usually means the wrong directory: the tool would
# otherwise have made a new database there that the server never reads.
_HINT = (
    ": is this the server's data directory? Give the server's --config FILE (or --data-dir DIR), "
    "or --create to make a new database"
)


def read_new_password(path: Path | None) -> str:
    if path is not None:
        lines = path.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""
    first = getpass.getpass("new password: ")
    if getpass.getpass("repeat password: ") != first:
        raise SystemExit("error: the passwords do not match")
    return first


def _open_database(settings: Any, create: bool) -> DirectDatabase | None:
    """The server's database, checked and migrated; None (after one line
    on stderr) if it cannot be used."""
    try:
        return open_direct(settings, create=create)
    except (UnusableDatabase, ConfigError) as e:
        hint = _HINT if not settings.uses_postgres and not settings.database_path.exists() else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return None


def migrate_store(args: argparse.Namespace, settings: Any) -> int:
    from chatserver.storage.migrate_store import MigrationRefused, migrate_store

    try:
        if not args.to.startswith(POSTGRES_SCHEMES):
            raise ConfigError("--to must be a postgresql:// URL")
        check_database_url(args.to, "--to")
        if args.to_password_file is not None:
            try:
                password: str | None = args.to_password_file.read_text(encoding="utf-8").strip("\r\n")
            except OSError as e:
                raise ConfigError(f"--to-password-file {args.to_password_file}: {e.strerror}") from None
        else:
            password = os.environ.get(PASSWORD_ENV)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        copied, target = migrate_store(settings, args.to, password)
    except (MigrationRefused, UnusableDatabase) as e:
        print(f"error: {e}; nothing was copied", file=sys.stderr)
        return 1
    for table, count in sorted(copied.rows.items()):
        print(f"{table}\t{count}")
    print(
        f"copied {settings.database_path} into {target}: {copied.events} events in {copied.streams} "
        "streams, every table's count and every stream's last id checked. "
        f"To use it, set [store] database = {target} (the password in password_file) and start the server.",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(find_config(args.config), data_dir=args.data_dir, database=args.database)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command in ("make-cert", "write-config"):
        return _file_command(args, settings)
    if args.command == "migrate-store":
        return migrate_store(args, settings)
    if args.command == "invite":
        try:
            if (args.list or args.revoke is not None or args.revoke_id is not None) and (
                args.count is not None or args.expires is not None
            ):
                raise ValueError("--count and --expires are for making invites, not with --list or --revoke")
            args.count = 1 if args.count is None else args.count
            if not 1 <= args.count <= MAX_INVITES:
                raise ValueError(f"--count must be from 1 to {MAX_INVITES}")
            args.ttl = parse_duration(args.expires or DEFAULT_INVITE_TTL)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        db = _open_database(settings, args.create)
        if db is None:
            return 1
        try:
            return invite(args, db, settings.allow_registration)
        finally:
            db.close()
    if args.command in ("add-user", "user", "room"):
        if args.command == "add-user":
            args.command, args.action = "user", "add"
        return _account_command(args, settings)
    return admin_server.run(args, settings)


def _file_command(args: argparse.Namespace, settings: Any) -> int:
    """The commands that write files, not the database."""
    try:
        if args.command == "make-cert":
            directory = args.dir if args.dir is not None else settings.data_path
            data = admin_tls.make_cert(Path(directory), args.name, args.ip, args.days, args.force)
            text = admin_tls.describe(data)
            try:
                logs.append_audit_line(
                    settings.log_path,
                    settings.log_format == "json",
                    _who(),
                    "make_cert",
                    data["certificate"],
                    f"sha256={data['sha256']}",
                    "-",
                )
            except OSError as e:
                print(
                    f"warning: cannot write {settings.log_path / 'audit.log'}: {e.strerror}", file=sys.stderr
                )
        else:
            data = admin_install.write_config(args.dir, args.target_data_dir, args.target_log_dir, args.force)
            text = admin_install.describe(data)
    except (admin_tls.CertError, admin_install.InstallError) as e:
        if args.json:
            print(json.dumps({"error": str(e)}))
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(data, sort_keys=True) if args.json else text)
    return 0


def _account_command(args: argparse.Namespace, settings: Any) -> int:
    path = getattr(args, "password_file", None)

    def password() -> str:
        try:
            return read_new_password(Path(path) if path else None)
        except OSError as e:
            raise admin_accounts.Refused(f"cannot read the password file: {e.strerror}") from None

    new_password = None
    if args.command == "user" and args.action in ("add", "passwd"):
        # Checked before the database is opened: a mistake here is the
        # operator's (exit 2), whatever the state of the database.
        try:
            validation.username(args.name)
            new_password = password()
            validation.new_password(new_password)
        except validation.RequestError as e:
            print(f"error: {e.message}", file=sys.stderr)
            return 2
        except admin_accounts.Refused as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    db = _open_database(settings, args.create)
    if db is None:
        return 1
    try:
        commands = admin_accounts.AccountCommands(db, settings, _who(), args.json, new_password)
        return admin_accounts.run(commands, args)
    except admin_accounts.Refused as e:
        if args.json:
            print(json.dumps({"error": str(e)}))
        print(f"error: {e}", file=sys.stderr)
        return e.status
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
