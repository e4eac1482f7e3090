"""Persistent storage: SQLite through ``twisted.enterprise.adbapi``.

The schema is versioned.  Numbered SQL files in ``chatserver/schema/`` are
applied in order, each in its own transaction together with the bump of
``schema_version``, so a crash mid-upgrade leaves the previous version
intact.  The same statements serve the server (through the adbapi pool) and
the admin tool (through a plain connection): each query is a function of a
cursor.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger(namespace="chatserver.store")

_MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


@dataclasses.dataclass(frozen=True)
class UserRecord:
    name: str
    password_hash: str
    role: str
    disabled: bool


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) for every schema file, in order."""
    found = []
    for entry in importlib.resources.files("chatserver.schema").iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(conn: sqlite3.Connection, target: int | None = None) -> int:
    """Bring the database up to ``target`` (default: the newest); returns
    the version it ends at."""
    current = schema_version(conn)
    for version, sql in migrations():
        if version <= current or (target is not None and version > target):
            continue
        # executescript commits first and runs the script in autocommit
        # mode, so the script carries its own transaction.
        conn.executescript(
            f"BEGIN;\n{sql}\nINSERT INTO schema_version (version) VALUES ({version});\nCOMMIT;"
        )
        log.info("database schema upgraded to version {version}", version=version)
        current = version
    return current


def open_database(path: Path) -> sqlite3.Connection:
    """A plain connection with the schema up to date (start-up, admin tool)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Password hashes live here: create the file private.  SQLite gives the
    # -wal and -shm files the same mode as the database.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    conn = sqlite3.connect(str(path))
    _configure(conn)
    migrate(conn)
    return conn


def _configure(conn: sqlite3.Connection) -> None:
    # WAL lets readers run beside the single writer; NORMAL sync is durable
    # in WAL mode across application crashes; foreign keys are off by
    # default in SQLite.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")


# --- queries: each takes a cursor --------------------------------------------


def get_user(cursor: Any, name: str) -> UserRecord | None:
    cursor.execute("SELECT name, password_hash, role, disabled FROM users WHERE name = ?", (name,))
    row = cursor.fetchone()
    if row is None:
        return None
    return UserRecord(row[0], row[1], row[2], bool(row[3]))


def add_user(cursor: Any, name: str, password_hash: str, role: str) -> bool:
    """Insert a user; False if the name is taken."""
    try:
        cursor.execute(
            "INSERT INTO users (name, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
            (name, password_hash, role, int(time.time())),
        )
    except sqlite3.IntegrityError:
        return False
    return True


class Store(Service):
    """The server's database: migrated at start, one writer thread."""

    name = "store"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pool: adbapi.ConnectionPool | None = None

    def startService(self) -> None:
        open_database(self.path).close()
        self.pool = adbapi.ConnectionPool(
            "sqlite3",
            str(self.path),
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
        )
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def run(self, query: Any, *args: Any) -> Deferred[Any]:
        assert self.pool is not None, "store is not started"
        return self.pool.runInteraction(query, *args)

    def get_user(self, name: str) -> Deferred[UserRecord | None]:
        return self.run(get_user, name)

    def add_user(self, name: str, password_hash: str, role: str) -> Deferred[bool]:
        return self.run(add_user, name, password_hash, role)
