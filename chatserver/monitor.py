"""The monitor child: ``python -m chatserver.monitor --pid PID --interval S``.

The server starts it with ``spawnProcess`` (see ``chatserver.monitoring``).
Every interval it samples, with psutil, the server's process tree, its TCP
connections by state, the system, and the service's processes, and writes
one JSON object per line to stdout.  It runs in its own process so that
psutil's system calls (some of them slow, /proc walks) never stall the
server's reactor.  It exits by itself when the server is gone or stops
reading.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

import psutil

#: Bumped when a field changes meaning; the parent checks it.
FORMAT = 1


def _tree(server: psutil.Process) -> list[psutil.Process]:
    """The server and its children, without this monitor."""
    me = os.getpid()
    return [server] + [p for p in server.children(recursive=True) if p.pid != me]


def _process_info(proc: psutil.Process) -> dict[str, Any] | None:
    try:
        with proc.oneshot():
            return {
                "pid": proc.pid,
                "name": proc.name(),
                "status": proc.status(),
                "cpu_percent": proc.cpu_percent(None),
                "rss_bytes": proc.memory_info().rss,
                "threads": proc.num_threads(),
                "fds": proc.num_fds() if hasattr(proc, "num_fds") else None,
            }
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _tcp(server: psutil.Process) -> dict[str, Any]:
    """Connections on the server's listening ports, by state."""
    try:
        conns = server.net_connections(kind="tcp")
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return {"ports": [], "states": {}}
    ports = sorted({c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr})
    states = Counter(c.status for c in conns if c.laddr and c.laddr.port in ports and c.status != "LISTEN")
    return {"ports": ports, "states": dict(states)}


def sample(server: psutil.Process, processes: dict[int, psutil.Process]) -> dict[str, Any]:
    """One sample.  ``processes`` keeps psutil objects between samples,
    because cpu_percent is measured since the previous call on the same
    object."""
    tree = _tree(server)
    for proc in tree:
        processes.setdefault(proc.pid, proc)
    for pid in list(processes):
        if pid not in {p.pid for p in tree}:
            del processes[pid]
    infos = [info for info in (_process_info(processes[p.pid]) for p in tree) if info is not None]
    memory = psutil.virtual_memory()
    return {
        "type": "sample",
        "format": FORMAT,
        "ts": time.time(),
        "server_pid": server.pid,
        "tree": {
            "cpu_percent": sum(i["cpu_percent"] for i in infos),
            "rss_bytes": sum(i["rss_bytes"] for i in infos),
            "threads": sum(i["threads"] for i in infos),
            "fds": sum(i["fds"] or 0 for i in infos),
            "processes": len(infos),
        },
        "tcp": _tcp(server),
        "system": {
            "cpu_percent": psutil.cpu_percent(None),
            "cpus": psutil.cpu_count(),
            "memory_total_bytes": memory.total,
            "memory_available_bytes": memory.available,
            "memory_percent": memory.percent,
            "load": list(os.getloadavg()),
        },
        "processes": infos,
    }


def run(pid: int, interval: float, count: int | None = None) -> int:
    try:
        server = psutil.Process(pid)
    except psutil.NoSuchProcess:
        print(f"monitor: no process {pid}", file=sys.stderr)
        return 1
    processes: dict[int, psutil.Process] = {}
    psutil.cpu_percent(None)  # the first call only starts the measurement
    sample(server, processes)
    done = 0
    while count is None or done < count:
        time.sleep(interval)
        if not server.is_running():
            return 0  # the server is gone: so are we
        try:
            line = json.dumps(sample(server, processes), separators=(",", ":"))
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            return 0  # nobody reads any more
        except psutil.NoSuchProcess:
            return 0
        done += 1
    return 0


def main(argv: list[str] | None = None) -> None:
    # Ctrl-C in a terminal (``make run``) signals the whole foreground
    # process group, this child too; the server shuts down and the monitor
    # has nothing to save.  Without this, Python turns the signal into a
    # KeyboardInterrupt and prints its traceback (through the server's log)
    # from wherever the loop was.  Here, not at import: the server imports
    # this module too, and its own Ctrl-C must stay a clean shutdown.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    p = argparse.ArgumentParser(prog="python -m chatserver.monitor", description=__doc__.split("\n")[0])
    p.add_argument("--pid", type=int, required=True, help="the server's process id")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--count", type=int, help="stop after this many samples (default: while the server runs)")
    args = p.parse_args(argv)
    if not 0.05 <= args.interval <= 3600:
        p.error("--interval must be between 0.05 and 3600 seconds")
    sys.exit(run(args.pid, args.interval, args.count))


if __name__ == "__main__":
    main()
