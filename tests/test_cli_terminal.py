"""The terminal client in a real pseudo-terminal (pexpect), against a
real server process: what a person at a keyboard sees and types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pexpect
from twisted.internet import threads
from twisted.trial import unittest

from tests.processes import admin_tool, start_twistd, stop_twistd
from tests.support import PYTHON, python_env


class RegistrationTests(unittest.TestCase):
    def client(self, port: int, user: str, *extra: str) -> Any:
        child = pexpect.spawn(
            PYTHON,
            [
                "-m",
                "chatclient.cli",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--user",
                user,
                "--no-e2e",
                *extra,
            ],
            env=python_env(),
            encoding="utf-8",
            timeout=30,
        )
        self.addCleanup(child.close, force=True)
        return child

    async def test_registration_asks_twice_and_sends_nothing_when_they_differ(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        server, port, _ = await start_twistd(self, base)
        known = str(base / "known_hosts")

        def mistyped() -> Any:
            child = self.client(port, "dora", "--register", "--known-hosts", known)
            child.expect_exact("new password for dora: ")
            child.sendline("a long first password")
            child.expect_exact("the same password again: ")
            child.sendline("a long first passwort")
            child.expect_exact("the two passwords differ; nothing was sent")
            child.expect(pexpect.EOF)
            child.close()
            return child.exitstatus

        self.assertNotEqual(await threads.deferToThread(mistyped), 0)
        shown = admin_tool(base / "data", "user", "show", "dora")
        self.assertEqual(shown.returncode, 1)  # nothing was registered
        self.assertIn("no user dora", shown.stderr)

        def typed_twice() -> None:
            child = self.client(port, "dora", "--register", "--known-hosts", known)
            child.expect_exact("new password for dora: ")
            child.sendline("a long first password")
            child.expect_exact("the same password again: ")
            child.sendline("a long first password")
            child.expect_exact("* logged in as dora")
            child.sendeof()
            child.expect(pexpect.EOF)

        await threads.deferToThread(typed_twice)

        def logs_in_once() -> None:
            child = self.client(port, "dora", "--known-hosts", known)
            child.expect_exact("password for dora: ")  # a login asks once
            child.sendline("a long first password")
            child.expect_exact("* logged in as dora")
            child.sendeof()
            child.expect(pexpect.EOF)

        await threads.deferToThread(logs_in_once)
        self.assertEqual(await stop_twistd(server), 0)
