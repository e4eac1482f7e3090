"""Log files: which events go where, levels, rotation, and no secrets."""

from __future__ import annotations

import stat
from pathlib import Path

from twisted.trial import unittest

from chatclient.session import ServerError
from tests.support import PASSWORD, EventQueue, logged_in, open_session, start_server, until


def read_logs(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


class LogTests(unittest.TestCase):
    async def test_files_split_by_namespace(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        await alice.close()
        await until(lambda: not server.factory.connections)
        await server.stop()
        logs = read_logs(server.settings.log_path)
        self.assertIn("logged in as alice", logs["connections.log"])
        self.assertIn("disconnect 127.0.0.1 user=alice: closed by peer (bye)", logs["connections.log"])
        self.assertNotIn("logged in as", logs["chatserver.log"])
        self.assertIn("registered alice from 127.0.0.1", logs["chatserver.log"])
        for name in logs:
            mode = stat.S_IMODE((server.settings.log_path / name).stat().st_mode)
            self.assertEqual(mode & 0o027, 0, f"{name} is writable by group or readable by others")

    async def test_level_filters(self) -> None:
        server = await start_server(self, log_level="warn")
        session = await open_session(self, server)
        await self.assertFailure(session.login("alice", "wrong password"), ServerError)
        await server.stop()
        logs = read_logs(server.settings.log_path)
        self.assertIn("login failed for alice", logs["chatserver.log"])
        self.assertNotIn("connect 127.0.0.1", logs["connections.log"])

    async def test_rotation_by_size_keeps_count(self) -> None:
        server = await start_server(self, log_rotate_bytes=4096, log_rotate_count=2)
        # Logged in: lines about unauthenticated connections are rate-limited.
        await (await logged_in(self, server, "alice")).close()
        for _ in range(60):
            session = await logged_in(self, server, "alice", register=False)
            await session.close()
        await server.stop()
        names = set(read_logs(server.settings.log_path))
        self.assertIn("connections.log.1", names)
        self.assertIn("connections.log.2", names)
        self.assertNotIn("connections.log.3", names)
        for name in names:
            self.assertLessEqual((server.settings.log_path / name).stat().st_size, 4096 + 512)

    async def test_no_secrets_or_bodies_in_logs(self) -> None:
        server = await start_server(self, log_level="debug", max_body_length=100)
        alice = await logged_in(self, server, "alice")
        queue = EventQueue(alice)
        intruder = await open_session(self, server)
        await self.assertFailure(intruder.login("alice", "guessed-secret-pw"), ServerError)
        await alice.say("lobby", "the launch code is 0000")
        await self.assertFailure(alice.say("lobby", "overlong secret " + "x" * 100), ServerError)
        await queue.next(lambda e: e["type"] == "msg")
        await alice.close()
        await intruder.close()
        await until(lambda: not server.factory.connections)
        await server.stop()
        text = "\n".join(read_logs(server.settings.log_path).values())
        self.assertIn("login failed for alice", text)  # the events were logged...
        for secret in (PASSWORD, "guessed-secret-pw", "launch code", "overlong secret"):
            self.assertNotIn(secret, text)  # ... without what must stay private
        key_pem = (server.settings.data_path / "server_key.pem").read_text()
        for line in key_pem.splitlines()[1:-1]:
            self.assertNotIn(line, text)


class LogOptionTests(unittest.TestCase):
    async def test_namespace_levels_json_format_and_the_audit_log(self) -> None:
        import json

        server = await start_server(
            self, log_level="info", log_levels=(("chatserver.connections", "warn"),), log_format="json"
        )
        alice = await logged_in(self, server, "alice")
        intruder = await open_session(self, server)
        await self.assertFailure(intruder.login("alice", "guessed-secret-pw"), ServerError)
        await alice.close()
        await intruder.close()
        await until(lambda: not server.factory.connections)
        await server.stop()
        logs = read_logs(server.settings.log_path)
        # connections.log is at warn: no "connect"/"logged in" lines.
        self.assertEqual(logs["connections.log"], "")
        events = {
            name: [json.loads(line) for line in text.splitlines() if line.strip()]
            for name, text in logs.items()
        }
        audit = [e["log_format"] for e in events["audit.log"]]
        self.assertIn("registered {user} from {address}", audit)
        self.assertIn("login failed for {user} from {address}", audit)
        self.assertTrue(all(e["log_namespace"] == "chatserver.audit" for e in events["audit.log"]))
        self.assertTrue(any(e["log_namespace"] == "chatserver.audit" for e in events["chatserver.log"]))
        for text in logs.values():
            self.assertNotIn("guessed-secret-pw", text)
            self.assertNotIn(PASSWORD, text)
        mode = stat.S_IMODE((server.settings.log_path / "audit.log").stat().st_mode)
        self.assertEqual(mode & 0o027, 0)

    def test_daily_rotation_keeps_count(self) -> None:
        """The date is the file's own record of its last write: moved back,
        the next event finds a new day and rotates."""
        from twisted.logger import Logger

        from chatserver.logs import LogFiles

        directory = Path(self.mktemp())
        logs = LogFiles(directory, "info", 4096, 2, daily=True)
        logs.startService()
        self.addCleanup(lambda: logs.running and logs.stopService())
        emit = Logger(namespace="chatserver.test")
        [main] = [f for f in logs._files if f.name == "chatserver.log"]
        for day in (1, 2, 3, 4):
            emit.info("day {day}", day=day)
            main.lastDate = (2000, 1, day)
        emit.info("today")
        logs.stopService()
        rotated = sorted(p.name for p in directory.iterdir() if p.name.startswith("chatserver.log."))
        self.assertEqual(rotated, ["chatserver.log.2000_1_3", "chatserver.log.2000_1_4"])
        self.assertIn("today", (directory / "chatserver.log").read_text())
        self.assertIn("day 4", (directory / "chatserver.log.2000_1_4").read_text())


class ClassicLineTests(unittest.TestCase):
    """The log files' fast formatter writes Twisted's classic lines, byte
    for byte, whatever the event."""

    def test_same_lines_as_twisted(self) -> None:
        import time

        from twisted.logger import LogLevel, formatEventAsClassicLogText
        from twisted.python.failure import Failure

        from chatserver.logs import _ClassicLines, _SecondsFormat

        try:
            raise ValueError("boom")
        except ValueError:
            failure = Failure()
        now = time.time()
        base = {"log_time": now, "log_namespace": "chatserver.connections", "log_level": LogLevel.info}
        events = [
            {"log_format": "connect {peer}", "peer": "127.0.0.1"},
            {"log_format": "{peer} logged in as {user}", "peer": "::1", "user": "ålice"},
            {"log_format": "two\nlines {x!r} {n:05d} {{literal}}", "x": "a\nb", "n": 42},
            {"log_format": "missing {nothing}"},  # Twisted's "Unable to format" text
            {"log_format": "positional {0}"},
            {"log_format": "called {f()}", "f": lambda: "yes"},
            {"log_format": "attribute {e.args[0]}", "e": ValueError("arg")},
            {"log_format": b"bytes {peer}", "peer": "x"},
            {"log_format": ""},
            {"log_format": None},
            {},
            {"log_format": "with a traceback", "log_failure": failure},
            {"log_format": "own system", "log_system": "sys-7"},
            {"log_format": "system not text", "log_system": 7},
            {"log_format": "no level", "log_level": None},
            {"log_format": "no time", "log_time": None},
            {"log_format": "nested {n:{w}} {d[key]} {s!a}", "n": 7, "w": 4, "d": {"key": "v"}, "s": "é"},
            {"log_format": "no namespace", "log_namespace": None},
        ]
        for extra in events:
            event = {**base, **extra}
            for key in ("log_level", "log_namespace"):
                if key in extra and extra[key] is None:
                    del event[key]
            expected = formatEventAsClassicLogText(dict(event), formatTime=_SecondsFormat())
            self.assertEqual(_ClassicLines()(event), expected, extra)

    def test_an_event_for_two_files_is_formatted_once(self) -> None:
        from chatserver.logs import _ClassicLines

        calls = []

        class Counting(dict):  # type: ignore[type-arg]
            def get(self, key, default=None):  # type: ignore[no-untyped-def]
                if key == "log_format":
                    calls.append(key)
                return super().get(key, default)

        lines = _ClassicLines()
        event = Counting(log_format="audit {user}", user="alice", log_time=0.0)
        first, second = lines(event), lines(event)
        self.assertEqual(first, second)
        self.assertEqual(len(calls), 1)
        self.assertIn("audit alice", lines(Counting(log_format="audit {user}", user="alice", log_time=0.0)))
        self.assertEqual(len(calls), 2)  # another event: formatted again
