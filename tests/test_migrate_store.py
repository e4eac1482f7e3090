"""``chatserver-admin migrate-store``: a SQLite server's database copied
into PostgreSQL, checked, and served from there by a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial import unittest

from chatclient.session import ServerError
from tests import backends
from tests.processes import admin_tool
from tests.support import PASSWORD, RunningServer, logged_in, make_settings, open_session, postgres_only


def _counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchall()
        ]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


class MigrateStoreTests(unittest.TestCase):
    skip = backends.missing() or postgres_only("copies SQLite into PostgreSQL")

    async def sqlite_server(self, base: Path, **overrides: Any) -> RunningServer:
        server = RunningServer(make_settings(base, database="", **overrides))
        await server.start()
        self.addCleanup(server.stop)
        return server

    async def populated(self) -> tuple[Path, RunningServer]:
        """A SQLite server with accounts, rooms, messages, a DM, a ban, a
        topic and a token in it (still running)."""
        base = Path(self.mktemp()).resolve()
        server = await self.sqlite_server(base)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await alice.request({"type": "create", "room": "plans", "kind": "public"})
        await bob.request({"type": "join", "room": "plans"})
        await alice.request({"type": "topic", "room": "plans", "topic": "the plans"})
        for n in range(30):
            await alice.say("plans" if n % 2 else "lobby", f"message {n}")
        await alice.request({"type": "dm", "to": "bob", "body": "just for you"})
        await logged_in(self, server, "mallory")
        await alice.request({"type": "ban", "room": "plans", "user": "mallory"})
        await alice.close()
        await bob.close()
        return base, server

    async def test_a_copy_serves_the_same_accounts_history_and_ids(self) -> None:
        base, server = await self.populated()
        await server.stop()
        url = backends.postgres_url()
        result = admin_tool(base / "data", "migrate-store", "--to", url)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("checked", result.stderr)
        rows = dict(line.split("\t") for line in result.stdout.splitlines())
        self.assertEqual(rows["users"], "3")
        self.assertEqual(rows["events"], str(_counts(url)["events"]))
        self.assertGreaterEqual(int(rows["events"]), 31)

        moved = RunningServer(make_settings(base, database=url))
        await moved.start()
        self.addCleanup(moved.stop)
        alice = await logged_in(self, moved, "alice", register=False)
        page = await alice.request({"type": "history", "stream": "room:plans", "limit": 100})
        bodies = [e["body"] for e in page["events"] if e["type"] == "msg"]
        self.assertEqual(bodies, [f"message {n}" for n in range(1, 30, 2)])
        last = page["events"][-1]["id"]
        # The stream goes on after its copied ids, with no gap.
        ack = await alice.say("plans", "after the move")
        self.assertEqual(ack["id"], last + 1)
        # State came along: the topic, the ban, the DM.
        rooms = await alice.all_pages({"type": "rooms"}, "rooms", "room")
        plans = [r for r in rooms["rooms"] if r["room"] == "plans"][0]
        self.assertEqual(plans.get("topic"), "the plans")
        mallory = await logged_in(self, moved, "mallory", register=False)
        with self.assertRaises(ServerError) as refused:
            await mallory.request({"type": "join", "room": "plans"})
        self.assertEqual(refused.exception.code, "banned")
        bob = await open_session(self, moved)
        welcome = await bob.login("bob", PASSWORD)
        dm_stream = [s for s in welcome["streams"] if s.startswith("dm:")][0]
        dms = await bob.request({"type": "history", "stream": dm_stream, "limit": 10})
        self.assertEqual([e["body"] for e in dms["events"]], ["just for you"])

    async def test_refused_while_a_server_runs_on_the_database(self) -> None:
        base, server = await self.populated()
        url = backends.postgres_url()
        result = admin_tool(base / "data", "migrate-store", "--to", url)
        self.assertEqual(result.returncode, 1)
        self.assertIn("is in use by a chatserver", result.stderr)
        self.assertIn("nothing was copied", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(sum(_counts(url).values()), 0)

    async def test_refused_into_a_database_that_is_not_empty(self) -> None:
        base, server = await self.populated()
        await server.stop()
        url = backends.postgres_url()
        self.assertEqual(admin_tool(base / "data", "migrate-store", "--to", url).returncode, 0)
        before = _counts(url)
        again = admin_tool(base / "data", "migrate-store", "--to", url)
        self.assertEqual(again.returncode, 1)
        self.assertIn("the target database is not empty", again.stderr)
        self.assertEqual(_counts(url), before)

    def test_a_password_in_the_url_is_refused_and_not_repeated(self) -> None:
        base = Path(self.mktemp()).resolve()
        result = admin_tool(base / "data", "migrate-store", "--to", "postgresql://u:hunter2@localhost/chat")
        self.assertEqual(result.returncode, 2)
        self.assertIn("must not hold a password", result.stderr)
        self.assertNotIn("hunter2", result.stderr + result.stdout)

    def test_an_unreachable_target_is_one_line(self) -> None:
        base = Path(self.mktemp()).resolve()
        sqlite_path = base / "data"
        password = base / "password"
        base.mkdir()
        password.write_text(PASSWORD)
        created = admin_tool(sqlite_path, "--create", "add-user", "alice", "--password-file", str(password))
        self.assertEqual(created.returncode, 0, created.stderr)
        result = admin_tool(
            sqlite_path, "migrate-store", "--to", "postgresql:///chat?host=/nonexistent&connect_timeout=2"
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("cannot use database", result.stderr)


class ServerLockTests(unittest.TestCase):
    async def test_a_second_server_on_one_sqlite_database_is_refused(self) -> None:
        base = Path(self.mktemp()).resolve()
        first = RunningServer(make_settings(base, database=""))
        await first.start()
        self.addCleanup(first.stop)
        with self.assertRaises(SystemExit) as caught:  # one line, as twistd prints it
            await RunningServer(make_settings(base, database="")).start()
        self.assertIn("is in use by a chatserver (pid", str(caught.exception))
        await first.stop()
        # Once the first has stopped, the lock is free again.
        third = RunningServer(make_settings(base, database=""))
        await third.start()
        self.addCleanup(third.stop)
        session = await logged_in(self, third, "carol")
        self.assertEqual((await session.ping())["type"], "pong")
