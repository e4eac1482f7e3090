"""The systemd unit: hardened as promised, and accepted by systemd itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from twisted.internet import task
from twisted.trial import unittest

from chatserver.config import load_settings
from tests.support import PYTHON, ROOT, python_env

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
        """The unit gives --config only, so that chatserver-admin finds the
        server's database; the config file as README.rst installs it (with
        write-config) names the directories the unit may write."""
        found = directives(UNIT.read_text())
        argv = found["ExecStart"].split()
        self.assertNotIn("--data-dir", argv)
        self.assertNotIn("--log-dir", argv)
        self.assertEqual(argv[argv.index("--config") + 1], "/etc/chatserver/chatserver.ini")
        readme = (ROOT / "README.rst").read_text()
        self.assertIn(".venv/bin/chatserver-admin write-config /etc/chatserver\n", readme)
        # The README's step, into a directory of the test's instead.
        out = Path(self.mktemp()).resolve()
        done = subprocess.run(
            [PYTHON, "-m", "chatserver.admin", "write-config", str(out)],
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        settings = load_settings(out / "chatserver.ini")
        written = directives((out / "chatserver.service").read_text())
        for unit in (found, written):
            self.assertEqual([settings.data_dir, settings.log_dir], unit["ReadWritePaths"].split())
            self.assertEqual(unit["WorkingDirectory"], settings.data_dir)
        written_argv = written["ExecStart"].split()
        self.assertEqual(written_argv[written_argv.index("--config") + 1], str(out / "chatserver.ini"))

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
