"""Administration from the shell: ``python -m chatserver.admin``.

    chatserver-admin [--config FILE | --data-dir DIR] [--create] add-user NAME [--admin] [--password-file F]

It opens the same SQLite database as the server (WAL mode lets it do so
while the server runs), checks it as the server does at start-up and
applies pending schema migrations first.  Give it the server's --config
(relative paths in it are relative to the file) or --data-dir; it refuses
to create a database that does not exist unless told to (--create).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from chatserver import accounts, store, validation
from chatserver.config import ConfigError, load_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chatserver.admin", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="server configuration file (for data_dir and hash cost)")
    p.add_argument("--data-dir", help="the server's data directory (default: from the config, var/lib)")
    p.add_argument(
        "--create",
        action="store_true",
        help="create the database if it does not exist (a new installation, or starting over on purpose)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-user", help="create an account")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the account the admin role")
    add.add_argument("--password-file", type=Path, help="read the password from this file")
    return p.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "add-user":
        try:
            name = validation.username(args.name)
            password = read_new_password(args.password_file)
            validation.REQUESTS["register"]["password"][0](password, None)
        except validation.RequestError as e:
            print(f"error: {e.message}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"error: cannot read the password file: {e.strerror}", file=sys.stderr)
            return 2
        try:
            conn = store.open_database(settings.database_path, create=args.create)
        except store.UnusableDatabase as e:
            print(f"error: {e}{_HINT if not settings.database_path.exists() else ''}", file=sys.stderr)
            return 1
        try:
            role = "admin" if args.admin else "user"
            if not accounts.add_user_now(conn, name, password, role, settings.password_hash_cost):
                print(f"error: user {name} already exists", file=sys.stderr)
                return 1
        finally:
            conn.close()
        print(f"added {role} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
