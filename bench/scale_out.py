"""The scale-out scenarios' parts: PostgreSQL and Redis for the servers
(started once per bench by ``tests/backends.py``, the same code that
starts them for the tests), and the CPU time of every server-side process.

A scale-out run's server is ``[server] workers = N`` on a fresh database
of the one cluster and a hub prefix of its own on the one Redis.  All of
it (the main process, its workers and monitor, Redis, PostgreSQL and its
backends) is pinned to the server's CPU, so "per CPU-second" counts every
process that serves the load, and the generator keeps its own CPU.
"""

from __future__ import annotations

import os
from typing import Any

import psutil

#: (part, pid) -> (CPU seconds so far (user + system), context switches so far).
Snapshot = dict[tuple[str, int], tuple[float, int]]


def _cpu(proc: psutil.Process) -> tuple[float, int] | None:
    try:
        t = proc.cpu_times()
        switches = proc.num_ctx_switches()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return t.user + t.system, switches.voluntary + switches.involuntary


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def server_part(proc: psutil.Process, root_pid: int) -> str:
    """The role of a process of the server's tree, by its command line."""
    if proc.pid == root_pid:
        return "main"
    try:
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    if "--worker-index" in argv:
        return f"worker {argv[argv.index('--worker-index') + 1]}"
    if any("monitor" in a for a in argv):
        return "monitor"
    return "other"


class Backends:
    """One PostgreSQL cluster and one redis-server for the whole bench."""

    def __init__(self, cpu: int | None) -> None:
        from tests import backends  # the tests' harness: the servers start the same way

        self._backends = backends
        self.cpu = cpu
        self.postgres: Any = None
        self.redis: Any = None
        self.databases = 0

    def start(self) -> None:
        missing = self._backends.missing()
        if missing:
            raise RuntimeError(f"the scale-out scenarios need PostgreSQL and Redis: {missing}")
        self.postgres = self._backends.Postgres().start()
        self.redis = self._backends.Redis().start()
        self.pin()

    def pin(self) -> None:
        """Put them on the server's CPU (backends forked later inherit it)."""
        if self.cpu is None:
            return
        for root in self.roots():
            for proc in _tree(root):
                try:
                    os.sched_setaffinity(proc.pid, {self.cpu})
                except OSError:
                    pass  # gone meanwhile

    def roots(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in (self.postgres, self.redis) if p is not None and p.pid]

    def fresh(self, name: str) -> tuple[str, str, str]:
        """(database URL, hub URL, hub prefix) for one run of its own."""
        self.databases += 1
        database = self.postgres.fresh_database(f"bench_{self.databases}")
        return database, self.redis.url, f"{name}{self.databases}:"

    def stop(self) -> None:
        for server in (self.redis, self.postgres):
            if server is not None:
                server.stop()


def cpu_snapshot(server: psutil.Process, backends: Backends | None) -> Snapshot:
    """Every server-side process's CPU seconds, by its part."""
    out: Snapshot = {}
    for proc in _tree(server):
        cpu = _cpu(proc)
        if cpu is not None:
            out[(server_part(proc, server.pid), proc.pid)] = cpu
    if backends is not None:
        for root, part in zip(backends.roots(), ("postgres", "redis"), strict=True):
            for proc in _tree(root):
                cpu = _cpu(proc)
                if cpu is not None:
                    out[(part, proc.pid)] = cpu
    return out


def cpu_by_part(before: Snapshot, after: Snapshot, field: int = 0) -> dict[str, float]:
    """CPU seconds (``field`` 1: context switches) of each part between two
    snapshots.  A process started meanwhile counts from zero; one that
    ended meanwhile is not counted (none does in a measured window: the
    workers, the monitor and the pool's PostgreSQL backends live as long
    as the server)."""
    parts: dict[str, float] = {}
    for key, values in after.items():
        start = before.get(key)
        parts[key[0]] = parts.get(key[0], 0.0) + values[field] - (start[field] if start else 0.0)
    return dict(sorted(parts.items()))


def connections_by_worker(server: psutil.Process, port: int) -> dict[str, int]:
    """Established client connections of each serving process, by part."""
    out: dict[str, int] = {}
    for proc in _tree(server):
        part = server_part(proc, server.pid)
        if part == "monitor":
            continue
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        count = sum(
            1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )
        if count or part.startswith("worker"):
            out[part] = count
    return out
