"""Moving a server from SQLite to PostgreSQL: ``chatserver-admin migrate-store``.

The SQLite database is copied table by table into an empty PostgreSQL
database whose schema is brought to the same version first, all in one
PostgreSQL transaction, and verified before that commits: every table has
as many rows as in SQLite, and every stream the same last id and the same
highest stored event id.  Anything else rolls the copy back whole, so the
target is either a faithful copy or untouched.

While it copies, it holds the SQLite database's server lock
(:func:`sqlite.lock_for_server`), so it refuses to start while a server
runs on the database, and no server can start on it until it is done: a
message acknowledged during the copy could otherwise be left behind.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from chatserver import schema
from chatserver.storage import postgres, sqlite

#: Rows per COPY batch read from SQLite (bounded memory for a large history).
BATCH = 5000


@dataclasses.dataclass
class Copied:
    """What was copied: rows per table, and the streams' last ids."""

    rows: dict[str, int]
    streams: int
    events: int


class MigrationRefused(Exception):
    """One line for the operator: why nothing was copied."""


def _columns(pg: Any, table: str) -> list[tuple[str, str]]:
    """(name, identity kind: '', 'a' always or 'd' by default) of a PostgreSQL table, in order."""
    rows = pg.execute(
        "SELECT a.attname, a.attidentity FROM pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table,),
    ).fetchall()
    return [(name, identity) for name, identity in rows]


def _tables(pg: Any) -> list[str]:
    """The schema's tables in an order that satisfies the foreign keys
    (rooms before what refers to them)."""
    names = [
        row[0]
        for row in pg.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
        ).fetchall()
        if row[0] != "schema_version"
    ]
    referenced = {
        row[0]
        for row in pg.execute(
            "SELECT DISTINCT confrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND connamespace = current_schema()::regnamespace"
        ).fetchall()
    }
    return sorted(names, key=lambda name: (name not in referenced, name))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_version(source: sqlite3.Connection) -> int:
    return int(source.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)


def _stream_ids(fetch: Any) -> dict[str, tuple[int, int | None]]:
    """stream -> (last id handed out, highest stored event id)."""
    last = dict(fetch("SELECT stream, last_id FROM streams"))
    stored = dict(fetch("SELECT stream, MAX(id) FROM events GROUP BY stream"))
    return {stream: (last.get(stream, 0), stored.get(stream)) for stream in set(last) | set(stored)}


def copy(source: sqlite3.Connection, pg: Any) -> Copied:
    """Copy ``source`` (a SQLite connection, schema up to date) into
    ``pg`` (a psycopg connection in autocommit mode, to an empty database
    with the schema made),
    in one transaction, verified before it commits.  Raises
    MigrationRefused with the reason, having changed nothing."""
    version = _sqlite_version(source)
    newest = schema.numbered("chatserver.schema.postgres")[-1][0]
    if version != newest:
        raise MigrationRefused(
            f"the SQLite database has schema version {version} and PostgreSQL's is {newest}: "
            "run this chatserver once on the SQLite database first, to upgrade it"
        )
    copied: dict[str, int] = {}
    with pg.transaction():
        tables = _tables(pg)
        for table in tables:
            if pg.execute(f"SELECT EXISTS (SELECT 1 FROM {_quoted(table)})").fetchone()[0]:
                raise MigrationRefused(
                    f"the target database is not empty (table {table} has rows): "
                    "give an empty database, made with createdb"
                )
        # Nothing may change in SQLite between the copy and the check:
        # one read transaction over both (and no server runs; see above).
        source.execute("BEGIN")
        try:
            for table in tables:
                copied[table] = _copy_table(source, pg, table)
            expected = {
                table: source.execute(f"SELECT COUNT(*) FROM {_quoted(table)}").fetchone()[0]
                for table in tables
            }
            source_ids = _stream_ids(lambda sql: source.execute(sql).fetchall())
        finally:
            source.execute("COMMIT")
        got = {table: pg.execute(f"SELECT COUNT(*) FROM {_quoted(table)}").fetchone()[0] for table in tables}
        if got != expected:
            wrong = sorted(t for t in tables if got[t] != expected[t])
            raise MigrationRefused(
                "the copy does not match: "
                + ", ".join(f"{t} has {got[t]} rows, not {expected[t]}" for t in wrong)
            )
        target_ids = _stream_ids(lambda sql: pg.execute(sql).fetchall())
        if target_ids != source_ids:
            wrong_streams = sorted(s for s in source_ids if target_ids.get(s) != source_ids[s])
            raise MigrationRefused(f"the copy does not match: the last ids of {', '.join(wrong_streams[:5])}")
        _advance_identities(pg, tables)
    return Copied(copied, len(source_ids), copied.get("events", 0))


def _copy_table(source: sqlite3.Connection, pg: Any, table: str) -> int:
    columns = _columns(pg, table)
    names = [name for name, _ in columns]
    # room_members' rowid is SQLite's implicit one: the order of joining.
    select = ", ".join(_quoted(n) for n in names)
    binary = {
        name
        for name, kind in pg.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
            (table,),
        ).fetchall()
        if kind == "bytea"
    }
    count = 0
    # COPY writes given values into identity columns too (as INSERT's
    # OVERRIDING SYSTEM VALUE would), which keeps every id as it was.
    with pg.cursor().copy(f"COPY {_quoted(table)} ({select}) FROM STDIN") as out:
        rows = source.execute(f"SELECT {select} FROM {_quoted(table)}")
        while batch := rows.fetchmany(BATCH):
            for row in batch:
                out.write_row(
                    [
                        bytes(v) if n in binary and v is not None else v
                        for n, v in zip(names, row, strict=True)
                    ]
                )
            count += len(batch)
    return count


def _advance_identities(pg: Any, tables: list[str]) -> None:
    """Identity sequences start after the copied ids, so the next audit
    row, invite or ticket key does not collide with a copied one."""
    for table in tables:
        for name, identity in _columns(pg, table):
            if identity:
                pg.execute(
                    f"SELECT setval(pg_get_serial_sequence(%s, %s), "
                    f"COALESCE((SELECT MAX({_quoted(name)}) FROM {_quoted(table)}), 0) + 1, false)",
                    (_quoted(table), name),
                )


def migrate_store(settings: Any, target: str, password: str | None) -> tuple[Copied, str]:
    """The admin command's work: the configured SQLite database into
    ``target``.  Returns what was copied and the target's description.
    Raises MigrationRefused or UnusableDatabase (from chatserver.storage.interface)."""
    if settings.uses_postgres:
        raise MigrationRefused(
            "the configured database is already PostgreSQL; migrate-store copies a SQLite database"
        )
    path = settings.database_path
    with sqlite.lock_for_server(path, "migrate-store"):
        source = sqlite.open_database(path, create=False)
        try:
            storage = postgres.PostgresStorage(target, password=password, reactor=None)
            storage.check()  # reachable, and its schema made: UnusableDatabase otherwise
            with storage._connect() as pg:
                return copy(source, pg), postgres.describe(target)
        finally:
            source.close()
