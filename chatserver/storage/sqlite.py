"""The SQLite implementation of ``Storage``, through ``twisted.enterprise.adbapi``.

The schema is versioned.  Numbered SQL files in ``chatserver/schema/`` are
applied in order, each in its own transaction together with the bump of
``schema_version``, so a crash mid-upgrade leaves the previous version
intact.  The same statements serve the server (through the adbapi pool) and
the admin tool (through a plain connection): each query is a function of a
cursor.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from chatserver import schema
from chatserver.storage.group_commit import EventLog, EventLogMethods, Row
from chatserver.storage.interface import (
    Change,
    ClaimedKey,
    DatabaseLost,
    DeviceRecord,
    InviteRecord,
    RoomRecord,
    SignedKey,
    StoreClosed,
    TicketKey,
    UnusableDatabase,
    UserRecord,
)
from chatserver.storage.queries import (  # noqa: F401 (the admin tool and tests use them as sqlite.NAME)
    CHANGE_QUERIES,
    InviteRace,
    add_audit,
    add_invite,
    add_redeemed_tickets,
    add_registration_invites,
    add_token,
    add_user,
    append_events,
    apply,
    claim_keys,
    commit_batch,
    create_room,
    devices,
    dm_streams,
    event_counts,
    find_sent,
    get_user,
    history,
    is_welcomed,
    list_registration_invites,
    load_admins,
    load_dm_streams,
    load_rooms,
    load_stream_ids,
    load_welcomed,
    mark_welcomed,
    put_device,
    register_with_invite,
    remove_device,
    revoke_registration_invite,
    revoke_tokens,
    rotate_ticket_keys,
    set_disabled,
    set_dm_stream,
    set_member,
    set_owner,
    set_sanction,
    set_topic,
    ticket_keys,
    ticket_state,
    token_account,
    user_exists,
)

__all__ = ["DatabaseLost", "InviteRecord", "RoomRecord", "StoreClosed", "UserRecord", "SqliteStorage"]

log = Logger(namespace="chatserver.store")


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) for every schema file, in order."""
    return schema.numbered("chatserver.schema")


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(conn: sqlite3.Connection, target: int | None = None) -> int:
    """Bring the database up to ``target`` (default: the newest); returns
    the version it ends at."""
    current = before = schema_version(conn)
    for version, sql in migrations():
        if version <= current or (target is not None and version > target):
            continue
        # executescript commits first and runs the script in autocommit
        # mode, so the script carries its own transaction.
        try:
            conn.executescript(
                f"BEGIN;\n{sql}\nINSERT INTO schema_version (version) VALUES ({version});\nCOMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        current = version
    if current != before:
        # One line per start that upgraded: what the operator had, and has.
        log.info("database schema upgraded from version {old} to version {new}", old=before, new=current)
    return current


#: Next to the database: written once a database has been opened there.
#: If it exists and the database does not, the database was lost (deleted,
#: moved, a volume not mounted), and making an empty one in its place would
#: silently drop every account and all history and free every name,
#: admins' included, for anyone to register.  (The server key is not that
#: sign: it may be provisioned before the first start.)
MARKER_NAME = "database_created"

_MARKER_TEXT = """\
chatserver keeps its database (chatserver.sqlite3) in this directory.
While this file exists, the server refuses to start without that database
instead of creating an empty one.  To start over with an empty database
on purpose, run:  chatserver-admin --create ...
"""


def marker_path(path: Path) -> Path:
    return path.with_name(MARKER_NAME)


def had_database(path: Path) -> bool:
    """Whether a database has been opened at ``path`` before."""
    return marker_path(path).exists()


def newest_version() -> int:
    return migrations()[-1][0]


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class ServerLock:
    """An exclusive ``flock`` on ``<database>.lock``, held by whatever must
    have the database to itself: a running server, ``migrate-store``.
    The kernel drops it when its holder's process ends, however it ends,
    so a crash leaves nothing stale.  The file says who holds it."""

    def __init__(self, path: Path, holder: str) -> None:
        self.database = path
        self.path = lock_path(path)
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises UnusableDatabase if another process holds it."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise UnusableDatabase(f"cannot open {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UnusableDatabase(
                f"database {self.database} is in use by {other}: stop that first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> ServerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_for_server(path: Path, holder: str) -> ServerLock:
    return ServerLock(path, holder)


def open_database(path: Path, create: bool = True) -> sqlite3.Connection:
    """A plain connection, checked, with the schema up to date (start-up,
    admin tool).  Without ``create``, a missing (or empty) file is refused
    instead of becoming a new database.  Raises UnusableDatabase."""
    missing = not path.exists() or path.stat().st_size == 0
    if missing and not create:
        state = "is empty" if path.exists() else "is missing"
        if had_database(path):
            raise UnusableDatabase(
                f"database {path} {state}, but this directory held one ({marker_path(path)} exists): "
                "restore it from a backup; to start over with no accounts on purpose, "
                "run chatserver-admin --create"
            )
        raise UnusableDatabase(f"database {path} {state}")
    try:
        if missing:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Password hashes live here: create the file private.  SQLite
            # gives the -wal and -shm files the same mode as the database.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(str(path))
    except OSError as e:
        raise UnusableDatabase(f"cannot open database {path}: {e.strerror or e}") from None
    except sqlite3.Error as e:
        raise UnusableDatabase(f"cannot open database {path}: {e}") from None
    try:
        check_database(conn, path)
        _configure(conn)
        migrate(conn)
    except sqlite3.Error as e:
        conn.close()
        raise UnusableDatabase(f"cannot upgrade the schema of database {path}: {e}") from None
    except BaseException:
        conn.close()
        raise
    if not had_database(path):
        try:
            marker_path(path).write_text(_MARKER_TEXT, encoding="utf-8")
        except OSError as e:
            conn.close()
            raise UnusableDatabase(f"cannot write {marker_path(path)}: {e.strerror or e}") from None
    return conn


def check_database(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged database, or one of a schema newer than this code,
    before anything is served from it: a corrupt file would otherwise fail
    request by request, and a newer schema be misread."""
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(problems[0] if problems else "quick_check found nothing to check")
        version = schema_version(conn)
    except sqlite3.Error as e:
        raise UnusableDatabase(f"database {path} is damaged ({e}): restore it from a backup") from None
    newest = newest_version()
    if version > newest:
        raise UnusableDatabase(
            f"database {path} has schema version {version}, newer than this chatserver knows "
            f"(up to {newest}): run the chatserver release that upgraded it"
        )


def _configure(conn: sqlite3.Connection, synchronous: str = "FULL") -> None:
    # WAL lets readers run beside the single writer.  FULL syncs the WAL at
    # every commit, so an acknowledged message survives a power cut too
    # (NORMAL survives only a crash of the process); group commit keeps
    # that to one fsync per batch.  Foreign keys are off by default.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")


# --- queries (queries.py): each takes a cursor ---------------------------------


def run_now(conn: sqlite3.Connection, query: Any, *args: Any) -> Any:
    """One query in its own transaction on a plain connection (admin tool)."""
    with conn:
        return query(conn.cursor(), *args)


#: Seconds between checks of the database file while the server is idle
#: (each transaction checks it too, before it commits).
WATCH_INTERVAL = 1.0
#: SQLite's primary codes for "someone else holds the lock".
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


class SqliteStorage(EventLogMethods, Service):
    """``Storage`` on one SQLite file: checked and migrated at start, one
    writer thread with group commit (group_commit.py), point reads in the
    event loop when that thread is idle (``read``), and watched: if the file is deleted or replaced while the
    server runs (the open connection would go on writing into a file that
    is gone, and the next start would find an empty one or another one),
    every further request fails with DatabaseLost and nothing more is
    acknowledged."""

    name = "store"

    def __init__(
        self, path: Path, synchronous: str = "FULL", create: bool = True, *, reactor: Any, metrics: Any = None
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.create = create  # whether a missing database may be created
        self.reactor = reactor
        self.pool: adbapi.ConnectionPool | None = None
        #: Why the database cannot be used any more (None: it can).
        self.lost: str | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) opened
        self._watch: task.LoopingCall | None = None
        self._logged = False
        #: Requests sent to the database thread and not yet answered.
        self._in_flight = 0
        #: The event loop's own connection, for ``read`` (opened on first use).
        self._reader: sqlite3.Connection | None = None
        self.events = EventLog(self._run_batch, reactor, metrics)
        #: One server per database: a second one would hand out the same ids.
        self._lock = ServerLock(path, "a chatserver")

    def check(self) -> None:
        """Check (and migrate) the database; raises UnusableDatabase.  Done
        at start-up, before anything listens or writes (see tap)."""
        conn = open_database(self.path, create=self.create)
        try:
            # After the file is known good (a missing one stays a clear
            # "missing"); before anything is written into it.
            self._lock.acquire()
            self._file = _file_id(self.path)
            # Where each stream's ids go on: nothing appends before this.
            self.events.heads = load_stream_ids(conn.cursor())
        finally:
            conn.close()

    def startService(self) -> None:
        if self._file is None:
            self.check()
        # mode=rw: a connection (re)opened by the pool must never create
        # an empty database where the checked one was.
        uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?mode=rw"
        self.pool = adbapi.ConnectionPool(
            "sqlite3",
            uri,
            uri=True,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=self._opened,
        )
        self._watch = task.LoopingCall(self._poll)
        self._watch.clock = self.reactor
        self._watch.start(WATCH_INTERVAL, now=False)
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self._lock.release()

    def _opened(self, conn: Any) -> None:
        # In the database thread, on the (new) connection.
        problem = self._file_problem()
        if problem is not None:
            raise DatabaseLost(f"database {self.path} {problem}")
        _configure(conn, self.synchronous)

    def _file_problem(self) -> str | None:
        """What happened to the file since it was checked, if anything."""
        try:
            current = _file_id(self.path)
        except FileNotFoundError:
            return "was deleted"
        except OSError as e:
            return f"cannot be checked ({e.strerror})"
        if current != self._file:
            return "was replaced by another file"
        return None

    def _poll(self) -> None:
        if not self._logged:
            problem = self._file_problem()
            if problem is not None:
                self._lose(problem)

    def _lose(self, problem: str) -> None:
        """From now on refuse every request; say why, once."""
        self.lost = self.lost or problem
        if self._logged:
            return
        self._logged = True
        log.critical(
            "database {path} {problem} while the server was running: refusing every request "
            "to it from now on, so that nothing more is acknowledged that would be lost; "
            "restore the database from a backup and restart",
            path=str(self.path),
            problem=self.lost,
        )

    def _interaction(self, cursor: Any, query: Any, *args: Any) -> Any:
        # In the database thread, inside the transaction: the file is
        # checked after the query and before the commit, so a write to a
        # file that is gone is rolled back, and its request gets an error
        # instead of an acknowledgement.
        result = query(cursor, *args)
        problem = self._file_problem()
        if problem is not None:
            self.lost = self.lost or problem  # the next requests fail at once
            self.reactor.callFromThread(self._lose, problem)
            raise DatabaseLost(f"database {self.path} {problem}")
        return result

    def run(self, query: Any, *args: Any) -> Deferred[Any]:
        if self.pool is None:
            # Shutting down: requests still buffered on open connections
            # get an "unavailable" answer, not a crash.
            return defer.fail(StoreClosed("the store is not running"))
        if self.lost is not None:
            return defer.fail(DatabaseLost(f"database {self.path} {self.lost}"))
        self._in_flight += 1
        d = self.pool.runInteraction(self._interaction, query, *args)
        d.addBoth(self._answered)
        return d

    def _answered(self, result: Any) -> Any:
        self._in_flight -= 1
        return result

    def read(self, query: Any, *args: Any) -> Deferred[Any]:
        """A small read-only query (a lookup by key), answered in the event
        loop itself when the database thread has nothing to do.

        Handing a query to the thread and back costs the event loop more
        than the query: SQLite drops Python's lock at every step, and each
        time the two threads pass it between them (measured: about 35 futex
        calls per resumed login, and 15% more resumed logins per CPU
        second without them).  WAL lets this second connection read beside
        the writer.  Only when nothing is waiting in or for the thread,
        though, so that it sees exactly what a query sent there now would
        see (no read overtakes a write).  SQLite answers "busy" at once here
        rather than wait: then the query goes to the thread after all.
        The query must only read (the connection is ``query_only``)."""
        if self.pool is None or self.lost is not None or self._in_flight:
            return self.run(query, *args)
        try:
            return defer.succeed(self._read_now(query, args))
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", 0) & 0xFF in _BUSY:  # extended code: its low byte
                return self.run(query, *args)  # the thread may wait; the event loop must not
            return defer.fail()
        except Exception:
            return defer.fail()

    def _read_now(self, query: Any, args: tuple[Any, ...]) -> Any:
        conn = self._reader
        if conn is None:
            uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
            conn.execute("PRAGMA query_only=ON")
            self._reader = conn
        cursor = conn.cursor()
        cursor.execute("BEGIN")  # the query's statements see one snapshot
        try:
            return query(cursor, *args)
        finally:
            cursor.execute("COMMIT")

    # --- Storage --------------------------------------------------------
    #
    # Point lookups go through ``read``, everything else through ``run``.

    def get_user(self, name: str) -> Deferred[UserRecord | None]:
        return self.read(get_user, name)

    def user_exists(self, name: str) -> Deferred[bool]:
        return self.read(user_exists, name)

    def add_user(self, name: str, password_hash: str, role: str) -> Deferred[bool]:
        return self.run(add_user, name, password_hash, role)

    def register_with_invite(
        self, code_hash: str, name: str, password_hash: str, now: int
    ) -> Deferred[tuple[str, int | None]]:
        return self.run(register_with_invite, code_hash, name, password_hash, now)

    def set_disabled(self, user: str, disabled: bool, audit: Change) -> Deferred[bool]:
        return self.run(set_disabled, user, disabled, audit)

    def add_token(self, token_hash: str, user: str, now: int, expires_at: int) -> Deferred[None]:
        return self.run(add_token, token_hash, user, now, expires_at)

    def token_account(self, token_hash: str, now: int) -> Deferred[UserRecord | None]:
        return self.read(token_account, token_hash, now)

    def revoke_token(self, token_hash: str) -> Deferred[None]:
        return self.run(revoke_tokens, None, token_hash)

    def ticket_keys(self) -> Deferred[list[TicketKey]]:
        return self.run(ticket_keys)

    def rotate_ticket_keys(self, secret: bytes, now: int, drop_before: int) -> Deferred[list[TicketKey]]:
        return self.run(rotate_ticket_keys, secret, now, drop_before)

    def ticket_state(
        self, ticket_hash: bytes, token_hash: str, now: int
    ) -> Deferred[tuple[UserRecord | None, bool]]:
        return self.read(ticket_state, ticket_hash, token_hash, now)

    def add_redeemed_tickets(self, rows: list[tuple[bytes, int]]) -> Deferred[None]:
        return self.run(add_redeemed_tickets, rows)

    def load_rooms(self) -> Deferred[dict[str, RoomRecord]]:
        return self.run(load_rooms)

    def load_stream_ids(self) -> Deferred[dict[str, int]]:
        return self.run(load_stream_ids)

    def load_dm_streams(self) -> Deferred[dict[str, dict[str, tuple[str, int]]]]:
        return self.run(load_dm_streams)

    def dm_streams(self, user: str) -> Deferred[dict[str, tuple[str, int]]]:
        return self.read(dm_streams, user)

    def load_admins(self) -> Deferred[set[str]]:
        return self.run(load_admins)

    def load_welcomed(self) -> Deferred[set[str]]:
        return self.run(load_welcomed)

    def is_welcomed(self, name: str) -> Deferred[bool]:
        return self.read(is_welcomed, name)

    def devices(self, users: Sequence[str]) -> Deferred[dict[str, list[DeviceRecord]]]:
        return self.read(devices, list(users))

    def event_counts(self, streams: Sequence[str]) -> Deferred[dict[str, int]]:
        return self.read(event_counts, list(streams))

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
            put_device, user, device, name, identity, list(keys), fallback, now, max_devices, max_keys
        )

    def claim_keys(self, wanted: Sequence[tuple[str, str]]) -> Deferred[list[ClaimedKey]]:
        return self.run(claim_keys, list(wanted))

    def remove_device(self, user: str, device: str, now: int, audit: Change | None) -> Deferred[bool]:
        return self.run(remove_device, user, device, now, audit)

    def find_sent(self, txn: str) -> Deferred[str | None]:
        # Only on a resend (rare), and by an index: a point read.
        return self.read(find_sent, txn)

    def history(self, stream: str, after: int | None, before: int | None, limit: int) -> Deferred[list[str]]:
        # Not ``read``: a page is larger than a lookup, and a flood of
        # history requests must not move its work onto the event loop.
        return self.run(history, stream, after, before, limit)

    def _run_batch(self, rows: list[Row], changes: list[Change], notes: list[Change]) -> Deferred[None]:
        return self.run(commit_batch, rows, changes, notes)
