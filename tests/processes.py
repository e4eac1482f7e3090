"""Child processes for end-to-end tests: twistd, the CLI, tcpdump.

Each child is started with ``reactor.spawnProcess`` and read line by line,
so a test waits for what a process prints instead of sleeping.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, error, protocol, reactor

from tests.support import PYTHON, python_env

TIMEOUT = 30.0


class LineProcess(protocol.ProcessProtocol):
    """A child whose stdout and stderr lines are kept and can be awaited."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: dict[int, list[str]] = {1: [], 2: []}
        self._partial = {1: b"", 2: b""}
        self._waiters: list[tuple[int, Callable[[str], Any], defer.Deferred[Any]]] = []
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.exit_code: int | None = None

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._partial:
            return
        buffered = self._partial[fd] + data
        *complete, self._partial[fd] = buffered.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines[fd].append(line)
            for waiter in list(self._waiters):
                wanted_fd, match, d = waiter
                if wanted_fd == fd:
                    found = match(line)
                    if found:
                        self._waiters.remove(waiter)
                        d.callback(found)

    def wait_for(self, pattern: str, fd: int = 1, timeout: float = TIMEOUT) -> defer.Deferred[Any]:
        """Fires with the regex match of the first line matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.lines[fd]:
            found = regex.search(line)
            if found:
                return defer.succeed(found)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append((fd, regex.search, d))
        return d.addTimeout(timeout, reactor)

    def write_line(self, text: str) -> None:
        self.transport.write(text.encode("utf-8") + b"\n")

    def close_stdin(self) -> None:
        self.transport.closeStdin()

    def processEnded(self, reason: Any) -> None:
        # A death by signal N is reported as -N, as subprocess does.
        value = reason.value
        self.exit_code = value.exitCode if value.exitCode is not None else -(value.signal or 1)
        for _, _, d in self._waiters:
            d.errback(
                AssertionError(
                    f"{self.name} ended (exit {self.exit_code}) while a line was awaited;\n"
                    f"stdout: {self.output()}\nstderr: {self.errors()}"
                )
            )
        self._waiters = []
        self.ended.callback(self.exit_code)

    def output(self) -> str:
        return "\n".join(self.lines[1])

    def errors(self) -> str:
        return "\n".join(self.lines[2])

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


def spawn(
    testcase: Any, name: str, argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None
) -> LineProcess:
    """Start ``argv`` (with ``env`` added to its environment); it is killed
    at cleanup if it is still running."""
    child = LineProcess(name)
    reactor.spawnProcess(child, argv[0], argv, env={**python_env(), **(env or {})}, path=cwd)

    def reap() -> Any:
        if child.exit_code is None:
            child.signal("KILL")
        return child.ended.addTimeout(TIMEOUT, reactor)

    testcase.addCleanup(reap)
    return child


def twistd_argv() -> list[str]:
    script = Path(PYTHON).parent / "twistd"
    if script.exists():
        return [PYTHON, str(script)]
    return [PYTHON, "-c", "from twisted.scripts.twistd import run; run()"]


#: The server's options for an ephemeral loopback port.
LOOPBACK = ("--endpoint", "tcp:0:interface=127.0.0.1")


def chatserver_argv(*options: str) -> list[str]:
    """``twistd --nodaemon chatserver OPTIONS``, as a command line."""
    return twistd_argv() + ["--nodaemon", "--pidfile=", "chatserver", *options]


async def start_twistd(testcase: Any, base: Path, *extra: str) -> tuple[LineProcess, int, str]:
    """``twistd -n chatserver`` on an ephemeral loopback port; returns the
    process, its port and the fingerprint it printed."""
    argv = chatserver_argv(
        *LOOPBACK, "--data-dir", str(base / "data"), "--log-dir", str(base / "log"), *extra
    )
    server = spawn(testcase, "twistd", argv, cwd=str(base))
    fingerprint = (await server.wait_for(r"fingerprint (SHA256:\S+)")).group(1)
    port = int((await server.wait_for(r"ChatFactory starting on (\d+)")).group(1))
    return server, port, fingerprint


async def stop_twistd(server: LineProcess) -> int:
    """SIGTERM; returns the exit status (0: a clean stop, see
    ``chatserver.tap.exit_zero_on_sigterm``)."""
    server.signal("TERM")
    return await server.ended.addTimeout(TIMEOUT, reactor)


def cli_argv(testcase: Any, port: int, user: str, *extra: str) -> list[str]:
    """The command line of a terminal client.  Its devices live in the
    test's directory (one for all its clients, so a user's second client
    is the same device), under a passphrase (there is no keyring here)."""
    devices = getattr(testcase, "_cli_devices", None)
    if devices is None:
        devices = testcase._cli_devices = Path(testcase.mktemp()).resolve()
        devices.mkdir(parents=True)
        (devices / "passphrase").write_text("a store passphrase\n")
    e2e = (
        []
        if "--no-e2e" in extra
        else ["--device-dir", str(devices), "--store-passphrase-file", str(devices / "passphrase")]
    )
    return [
        *(PYTHON, "-m", "chatclient.cli", "--host", "127.0.0.1", "--port", str(port), "--user", user),
        *e2e,
        *extra,
    ]


def cli(testcase: Any, name: str, port: int, user: str, *extra: str) -> LineProcess:
    """A terminal client in a pipe (see ``cli_argv``)."""
    return spawn(testcase, name, cli_argv(testcase, port, user, *extra))


def admin_tool(data_dir: Path, *args: str, database: str | None = None) -> subprocess.CompletedProcess[str]:
    """``chatserver-admin --data-dir DATA_DIR [--database URL] ARGS``, run
    to its end (``database``: the server's, when it is not SQLite's)."""
    extra = ["--database", database] if database else []
    return subprocess.run(
        [PYTHON, "-m", "chatserver.admin", "--data-dir", str(data_dir), *extra, *args],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


__all__ = ["LineProcess", "admin_tool", "cli", "signal", "spawn", "start_twistd", "stop_twistd", "os"]
