"""Acknowledged means durable, for every request that changes state.

The database is made full without root: ``PRAGMA max_page_count`` on the
server's own connection caps the file at its current size, and a filler
table takes every free byte, so the next transaction that writes anything
fails with SQLITE_FULL, as on a full disk.  Each request that changes state
then gets an error, leaves nothing of itself in memory (the next request
sees the old state, a retry is not refused as a duplicate) and nothing on
disk (a restarted server sees the old state).  Once space is back, the same
request succeeds and survives a restart.

``DiskFullTmpfsTests`` does the same on a real full filesystem (a small
tmpfs) where the test may mount one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from chatclient.session import ChatSession, ServerError
from chatserver import accounts
from chatserver.storage import sqlite as store
from tests.support import (
    PASSWORD,
    EventQueue,
    RunningServer,
    add_admin,
    logged_in,
    make_settings,
    open_session,
    sqlite_only,
    until,
)

#: Streams of the filler events, spread over the key order of the events
#: table (a b-tree by stream and id), so that every one of its pages that a
#: real stream's next event could land in is filled: before, after and
#: between the names a test uses.  None of them is a valid stream name.
_FILLER_STREAMS = ["", "dm:", "dm:~", "room:", "room:~", "~"] + [
    f"room:{c}{edge}" for c in "abcdefghijklmnopqrstuvwxyz0123456789" for edge in "-~"
]


def _fill(cursor: Any) -> None:
    """Cap the database at its size and use up the free space of the
    tables every state change writes to: events and audit."""
    cursor.execute("PRAGMA page_count")
    (pages,) = cursor.fetchone()
    cursor.execute(f"PRAGMA max_page_count = {pages}")
    cursor.execute("PRAGMA synchronous = OFF")  # filling is not what is tested
    inserts = [("INSERT INTO audit (ts, actor, action, detail) VALUES (0, '~', '~filler', zeroblob(?))", ())]
    inserts += [
        (
            "INSERT INTO events (stream, id, ts, event) "
            "VALUES (?, (SELECT 1 + COUNT(*) FROM events), 0, zeroblob(?))",
            (stream,),
        )
        for stream in _FILLER_STREAMS
    ]
    for size in (2000, 500, 100, 20, 1):
        for sql, args in inserts:
            for _ in range(1000):  # bounded: a page holds a few thousand bytes
                try:
                    # Each in its own transaction: SQLITE_FULL rolls back the
                    # whole transaction it happens in.
                    cursor.execute(sql, (*args, size))
                    cursor.execute("COMMIT")
                except sqlite3.OperationalError as e:
                    if "full" not in str(e):
                        raise
                    break
    cursor.execute("PRAGMA synchronous = FULL")


def _free(cursor: Any) -> None:
    cursor.execute("PRAGMA max_page_count = 1073741823")
    cursor.execute("DELETE FROM audit WHERE action = '~filler'")
    cursor.execute(
        "DELETE FROM events WHERE stream IN (%s)" % ",".join("?" * len(_FILLER_STREAMS)), _FILLER_STREAMS
    )


class FullDatabase:
    """A running server whose database can be made full and freed again."""

    def __init__(self, testcase: unittest.TestCase, server: RunningServer) -> None:
        self.testcase = testcase
        self.server = server

    @property
    def store(self) -> Any:
        return self.server.service.getServiceNamed("store")

    def fill(self) -> Any:
        return self.store.run(_fill)

    def free(self) -> Any:
        return self.store.run(_free)


class Helpers(unittest.TestCase):
    async def start(self, data: Path | None = None) -> RunningServer:
        base = Path(self.mktemp())
        settings = make_settings(base) if data is None else make_settings(base, data_dir=str(data))
        server = RunningServer(settings)
        await server.start()
        self.addCleanup(server.stop)
        return server

    async def restart(self, server: RunningServer) -> RunningServer:
        await server.stop()
        again = RunningServer(server.settings)
        await again.start()
        self.addCleanup(again.stop)
        return again

    async def refused_internal(self, d: Any) -> dict[str, Any]:
        error = await self.assertFailure(d, ServerError)
        self.assertEqual(error.code, "internal_error", error.event)
        self.flushLoggedErrors(sqlite3.OperationalError)
        return error.event

    @staticmethod
    def req(session: ChatSession, type_: str, **members: Any) -> Any:
        return session.request(dict({"type": type_}, **members))

    async def members(self, session: ChatSession, room: str) -> dict[str, str]:
        answer = await self.req(session, "who", room=room)
        return {m["user"]: m["role"] for m in answer["members"]}

    async def assert_members_after_restart(
        self, server: RunningServer, user: str, expected: Any
    ) -> ChatSession:
        """Restarted on the same files, the server has ``expected`` as the
        members of den, seen by ``user``, whose session it returns."""
        server = await self.restart(server)
        session = await logged_in(self, server, user, register=False)
        self.assertEqual(await self.members(session, "den"), expected)
        return session

    async def rooms(self, session: ChatSession) -> dict[str, dict[str, Any]]:
        answer = await self.req(session, "rooms")
        return {r["room"]: r for r in answer["rooms"]}

    async def history(self, session: ChatSession, stream: str) -> list[dict[str, Any]]:
        answer = await self.req(session, "history", stream=stream)
        return answer["events"]


class FullDatabaseTests(Helpers):
    """Every state-changing request on a full database: error, no trace."""

    skip = sqlite_only("a full SQLite file")

    async def test_create_leaves_no_room_and_can_be_retried(self) -> None:
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        await db.fill()
        await self.refused_internal(self.req(alice, "create", room="den"))
        self.assertNotIn("den", await self.rooms(alice))
        await db.free()
        ack = await self.req(alice, "create", room="den")  # not room_exists
        await self.req(alice, "say", room="den", body="kept")
        alice = await self.assert_members_after_restart(server, "alice", {"alice": "owner"})
        events = await self.history(alice, "room:den")
        self.assertEqual([e["type"] for e in events], ["joined", "msg"])
        self.assertEqual(events[0]["id"], ack["id"])

    async def test_create_refused_is_gone_after_restart(self) -> None:
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        await db.fill()
        await self.refused_internal(self.req(alice, "create", room="den"))
        await db.free()
        server = await self.restart(server)
        alice = await logged_in(self, server, "alice", register=False)
        self.assertNotIn("den", await self.rooms(alice))
        await self.req(alice, "create", room="den")

    async def test_join_and_part(self) -> None:
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await self.req(alice, "create", room="den")
        await db.fill()
        await self.refused_internal(self.req(bob, "join", room="den"))
        self.assertEqual(await self.members(alice, "den"), {"alice": "owner"})
        # Not a member: the refused join left nothing behind.
        error = await self.assertFailure(self.req(bob, "say", room="den", body="x"), ServerError)
        self.assertEqual(error.code, "not_member")
        await db.free()
        await self.req(bob, "join", room="den")  # not already_member
        await db.fill()
        await self.refused_internal(self.req(bob, "part", room="den"))
        self.assertEqual(await self.members(alice, "den"), {"alice": "owner", "bob": "member"})
        await db.free()
        await self.assert_members_after_restart(server, "alice", {"alice": "owner", "bob": "member"})

    async def test_owner_part_keeps_owner_and_heir(self) -> None:
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await self.req(alice, "create", room="den")
        await self.req(bob, "join", room="den")
        await db.fill()
        await self.refused_internal(self.req(alice, "part", room="den"))
        self.assertEqual(await self.members(bob, "den"), {"alice": "owner", "bob": "member"})
        await db.free()
        await self.assert_members_after_restart(server, "bob", {"alice": "owner", "bob": "member"})

    async def test_topic(self) -> None:
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        await self.req(alice, "create", room="den", topic="old")
        await db.fill()
        await self.refused_internal(self.req(alice, "topic", room="den", topic="new"))
        self.assertEqual((await self.rooms(alice))["den"]["topic"], "old")
        await db.free()
        server = await self.restart(server)
        alice = await logged_in(self, server, "alice", register=False)
        self.assertEqual((await self.rooms(alice))["den"]["topic"], "old")

    async def test_invite(self) -> None:
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await self.req(alice, "create", room="den", kind="private")
        await db.fill()
        await self.refused_internal(self.req(alice, "invite", room="den", user="bob"))
        error = await self.assertFailure(self.req(bob, "join", room="den"), ServerError)
        self.assertEqual(error.code, "no_such_room")
        await db.free()
        server = await self.restart(server)
        bob = await logged_in(self, server, "bob", register=False)
        self.assertNotIn("den", await self.rooms(bob))

    async def test_moderation(self) -> None:
        """kick, ban, mute, op, and the lifting of a ban and a mute."""
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        await self.req(alice, "create", room="den")
        await self.req(bob, "join", room="den")
        await self.req(alice, "ban", room="den", user="carol")
        await self.req(alice, "mute", room="den", user="bob")
        before = {"alice": "owner", "bob": "member"}
        await db.fill()
        for kind in ("kick", "ban", "op"):
            await self.refused_internal(self.req(alice, kind, room="den", user="bob"))
            self.assertEqual(await self.members(alice, "den"), before, kind)
        await self.refused_internal(self.req(alice, "unmute", room="den", user="bob"))
        await self.refused_internal(self.req(alice, "unban", room="den", user="carol"))
        await db.free()
        # Still muted, still banned: the lifting did not happen.
        error = await self.assertFailure(self.req(bob, "say", room="den", body="x"), ServerError)
        self.assertEqual(error.code, "muted")
        error = await self.assertFailure(self.req(carol, "join", room="den"), ServerError)
        self.assertEqual(error.code, "banned")
        alice = await self.assert_members_after_restart(server, "alice", before)
        types = [e["type"] for e in await self.history(alice, "room:den")]
        self.assertEqual(types, ["joined", "joined", "banned", "muted"])

    async def test_mute_and_deop(self) -> None:
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await self.req(alice, "create", room="den")
        await self.req(bob, "join", room="den")
        await self.req(alice, "op", room="den", user="bob")
        await db.fill()
        await self.refused_internal(self.req(alice, "mute", room="den", user="bob"))
        await self.refused_internal(self.req(alice, "deop", room="den", user="bob"))
        self.assertEqual(await self.members(alice, "den"), {"alice": "owner", "bob": "moderator"})
        await db.free()
        await self.req(bob, "say", room="den", body="not muted")
        await self.assert_members_after_restart(server, "alice", {"alice": "owner", "bob": "moderator"})

    async def test_disable(self) -> None:
        server = await self.start()
        db = FullDatabase(self, server)
        self.assertTrue(add_admin(server))
        root = await logged_in(self, server, "root", register=False)
        bob = await open_session(self, server)
        token = (await bob.register("bob", PASSWORD))["token"]
        await db.fill()
        await self.refused_internal(self.req(root, "disable", user="bob"))
        await bob.ping()  # not closed
        await db.free()
        again = await open_session(self, server)
        await again.request({"type": "login", "user": "bob", "token": token})

    async def test_first_direct_message_and_its_delivery_marks(self) -> None:
        """A refused first DM leaves no half-known stream behind: the next
        one, sent once space is back, reaches its offline recipient."""
        server = await self.start()
        db = FullDatabase(self, server)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await bob.close()
        await until(lambda: "bob" not in server.factory.chat.online)
        await db.fill()
        await self.refused_internal(self.req(alice, "dm", to="bob", body="lost"))
        await db.free()
        ack = await self.req(alice, "dm", to="bob", body="kept")
        server = await self.restart(server)
        bob = await open_session(self, server)
        queue = EventQueue(bob)
        await bob.login("bob", PASSWORD)
        dm = await queue.next(lambda e: e.get("type") == "dm")
        self.assertEqual((dm["body"], dm["id"]), ("kept", ack["id"]))
        await bob.ping()
        self.assertEqual([e for e in queue.events if e.get("type") == "dm"], [])

    async def test_first_login_joins_the_lobby_with_its_mark(self) -> None:
        """The first login's lobby join and its "welcomed" mark commit
        together: refused, the next login tries again."""
        server = await self.start()
        db = FullDatabase(self, server)
        # An account that never logged in, made beside the server, with a
        # session token (a token login writes nothing of its own).
        self.assertTrue(add_admin(server, "carol"))
        token = "t" * 43
        conn = sqlite3.connect(str(server.settings.database_path))
        with conn:
            store.add_token(conn.cursor(), accounts.token_hash(token), "carol", 0, 1 << 40)
        conn.close()
        await db.fill()
        carol = await open_session(self, server)
        await self.refused_internal(self.req(carol, "login", user="carol", token=token))
        await db.free()
        carol = await open_session(self, server)
        welcome = await self.req(carol, "login", user="carol", token=token)
        self.assertEqual(welcome["rooms"], ["lobby"])
        joined = [e["user"] for e in await self.history(carol, "room:lobby") if e["type"] == "joined"]
        self.assertEqual(joined, ["carol"])


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


class DiskFullTmpfsTests(Helpers):
    """The same on a real full filesystem: a 2 MiB tmpfs, filled up."""

    skip = sqlite_only("a full SQLite file")

    async def test_full_filesystem(self) -> None:
        mount = Path(tempfile.mkdtemp(prefix="chatserver-tmpfs-"))
        if not _mount_tmpfs(mount, "2m"):
            os.rmdir(mount)
            raise unittest.SkipTest("cannot mount a tmpfs here")

        def unmount() -> None:
            subprocess.run(["umount", "-l", str(mount)], check=False)
            shutil.rmtree(mount, ignore_errors=True)

        self.addCleanup(unmount)
        server = await self.start(mount / "data")
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await self.req(alice, "create", room="den")
        ballast = mount / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(1000):  # 64 MiB at most; the tmpfs has 2
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)
        # Whatever the WAL still had room for goes first; then it is full.
        refused = None
        for i in range(2000):
            try:
                await self.req(alice, "say", room="den", body="x" * 500 + str(i))
            except ServerError as e:
                refused = e
                break
        self.assertIsNotNone(refused)
        self.flushLoggedErrors(sqlite3.OperationalError)
        for _ in range(3):
            await self.assertFailure(self.req(bob, "join", room="den"), ServerError)
            self.flushLoggedErrors(sqlite3.OperationalError)
        ballast.unlink()
        await defer.succeed(None)
        await self.req(bob, "join", room="den")
        await self.assert_members_after_restart(server, "alice", {"alice": "owner", "bob": "member"})
