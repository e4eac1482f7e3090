"""Accounts over the real channel: register, login, throttling, admin tool."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from twisted.internet import task
from twisted.trial import unittest

from chatclient.session import ServerError
from chatserver.storage import sqlite as store
from chatserver.storage.direct import open_direct
from tests.processes import admin_tool
from tests.support import PASSWORD, logged_in, open_session, start_server


class AccountTests(unittest.TestCase):
    async def test_register_then_login(self) -> None:
        server = await start_server(self)
        first = await open_session(self, server)
        welcome = await first.register("Alice", PASSWORD)
        self.assertEqual((welcome["user"], welcome["role"]), ("alice", "user"))
        self.assertEqual(welcome["rooms"], ["lobby"])
        second = await open_session(self, server)
        welcome = await second.login("alice", PASSWORD)
        self.assertEqual(welcome["user"], "alice")

    async def test_unknown_user_and_wrong_password_look_the_same(self) -> None:
        server = await start_server(self)
        await logged_in(self, server, "alice")
        session = await open_session(self, server)
        wrong = await self.assertFailure(session.login("alice", "not the password"), ServerError)
        unknown = await self.assertFailure(session.login("mallory", "not the password"), ServerError)
        strip = lambda e: {k: v for k, v in e.event.items() if k != "ref"}  # noqa: E731
        self.assertEqual(strip(wrong), strip(unknown))
        self.assertEqual(wrong.code, "auth_failed")
        # The connection stays usable after a failed login.
        welcome = await session.login("alice", PASSWORD)
        self.assertEqual(welcome["user"], "alice")

    async def test_unknown_user_costs_a_hash_too(self) -> None:
        """Timing must not tell which names exist: both paths run scrypt."""
        server = await start_server(
            self, password_hash_cost=14, login_failures_per_account=100, login_failures_per_address=100
        )
        await logged_in(self, server, "alice")
        session = await open_session(self, server)

        async def timed(user: str) -> float:
            start = time.perf_counter()
            await self.assertFailure(session.login(user, "wrong password"), ServerError)
            return time.perf_counter() - start

        await timed("warmup")  # the dummy hash is made on first use
        known = statistics.median([await timed("alice") for _ in range(5)])
        unknown = statistics.median([await timed("nobody") for _ in range(5)])
        # Generous bounds: one scrypt at cost 14 is tens of milliseconds,
        # a database miss without it would be well under a millisecond.
        self.assertGreater(unknown, known * 0.5)
        self.assertLess(unknown, known * 2.0)

    async def test_failures_are_throttled_per_account(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, login_failures_per_account=3, login_lockout=60)
        await logged_in(self, server, "alice")
        session = await open_session(self, server)
        for _ in range(3):
            error = await self.assertFailure(session.login("alice", "wrong password"), ServerError)
            self.assertEqual(error.code, "auth_failed")
        # Even the right password is refused while throttled...
        error = await self.assertFailure(session.login("alice", PASSWORD), ServerError)
        self.assertEqual(error.code, "throttled")
        self.assertGreater(error.event["retry_after"], 0)
        self.assertLessEqual(error.event["retry_after"], 60)
        # ... unknown names are throttled the same way ...
        for _ in range(3):
            await self.assertFailure(session.login("ghost", "wrong password"), ServerError)
        error = await self.assertFailure(session.login("ghost", "wrong password"), ServerError)
        self.assertEqual(error.code, "throttled")
        # ... and the lockout ends.  (The advance also expires this
        # connection's login deadline, so log in on a new one.)
        clock.advance(61)
        welcome = await (await open_session(self, server)).login("alice", PASSWORD)
        self.assertEqual(welcome["user"], "alice")

    async def test_failures_are_throttled_per_address(self) -> None:
        server = await start_server(self, login_failures_per_address=4, login_failures_per_account=100)
        session = await open_session(self, server)
        for name in ("u1", "u2", "u3", "u4"):
            error = await self.assertFailure(session.login(name, "wrong password"), ServerError)
            self.assertEqual(error.code, "auth_failed")
        error = await self.assertFailure(session.login("u5", "wrong password"), ServerError)
        self.assertEqual(error.code, "throttled")

    async def test_registration_checks(self) -> None:
        server = await start_server(self)
        await logged_in(self, server, "alice")
        session = await open_session(self, server)
        error = await self.assertFailure(session.register("alice", PASSWORD), ServerError)
        self.assertEqual(error.code, "username_taken")
        error = await self.assertFailure(session.register("a b", PASSWORD), ServerError)
        self.assertEqual((error.code, error.event["field"]), ("bad_username", "user"))
        error = await self.assertFailure(session.register("x" * 33, PASSWORD), ServerError)
        self.assertEqual(error.code, "bad_username")
        error = await self.assertFailure(session.register("bob", "short"), ServerError)
        self.assertEqual((error.code, error.event["field"]), ("bad_password", "password"))
        welcome = await session.register("bob", PASSWORD)
        self.assertEqual(welcome["user"], "bob")

    async def test_registration_can_be_disabled(self) -> None:
        server = await start_server(self, allow_registration=False)
        session = await open_session(self, server)
        error = await self.assertFailure(session.register("alice", PASSWORD), ServerError)
        self.assertEqual(error.code, "registration_closed")

    async def test_second_login_on_one_connection_is_refused(self) -> None:
        server = await start_server(self)
        session = await logged_in(self, server, "alice")
        error = await self.assertFailure(session.login("alice", PASSWORD), ServerError)
        self.assertEqual(error.code, "already_authenticated")

    async def test_passwords_are_stored_hashed(self) -> None:
        server = await start_server(self)
        await logged_in(self, server, "alice")
        conn = open_direct(server.settings)
        self.addCleanup(conn.close)
        record = conn.run(store.get_user, "alice")
        self.assertTrue(record.password_hash.startswith("scrypt$10$8$1$"))
        self.assertNotIn(PASSWORD, record.password_hash)
        if not server.settings.uses_postgres:  # the file's bytes: SQLite's
            raw = server.settings.database_path.read_bytes()
            self.assertNotIn(PASSWORD.encode(), raw)


class AdminToolTests(unittest.TestCase):
    def admin(self, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return admin_tool(data_dir, *args)

    async def test_add_admin_then_log_in(self) -> None:
        server = await start_server(self)
        password_file = Path(self.mktemp())
        password_file.write_text(PASSWORD + "\n")
        result = admin_tool(
            server.settings.data_path,
            *("add-user", "root1", "--admin", "--password-file", str(password_file)),
            database=server.settings.database,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("added admin root1", result.stdout)
        session = await open_session(self, server)
        welcome = await session.login("root1", PASSWORD)
        self.assertEqual(welcome["role"], "admin")

        again = admin_tool(
            server.settings.data_path,
            *("add-user", "root1", "--password-file", str(password_file)),
            database=server.settings.database,
        )
        self.assertEqual(again.returncode, 1)
        self.assertIn("already exists", again.stderr)

    def test_bad_input(self) -> None:
        data = Path(self.mktemp())
        password_file = Path(self.mktemp())
        password_file.write_text("short\n")
        result = self.admin(data, "add-user", "bad name!", "--password-file", str(password_file))
        self.assertEqual(result.returncode, 2)
        self.assertIn("usernames are", result.stderr)
        result = self.admin(data, "add-user", "carol", "--password-file", str(password_file))
        self.assertEqual(result.returncode, 2)
        self.assertIn("passwords are", result.stderr)
        result = self.admin(data, "add-user", "carol", "--password-file", str(data / "missing"))
        self.assertEqual(result.returncode, 2)
