"""What a main process and its workers tell each other (``[server] workers``),
so that the stats frame, the GUI's statistics panel, ``/metrics`` and the
monitor cover every worker, whichever one an admin is connected to.

Each worker writes a *report* (its numbers: counters, gauges, commit
times, its hub link) to the main process every monitor interval, one JSON
line on its fd 3.  The main process keeps the latest of each, runs the one
monitor child (whose process tree is the main process and every worker)
and serves ``/metrics`` with a ``worker`` label per series.  Every
interval it answers each worker with a *picture*, one JSON line on the
worker's fd 4: every worker's latest report and state, and the monitor's
latest sample and health (and, the first time, its history).  A worker's
stats frame combines the picture with its own numbers.

A worker whose fd 4 ends has lost its main process (killed, say): it
stops, rather than serve on alone outside any supervision.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from twisted.application import service
from twisted.internet import stdio, task
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from chatserver.metrics import COUNTERS
from chatserver.monitoring import health_of

log = Logger(namespace="chatserver.workers")

#: The worker's ends of the two pipes (the main process's childFDs).
REPORT_FD = 3
PICTURE_FD = 4

#: A picture carries every worker's report and, once, the monitor's hour
#: of samples (720 at the default interval, about 1 KB each).
MAX_PICTURE = 16 * 1024 * 1024
MAX_REPORT = 256 * 1024

#: Samples of the monitor's history a worker keeps (an hour at 5 s).
HISTORY = 720


def report(factory: Any, rates: bool = True) -> dict[str, Any]:
    """One process's numbers.  ``rates``: also the counters' rates since
    the last call (which moves its window; a scrape does not)."""
    metrics = factory.metrics
    hub = factory.chat.hub
    hub_stats = getattr(hub, "stats", None)
    return {
        "pid": os.getpid(),
        "uptime": metrics.uptime(),
        "totals": dict(metrics.counters),
        "per_second": metrics.rates() if rates else None,
        "db_commit_seconds_total": metrics.db_commit_seconds_total,
        "db_commit_seconds_max": metrics.db_commit_seconds_max,
        "db_commit_buckets": list(metrics.db_commit_buckets),
        "connections": len(factory.connections),
        "authenticated": sum(1 for c in factory.connections if c.account is not None),
        "users_here": len(factory.chat.online),
        "users_online": hub.online_count(),
        "rooms": len(factory.chat.rooms),
        "crypto_queue": factory.pool.pending,
        "blocks": factory.blocks.active(),
        "hub": None if hub_stats is None else {"up": bool(hub.connected), **hub_stats},
    }


def combine(reports: list[dict[str, Any]], uptime: float) -> dict[str, Any]:
    """The ``app`` object of a stats frame over several processes' reports:
    counters, rates and per-process gauges summed; ``users_online`` and
    ``rooms`` are the community's, the same in every report (the newest
    is taken)."""
    totals: dict[str, float] = dict.fromkeys(COUNTERS, 0)
    per_second: dict[str, float] = dict.fromkeys(COUNTERS, 0.0)
    commits = commit_seconds = commit_max = 0.0
    gauges: dict[str, float] = {"connections": 0, "authenticated": 0, "crypto_queue": 0}
    for one in reports:
        for name in COUNTERS:
            totals[name] += _number(one.get("totals"), name)
            per_second[name] += _number(one.get("per_second"), name)
        commits += _number(one.get("totals"), "db_commits")
        commit_seconds += _number(one, "db_commit_seconds_total")
        commit_max = max(commit_max, _number(one, "db_commit_seconds_max"))
        for name in gauges:
            gauges[name] += _number(one, name)
    newest = reports[-1] if reports else {}
    return {
        "uptime": uptime,
        "totals": totals,
        "per_second": per_second,
        "db_commit_ms_avg": 1000 * commit_seconds / commits if commits else None,
        "db_commit_ms_max": 1000 * commit_max,
        **gauges,
        "users_online": int(_number(newest, "users_online")),
        "rooms": int(_number(newest, "rooms")),
    }


def worker_entry(index: int, state: dict[str, Any], one: dict[str, Any] | None) -> dict[str, Any]:
    """One worker's line in a stats frame's ``workers``."""
    entry: dict[str, Any] = {
        "index": index,
        "pid": state.get("pid"),
        "up": bool(state.get("up")),
        "restarts": state.get("restarts", 0),
    }
    if one is not None:
        rates = one.get("per_second") or {}
        hub = one.get("hub") or {}
        entry.update(
            uptime=one.get("uptime"),
            connections=one.get("connections"),
            authenticated=one.get("authenticated"),
            users_here=one.get("users_here"),
            messages_in=rates.get("messages_in"),
            messages_out=rates.get("messages_out"),
            requests=rates.get("requests"),
            hub_up=hub.get("up"),
        )
    return entry


def _number(obj: Any, key: str) -> float:
    """``obj[key]`` if it is a number (an int stays an int), else 0."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


class MonitorView:
    """A worker's view of its main process's monitor child: what
    ``Monitoring`` offers the stats frame (``latest``, ``history``,
    ``health()``), from the pictures."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.latest: dict[str, Any] | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._health: dict[str, Any] = health_of(None)
        self._told_at = reactor.seconds()

    def seen(self, picture: dict[str, Any]) -> None:
        history = picture.get("history")
        if isinstance(history, list):
            self.history.clear()
            self.history.extend(s for s in history if isinstance(s, dict))
        sample = picture.get("sample")
        if isinstance(sample, dict) and sample is not self.latest and sample != self.latest:
            if not self.history or self.history[-1].get("ts") != sample.get("ts"):
                self.history.append(sample)
            self.latest = sample
        health = picture.get("monitor")
        if isinstance(health, dict):
            self._health = health
            self._told_at = self.reactor.seconds()

    def health(self) -> dict[str, Any]:
        health = dict(self._health)
        age = health.get("last_sample_age")
        if isinstance(age, (int, float)):
            # As old as it was when told, plus the time since.
            health["last_sample_age"] = age + self.reactor.seconds() - self._told_at
        return health


class _PictureReader(LineOnlyReceiver):
    MAX_LENGTH = MAX_PICTURE
    delimiter = b"\n"

    def __init__(self, link: WorkerLink) -> None:
        self.link = link

    def lineReceived(self, line: bytes) -> None:
        try:
            picture = json.loads(line)
        except ValueError:
            picture = None
        if isinstance(picture, dict) and picture.get("type") == "picture":
            self.link.seen(picture)
        else:
            log.warn("the main process sent a line that is no picture; ignored")

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("the main process sent a picture over {max} bytes; ignored", max=MAX_PICTURE)

    def connectionLost(self, reason: Any = None) -> None:
        self.link.main_gone()


class WorkerLink(service.Service):
    """A worker's side: reports out every ``interval``, pictures in."""

    name = "worker-link"

    def __init__(self, factory: Any, reactor: Any, index: int, interval: float) -> None:
        self.factory = factory
        self.reactor = reactor
        self.index = index
        self.interval = interval
        self.monitor = MonitorView(reactor)
        #: The latest picture, and this worker's latest report.
        self.picture: dict[str, Any] = {}
        self.own: dict[str, Any] | None = None
        self._io: Any = None
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        try:
            for fd in (REPORT_FD, PICTURE_FD):
                os.fstat(fd)
        except OSError:
            log.warn("no pipes to a main process (fds 3 and 4): this worker's statistics stay its own")
            return
        # (POSIX's StandardIO takes the fds; the stubs are Windows's.)
        self._io = stdio.StandardIO(  # type: ignore[call-arg]
            _PictureReader(self), stdin=PICTURE_FD, stdout=REPORT_FD, reactor=self.reactor
        )
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def tick(self) -> None:
        """Report (rates since the last report), then push the stats
        frames of this worker's subscribers, which use the new report."""
        self.own = {"index": self.index, **report(self.factory)}
        if self._io is not None:
            self._io.write(json.dumps(self.own, separators=(",", ":")).encode() + b"\n")
        self.factory.push_stats()

    def seen(self, picture: dict[str, Any]) -> None:
        self.picture = picture
        self.monitor.seen(picture)

    def main_gone(self) -> None:
        if not self.running:
            return
        log.warn("worker {index}: the main process is gone; stopping", index=self.index)
        self.reactor.callLater(0, self.reactor.stop)

    def frame(self) -> dict[str, Any]:
        """The stats frame: every worker's numbers (this one's newest)."""
        # This worker's numbers as of now; its rates those of its last
        # report (a frame asked for between ticks must not move their window).
        own = {
            "index": self.index,
            **report(self.factory, rates=False),
            "per_second": self.own["per_second"] if self.own is not None else None,
        }
        states = self.picture.get("workers")
        states = states if isinstance(states, list) else []
        by_index: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        for state in states:
            if isinstance(state, dict) and isinstance(state.get("index"), int):
                one = state.get("report")
                by_index[state["index"]] = (state, one if isinstance(one, dict) else None)
        by_index[self.index] = (
            {**by_index.get(self.index, ({}, None))[0], "pid": own["pid"], "up": True},
            own,
        )
        reports = [one for _, one in by_index.values() if one is not None and one is not own] + [own]
        uptime = self.picture.get("uptime")
        return {
            "type": "stats",
            "app": combine(reports, uptime if isinstance(uptime, (int, float)) else own["uptime"]),
            "workers": [worker_entry(i, state, one) for i, (state, one) in sorted(by_index.items())],
            "sample": self.monitor.latest,
            "monitor": self.monitor.health(),
        }
