"""The server's database opened directly, with no server: for the admin tool.

Whichever database ``[store] database`` names, :func:`open_direct` gives
one connection, checked and migrated like the server's, on which each
:meth:`DirectDatabase.run` of a query (``queries.py``) is one transaction.
"""

from __future__ import annotations

from typing import Any, Callable

from chatserver.storage import sqlite
from chatserver.storage.interface import UnusableDatabase

__all__ = ["DirectDatabase", "UnusableDatabase", "open_direct"]


class DirectDatabase:
    def __init__(self, conn: Any, run_now: Callable[..., Any], name: str) -> None:
        self.conn = conn
        self._run_now = run_now
        #: What it is, for messages (never with a password).
        self.name = name

    def run(self, query: Callable[..., Any], *args: Any) -> Any:
        return self._run_now(self.conn, query, *args)

    def fetch(self, sql: str, *params: Any) -> list[Any]:
        """The rows of one query in queries.py's spelling (for checks in
        tests and by hand)."""

        def query(cursor: Any) -> list[Any]:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

        return list(self.run(query))

    def close(self) -> None:
        self.conn.close()


def open_direct(settings: Any, create: bool = False) -> DirectDatabase:
    """Raises UnusableDatabase (one line for the operator), and ConfigError
    for an unreadable password file."""
    if settings.uses_postgres:
        from chatserver.storage import postgres

        conn = postgres.open_database(settings.database, settings.database_password())
        return DirectDatabase(conn, postgres.run_now, postgres.describe(settings.database))
    path = settings.database_path
    return DirectDatabase(sqlite.open_database(path, create=create), sqlite.run_now, str(path))
