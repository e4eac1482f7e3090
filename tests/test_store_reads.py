"""Store.read: small lookups answered in the event loop when the database
thread is idle, and by the thread otherwise; always what the thread would
have answered.  A real SQLite file and the real reactor."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from chatserver.storage import sqlite as store


def slow_add_user(cursor: Any, name: str, seconds: float) -> bool:
    """add_user, after a pause inside the transaction (a slow write)."""
    time.sleep(seconds)
    return store.add_user(cursor, name, "hash", "user")


def boom(cursor: Any) -> None:
    cursor.execute("SELECT 1")
    raise ValueError("the query itself failed")


class StoreReadTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.path = Path(self.mktemp()) / "chat.db"
        self.path.parent.mkdir()
        self.db = store.SqliteStorage(self.path, "NORMAL", create=True, reactor=reactor)
        self.db.check()
        self.db.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.db.running:
            self.db.stopService()

    @defer.inlineCallbacks
    def test_an_idle_store_answers_in_the_event_loop(self) -> Any:
        yield self.db.add_user("alice", "hash", "user")
        d = self.db.read(store.user_exists, "alice")
        self.assertTrue(d.called, "answered before read returned")
        self.assertIs((yield d), True)
        self.assertIs((yield self.db.read(store.user_exists, "bob")), False)
        record = yield self.db.get_user("alice")
        self.assertEqual((record.name, record.role, record.disabled), ("alice", "user", False))

    @defer.inlineCallbacks
    def test_a_read_never_overtakes_a_write_ahead_of_it(self) -> Any:
        # The write sits in the thread for 0.3 s before it inserts; a read
        # made meanwhile must see its result, as one sent to the thread would.
        write = self.db.run(slow_add_user, "carol", 0.3)
        read = self.db.read(store.user_exists, "carol")
        self.assertFalse(read.called, "a read behind a write waits for it")
        self.assertIs((yield write), True)
        self.assertIs((yield read), True)

    @defer.inlineCallbacks
    def test_a_locked_database_sends_the_read_to_the_thread(self) -> Any:
        # Another program's exclusive lock (not WAL's shared reading), taken
        # before this store's first query: the event loop gets "busy" at
        # once, the thread waits for the lock and sees what was committed.
        locker = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.addCleanup(locker.close)
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        store.add_user(locker.cursor(), "dave", "hash", "user")
        started = time.monotonic()
        read = self.db.read(store.user_exists, "dave")
        self.assertLess(time.monotonic() - started, 0.1, "the event loop did not wait for the lock")
        self.assertFalse(read.called)

        def release() -> None:
            time.sleep(0.3)
            locker.execute("COMMIT")
            locker.close()  # in WAL, an exclusive connection keeps its lock until it closes

        yield threads.deferToThread(release)
        self.assertIs((yield read), True)
        # And the event loop reads again once the lock is gone.
        again = self.db.read(store.user_exists, "dave")
        self.assertTrue(again.called)
        self.assertIs((yield again), True)

    @defer.inlineCallbacks
    def test_a_failing_query_fails_its_read(self) -> Any:
        with self.assertRaises(ValueError):
            yield self.db.read(boom)
        self.assertIs((yield self.db.read(store.user_exists, "nobody")), False)

    @defer.inlineCallbacks
    def test_a_write_through_read_is_refused(self) -> Any:
        with self.assertRaises(sqlite3.OperationalError):
            yield self.db.read(store.add_user, "eve", "hash", "user")
        self.assertIs((yield self.db.read(store.user_exists, "eve")), False)
        self.assertIs((yield self.db.run(store.user_exists, "eve")), False)

    def test_a_stopped_store_refuses_reads(self) -> Any:
        self.db.stopService()
        return self.assertFailure(self.db.read(store.user_exists, "alice"), store.StoreClosed)
