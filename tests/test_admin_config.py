"""chatserver-admin uses exactly the server's data directory, from the
same configuration file, wherever it is run; and it does not create a
database the server would never read unless told to (--create)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from twisted.trial import unittest

from chatserver.config import CONFIG_ENV, find_config
from tests.processes import chatserver_argv, spawn, stop_twistd
from tests.support import PASSWORD, PYTHON, open_session, python_env


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


class AdminDirectoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        (self.base / "etc").mkdir(parents=True)
        # As shipped: directories relative to the file.
        self.config = self.base / "etc" / "chatserver.ini"
        self.config.write_text(
            "[server]\nendpoint = tcp:0:interface=127.0.0.1\ndata_dir = ../state\nlog_dir = ../logs\n"
            "[accounts]\npassword_hash_cost = 10\n[monitor]\nenabled = no\n"
        )
        # Neither working directory is beside etc/, so that "../state"
        # from either of them is not where the file means.
        self.elsewhere = self.base / "some" / "where" / "else"
        self.elsewhere.mkdir(parents=True)
        self.password = self.base / "password"
        self.password.write_text(PASSWORD + "\n")

    def admin(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The admin tool, run from an unrelated directory."""
        return subprocess.run(
            [PYTHON, "-m", "chatserver.admin", *args],
            env={**python_env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.elsewhere,
        )

    async def test_admin_tool_writes_where_the_server_reads(self) -> None:
        # The server as the systemd unit runs it: --config only, from its
        # own working directory.
        workdir = self.base / "server" / "cwd"
        workdir.mkdir(parents=True)
        server = spawn(
            self,
            "twistd",
            chatserver_argv("--config", str(self.config)),
            cwd=str(workdir),
        )
        port = int((await server.wait_for(r"ChatFactory starting on (\d+)")).group(1))
        self.assertTrue((self.base / "state" / "chatserver.sqlite3").exists())

        result = self.admin(
            "--config", str(self.config), "add-user", "boss", "--admin", "--password-file", str(self.password)
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("added admin boss", result.stdout)
        session = await open_session(self, _Port(port))  # type: ignore[arg-type]
        welcome = await session.login("boss", PASSWORD)
        self.assertEqual(welcome["role"], "admin")
        await session.close()
        self.assertEqual(await stop_twistd(server), 0)
        # Nothing was made in either working directory.
        self.assertEqual(list(self.elsewhere.iterdir()), [])
        self.assertEqual(list(workdir.iterdir()), [])

    async def test_without_config_both_find_the_file_chatserver_config_names(self) -> None:
        env = {CONFIG_ENV: str(self.config)}
        server = spawn(self, "twistd", chatserver_argv(), cwd=str(self.elsewhere), env=env)
        port = int((await server.wait_for(r"ChatFactory starting on (\d+)")).group(1))
        self.assertTrue((self.base / "state" / "chatserver.sqlite3").exists())
        result = self.admin("add-user", "boss", "--password-file", str(self.password), env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        session = await open_session(self, _Port(port))  # type: ignore[arg-type]
        self.assertEqual((await session.login("boss", PASSWORD))["role"], "user")
        await session.close()
        self.assertEqual(await stop_twistd(server), 0)
        # A file it names that is not there is an error, not the defaults.
        missing = self.admin("user", "list", env={CONFIG_ENV: str(self.base / "nothing.ini")})
        self.assertEqual(missing.returncode, 2, missing.stderr)
        self.assertIn("cannot read", missing.stderr)

    def test_the_search_path_gives_the_first_file_that_exists(self) -> None:
        first, second = self.base / "first.ini", self.config
        self.assertEqual(find_config(None, {}, (first, second)), str(second))
        first.write_text("")
        self.assertEqual(find_config(None, {}, (first, second)), str(first))
        self.assertEqual(find_config(None, {CONFIG_ENV: "named.ini"}, (first,)), "named.ini")
        self.assertEqual(find_config("given.ini", {CONFIG_ENV: "named.ini"}, (first,)), "given.ini")
        self.assertIsNone(find_config(None, {}, (self.base / "none.ini",)))

    def test_no_database_is_created_unless_asked(self) -> None:
        result = self.admin(
            "--config", str(self.config), "add-user", "boss", "--admin", "--password-file", str(self.password)
        )
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn(str(self.base / "state" / "chatserver.sqlite3"), result.stderr)
        self.assertIn("--create", result.stderr)
        self.assertFalse((self.base / "state" / "chatserver.sqlite3").exists())
        self.assertEqual(list(self.elsewhere.iterdir()), [])

        # Without any option: var/lib here, which does not exist either.
        result = self.admin("add-user", "boss", "--password-file", str(self.password))
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(list(self.elsewhere.iterdir()), [])

    def test_create_on_purpose(self) -> None:
        result = self.admin(
            "--config",
            str(self.config),
            "--create",
            "add-user",
            "boss",
            "--admin",
            "--password-file",
            str(self.password),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue((self.base / "state" / "chatserver.sqlite3").exists())
        # And then it exists: no --create needed any more.
        result = self.admin(
            "--config", str(self.config), "add-user", "alice", "--password-file", str(self.password)
        )
        self.assertEqual(result.returncode, 0, result.stderr)
