"""SIGHUP to a real ``twistd chatserver`` with a changed configuration file:
what reloads is applied, and what needs a restart is named in one warning
line instead of being ignored without a word."""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from chatclient.session import ServerError
from tests.processes import chatserver_argv, spawn, stop_twistd
from tests.support import PASSWORD, open_session, until

CONFIG = """\
[server]
endpoint = tcp:0:interface=127.0.0.1
data_dir = data
log_dir = log
max_connections = {max_connections}
idle_timeout = {idle_timeout}
[log]
level = {level}
[limits]
messages_rate = {messages_rate}
[monitor]
enabled = no
"""


class ReloadTests(unittest.TestCase):
    def write(self, **values: object) -> None:
        settings = {"max_connections": 100, "idle_timeout": 300, "level": "info", "messages_rate": 5}
        settings.update(values)
        self.config.write_text(CONFIG.format(**settings))

    async def test_sighup_names_the_settings_that_need_a_restart(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        self.config = base / "chatserver.ini"
        self.write()
        server = spawn(
            self,
            "twistd",
            chatserver_argv("--config", str(self.config)),
            cwd=str(base),
        )
        await server.wait_for(r"ChatFactory starting on (\d+)")

        def restart_lines() -> list[str]:
            return [line for line in server.lines[1] if "restart" in line and "SIGHUP" in line]

        # Nothing changed: nothing to warn about.
        server.signal("HUP")
        await server.wait_for(r"SIGHUP: log files reopened")
        self.assertEqual(restart_lines(), [])

        self.write(max_connections=200, idle_timeout=60, level="debug", messages_rate=9)
        server.signal("HUP")
        line = (await server.wait_for(r"SIGHUP.*restart")).string
        self.assertIn("#warn]", line)
        self.assertIn("[server] max_connections", line)
        self.assertIn("[server] idle_timeout", line)
        # Those two are applied: not named.
        self.assertNotIn("level", line)
        self.assertNotIn("messages_rate", line)
        self.assertEqual(len(restart_lines()), 1)
        await server.wait_for(r"reloaded log level debug")

        # Still not applied at the next SIGHUP: still named.
        server.signal("HUP")
        await until(lambda: len(restart_lines()) == 2, timeout=10)
        self.assertEqual(await stop_twistd(server), 0)


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


REGISTRATION_CONFIG = """\
[server]
endpoint = tcp:0:interface=127.0.0.1
data_dir = data
log_dir = log
[accounts]
allow_registration = {mode}
password_hash_cost = 10
[monitor]
enabled = no
"""


class RegistrationReloadTests(unittest.TestCase):
    async def test_sighup_applies_allow_registration(self) -> None:
        """An operator closes registration to invitations when a wave of
        sign-ups starts, without a restart that would drop every client."""
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        config = base / "chatserver.ini"
        config.write_text(REGISTRATION_CONFIG.format(mode="yes"))
        server = spawn(self, "twistd", chatserver_argv("--config", str(config)), cwd=str(base))
        port = _Port(int((await server.wait_for(r"ChatFactory starting on (\d+)")).group(1)))
        early = await open_session(self, port)  # type: ignore[arg-type]
        self.assertEqual((await early.register("early", PASSWORD))["user"], "early")

        config.write_text(REGISTRATION_CONFIG.format(mode="invite"))
        server.signal("HUP")
        await server.wait_for(r"SIGHUP: .*allow_registration = invite")
        self.assertEqual([line for line in server.lines[1] if "restart" in line and "SIGHUP" in line], [])
        session = await open_session(self, port)  # type: ignore[arg-type]
        error = await self.assertFailure(session.register("late", PASSWORD), ServerError)
        self.assertEqual(error.code, "invite_required")
        # The connection that registered before is still there.
        await early.ping()

        config.write_text(REGISTRATION_CONFIG.format(mode="no"))
        server.signal("HUP")
        await server.wait_for(r"SIGHUP: .*allow_registration = no")
        error = await self.assertFailure(session.register("late", PASSWORD), ServerError)
        self.assertEqual(error.code, "registration_closed")
        await session.close()
        await early.close()
        self.assertEqual(await stop_twistd(server), 0)
