"""Worker processes: ``[server] workers = N`` (N > 1).

The main process binds the endpoint's port (with SO_REUSEPORT, without
listening: it only holds the port, an ephemeral one too) and starts N
workers, each a ``twistd chatserver`` of its own in worker mode
(``--worker-index I --worker-port P``).  Each binds its own socket on the
port with SO_REUSEPORT, listens, and hands it to its reactor
(``adoptStreamPort``): the kernel spreads new connections over the
workers by a hash of the addresses.  (One shared socket would let
whichever worker wakes first take a whole burst.)  The main
process accepts nothing and holds no database; the workers share
PostgreSQL and Redis as nodes do (docs/deployment.rst), so a client
reconnecting after its worker died lands on another and loses nothing.

The main process supervises them as it does the monitor child: a worker
that ends (a crash, SIGKILL) is logged with how it ended and started again
after a backoff (``RESTART_DELAYS``; back to the first after
``STABLE_SECONDS`` of running).  SIGHUP is passed on to every worker;
SIGTERM stops each (SIGTERM, then SIGKILL after ``stop_grace``) before the
main process exits.  Each worker logs into ``<log_dir>/worker-I/`` and
names itself ``<main's hub name>-wI`` on the hub.

Each worker reports its numbers on its fd 3 and is told everyone's on its
fd 4 (``worker_reports.py``): the pool keeps the latest report of each.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from chatserver.wire.safetext import log_text
from chatserver.worker_reports import MAX_REPORT, PICTURE_FD, REPORT_FD

log = Logger(namespace="chatserver.workers")

#: Seconds before starting a worker again after it ended, by how many times
#: in a row it ended soon after starting.
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker that ran this long counts as stable: its next restart is quick.
STABLE_SECONDS = 60.0


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.started = pool.reactor.seconds()
        self._partial = {1: b"", 2: b"", REPORT_FD: b""}
        #: Whether this run of the worker has had the monitor's history.
        self.told_history = False

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, rest = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = rest
        if fd == REPORT_FD:
            if len(rest) > MAX_REPORT:
                log.warn(
                    "worker {index} wrote a report over {max} bytes; ignored",
                    index=self.index,
                    max=MAX_REPORT,
                )
                self._partial[fd] = b""
            for line in lines:
                self.pool.reported(self.index, line)
            return
        # The worker's logs go to its files; what it prints (the
        # fingerprint banner, a start-up failure) is passed on, a line each.
        for line in lines:
            if line.strip():
                log.info(
                    "worker {index}: {line}",
                    index=self.index,
                    line=log_text(line.decode("utf-8", "replace"))[:500],
                )

    def processEnded(self, reason: Any) -> None:
        self.pool.ended(self, reason)


class WorkerPool(service.Service):
    name = "workers"

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: Callable[[int], list[str]],
        stop_grace: float = 10.0,
    ) -> None:
        """``argv(index)``: the command line of worker ``index`` (from 1)."""
        self.reactor = reactor
        self.count = count
        self._argv = argv
        self.stop_grace = stop_grace
        self.workers: dict[int, Any] = {}  # index -> IProcessTransport
        self._protocols: dict[int, _Worker] = {}
        self._quick_ends: dict[int, int] = {}
        self._pending: dict[int, Any] = {}  # index -> DelayedCall of a restart
        self._stopped: list[Deferred[None]] = []
        #: Worker restarts since the start, per worker (for the metrics).
        self.restarts_of: dict[int, int] = dict.fromkeys(range(1, count + 1), 0)
        #: index -> the worker's latest report (kept after it ended: its
        #: last numbers, until the next run reports)
        self.reports: dict[int, dict[str, Any]] = {}

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if not self.running:
            return
        worker = _Worker(self, index)
        argv = self._argv(index)
        transport = self.reactor.spawnProcess(
            worker,
            argv[0],
            argv,
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: "r", REPORT_FD: "r", PICTURE_FD: "w"},
        )
        self.workers[index] = transport
        self._protocols[index] = worker
        log.info("worker {index} started (pid {pid})", index=index, pid=transport.pid)

    def pids(self) -> dict[int, int]:
        return {i: t.pid for i, t in self.workers.items() if t.pid is not None}

    def reported(self, index: int, line: bytes) -> None:
        try:
            report = json.loads(line)
        except ValueError:
            report = None
        if not isinstance(report, dict) or report.get("index") != index:
            log.warn("worker {index} wrote a line that is no report; ignored", index=index)
            return
        self.reports[index] = report

    def states(self) -> list[dict[str, Any]]:
        """Every worker's state and latest report, by index."""
        return [
            {
                "index": index,
                "pid": self.workers[index].pid if index in self.workers else None,
                "up": index in self.workers,
                "restarts": self.restarts_of.get(index, 0),
                "report": self.reports.get(index),
            }
            for index in range(1, self.count + 1)
        ]

    def tell(self, picture: dict[str, Any], history: list[Any]) -> None:
        """Send ``picture`` to every worker; ``history`` (the monitor's) too
        to a worker that has not had it since it started."""
        line = _json_line(picture)
        for index, transport in list(self.workers.items()):
            worker = self._protocols.get(index)
            try:
                if worker is not None and not worker.told_history and history:
                    transport.writeToChild(PICTURE_FD, _json_line({**picture, "history": history}))
                    worker.told_history = True
                else:
                    transport.writeToChild(PICTURE_FD, line)
            except Exception:
                pass  # gone: its processEnded is on the way

    def ended(self, worker: _Worker, reason: Any) -> None:
        index = worker.index
        if self._protocols.get(index) is not worker:
            return
        del self._protocols[index]
        self.workers.pop(index, None)
        status = reason.value
        how = (
            f"killed by signal {status.signal}"
            if getattr(status, "signal", None)
            else f"exit status {getattr(status, 'exitCode', '?')}"
        )
        if not self.running:
            log.info("worker {index} stopped ({how})", index=index, how=how)
            if not self.workers:
                waiting, self._stopped = self._stopped, []
                for d in waiting:
                    d.callback(None)
            return
        ran = self.reactor.seconds() - worker.started
        quick = 0 if ran >= STABLE_SECONDS else self._quick_ends.get(index, 0) + 1
        self._quick_ends[index] = quick
        delay = RESTART_DELAYS[min(max(quick - 1, 0), len(RESTART_DELAYS) - 1)]
        self.restarts_of[index] = self.restarts_of.get(index, 0) + 1
        log.warn(
            "worker {index} ended ({how}) after {ran:.1f} s; starting it again in {delay} s",
            index=index,
            how=how,
            ran=ran,
            delay=delay,
        )
        self._pending[index] = self.reactor.callLater(delay, self._spawn, index)

    def signal_all(self, signum: int) -> None:
        for transport in list(self.workers.values()):
            try:
                transport.signalProcess(signum)
            except Exception:
                pass  # already gone: its processEnded is on the way

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        if not self.workers:
            return defer.succeed(None)
        done: Deferred[None] = Deferred()
        self._stopped.append(done)
        self.signal_all(signal.SIGTERM)

        def too_slow() -> None:
            if self.workers:
                log.warn("workers still running after {grace} s: killing them", grace=self.stop_grace)
                self.signal_all(signal.SIGKILL)

        timer = self.reactor.callLater(self.stop_grace, too_slow)
        done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return done


def _json_line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def worker_argv(options: Any, index: int, port: int) -> list[str]:
    """``twistd -n chatserver`` in worker mode, with the main process's own
    options (so a SIGHUP reload reads the same file)."""
    runner = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    # Its logs go to its own files (LogFiles); twistd's copy of them on
    # stdout would only be read and written again here.
    argv = [sys.executable, "-c", runner, "--nodaemon", "--pidfile=", f"--logfile={os.devnull}", "chatserver"]
    for name in ("config", "endpoint", "data-dir", "log-dir", "database", "hub"):
        value = options.get(name)
        if value is not None:
            argv += [f"--{name}", str(value)]
    return argv + ["--workers", "1", "--worker-index", str(index), "--worker-port", str(port)]
