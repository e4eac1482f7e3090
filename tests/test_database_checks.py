"""The database is checked at start and watched while the server runs.

A deleted, corrupt, truncated or too new database stops a real ``twistd``
at start-up with one line and a non-zero status, and no empty database
takes its place; a database deleted or replaced under a running server
gets no further writes, so nothing more is acknowledged into a file that
is gone.  The admin tool applies the same checks.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from chatclient.session import ServerError
from chatserver import accounts
from chatserver.storage import sqlite as store
from tests.processes import LOOPBACK, TIMEOUT, LineProcess, chatserver_argv, spawn, start_twistd, stop_twistd
from tests.support import (
    PASSWORD,
    PYTHON,
    RunningServer,
    logged_in,
    python_env,
    sqlite_only,
    start_server,
    until,
)

NEWEST = store.migrations()[-1][0]


def make_database(data: Path, users: int = 3, events: int = 400) -> Path:
    """A database of several pages, as the admin tool and a server make it."""
    path = data / "chatserver.sqlite3"
    conn = store.open_database(path)
    try:
        for i in range(users):
            assert accounts.add_user_now(conn, f"user{i}", PASSWORD, "user", 10)
        with conn:
            conn.executemany(
                "INSERT INTO events (stream, id, ts, event) VALUES (?, ?, ?, ?)",
                [("room:lobby", i, i, '{"body": "%s"}' % ("x" * 200)) for i in range(1, events)],
            )
    finally:
        conn.close()
    return path


def corrupt(path: Path) -> None:
    """Overwrite b-tree page headers past the schema's pages: the users
    table still reads, a full scan (and quick_check) does not."""
    with path.open("r+b") as f:
        for page in range(20, 40):
            f.seek(4096 * page)
            f.write(b"\x0d\xff\xff\xff\xff\xff\xff\xff")


class StartCheckTests(unittest.TestCase):
    skip = sqlite_only("checks of the SQLite file")

    def setUp(self) -> None:
        # Absolute: start_twistd runs twistd in this directory.
        self.base = Path(self.mktemp()).resolve()
        self.data = self.base / "data"
        self.data.mkdir(parents=True)

    async def run_twistd(self) -> LineProcess:
        argv = chatserver_argv(*LOOPBACK, "--data-dir", str(self.data), "--log-dir", str(self.base / "log"))
        child = spawn(self, "twistd", argv)
        await child.ended.addTimeout(TIMEOUT, reactor)
        return child

    def assertRefused(self, child: LineProcess, *fragments: str) -> None:
        everything = child.output() + "\n" + child.errors()
        self.assertNotEqual(child.exit_code, 0, everything)
        self.assertNotIn("Traceback", everything)
        self.assertNotIn("ChatFactory starting", everything)
        lines = [line for line in child.errors().splitlines() if line.startswith("chatserver:")]
        self.assertEqual(len(lines), 1, everything)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])

    async def test_a_new_install_creates_key_and_database(self) -> None:
        server, _, _ = await start_twistd(self, self.base)
        self.assertEqual(await stop_twistd(server), 0)
        self.assertTrue((self.data / "server_key.pem").exists())
        self.assertTrue((self.data / "chatserver.sqlite3").exists())

    async def test_deleted_database_is_not_replaced_by_an_empty_one(self) -> None:
        server, _, _ = await start_twistd(self, self.base)
        self.assertEqual(await stop_twistd(server), 0)
        for name in os.listdir(self.data):
            if name.startswith("chatserver.sqlite3"):
                os.unlink(self.data / name)
        child = await self.run_twistd()
        self.assertRefused(child, str(self.data / "chatserver.sqlite3"), "missing")
        self.assertFalse((self.data / "chatserver.sqlite3").exists())

    async def test_emptied_database_is_refused(self) -> None:
        server, _, _ = await start_twistd(self, self.base)
        self.assertEqual(await stop_twistd(server), 0)
        (self.data / "chatserver.sqlite3").write_bytes(b"")
        child = await self.run_twistd()
        self.assertRefused(child, str(self.data / "chatserver.sqlite3"))
        self.assertEqual((self.data / "chatserver.sqlite3").stat().st_size, 0)

    async def test_corrupt_database_is_refused(self) -> None:
        corrupt(make_database(self.data))
        child = await self.run_twistd()
        self.assertRefused(child, str(self.data / "chatserver.sqlite3"), "backup")

    async def test_truncated_database_is_refused(self) -> None:
        path = make_database(self.data)
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2)
        child = await self.run_twistd()
        self.assertRefused(child, str(path), "backup")

    async def test_not_a_database_is_refused(self) -> None:
        (self.data / "chatserver.sqlite3").write_bytes(b"not sqlite at all\n" * 300)
        child = await self.run_twistd()
        self.assertRefused(child, "not a database")

    async def test_newer_schema_is_refused(self) -> None:
        path = make_database(self.data)
        conn = sqlite3.connect(str(path))
        with conn:
            conn.execute("INSERT INTO schema_version (version) VALUES (9)")
        conn.close()
        child = await self.run_twistd()
        self.assertRefused(child, "schema version 9", str(NEWEST))
        conn = sqlite3.connect(str(path))
        self.addCleanup(conn.close)
        self.assertEqual(store.schema_version(conn), 9)  # untouched


class AdminToolCheckTests(unittest.TestCase):
    skip = sqlite_only("checks of the SQLite file")

    def admin(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        password = Path(self.mktemp())
        password.write_text(PASSWORD + "\n")
        return subprocess.run(
            [PYTHON, "-m", "chatserver.admin", *args, "--password-file", str(password)],
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd,
        )

    def assertRefused(self, result: subprocess.CompletedProcess[str], *fragments: str) -> None:
        self.assertNotEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        for fragment in fragments:
            self.assertIn(fragment, result.stderr)

    def test_newer_schema_is_refused(self) -> None:
        data = Path(self.mktemp())
        data.mkdir()
        path = make_database(data)
        with sqlite3.connect(str(path)) as conn:
            conn.execute("INSERT INTO schema_version (version) VALUES (9)")
        conn.close()
        result = self.admin("--data-dir", str(data), "add-user", "carol")
        self.assertRefused(result, "schema version 9")

    def test_corrupt_database_is_refused(self) -> None:
        data = Path(self.mktemp())
        data.mkdir()
        corrupt(make_database(data))
        result = self.admin("--data-dir", str(data), "add-user", "carol")
        self.assertRefused(result, str(data / "chatserver.sqlite3"))


class WatchTests(unittest.TestCase):
    """The file under a running server."""

    skip = sqlite_only("checks of the SQLite file")

    async def check_refuses_writes_after(self, damage: str) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        await alice.say("lobby", "before")
        path = server.settings.database_path
        if damage == "deleted":
            os.unlink(path)
        else:
            copy = path.with_name("copy.sqlite3")
            shutil.copyfile(path, copy)
            os.replace(copy, path)
        # At once, before any timer had a chance: the check is part of
        # every transaction, so this message is not acknowledged.
        error = await self.assertFailure(alice.say("lobby", "after"), ServerError)
        self.assertEqual(error.code, "unavailable")
        error = await self.assertFailure(alice.say("lobby", "again"), ServerError)
        self.assertEqual(error.code, "unavailable")
        log = server.settings.log_path / "chatserver.log"
        await until(lambda: damage in log.read_text())
        lines = [line for line in log.read_text().splitlines() if "[chatserver.store#" in line]
        self.assertEqual(len(lines), 1, log.read_text())
        self.assertIn("#critical]", lines[0])
        self.assertIn(str(path), lines[0])
        self.assertIn(damage, lines[0])
        # The event log (chatserver.journal) logs each failed commit with
        # its traceback, which trial counts as an error of the test.
        self.flushLoggedErrors(store.DatabaseLost)
        # No new database file appeared in its place, and none will at the
        # next start either.
        if damage == "deleted":
            self.assertFalse(path.exists())
            await server.stop()
            refused = self.assertRaises(SystemExit, RunningServer, server.settings)
            self.assertIn(f"database {path} is missing", str(refused))
            self.assertFalse(path.exists())

    async def test_deleted_database_gets_no_more_writes(self) -> None:
        await self.check_refuses_writes_after("deleted")

    async def test_replaced_database_gets_no_more_writes(self) -> None:
        await self.check_refuses_writes_after("replaced")

    async def test_noticed_without_traffic(self) -> None:
        server = await start_server(self)
        os.unlink(server.settings.database_path)
        log = server.settings.log_path / "chatserver.log"
        await until(lambda: "deleted" in log.read_text())
