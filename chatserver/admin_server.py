"""The admin tool's commands on the server as a whole: ``fingerprint``,
``status``, ``check`` and ``backup DEST``.

``backup`` makes a consistent copy while the server runs: with SQLite,
through SQLite's online backup API (pages copied under a read transaction,
so the copy is one moment of the database, and WAL lets the server go on
writing meanwhile); with PostgreSQL, with ``pg_dump`` (one snapshot).  The
copy is then opened and checked before the command says it is done.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chatserver import control, identity
from chatserver.storage import admin_queries
from chatserver.storage import sqlite as sqlite_storage
from chatserver.storage.interface import UnusableDatabase


class Failed(Exception):
    """One line for the operator; exit status 1."""


def add_parsers(sub: Any, parent: argparse.ArgumentParser) -> None:
    sub.add_parser(
        "fingerprint",
        parents=[parent],
        help="print the server key's fingerprint (what users compare on first connection)",
    )
    sub.add_parser("check", parents=[parent], help="check the database: integrity and schema version")
    sub.add_parser(
        "status",
        parents=[parent],
        help="whether the server of this data directory runs: its processes that answer (exit 1: none)",
    )
    backup = sub.add_parser(
        "backup",
        parents=[parent],
        help="a consistent copy of the database while the server runs (SQLite: a file; PostgreSQL: pg_dump)",
    )
    backup.add_argument("dest", help="the file to write (it must not exist)")


def run(args: argparse.Namespace, settings: Any) -> int:
    try:
        if args.command == "fingerprint":
            data = fingerprint(settings)
            text = data["fingerprint"]
        elif args.command == "check":
            data = check(settings)
            text = (
                f"{data['database']}: {'ok' if data['ok'] else 'DAMAGED'}, "
                f"schema version {data['schema_version']}"
                f" (this chatserver knows up to {data['newest_schema']})"
                + "".join(f"\n  {problem}" for problem in data["problems"])
            )
        elif args.command == "status":
            data = status(settings)
            running = [name for name, up in data["processes"].items() if up]
            text = (
                f"running: {', '.join(running)} (data directory {data['data_dir']})"
                if running
                else f"no server of {data['data_dir']} answers"
            )
        elif args.command == "backup":
            data = backup(settings, Path(args.dest))
            counts = (
                f", {data['events']} events, {data['users']} accounts" if data["events"] is not None else ""
            )
            text = (
                f"backed up {data['database']} to {data['dest']} ({data['bytes']} bytes, "
                f"schema version {data['schema_version']}{counts}, in {data['seconds']:.1f} s); checked"
            )
        else:
            raise AssertionError(args.command)
    except Failed as e:
        if args.json:
            print(json.dumps({"error": str(e)}))
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(data, sort_keys=True) if args.json else text)
    return 0 if data.get("ok", True) else 1


def fingerprint(settings: Any) -> dict[str, Any]:
    path = settings.identity_key_path
    if not path.exists():
        raise Failed(f"{path} does not exist: the server makes it at its first start")
    try:
        key, _ = identity.load_or_create(path)
    except identity.IdentityError as e:
        raise Failed(str(e)) from None
    return {"fingerprint": key.fingerprint, "key": str(path)}


def status(settings: Any) -> dict[str, Any]:
    """The processes of the server of this data directory that answer on
    their control socket (what a container's health check asks)."""
    try:
        processes = control.ping_all(settings.data_path, timeout=5.0)
    except RuntimeError as e:
        raise Failed(str(e)) from None
    return {
        "data_dir": str(settings.data_path),
        "processes": processes,
        "ok": any(processes.values()),
    }


def check(settings: Any) -> dict[str, Any]:
    if settings.uses_postgres:
        return _check_postgres(settings)
    path = settings.database_path
    if not path.exists():
        raise Failed(f"database {path} does not exist")
    conn = sqlite3.connect(str(path))
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        problems += [f"foreign key: {row}" for row in conn.execute("PRAGMA foreign_key_check")]
        version = _schema_version(conn)
        problems += admin_queries.consistency_problems(conn.cursor())
    except sqlite3.Error as e:
        problems, version = [str(e)], 0
    finally:
        conn.close()
    problems = [p for p in problems if p != "ok"]
    newest = sqlite_storage.newest_version()
    if version > newest:
        problems.append(f"schema version {version} is newer than this chatserver knows")
    return {
        "database": str(path),
        "ok": not problems,
        "schema_version": version,
        "newest_schema": newest,
        "problems": problems,
    }


def _check_postgres(settings: Any) -> dict[str, Any]:
    from chatserver.storage import postgres

    newest = postgres.newest_version()
    try:
        version, problems = postgres.inspect_now(settings.database, settings.database_password())
    except UnusableDatabase as e:
        raise Failed(str(e)) from None
    if version > newest:
        problems.append(f"schema version {version} is newer than this chatserver knows")
    return {
        "database": postgres.describe(settings.database),
        "ok": not problems,
        "schema_version": version,
        "newest_schema": newest,
        "problems": problems,
    }


def backup(settings: Any, dest: Path) -> dict[str, Any]:
    if dest.exists():
        raise Failed(f"{dest} exists: give a new file name")
    if not dest.parent.is_dir():
        raise Failed(f"{dest.parent} is not a directory")
    started = time.monotonic()
    if settings.uses_postgres:
        data = _backup_postgres(settings, dest)
    else:
        data = _backup_sqlite(settings.database_path, dest)
    data["seconds"] = time.monotonic() - started
    data["bytes"] = dest.stat().st_size
    data["dest"] = str(dest)
    return data


def _schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)


def _private_file(dest: Path) -> None:
    # Password hashes and every message: nobody else may read the copy.
    try:
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise Failed(f"cannot create {dest}: {e.strerror}") from None


def _backup_sqlite(path: Path, dest: Path) -> dict[str, Any]:
    if not path.exists():
        raise Failed(f"database {path} does not exist")
    _private_file(dest)
    try:
        source = sqlite3.connect(str(path))
        target = sqlite3.connect(str(dest))
        try:
            # All pages in one step: one read transaction, so one moment.
            source.backup(target, pages=-1)
        finally:
            target.close()
            source.close()
        copy = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
            version = _schema_version(copy)
            events = copy.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            users = copy.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        finally:
            copy.close()
    except sqlite3.Error as e:
        dest.unlink(missing_ok=True)
        raise Failed(f"the backup of {path} failed: {e}") from None
    if problems != ["ok"]:
        raise Failed(f"the copy {dest} does not check: {problems[0]}")
    return {
        "database": str(path),
        "schema_version": version,
        "events": events,
        "users": users,
        "format": "sqlite",
    }


def _backup_postgres(settings: Any, dest: Path) -> dict[str, Any]:
    from chatserver.storage import postgres

    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise Failed("pg_dump is not installed (Debian: apt-get install postgresql-client)")
    env = dict(os.environ)
    password = settings.database_password()
    if password:
        env["PGPASSWORD"] = password
    _private_file(dest)
    done = subprocess.run(
        [pg_dump, "--format=custom", "--no-owner", f"--file={dest}", settings.database],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        dest.unlink(missing_ok=True)
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise Failed(f"pg_dump of {postgres.describe(settings.database)} failed: {last}")
    listing = subprocess.run(["pg_restore", "--list", str(dest)], capture_output=True, text=True)
    if listing.returncode != 0 or "TABLE DATA" not in listing.stdout:
        raise Failed(f"the dump {dest} does not read back (pg_restore --list)")
    version, _ = postgres.inspect_now(settings.database, password)
    return {
        "database": postgres.describe(settings.database),
        "schema_version": version,
        "events": None,
        "users": None,
        "format": "pg_dump custom (restore with pg_restore)",
    }
