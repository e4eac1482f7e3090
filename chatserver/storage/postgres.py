"""The PostgreSQL implementation of ``Storage``, for several processes and nodes.

psycopg 3 with a psycopg-pool ``ConnectionPool``, driven from a Twisted
thread pool: each query function (``queries.py``, shared with SQLite) runs
in a thread on a pooled connection, inside one transaction that commits
when it returns and rolls back if it raises.

What several writers change:

- **Stream ids come from the committing transaction.**  The group commit
  (``EventLog`` with ``ids_in_commit``) hands a batch's events over without
  ids; :func:`commit_events` takes the next ids of each stream with one
  upsert of its ``streams`` row, which locks that row until the commit.
  Another process committing to the same stream waits for the lock and
  then continues after these ids, so no id is handed out twice, and a
  rolled-back transaction takes none, so a stream has no gaps.  The rows
  are locked in the order of the streams' names, so two batches never
  wait for each other in a circle.
- Every commit is durable before it is acknowledged: the server's
  connections run with ``synchronous_commit = on`` whatever the cluster's
  default.

The schema is versioned like SQLite's, from ``chatserver/schema/postgres/``
(the same numbers as SQLite's files), each migration in one transaction
with the version bump, under an advisory lock so that processes starting
together migrate once.
"""

from __future__ import annotations

import re
import urllib.parse
from functools import lru_cache
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from chatserver import schema
from chatserver.storage import queries
from chatserver.storage.group_commit import EventLog, EventLogMethods
from chatserver.storage.interface import (  # noqa: F401 (DatabaseUnreachable: raised here, for callers)
    Change,
    ClaimedKey,
    DatabaseUnreachable,
    DeviceRecord,
    RoomRecord,
    SignedKey,
    StoreClosed,
    TicketKey,
    UnusableDatabase,
    UserRecord,
)
from chatserver.wire.channel import json_text

log = Logger(namespace="chatserver.store")

#: The advisory lock held while migrating (any number; this one is ours).
_MIGRATION_LOCK = 0x63686174  # "chat"
#: Seconds to wait for a pooled connection (or a new one) before a request
#: is refused as ``unavailable``: short, since a client waits behind it.
CONNECT_TIMEOUT = 2.0


@lru_cache(maxsize=None)
def postgres_sql(sql: str) -> str:
    """A query of queries.py, spelt for PostgreSQL: ``%s`` placeholders
    (a literal ``%`` doubled) and the reserved word ``user`` quoted."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    return re.sub(r'(?<![\w"])user(?![\w"])', '"user"', sql)


class PgCursor:
    """A psycopg cursor that takes queries.py's spelling."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Any = ()) -> PgCursor:
        self._cursor.execute(postgres_sql(sql), params)
        return self

    def executemany(self, sql: str, params: Any) -> PgCursor:
        self._cursor.executemany(postgres_sql(sql), params)
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)


def migrate(conn: Any) -> int:
    """Bring the database's schema up to date; the version it ends at.
    ``conn``: a psycopg connection (not in a transaction)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        files = schema.numbered("chatserver.schema.postgres")
        newest = files[-1][0]
        if current > newest:
            raise UnusableDatabase(
                f"the database has schema version {current}, newer than this chatserver knows "
                f"(up to {newest}): run the chatserver release that upgraded it"
            )
        before = current
        for version, sql in files:
            if version <= current:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            current = version
    if current != before:
        log.info("database schema upgraded from version {old} to version {new}", old=before, new=current)
    return int(current)


def open_database(url: str, password: str | None = None) -> Any:
    """A plain connection (autocommit between ``run_now`` calls), with the
    schema up to date: for the admin tool.  Raises UnusableDatabase."""
    storage = PostgresStorage(url, password=password, reactor=None)
    storage.check()
    return storage._connect()


def run_now(conn: Any, query: Any, *args: Any) -> Any:
    """One query in its own transaction on a plain connection."""
    with conn.transaction():
        with conn.cursor() as cursor:
            return query(PgCursor(cursor), *args)


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def commit_events(
    cursor: Any, events: list[dict[str, Any]], changes: list[Change], notes: list[Change]
) -> list[tuple[int, str]]:
    """One group commit: each event takes its stream's next id from the
    database (the row stays locked until the commit), then the events, the
    state changes they stand for and the bookkeeping are written."""
    counts: dict[str, int] = {}
    for event in events:
        counts[event["stream"]] = counts.get(event["stream"], 0) + 1
    next_id: dict[str, int] = {}
    for stream in sorted(counts):  # one lock order for every process
        cursor.execute(
            "INSERT INTO streams (stream, last_id) VALUES (?, ?) "
            "ON CONFLICT (stream) DO UPDATE SET last_id = streams.last_id + excluded.last_id "
            "RETURNING last_id",
            (stream, counts[stream]),
        )
        next_id[stream] = cursor.fetchone()[0] - counts[stream] + 1
    placed: list[tuple[int, str]] = []
    rows = []
    for event in events:
        stream = event["stream"]
        event_id = next_id[stream]
        next_id[stream] += 1
        fields = dict(event, id=event_id)
        txn = fields.pop("_txn", None)  # the sender's id for it: a column, not in the JSON
        text = json_text(fields)
        placed.append((event_id, text))
        rows.append((stream, event_id, event["ts"], text, txn))
    if rows:
        cursor.executemany("INSERT INTO events (stream, id, ts, event, txn) VALUES (?, ?, ?, ?, ?)", rows)
    for change in changes:
        queries.apply(cursor, change)
    for change in notes:
        queries.apply(cursor, change)
    return placed


class PostgresStorage(EventLogMethods, Service):
    """``Storage`` on a PostgreSQL database shared by any number of processes.

    Two connections, each with one thread: the **writer** carries out
    every query that changes something, the group commits among them, and
    the **reader** the lookups and history pages.  Each thread takes its
    queries in the order they are made, so the core sees its writes done
    in order, and its reads answered in order (one session's DM checks,
    say, keep their turn).  A read never overtakes a write made before it:
    if a write is still waiting for the writer, the read waits for that
    write to be answered and only then goes to the reader, so it sees
    everything the core has been told is done.  A write may overtake an
    earlier read, which is then as if it had been made a moment later.
    So a flood of history requests keeps the reader busy and never stands
    between another user's message and its commit.
    """

    name = "store"

    def __init__(
        self,
        url: str,
        *,
        reactor: Any,
        password: str | None = None,
        metrics: Any = None,
    ) -> None:
        #: Never with a password in it (it goes into messages as it is).
        self.url = url
        self._connect_args: dict[str, Any] = {
            "options": "-c synchronous_commit=on",
            "connect_timeout": max(1, round(CONNECT_TIMEOUT)),
        }
        if password is not None:
            self._connect_args["password"] = password
        self.reactor = reactor
        self.pool: Any = None
        self.read_pool: Any = None
        self.checked = False
        self.writer: ThreadPool | None = None
        self.reader: ThreadPool | None = None
        #: The reads waiting for the last write made so far (a fresh list
        #: per write), or None when no write is outstanding.
        self._after_last_write: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] | None = None
        #: Reads queued for the reader while it carries out a batch.
        self._reads: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []
        self._reading = False
        #: Reads made and answered so far, and the writes done before the
        #: reads made ahead of them were answered: (reads made before the
        #: write, its waiting reads, its Deferred, its result), in order.
        self._reads_made = 0
        self._reads_answered = 0
        self._parked: list[tuple[int, list[Any], Deferred[Any], Any]] = []
        self.events = EventLog(self._commit_events, reactor, metrics, ids_in_commit=True)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True, **self._connect_args)

    def check(self) -> None:
        """Reach the database and migrate it; raises UnusableDatabase with
        one line for the operator.  Done at start-up, before anything listens."""
        try:
            import psycopg
            import psycopg_pool  # noqa: F401 (needed from startService on)
        except ImportError:
            raise UnusableDatabase(
                "a PostgreSQL database needs psycopg and psycopg-pool: pip install 'chatserver[scale]'"
            ) from None
        try:
            with self._connect() as conn:
                migrate(conn)
            self.checked = True
        except UnusableDatabase:
            raise
        except (psycopg.Error, OSError, ValueError) as e:
            # ValueError: a malformed URL, or a host name that cannot be
            # one (UnicodeError), which psycopg hands on from getaddrinfo.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnusableDatabase(f"cannot use database {describe(self.url)}: {first}") from None

    def startService(self) -> None:
        if not self.checked:
            self.check()
        # One connection per thread, each in a pool of its own, which
        # drops a connection that broke (the server restarted) when it is
        # given back and opens a new one in the background.  The reader's
        # connection is in autocommit: its queries are single statements
        # (or independent ones), each its own snapshot, and a transaction
        # around them would cost two more round trips each.
        self.pool = self._pool("writer", {})
        self.read_pool = self._pool("reader", {"autocommit": True})
        self.writer = ThreadPool(minthreads=1, maxthreads=1, name="chatserver-postgres-writer")
        self.reader = ThreadPool(minthreads=1, maxthreads=1, name="chatserver-postgres-reader")
        self.writer.start()
        self.reader.start()
        super().startService()

    def _pool(self, role: str, extra: dict[str, Any]) -> Any:
        from psycopg_pool import ConnectionPool

        return ConnectionPool(
            self.url,
            min_size=1,
            max_size=1,
            kwargs={**self._connect_args, **extra},
            timeout=CONNECT_TIMEOUT,
            reconnect_timeout=float("inf"),  # keep trying while the server runs
            open=True,
            name=f"chatserver-{role}",
        )

    def stopService(self) -> None:
        super().stopService()
        for threads_ in (self.writer, self.reader):
            if threads_ is not None:
                threads_.stop()
        self.writer = self.reader = None
        for pool in (self.pool, self.read_pool):
            if pool is not None:
                pool.close()
        self.pool = self.read_pool = None

    def _interaction(self, pool: Any, query: Any, args: tuple[Any, ...]) -> Any:
        # In a store thread.  On the writer: one transaction, committed by
        # the connection context when the query returns, rolled back if it
        # raises.  On the reader: each statement on its own.
        import psycopg
        import psycopg_pool

        if pool is None:
            raise StoreClosed("the store is not running")
        try:
            with pool.connection() as conn:
                with conn.cursor() as cursor:
                    return query(PgCursor(cursor), *args)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatabaseUnreachable(f"database {describe(self.url)} is unreachable: {first}") from None

    def run(self, query: Any, *args: Any) -> Deferred[Any]:
        """A query that may write, on the writer, after every earlier one;
        answered after every read made before it."""
        if self.writer is None:
            return defer.fail(StoreClosed("the store is not running"))
        waiting: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []
        self._after_last_write = waiting
        reads_before = self._reads_made
        answer: Deferred[Any] = Deferred()

        def done(result: Any) -> None:
            if self._reads_answered >= reads_before:
                self._answer_write(waiting, answer, result)
            else:
                self._parked.append((reads_before, waiting, answer, result))

        threads.deferToThreadPool(
            self.reactor, self.writer, self._interaction, self.pool, query, args
        ).addBoth(done)
        return answer

    def _answer_write(self, waiting: list[Any], answer: Deferred[Any], result: Any) -> None:
        if self._after_last_write is waiting:
            self._after_last_write = None
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)
        for query, args, d in waiting:  # the reads made after it
            self._read_now(query, args, d)

    def read(self, query: Any, *args: Any) -> Deferred[Any]:
        """A query that only reads, on the reader, once every write made
        before it has been answered.

        Every answer, read or write, comes back in the order the queries
        were made, as with one thread: a write that finishes before a read
        made before it is answered after that read.  The core relies on it
        (offline delivery reads a page, and a message committed meanwhile
        is either in the page or delivered after it, never neither)."""
        d: Deferred[Any] = Deferred()
        self._reads_made += 1
        if self._after_last_write is None:
            self._read_now(query, args, d)
        else:
            self._after_last_write.append((query, args, d))
        return d

    def _answer_read(self, d: Deferred[Any], ok: bool, value: Any) -> None:
        self._reads_answered += 1
        if ok:
            d.callback(value)
        else:
            d.errback(value)
        parked = self._parked
        while parked and parked[0][0] <= self._reads_answered:
            _, waiting, answer, result = parked.pop(0)
            self._answer_write(waiting, answer, result)

    def _read_now(self, query: Any, args: tuple[Any, ...], d: Deferred[Any]) -> None:
        """Queue a read for the reader.  The reads that queue up while it
        is busy go to it together, in one trip to the thread and on one
        connection checkout: under a flood of reads, the hand-over to the
        thread and back cost more than the query (measured: 190 us of this
        process's CPU per history page alone, against 45 us for psycopg's
        part), and now it is shared by the whole batch."""
        if self.reader is None:
            self._answer_read(d, False, Failure(StoreClosed("the store is not running")))
            return
        self._reads.append((query, args, d))
        if not self._reading:
            self._next_reads()

    def _next_reads(self) -> None:
        batch, self._reads = self._reads, []
        if not batch:
            self._reading = False
            return
        if self.reader is None:
            for _, _, d in batch:
                self._answer_read(d, False, Failure(StoreClosed("the store is not running")))
            self._reading = False
            return
        self._reading = True
        jobs = [(query, args) for query, args, _ in batch]
        done = threads.deferToThreadPool(self.reactor, self.reader, self._read_batch, jobs)

        def answer(results: Any) -> None:
            if isinstance(results, Failure):  # the whole batch (the database unreachable)
                for _, _, d in batch:
                    self._answer_read(d, False, results)
            else:
                for (_, _, d), (ok, value) in zip(batch, results, strict=True):
                    self._answer_read(d, ok, value)
            self._next_reads()

        done.addBoth(answer)

    def _read_batch(self, jobs: list[tuple[Any, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
        # In the reader thread: each read on its own, on one connection.
        import psycopg
        import psycopg_pool

        pool = self.read_pool
        if pool is None:
            raise StoreClosed("the store is not running")
        results: list[tuple[bool, Any]] = []
        try:
            with pool.connection() as conn:
                with conn.cursor() as cursor:
                    pg = PgCursor(cursor)
                    for query, args in jobs:
                        try:
                            results.append((True, query(pg, *args)))
                        except psycopg.OperationalError:
                            raise
                        except Exception:
                            results.append((False, Failure()))
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatabaseUnreachable(f"database {describe(self.url)} is unreachable: {first}") from None
        return results

    def _commit_events(
        self, events: list[dict[str, Any]], changes: list[Change], notes: list[Change]
    ) -> Deferred[list[tuple[int, str]]]:
        return self.run(commit_events, events, changes, notes)

    # --- Storage -------------------------------------------------------------

    def get_user(self, name: str) -> Deferred[UserRecord | None]:
        return self.read(queries.get_user, name)

    def user_exists(self, name: str) -> Deferred[bool]:
        return self.read(queries.user_exists, name)

    def add_user(self, name: str, password_hash: str, role: str) -> Deferred[bool]:
        return self.run(queries.add_user, name, password_hash, role)

    def register_with_invite(
        self, code_hash: str, name: str, password_hash: str, now: int
    ) -> Deferred[tuple[str, int | None]]:
        return self.run(queries.register_with_invite, code_hash, name, password_hash, now)

    def set_disabled(self, user: str, disabled: bool, audit: Change) -> Deferred[bool]:
        return self.run(queries.set_disabled, user, disabled, audit)

    def add_token(self, token_hash: str, user: str, now: int, expires_at: int) -> Deferred[None]:
        return self.run(queries.add_token, token_hash, user, now, expires_at)

    def token_account(self, token_hash: str, now: int) -> Deferred[UserRecord | None]:
        return self.read(queries.token_account, token_hash, now)

    def revoke_token(self, token_hash: str) -> Deferred[None]:
        return self.run(queries.revoke_tokens, None, token_hash)

    def ticket_keys(self) -> Deferred[list[TicketKey]]:
        return self.run(queries.ticket_keys)

    def rotate_ticket_keys(self, secret: bytes, now: int, drop_before: int) -> Deferred[list[TicketKey]]:
        return self.run(queries.rotate_ticket_keys, secret, now, drop_before)

    def ticket_state(
        self, ticket_hash: bytes, token_hash: str, now: int
    ) -> Deferred[tuple[UserRecord | None, bool]]:
        return self.read(queries.ticket_state, ticket_hash, token_hash, now)

    def add_redeemed_tickets(self, rows: list[tuple[bytes, int]]) -> Deferred[None]:
        return self.run(queries.add_redeemed_tickets, rows)

    def load_rooms(self) -> Deferred[dict[str, RoomRecord]]:
        return self.run(queries.load_rooms)

    def load_stream_ids(self) -> Deferred[dict[str, int]]:
        return self.run(queries.load_stream_ids)

    def load_dm_streams(self) -> Deferred[dict[str, dict[str, tuple[str, int]]]]:
        return self.run(queries.load_dm_streams)

    def dm_streams(self, user: str) -> Deferred[dict[str, tuple[str, int]]]:
        return self.read(queries.dm_streams, user)

    def load_admins(self) -> Deferred[set[str]]:
        return self.run(queries.load_admins)

    def load_welcomed(self) -> Deferred[set[str]]:
        return self.run(queries.load_welcomed)

    def is_welcomed(self, name: str) -> Deferred[bool]:
        return self.read(queries.is_welcomed, name)

    def devices(self, users: Sequence[str]) -> Deferred[dict[str, list[DeviceRecord]]]:
        return self.read(queries.devices, list(users))

    def event_counts(self, streams: Sequence[str]) -> Deferred[dict[str, int]]:
        return self.read(queries.event_counts, list(streams))

    def put_device(
        self,
        user: str,
        device: str,
        name: str | None,
        identity: tuple[str, str, str] | None,
        keys: Sequence[SignedKey],
        fallback: SignedKey | None,
        now: int,
        max_devices: int,
        max_keys: int,
    ) -> Deferred[tuple[str, int]]:
        return self.run(
            queries.put_device, user, device, name, identity, list(keys), fallback, now, max_devices, max_keys
        )

    def claim_keys(self, wanted: Sequence[tuple[str, str]]) -> Deferred[list[ClaimedKey]]:
        return self.run(queries.claim_keys, list(wanted))

    def remove_device(self, user: str, device: str, now: int, audit: Change | None) -> Deferred[bool]:
        return self.run(queries.remove_device, user, device, now, audit)

    def find_sent(self, txn: str) -> Deferred[str | None]:
        return self.read(queries.find_sent, txn)

    def history(self, stream: str, after: int | None, before: int | None, limit: int) -> Deferred[list[str]]:
        return self.read(queries.history, stream, after, before, limit)


def newest_version() -> int:
    return int(schema.numbered("chatserver.schema.postgres")[-1][0])


def inspect_now(url: str, password: str | None = None) -> tuple[int, list[str]]:
    """The admin tool's ``check``, without migrating: the schema version,
    and what is wrong (every table readable; no stream's events past its
    last id).  Raises UnusableDatabase if it cannot connect."""
    import psycopg

    from chatserver.storage import admin_queries

    storage = PostgresStorage(url, password=password, reactor=None)
    try:
        with storage._connect() as conn:
            row = conn.execute(
                "SELECT MAX(version) FROM schema_version"
                if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0]
                else "SELECT 0"
            ).fetchone()
            version = int(row[0] or 0)
            with conn.cursor() as cursor:
                problems = admin_queries.consistency_problems(PgCursor(cursor))
    except (psycopg.Error, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnusableDatabase(f"cannot use database {describe(url)}: {first}") from None
    return version, problems
