"""Log files: ``chatserver.log`` and ``connections.log``, size-rotated.

Everything goes through ``twisted.logger``.  Events in the
``chatserver.connections`` namespace go to ``connections.log``; all others at
or above the configured level go to ``chatserver.log``.  Log calls in this
project never pass secrets or message bodies as fields, and the formatted
files carry only the format string's fields, so nothing else can leak in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

CONNECTIONS_NAMESPACE = "chatserver.connections"


def _namespace_is(namespace: str, wanted: bool) -> Any:
    def predicate(event: dict[str, Any]) -> PredicateResult:
        matches = event.get("log_namespace") == namespace
        return PredicateResult.maybe if matches == wanted else PredicateResult.no

    return predicate


class LogFiles(Service):
    """Adds the file observers while the service runs."""

    name = "log-files"

    def __init__(self, directory: Path, level: str, rotate_bytes: int, rotate_count: int) -> None:
        self.directory = directory
        self.level = LogLevel.levelWithName(level)
        self.rotate_bytes = rotate_bytes
        self.rotate_count = rotate_count
        self._observers: list[Any] = []
        self._files: list[LogFile] = []
        self._level_filter = LogLevelFilterPredicate(defaultLogLevel=self.level)

    def _open(self, name: str) -> LogFile:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
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
        main = FilteringLogObserver(
            textFileLogObserver(self._open("chatserver.log")),
            [_namespace_is(CONNECTIONS_NAMESPACE, False), level],
        )
        connections = FilteringLogObserver(
            textFileLogObserver(self._open("connections.log")),
            [_namespace_is(CONNECTIONS_NAMESPACE, True), level],
        )
        self._observers = [main, connections]
        for observer in self._observers:
            globalLogPublisher.addObserver(observer)

    def reopen(self) -> None:
        """Reopen the files (after logrotate moved them away: SIGHUP)."""
        for logfile in self._files:
            logfile.reopen()
            os.chmod(logfile.path, 0o640)

    def set_level(self, level: str) -> None:
        self.level = LogLevel.levelWithName(level)
        self._level_filter.clearLogLevels()
        self._level_filter.defaultLogLevel = self.level

    def stopService(self) -> None:
        for observer in self._observers:
            globalLogPublisher.removeObserver(observer)
        for logfile in self._files:
            logfile.close()
        self._observers = []
        self._files = []
        super().stopService()
