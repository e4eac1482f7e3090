"""The systemd unit: hardened as promised, and accepted by systemd itself."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from twisted.internet import task
from twisted.trial import unittest

from chatserver.config import load_settings
from tests.support import PYTHON, ROOT

UNIT = ROOT / "etc" / "systemd" / "chatserver.service"


def directives(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found[key.strip()] = value.strip()
    return found


class UnitTests(unittest.TestCase):
    def test_hardening(self) -> None:
        found = directives(UNIT.read_text())
        self.assertEqual(found["User"], "chatserver")
        self.assertEqual(found["NoNewPrivileges"], "yes")
        self.assertEqual(found["ProtectSystem"], "strict")
        self.assertEqual(found["ReadWritePaths"].split(), ["/var/lib/chatserver", "/var/log/chatserver"])
        self.assertEqual(found["PrivateTmp"], "yes")
        self.assertEqual(found["RestrictAddressFamilies"].split(), ["AF_INET", "AF_INET6", "AF_UNIX"])
        self.assertEqual(found["CapabilityBoundingSet"], "")
        self.assertEqual(found["Restart"], "on-failure")
        self.assertIn("--nodaemon", found["ExecStart"])
        self.assertEqual(found["ExecReload"], "/bin/kill -HUP $MAINPID")  # reopen logs, reload

    def test_directories_come_from_the_config_file(self) -> None:
        """The unit gives --config only, so that chatserver-admin --config
        finds the server's database; the config file as README.rst installs
        it names the directories the unit may write."""
        found = directives(UNIT.read_text())
        argv = found["ExecStart"].split()
        self.assertNotIn("--data-dir", argv)
        self.assertNotIn("--log-dir", argv)
        config = argv[argv.index("--config") + 1]
        self.assertEqual(config, "/etc/chatserver/chatserver.ini")
        installed = Path(self.mktemp())
        installed.write_text(install_config((ROOT / "etc" / "chatserver.ini").read_text()))
        settings = load_settings(installed)
        self.assertEqual([settings.data_dir, settings.log_dir], found["ReadWritePaths"].split())
        self.assertEqual(found["WorkingDirectory"], settings.data_dir)


def install_config(text: str) -> str:
    """etc/chatserver.ini after the README's install step (its sed line)."""
    readme = (ROOT / "README.rst").read_text()
    commands = [line.strip() for line in readme.splitlines() if "/etc/chatserver/chatserver.ini" in line]
    seds = [c for c in commands if c.startswith("sed ")]
    assert len(seds) == 1, commands
    argv = shlex.split(seds[0].split(">")[0])
    result = subprocess.run(argv[:-1], input=text, capture_output=True, text=True, check=True)
    return result.stdout

    def test_systemd_analyze_verify_accepts_it(self) -> None:
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise unittest.SkipTest("systemd-analyze is not installed here")
        # The unit names the installed path; point it at this checkout's
        # twistd so that verify can check the command exists.
        twistd = Path(PYTHON).with_name("twistd")
        unit_dir = Path(self.mktemp())
        unit_dir.mkdir()
        unit = unit_dir / "chatserver.service"
        unit.write_text(UNIT.read_text().replace("/opt/chatserver/.venv/bin/twistd", str(twistd)))
        result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        complaints = [line for line in (result.stdout + result.stderr).splitlines() if str(unit) in line]
        self.assertEqual((result.returncode, complaints), (0, []), result.stderr)


class JournalTests(unittest.TestCase):
    async def test_the_units_logger_gives_the_journal_warnings_only(self) -> None:
        """Run as the unit runs it (its --logger): stdout has the key's
        fingerprint and the warnings, not the info lines, which are in the
        log files."""
        from twisted.internet import reactor

        from chatclient.session import connect
        from tests.processes import LOOPBACK, spawn, stop_twistd, twistd_argv

        found = directives(UNIT.read_text())
        argv = found["ExecStart"].split()
        logger = [a for a in argv if a.startswith("--logger=")]
        self.assertEqual(logger, ["--logger=chatserver.logs.console"])
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        server = spawn(
            self,
            "twistd",
            twistd_argv()
            + ["--nodaemon", "--pidfile=", *logger, "chatserver", *LOOPBACK]
            + ["--data-dir", str(base / "data"), "--log-dir", str(base / "log")],
            cwd=str(base),
        )
        await server.wait_for(r"fingerprint (SHA256:\S+)")
        log_file = base / "log" / "chatserver.log"
        for _ in range(500):  # bounded: the port is in the log file
            text = log_file.read_text() if log_file.exists() else ""
            match = re.search(r"ChatFactory starting on (\d+)", text)
            if match:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert match is not None, "no port in chatserver.log"
        port = int(match.group(1))
        session = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fp: True)
        await session.register("alice", "correct horse battery")
        await session.close()
        # A warning: a peer that breaks the protocol.
        bad = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fp: True)
        bad.protocol.transport.write(b"!!!!\n")
        await server.wait_for(r"disconnecting")
        self.assertEqual(await stop_twistd(server), 0)
        self.assertNotIn("logged in as alice", server.output())
        self.assertIn("disconnecting", server.output())
        self.assertIn("logged in as alice", (base / "log" / "connections.log").read_text())
