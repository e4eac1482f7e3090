"""Log files: ``chatserver.log``, ``connections.log`` and ``audit.log``,
size-rotated.

Everything goes through ``twisted.logger``.  Events in the
``chatserver.connections`` namespace go to ``connections.log``; all others at
or above the configured level (per namespace if configured) go to
``chatserver.log``; security events (``chatserver.audit``: logins, failures,
registrations, moderation, server key creation) also go to ``audit.log``.  Log calls in this
project never pass secrets or message bodies as fields, and the formatted
files carry only the format string's fields, so nothing else can leak in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.python.logfile import DailyLogFile, LogFile

CONNECTIONS_NAMESPACE = "chatserver.connections"
AUDIT_NAMESPACE = "chatserver.audit"


class _KeptDailyLogFile(DailyLogFile):
    """Rotated at the first write after midnight (to NAME.YYYY_M_D), and
    only the newest ``keep`` old files are kept."""

    def __init__(self, name: str, directory: str, keep: int, defaultMode: int) -> None:
        self.keep = keep
        super().__init__(name, directory, defaultMode=defaultMode)

    def rotate(self) -> None:
        super().rotate()
        prefix = os.path.basename(self.path) + "."
        old = sorted(
            (f for f in os.listdir(self.directory) if f.startswith(prefix)),
            key=lambda f: os.stat(os.path.join(self.directory, f)).st_mtime,
        )
        for name in old[: max(0, len(old) - self.keep)]:
            os.remove(os.path.join(self.directory, name))


class _SecondsFormat:
    """``twisted.logger.formatTime`` remembered for the current second.

    The timestamp of a log line has whole seconds, and working it out
    (the local UTC offset, then strftime) took half of the ~75 µs a line
    cost (measured): a busy server writes several lines per connection."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second: int | None = None
        self.text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when // 1)
        if second != self.second:
            self.text = formatTime(second)
            self.second = second
        return self.text


def textFileLogObserver(outFile: Any) -> FileLogObserver:
    """Twisted's text observer (the same lines), with the timestamp
    remembered per second."""
    format_time = _SecondsFormat()
    return FileLogObserver(outFile, lambda event: formatEventAsClassicLogText(event, formatTime=format_time))


def console() -> FilteringLogObserver:
    """twistd's own observer for a service (``twistd --logger
    chatserver.logs.console``): warnings and worse on stdout, for the
    journal.  The log files have everything at the configured level; the
    journal keeps what an operator must see (start-up failures, a lost
    database), without a second copy of every connection's lines, which
    cost as much server time again (measured, issue 13)."""
    import sys

    return FilteringLogObserver(
        textFileLogObserver(sys.stdout), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
    )


def _namespace_is(namespace: str, wanted: bool) -> Any:
    def predicate(event: dict[str, Any]) -> PredicateResult:
        matches = event.get("log_namespace") == namespace
        return PredicateResult.maybe if matches == wanted else PredicateResult.no

    return predicate


class LogFiles(Service):
    """Adds the file observers while the service runs."""

    name = "log-files"

    def __init__(
        self,
        directory: Path,
        level: str,
        rotate_bytes: int,
        rotate_count: int,
        levels: tuple[tuple[str, str], ...] = (),
        json: bool = False,
        daily: bool = False,
    ) -> None:
        self.directory = directory
        self.daily = daily
        self.levels = levels
        self.json = json
        self.level = LogLevel.levelWithName(level)
        self.rotate_bytes = rotate_bytes
        self.rotate_count = rotate_count
        self._observers: list[Any] = []
        self._files: list[Any] = []
        self._level_filter = LogLevelFilterPredicate(defaultLogLevel=self.level)
        self._set_namespace_levels(levels)

    def _open(self, name: str) -> LogFile:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        logfile: LogFile | DailyLogFile
        if self.daily:
            logfile = _KeptDailyLogFile(name, str(self.directory), self.rotate_count, defaultMode=0o640)
        else:
            logfile = LogFile(
                name,
                str(self.directory),
                rotateLength=self.rotate_bytes,
                maxRotatedFiles=self.rotate_count,
                defaultMode=0o640,
            )
        os.chmod(logfile.path, 0o640)  # an existing file keeps its mode otherwise
        self._files.append(logfile)
        return logfile

    def startService(self) -> None:
        super().startService()
        level = self._level_filter
        writer = jsonFileLogObserver if self.json else textFileLogObserver
        main = FilteringLogObserver(
            writer(self._open("chatserver.log")),
            [_namespace_is(CONNECTIONS_NAMESPACE, False), level],
        )
        connections = FilteringLogObserver(
            writer(self._open("connections.log")),
            [_namespace_is(CONNECTIONS_NAMESPACE, True), level],
        )
        audit = FilteringLogObserver(writer(self._open("audit.log")), [_namespace_is(AUDIT_NAMESPACE, True)])
        self._observers = [main, connections, audit]
        for observer in self._observers:
            globalLogPublisher.addObserver(observer)

    def reopen(self) -> None:
        """Reopen the files (after logrotate moved them away: SIGHUP)."""
        for logfile in self._files:
            logfile.reopen()
            os.chmod(logfile.path, 0o640)

    def set_level(self, level: str, levels: tuple[tuple[str, str], ...] = ()) -> None:
        self.level = LogLevel.levelWithName(level)
        self._level_filter.clearLogLevels()
        self._level_filter.defaultLogLevel = self.level
        self._set_namespace_levels(levels)

    def _set_namespace_levels(self, levels: tuple[tuple[str, str], ...]) -> None:
        for namespace, name in levels:
            self._level_filter.setLogLevelForNamespace(namespace, LogLevel.levelWithName(name))

    def stopService(self) -> None:
        for observer in self._observers:
            globalLogPublisher.removeObserver(observer)
        for logfile in self._files:
            logfile.close()
        self._observers = []
        self._files = []
        super().stopService()
