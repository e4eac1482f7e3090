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
from typing import Any, Callable

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


class _Appending:
    """A log file written with O_APPEND: every line lands at the end of
    the file as it is now, whoever else writes to it (chatserver-admin's
    audit lines, a logrotate ``copytruncate``).  Twisted's own files
    write at their own offset, and would overwrite what another process
    appended."""

    path: str
    _file: Any

    def _openFile(self) -> None:
        super()._openFile()  # type: ignore[misc]  # LogFile's, then
        self._file.close()
        self._file = open(self.path, "ab", 0)  # noqa: SIM115 (closed by LogFile.close)


class _AppendingLogFile(_Appending, LogFile):
    pass


class _KeptDailyLogFile(_Appending, DailyLogFile):
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
    cost (measured): a busy server writes several lines per connection.
    The second and its text are one tuple: a thread that logs sees both
    of one second (threads may log too)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[int | None, str] = (None, "-")

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when // 1)
        last = self._last
        if second != last[0]:
            last = self._last = (second, formatTime(second))
        return last[1]


class _ClassicLines:
    """Twisted's classic text line for an event (``formatEventAsClassicLogText``,
    the same bytes), made faster for the lines a busy server writes.

    Twisted formats every event with ``string.Formatter`` over a mapping
    that can call values (``{f()}``); a plain ``str.format_map`` does the
    same for a format without calls in a fraction of the time.  Anything
    else (a traceback, a call, a flattened event, a format that fails)
    takes Twisted's own path.  The last event's line is kept: an audit
    line goes to two files."""

    __slots__ = ("format_time", "_last")

    def __init__(self) -> None:
        self.format_time = _SecondsFormat()
        #: (event, its line), one tuple: a thread never pairs another
        #: thread's event with its own line.
        self._last: tuple[Any, str | None] = (None, None)

    def __call__(self, event: dict[str, Any]) -> str | None:
        last = self._last
        if event is last[0]:
            return last[1]
        line = self._format(event)
        self._last = (event, line)
        return line

    def _format(self, event: dict[str, Any]) -> str | None:
        fmt = event.get("log_format")
        if type(fmt) is not str or "()" in fmt or "log_failure" in event or "log_flattened" in event:
            return formatEventAsClassicLogText(event, formatTime=self.format_time)
        try:
            text = fmt.format_map(event)
        except BaseException:  # as Twisted's formatting: a log line never raises
            return formatEventAsClassicLogText(event, formatTime=self.format_time)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        elif type(system) is not str:
            return formatEventAsClassicLogText(event, formatTime=self.format_time)
        line = f"{self.format_time(event.get('log_time'))} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"


def textFileLogObserver(outFile: Any, lines: _ClassicLines | None = None) -> FileLogObserver:
    """Twisted's text observer (the same lines), faster (see _ClassicLines)."""
    return FileLogObserver(outFile, lines if lines is not None else _ClassicLines())


class _FileRouter:
    """One observer for the three files: the level check and the
    namespace test once per event, where three filtering observers made
    them three times (measured: logging was a sixth of a resumed login's
    server time)."""

    def __init__(self, level: LogLevelFilterPredicate, main: Any, connections: Any, audit: Any) -> None:
        self.level = level
        self.main = main
        self.connections = connections
        self.audit = audit

    def __call__(self, event: dict[str, Any]) -> None:
        namespace = event.get("log_namespace")
        if namespace == AUDIT_NAMESPACE:
            self.audit(event)  # every audit event, whatever the level
        if self.level(event) is PredicateResult.no:
            return
        if namespace == CONNECTIONS_NAMESPACE:
            self.connections(event)
        else:
            self.main(event)


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

    def _open(self, name: str) -> Any:  # a LogFile or a DailyLogFile, used as the IO it mimics
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        logfile: LogFile | DailyLogFile
        if self.daily:
            logfile = _KeptDailyLogFile(name, str(self.directory), self.rotate_count, defaultMode=0o640)
        else:
            logfile = _AppendingLogFile(
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
        writer: Callable[[Any], FileLogObserver]
        if self.json:
            writer = jsonFileLogObserver
        else:
            lines = _ClassicLines()  # shared: an audit line is formatted once for two files

            def writer(out: Any) -> FileLogObserver:
                return textFileLogObserver(out, lines)

        router = _FileRouter(
            self._level_filter,
            writer(self._open("chatserver.log")),
            writer(self._open("connections.log")),
            writer(self._open("audit.log")),
        )
        self._observers = [router]
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


def append_audit_line(
    directory: Path, json: bool, actor: str, action: str, target: str, detail: str = "", room: str = "-"
) -> None:
    """One audit line written by another program than the server (the
    admin tool), in the server's own format (text or JSON, as ``[log]
    format`` says) and through O_APPEND, so that it lands whole in the
    audit.log the server writes too.  Raises OSError."""
    import time

    from twisted.logger import LogLevel as _Level
    from twisted.logger import eventAsJSON

    event = {
        "log_format": "{actor} {action} room={room} target={target} {detail}",
        "log_namespace": AUDIT_NAMESPACE,
        "log_level": _Level.info,
        "log_time": time.time(),
        "actor": actor,
        "action": action,
        "room": room,
        "target": target,
        "detail": detail,
    }
    if json:
        line = "\x1e" + eventAsJSON(event) + "\n"
    else:
        line = (formatEventAsClassicLogText(event, formatTime=formatTime) or "").rstrip("\n") + "\n"
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(directory / "audit.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)
