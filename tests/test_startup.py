"""Start-up failures of a real ``twistd chatserver``: one clear line and a
non-zero exit status (so that systemd's ``Restart=on-failure`` fires), never
a traceback; and Ctrl-C under ``make run`` ends quietly."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import protocol, reactor, task
from twisted.trial import unittest

from tests.processes import LOOPBACK, TIMEOUT, LineProcess, chatserver_argv, spawn
from tests.support import PYTHON, until


class StartupFailureTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()

    async def run_twistd(self, *args: str) -> LineProcess:
        """``twistd -n chatserver ARGS`` (data and logs under the test's
        directory unless ARGS say otherwise); waits for it to end."""
        defaults = {
            "--endpoint": "tcp:0:interface=127.0.0.1",
            "--data-dir": str(self.base / "data"),
            "--log-dir": str(self.base / "log"),
        }
        argv = list(args)
        for option, value in defaults.items():
            if option not in argv:
                argv += [option, value]
        child = spawn(self, "twistd", chatserver_argv(*argv))
        child.exit_code = await child.ended.addTimeout(TIMEOUT, reactor)
        return child

    def assertOneLineFailure(self, child: LineProcess, *fragments: str) -> str:
        """Exit status non-zero; no traceback; exactly one line of error
        level that contains every fragment; returns it."""
        everything = child.output() + "\n" + child.errors()
        self.assertNotEqual(child.exit_code, 0, everything)
        self.assertNotIn("Traceback", everything)
        self.assertNotIn("Usage:", everything)
        candidates = [
            line
            for line in everything.splitlines()
            if line.startswith("chatserver:") or "#critical]" in line or "#error]" in line
        ]
        failures = [line for line in candidates if all(f in line for f in fragments)]
        self.assertEqual(len(failures), 1, everything)
        logged = [line for line in candidates if "#critical]" in line or "#error]" in line]
        self.assertEqual(logged, [line for line in failures if line in logged], everything)
        return failures[0]

    async def test_an_unreachable_postgresql_database_is_one_line(self) -> None:
        missing = self.base.resolve() / "no-such-socket-dir"
        child = await self.run_twistd("--database", f"postgresql:///chat?host={missing}&user=chat")
        line = self.assertOneLineFailure(child, "cannot use database", str(missing))
        self.assertNotIn("password", line)
        # A host name that cannot be one is one line too, not a traceback.
        child = await self.run_twistd("--database", "postgresql:///chat?host=" + "x" * 70)
        self.assertOneLineFailure(child, "cannot use database")

    async def test_a_password_in_the_database_url_is_refused_without_echoing_it(self) -> None:
        child = await self.run_twistd("--database", "postgresql://chat:hunter2@127.0.0.1/chat")
        self.assertOneLineFailure(child, "[store] database", "password_file")
        self.assertNotIn("hunter2", child.output() + child.errors())

    async def test_busy_port(self) -> None:
        busy = reactor.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        child = await self.run_twistd("--endpoint", f"tcp:{port}:interface=127.0.0.1")
        self.assertOneLineFailure(child, "cannot listen", str(port), "address already in use")

    async def test_bad_port(self) -> None:
        child = await self.run_twistd("--endpoint", "tcp:70000:interface=127.0.0.1")
        self.assertOneLineFailure(child, "70000", "port")

    async def test_address_not_on_this_host(self) -> None:
        # 192.0.2.0/24 is reserved for documentation: never a local address.
        child = await self.run_twistd("--endpoint", "tcp:0:interface=192.0.2.1")
        self.assertOneLineFailure(child, "cannot listen", "192.0.2.1")

    async def test_typo_in_the_endpoint_string(self) -> None:
        child = await self.run_twistd("--endpoint", "tcp:0:interfce=127.0.0.1")
        line = self.assertOneLineFailure(child, "interfce", "endpoint")
        self.assertNotIn("_parseTCP", line)

    async def test_typo_in_the_endpoint_in_the_config_file(self) -> None:
        config = self.base / "chatserver.ini"
        config.write_text("[server]\nendpoint = tcp:0:interfce=127.0.0.1\n")
        child = await self.run_twistd("--config", str(config), "--endpoint", "tcp:0:interface=127.0.0.1")
        # The command line overrides the file, but the file is wrong all
        # the same: it is refused rather than half used.
        self.assertOneLineFailure(child, "interfce", str(config))

    async def test_data_directory_that_cannot_be_made(self) -> None:
        # Tests run as root, whom permissions do not stop; a directory
        # under a regular file cannot exist for anyone.
        blocker = self.base / "a-file"
        blocker.write_text("not a directory\n")
        child = await self.run_twistd("--data-dir", str(blocker / "data"))
        self.assertOneLineFailure(child, "data directory", str(blocker / "data"))
        child = await self.run_twistd("--data-dir", str(blocker))
        self.assertOneLineFailure(child, "data directory", str(blocker))

    async def test_log_directory_that_cannot_be_made(self) -> None:
        blocker = self.base / "a-file"
        blocker.write_text("not a directory\n")
        child = await self.run_twistd("--log-dir", str(blocker / "log"))
        self.assertOneLineFailure(child, "log directory", str(blocker / "log"))
        child = await self.run_twistd("--log-dir", str(blocker))
        self.assertOneLineFailure(child, "log directory", str(blocker))

    async def test_busy_metrics_port(self) -> None:
        busy = reactor.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        config = self.base / "chatserver.ini"
        config.write_text(f"[metrics]\nenabled = yes\nendpoint = tcp:{port}:interface=127.0.0.1\n")
        child = await self.run_twistd("--config", str(config))
        self.assertOneLineFailure(child, "cannot listen", str(port), "address already in use")


def _in_new_process_group() -> list[str]:
    """A prefix that runs the command as the leader of its own process group,
    as a shell does for a foreground job, so that the test can signal the
    whole group like Ctrl-C does without signalling itself."""
    return [PYTHON, "-c", "import os, sys; os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[1:])"]


class InterruptTests(unittest.TestCase):
    async def test_ctrl_c_under_make_run_shows_no_traceback(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        # The command of `make run` (monitor child included, the default),
        # run in a scratch directory, on a free port.
        argv = chatserver_argv(*LOOPBACK)
        child = spawn(self, "make run", _in_new_process_group() + argv, cwd=str(base))
        await child.wait_for(r"ChatFactory starting on (\d+)")
        pid = child.transport.pid

        def monitor() -> Any:
            try:
                kids = psutil.Process(pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return None
            found = [k for k in kids if "chatserver.monitor" in " ".join(k.cmdline())]
            return found[0] if found else None

        await until(monitor, timeout=TIMEOUT)
        # Past the monitor's imports, into its sampling loop.
        await task.deferLater(reactor, 1.0, lambda: None)
        # The monitor's share of Ctrl-C first, alone: whether its traceback
        # would reach the server's log before the server itself is gone is
        # a race, and this way it is not.
        monitor().send_signal(signal.SIGINT)
        await child.wait_for(r"monitor child ended")
        self.assertNotIn("KeyboardInterrupt", child.output() + child.errors())
        # Now Ctrl-C proper: the whole process group.
        os.killpg(pid, signal.SIGINT)
        code = await child.ended.addTimeout(TIMEOUT, reactor)
        everything = child.output() + "\n" + child.errors()
        self.assertNotIn("Traceback", everything)
        self.assertNotIn("KeyboardInterrupt", everything)
        # A clean shutdown, not a death by the signal's default action.
        self.assertIn("Main loop terminated", everything)
        # twistd ends by the signal it got, as a program interrupted
        # should (the shell then reports 130); SIGTERM is the one that
        # exits 0, see chatserver.tap.install_signal_handlers.
        self.assertIn(code, (0, -signal.SIGINT), everything)
