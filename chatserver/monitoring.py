"""The server's side of the monitor child (``chatserver.monitor``).

``Monitoring`` starts the child with ``reactor.spawnProcess``, reads its
JSON lines, keeps the latest valid sample and a bounded history (an hour at
the configured interval), and restarts the child with backoff whenever it
ends, logging why.  Its own health (up, restarts, age of the last sample)
is part of what it reports.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
from typing import Any

from twisted.application import service
from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from chatserver import monitor

log = Logger(namespace="chatserver.monitoring")

MAX_LINE = 1024 * 1024
HISTORY_SECONDS = 3600
BACKOFF_MAX = 30.0


def valid_sample(event: Any) -> bool:
    """The fields the server relies on are there, with the right types."""
    if not isinstance(event, dict) or event.get("type") != "sample" or event.get("format") != monitor.FORMAT:
        return False
    tree, system = event.get("tree"), event.get("system")
    return (
        isinstance(event.get("ts"), (int, float))
        and isinstance(tree, dict)
        and all(isinstance(tree.get(k), (int, float)) for k in ("cpu_percent", "rss_bytes", "threads", "fds"))
        and isinstance(system, dict)
        and isinstance(system.get("cpu_percent"), (int, float))
        and isinstance(event.get("tcp"), dict)
        and isinstance(event.get("processes"), list)
    )


class _MonitorProcess(protocol.ProcessProtocol):
    def __init__(self, owner: Monitoring) -> None:
        self.owner = owner
        self._buffer = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            log.warn("monitor wrote a line over {max} bytes; restarting it", max=MAX_LINE)
            self._buffer = b""
            assert self.transport is not None  # data came from it
            self.transport.signalProcess("KILL")
            return
        for line in lines:
            self.owner.line_received(line)

    def errReceived(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace").strip()
        if text:
            log.warn("monitor: {text}", text=text[:500])

    def processEnded(self, reason: Any) -> None:
        self.owner.child_ended(reason.value)
        self.ended.callback(None)


class Monitoring(service.Service):
    name = "monitoring"

    def __init__(self, reactor: Any, interval: float, pid: int | None = None) -> None:
        self.reactor = reactor
        self.interval = interval
        self.pid = pid if pid is not None else os.getpid()
        self.latest: dict[str, Any] | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=math.ceil(HISTORY_SECONDS / interval) + 1
        )
        self.restarts = 0
        self.bad_lines = 0
        self._child: _MonitorProcess | None = None
        self._failures = 0  # ends in a row without a sample: the backoff
        self._restart_call: Any = None
        self._last_sample_at: float | None = None

    # --- lifecycle --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._spawn()

    def _spawn(self) -> None:
        self._restart_call = None
        child = _MonitorProcess(self)
        argv = [
            sys.executable,
            "-m",
            "chatserver.monitor",
            "--pid",
            str(self.pid),
            "--interval",
            str(self.interval),
        ]
        self.reactor.spawnProcess(child, sys.executable, argv, env=dict(os.environ))
        self._child = child

    def child_ended(self, reason: Any) -> None:
        self._child = None
        if not self.running:
            return
        if isinstance(reason, error.ProcessTerminated):
            why = f"killed by signal {reason.signal}" if reason.signal else f"exit status {reason.exitCode}"
        else:
            why = "exit status 0"
        delay = min(BACKOFF_MAX, 0.5 * 2**self._failures)
        self._failures += 1
        self.restarts += 1
        log.warn("monitor child ended ({why}); restarting it in {delay:.1f} s", why=why, delay=delay)
        self._restart_call = self.reactor.callLater(delay, self._spawn)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        child = self._child
        if child is None:
            return succeed(None)
        try:
            assert child.transport is not None  # a child is kept only once spawned
            child.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            pass
        return child.ended

    # --- samples ---------------------------------------------------------------------

    def line_received(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not valid_sample(event):
            self.bad_lines += 1
            log.warn("monitor wrote an invalid sample ({count} so far); ignored", count=self.bad_lines)
            return
        self._failures = 0
        self._last_sample_at = self.reactor.seconds()
        self.latest = event
        self.history.append(event)

    def health(self) -> dict[str, Any]:
        age = None if self._last_sample_at is None else self.reactor.seconds() - self._last_sample_at
        return {
            "up": self._child is not None,
            "pid": self._child.transport.pid if self._child is not None and self._child.transport else None,
            "restarts": self.restarts,
            "last_sample_age": age,
            "bad_lines": self.bad_lines,
            "interval": self.interval,
        }


def health_of(monitoring: Monitoring | None) -> dict[str, Any]:
    """The monitor child's health, or what a turned-off monitor says."""
    return monitoring.health() if monitoring is not None else {"up": False, "enabled": False}
