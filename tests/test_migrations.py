"""Schema migrations: fresh databases, upgrades from every older version,
a failed upgrade, and the server starting on an old database file.

The expected versions come from the file names in ``chatserver/schema``,
not from ``store.migrations()``, so a file the loader skipped would show.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Callable

from twisted.trial import unittest

from chatclient.session import ServerError
from chatserver import accounts
from chatserver.storage import sqlite as store
from chatserver.wire import crypto
from tests.support import (
    PASSWORD,
    ROOT,
    EventQueue,
    RunningServer,
    logged_in,
    make_settings,
    open_session,
    sqlite_only,
)

SCHEMA_DIR = ROOT / "chatserver" / "schema"
VERSIONS = sorted(
    int(p.name[:4]) for p in SCHEMA_DIR.iterdir() if re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", p.name)
)
NEWEST = VERSIONS[-1]
HASH_COST = 10


def applied(conn: sqlite3.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def run(conn: sqlite3.Connection, query: Callable[..., Any], *args: Any) -> Any:
    """One store query in its own transaction, as the server's pool runs it."""
    with conn:
        return query(conn.cursor(), *args)


# Representative data of each version, and the check that it survived an
# upgrade.  A seed is used for every database at or above its version.


def seed_1(conn: sqlite3.Connection) -> None:
    assert accounts.add_user_now(conn, "alice", PASSWORD, "user", HASH_COST)
    assert accounts.add_user_now(conn, "root", PASSWORD, "admin", HASH_COST)
    assert accounts.add_user_now(conn, "gone", PASSWORD, "user", HASH_COST)
    with conn:
        conn.execute("UPDATE users SET disabled = 1 WHERE name = 'gone'")


def check_1(test: unittest.TestCase, conn: sqlite3.Connection) -> None:
    alice = run(conn, store.get_user, "alice")
    test.assertEqual((alice.name, alice.role, alice.disabled), ("alice", "user", False))
    test.assertTrue(crypto.verify_password(PASSWORD, alice.password_hash))
    test.assertEqual(run(conn, store.get_user, "root").role, "admin")
    test.assertTrue(run(conn, store.get_user, "gone").disabled)
    # (Later seeds and exercise_newest register accounts of their own.)
    names = {row[0] for row in conn.execute("SELECT name FROM users")}
    test.assertEqual(names & {"alice", "root", "gone"}, {"alice", "root", "gone"})


def seed_2(conn: sqlite3.Connection) -> None:
    run(conn, store.create_room, "old", "private", "alice", "from before", 1000)
    run(conn, store.set_member, "old", "alice", "owner", 1000)
    run(conn, store.add_invite, "old", "root", "alice", 1000)
    event = {"type": "msg", "from": "alice", "body": "old news", "room": "old", "stream": "room:old", "id": 1}
    run(conn, store.append_events, [("room:old", 1, 1000, json.dumps(event))])


def check_2(test: unittest.TestCase, conn: sqlite3.Connection) -> None:
    rooms = run(conn, store.load_rooms)
    test.assertEqual((rooms["old"].kind, rooms["old"].topic), ("private", "from before"))
    test.assertEqual(rooms["old"].members, {"alice": "owner"})
    test.assertEqual(rooms["old"].invites, {"root"})
    test.assertEqual(run(conn, store.load_stream_ids)["room:old"], 1)
    test.assertEqual(
        [json.loads(t)["body"] for t in run(conn, store.history, "room:old", 0, None, 10)], ["old news"]
    )


def seed_4(conn: sqlite3.Connection) -> None:
    ids = run(conn, store.add_registration_invites, ["11" * 32, "22" * 32, "33" * 32], "test", 1000, 10**10)
    assert ids == [1, 2, 3], ids
    assert run(conn, store.register_with_invite, "22" * 32, "invited", "x", 1001) == ("ok", 2)
    assert run(conn, store.revoke_registration_invite, "test", 1002, "33" * 32) == 3


def check_4(test: unittest.TestCase, conn: sqlite3.Connection) -> None:
    records = run(conn, store.list_registration_invites)
    test.assertEqual(
        [(r.id, r.state(2000)) for r in records[:3]], [(1, "usable"), (2, "used"), (3, "revoked")]
    )
    test.assertEqual((records[1].used_by, records[1].used_at), ("invited", 1001))
    test.assertTrue(run(conn, store.user_exists, "invited"))


def seed_5(conn: sqlite3.Connection) -> None:
    run(conn, store.rotate_ticket_keys, b"k" * 32, 1000, 0)
    run(conn, store.add_token, "cd" * 32, "invited", 1000, 10**10)
    run(conn, store.add_redeemed_tickets, [(b"t" * 32, 10**10)])


def check_5(test: unittest.TestCase, conn: sqlite3.Connection) -> None:
    test.assertEqual(run(conn, store.ticket_keys)[0][1:], (b"k" * 32, 1000))
    record, taken = run(conn, store.ticket_state, b"t" * 32, "cd" * 32, 2000)
    test.assertEqual((record.name, taken), ("invited", True))


SEEDS = {1: (seed_1, check_1), 2: (seed_2, check_2), 4: (seed_4, check_4), 5: (seed_5, check_5)}


def exercise_newest(test: unittest.TestCase, conn: sqlite3.Connection) -> None:
    """Everything the server does with the newest schema works."""
    run(conn, store.create_room, "fresh", "public", "alice", "", 2000)
    run(conn, store.set_member, "fresh", "alice", "owner", 2000)
    run(conn, store.set_member, "fresh", "root", "member", 2000)
    run(conn, store.set_member, "fresh", "root", "moderator", 2001)
    run(conn, store.set_topic, "fresh", "new topic")
    run(conn, store.set_sanction, "fresh", "gone", "ban", None, "alice", 2002)
    rows = [
        ("room:fresh", i, 2000 + i, json.dumps({"type": "msg", "id": i, "body": f"m{i}"})) for i in (1, 2, 3)
    ]
    run(conn, store.append_events, rows)
    run(conn, store.append_events, [("dm:alice:root", 1, 2005, json.dumps({"type": "dm", "id": 1}))])
    run(conn, store.set_dm_stream, "alice", "root", "dm:alice:root", 1)
    run(conn, store.set_dm_stream, "root", "alice", "dm:alice:root", 0)
    run(conn, store.add_token, "ab" * 32, "alice", 2000, 5000)
    run(conn, store.add_audit, 2000, "alice", "create", "fresh", None, "public")

    room = run(conn, store.load_rooms)["fresh"]
    test.assertEqual((room.topic, room.members), ("new topic", {"alice": "owner", "root": "moderator"}))
    test.assertEqual(room.sanctions, {("ban", "gone"): None})
    ids = run(conn, store.load_stream_ids)
    test.assertEqual((ids["room:fresh"], ids["dm:alice:root"]), (3, 1))
    texts = run(conn, store.history, "room:fresh", 1, None, 10)
    test.assertEqual([json.loads(t)["id"] for t in texts], [2, 3])
    texts = run(conn, store.history, "room:fresh", None, 3, 1)
    test.assertEqual([json.loads(t)["id"] for t in texts], [2])
    test.assertEqual(
        run(conn, store.load_dm_streams),
        {"alice": {"root": ("dm:alice:root", 1)}, "root": {"alice": ("dm:alice:root", 0)}},
    )
    test.assertEqual(run(conn, store.token_account, "ab" * 32, 4999).name, "alice")
    test.assertIsNone(run(conn, store.token_account, "ab" * 32, 5000))
    # Registration invites: single use, consumed with the account only.
    (fresh,) = run(conn, store.add_registration_invites, ["aa" * 32], "test", 2000, 3000)
    test.assertEqual(
        run(conn, store.register_with_invite, "aa" * 32, "alice", "x", 2001), ("username_taken", fresh)
    )
    test.assertEqual(run(conn, store.register_with_invite, "aa" * 32, "newbie", "x", 2001), ("ok", fresh))
    test.assertEqual(
        run(conn, store.register_with_invite, "aa" * 32, "newbie2", "x", 2002), ("invite_invalid", None)
    )
    (late,) = run(conn, store.add_registration_invites, ["bb" * 32], "test", 2000, 3000)
    test.assertEqual(
        run(conn, store.register_with_invite, "bb" * 32, "late", "x", 3000), ("invite_invalid", None)
    )
    test.assertFalse(run(conn, store.user_exists, "late"))
    with test.assertRaises(sqlite3.IntegrityError):  # one code, one row
        run(conn, store.add_registration_invites, ["bb" * 32], "test", 2000, 3000)
    # Resumption: keys rotate (the old ones go), taken tickets are known,
    # a ticket's session token must be live.
    keys = run(conn, store.rotate_ticket_keys, b"n" * 32, 2000, 500)
    test.assertEqual(keys[-1][1:], (b"n" * 32, 2000))
    test.assertTrue(all(k[2] >= 500 for k in keys))
    run(conn, store.add_redeemed_tickets, [(b"u" * 32, 3000), (b"u" * 32, 3000)])
    record, taken = run(conn, store.ticket_state, b"u" * 32, "ab" * 32, 2000)
    test.assertEqual((record.name, taken), ("alice", True))
    test.assertEqual(run(conn, store.ticket_state, b"v" * 32, "ab" * 32, 5000), (None, False))
    # The same (stream, id) cannot be written twice.
    with test.assertRaises(sqlite3.IntegrityError):
        run(conn, store.append_events, [("room:fresh", 3, 2010, "{}")])


class FreshDatabaseTests(unittest.TestCase):
    skip = sqlite_only("SQLite's migrations")

    def test_schema_files_are_numbered_from_one_without_gaps(self) -> None:
        self.assertEqual(VERSIONS, list(range(1, NEWEST + 1)))
        self.assertEqual([v for v, _ in store.migrations()], VERSIONS)

    def test_fresh_database_ends_at_the_newest_version(self) -> None:
        path = Path(self.mktemp())
        conn = sqlite3.connect(str(path))
        self.addCleanup(conn.close)
        self.assertEqual(store.migrate(conn), NEWEST)
        self.assertEqual(store.schema_version(conn), NEWEST)
        self.assertEqual(applied(conn), VERSIONS)
        # Again: nothing to do, nothing recorded twice.
        self.assertEqual(store.migrate(conn), NEWEST)
        self.assertEqual(applied(conn), VERSIONS)
        # Committed: another connection sees the same.
        other = sqlite3.connect(str(path))
        self.addCleanup(other.close)
        self.assertEqual(applied(other), VERSIONS)
        for seed, _ in SEEDS.values():
            seed(conn)
        exercise_newest(self, conn)

    def test_open_database_creates_and_migrates(self) -> None:
        path = Path(self.mktemp()) / "sub" / "chat.sqlite3"
        conn = store.open_database(path)
        self.addCleanup(conn.close)
        self.assertEqual(applied(conn), VERSIONS)
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)

    def test_migrate_stops_at_the_target(self) -> None:
        for target in range(0, NEWEST + 1):
            conn = sqlite3.connect(":memory:")
            self.addCleanup(conn.close)
            self.assertEqual(store.migrate(conn, target=target), target)
            self.assertEqual(applied(conn), VERSIONS[:target])
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        store.migrate(conn, target=1)
        self.assertIn("users", tables(conn))
        self.assertNotIn("rooms", tables(conn))


class UpgradeTests(unittest.TestCase):
    skip = sqlite_only("SQLite's migrations")

    def test_upgrade_from_every_earlier_version(self) -> None:
        for version in range(0, NEWEST):
            with self.subTest(version=version):
                path = Path(self.mktemp())
                conn = sqlite3.connect(str(path))
                self.addCleanup(conn.close)
                self.assertEqual(store.migrate(conn, target=version), version)
                self.assertEqual(applied(conn), VERSIONS[:version])
                seeded = [v for v in sorted(SEEDS) if v <= version]
                for v in seeded:
                    SEEDS[v][0](conn)

                self.assertEqual(store.migrate(conn), NEWEST)
                self.assertEqual(applied(conn), VERSIONS)
                for v in seeded:
                    SEEDS[v][1](self, conn)
                # Data of the later versions can be added now, then used.
                for v in sorted(SEEDS):
                    if v > version:
                        SEEDS[v][0](conn)
                exercise_newest(self, conn)
                conn.close()

                # All of it committed: a new connection sees it.
                reopened = store.open_database(path)
                self.addCleanup(reopened.close)
                self.assertEqual(applied(reopened), VERSIONS)
                for check in (c for _, c in SEEDS.values()):
                    check(self, reopened)


class FailedMigrationTests(unittest.TestCase):
    """Migration 2 fails at its last table because a table of that name
    was made by hand: after all its other tables were created."""

    skip = sqlite_only("SQLite's migrations")

    def make_conflict(self) -> tuple[Path, sqlite3.Connection]:
        path = Path(self.mktemp())
        conn = sqlite3.connect(str(path))
        self.addCleanup(conn.close)
        store.migrate(conn, target=1)
        seed_1(conn)
        with conn:
            conn.execute("CREATE TABLE audit (note TEXT)")
            conn.execute("INSERT INTO audit VALUES ('hand made')")
        return path, conn

    def test_failed_migration_raises_and_keeps_the_previous_version(self) -> None:
        path, conn = self.make_conflict()
        with self.assertRaises(sqlite3.Error):
            store.migrate(conn)
        other = sqlite3.connect(str(path))
        self.addCleanup(other.close)
        self.assertEqual(applied(other), [1])
        self.assertEqual(tables(other), {"schema_version", "users", "audit"})
        check_1(self, other)

    def test_failed_migration_is_rolled_back_on_its_connection(self) -> None:
        """The caller's connection must not be left inside the failed
        migration's transaction: the next commit on it would make the half
        schema permanent, at the old version number, and every later
        upgrade would then fail."""
        path, conn = self.make_conflict()
        with self.assertRaises(sqlite3.Error):
            store.migrate(conn)
        self.assertEqual(store.schema_version(conn), 1)
        self.assertEqual(
            tables(conn),
            {"schema_version", "users", "audit"},
            "the failed migration's tables are still there (its transaction is still open)",
        )
        # Fix the conflict and retry on the same connection.
        with conn:
            conn.execute("ALTER TABLE audit RENAME TO audit_by_hand")
        self.assertEqual(store.migrate(conn), NEWEST)
        self.assertEqual(applied(conn), VERSIONS)
        check_1(self, conn)


class ServerOnOldDatabaseTests(unittest.TestCase):
    skip = sqlite_only("SQLite's migrations")

    async def test_server_starts_on_a_version_1_database(self) -> None:
        settings = make_settings(Path(self.mktemp()))
        settings.data_path.mkdir(parents=True)
        conn = sqlite3.connect(str(settings.database_path))
        try:
            self.assertEqual(store.migrate(conn, target=1), 1)
            accounts.add_user_now(conn, "olduser", PASSWORD, "user", settings.password_hash_cost)
            accounts.add_user_now(conn, "oldfriend", PASSWORD, "user", settings.password_hash_cost)
        finally:
            conn.close()

        server = RunningServer(settings)
        await server.start()
        self.addCleanup(server.stop)

        old = await logged_in(self, server, "olduser", register=False)
        friend = await logged_in(self, server, "oldfriend", register=False)
        friend_q = EventQueue(friend)
        ack = await old.say("lobby", "hello from version 1")
        got = await friend_q.next(lambda e: e.get("type") == "msg")
        self.assertEqual(
            (got["from"], got["body"], got["id"]), ("olduser", "hello from version 1", ack["id"])
        )
        ack = await old.request({"type": "dm", "to": "oldfriend", "body": "psst"})
        got = await friend_q.next(lambda e: e.get("type") == "dm")
        self.assertEqual((got["body"], got["id"]), ("psst", ack["id"]))
        await old.request({"type": "create", "room": "reunion"})
        await friend.request({"type": "join", "room": "reunion"})
        page = await old.request({"type": "history", "stream": "room:lobby"})
        self.assertIn("hello from version 1", [e.get("body") for e in page["events"]])
        # The accounts are the same ones: the names stay taken.
        newcomer = await open_session(self, server)
        error = await self.assertFailure(newcomer.register("olduser", PASSWORD), ServerError)
        self.assertEqual(error.code, "username_taken")

        check = sqlite3.connect(str(settings.database_path))
        self.addCleanup(check.close)
        self.assertEqual(applied(check), VERSIONS)
