"""Application metrics: counters the server bumps, read as totals and rates.

Counting is a dict increment on the hot path; everything else (rates,
gauges that are read from their owners) happens only when someone asks
for a snapshot: a stats frame or a scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

#: name -> help text.  Counters only go up; rates are derived from them.
COUNTERS = {
    "connections": "Connections accepted.",
    "handshakes": "Full handshakes completed (secure channel up, one RSA decryption each).",
    "resumptions": "Resumed handshakes completed (a ticket instead of RSA).",
    "cookies": "Hellos answered with a cookie (under load).",
    "handshakes_refused": "Full handshakes refused by an address's or network's budget.",
    "evictions": "Connections not logged in dropped to make room for a new connection.",
    "blocked": "Connections closed unread: their address or network was refused too often.",
    "logins": "Successful logins and registrations.",
    "failed_logins": "Logins refused for bad credentials.",
    "rate_limited": "Requests refused by a rate limit.",
    "requests": "Requests handled.",
    "messages_in": "Room messages and direct messages accepted (committed).",
    "messages_out": "Event frames delivered to connections.",
    "bytes_in": "Bytes received from clients.",
    "bytes_out": "Bytes sent to clients.",
    "db_commits": "Event log group commits.",
}


#: Upper bounds (seconds) of the commit-duration histogram's buckets.  A
#: commit is an fsync: fractions of a millisecond on a fast disk, tens of
#: milliseconds on a slow one, and the tail is what delivery latency feels.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.started = clock.seconds()
        self.db_commit_seconds_total = 0.0
        self.db_commit_seconds_max = 0.0
        # Commits per bucket of COMMIT_BUCKETS, plus one for slower ones.
        self.db_commit_buckets = [0] * (len(COMMIT_BUCKETS) + 1)
        self._previous: tuple[float, dict[str, int]] = (self.started, dict(self.counters))

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def commit_took(self, seconds: float) -> None:
        self.counters["db_commits"] += 1
        self.db_commit_seconds_total += seconds
        self.db_commit_seconds_max = max(self.db_commit_seconds_max, seconds)
        self.db_commit_buckets[bisect_left(COMMIT_BUCKETS, seconds)] += 1

    def uptime(self) -> float:
        return self._clock.seconds() - self.started

    def rates(self) -> dict[str, float]:
        """Per-second rates since the previous call (or since the start)."""
        now = self._clock.seconds()
        then, before = self._previous
        elapsed = max(now - then, 1e-9)
        rates = {name: (value - before[name]) / elapsed for name, value in self.counters.items()}
        self._previous = (now, dict(self.counters))
        return rates

    def snapshot(self, gauges: dict[str, Any]) -> dict[str, Any]:
        commits = self.counters["db_commits"]
        return {
            "uptime": self.uptime(),
            "totals": dict(self.counters),
            "per_second": self.rates(),
            "db_commit_ms_avg": 1000 * self.db_commit_seconds_total / commits if commits else None,
            "db_commit_ms_max": 1000 * self.db_commit_seconds_max,
            **gauges,
        }
