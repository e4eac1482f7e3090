"""Real PostgreSQL and Redis servers for the tests, started and stopped here.

Each runs from a fresh directory under the system's temp dir, listens on a
unix socket only (no TCP port to collide with anything), and is stopped by
the pid it was started with.  PostgreSQL refuses to run as root and CI runs
as root, so as root its cluster belongs to the unprivileged ``postgres``
user that Debian's package makes, and ``initdb`` and the server run as it.

``tools/run_trial.py`` starts one of each for a whole test run and passes
their addresses on in the environment (``CHATSERVER_TEST_POSTGRES``,
``CHATSERVER_TEST_REDIS``); a test module run on its own starts its own
through :func:`postgres_url` and :func:`redis_url`, stopped at exit.

Also ``python -m tests.backends`` starts both and prints their addresses,
for trying things by hand; Ctrl+C stops them.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

POSTGRES_ENV = "CHATSERVER_TEST_POSTGRES"
REDIS_ENV = "CHATSERVER_TEST_REDIS"
#: How long a server may take to start or stop before the harness gives up.
START_SECONDS = 60.0

# psql, initdb and pg_ctl: on PATH, or where Debian puts them.
_PG_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


class BackendMissing(Exception):
    """The server's programs are not installed (``.ci/run`` installs them)."""


def _program(name: str, extra_dirs: list[str]) -> str:
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BackendMissing(f"{name} is not installed (apt-get install postgresql redis-server)")
    return found


def _as_postgres() -> dict[str, Any]:
    """subprocess arguments that run a command as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise BackendMissing("running as root needs the postgres user (apt-get install postgresql)") from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _wait(predicate: Any, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {START_SECONDS:.0f} s\n{tail}")


def _stop(pid: int, sig: int = signal.SIGTERM) -> None:
    """Stop a server by its pid, and wait until it is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # our own child: reap it, or it lingers as a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


class Postgres:
    """One PostgreSQL cluster in a temp dir, on a unix socket."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="chat-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "run"
        self.log = self.base / "postgres.log"
        self.pid: int | None = None
        self.url = f"postgresql:///chatserver?host={self.socket_dir}&user=chatserver"

    def start(self) -> Postgres:
        initdb = _program("initdb", _PG_DIRS)
        owner = _as_postgres()
        self.socket_dir.mkdir()
        if owner:
            for path in (self.base, self.socket_dir):
                os.chown(path, owner["user"], owner["group"])
        subprocess.run(
            [initdb, "-D", str(self.data), "-U", "chatserver", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **owner,
        )
        self._run()
        self._psql("CREATE DATABASE chatserver")
        return self

    def _run(self) -> None:
        """Start the server on the cluster and wait until it answers."""
        postgres = _program("postgres", _PG_DIRS)
        owner = _as_postgres()
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                [
                    postgres,
                    "-D",
                    str(self.data),
                    "-k",
                    str(self.socket_dir),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=on",
                    "-c",
                    "synchronous_commit=on",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **owner,
            )
        self.pid = process.pid
        socket = self.socket_dir / ".s.PGSQL.5432"
        _wait(lambda: socket.exists() and self._ready(), "PostgreSQL", self.log)

    def restart(self, down: float = 0.0) -> None:
        """Stop the server (a fast shutdown: its connections are cut), stay
        down ``down`` seconds, start it again on the same data."""
        assert self.pid is not None
        _stop(self.pid, signal.SIGINT)
        self.pid = None
        time.sleep(down)
        self._run()

    def _ready(self) -> bool:
        isready = _program("pg_isready", _PG_DIRS)
        done = subprocess.run(
            [isready, "-h", str(self.socket_dir), "-U", "chatserver", "-d", "postgres", "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return done.returncode == 0

    def _psql(self, sql: str, database: str = "postgres") -> str:
        psql = _program("psql", _PG_DIRS)
        done = subprocess.run(
            [psql, "-h", str(self.socket_dir), "-U", "chatserver", "-d", database, "-qAtc", sql],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def fresh_database(self, name: str) -> str:
        """A new, empty database in this cluster; its URL."""
        self._psql(f'CREATE DATABASE "{name}"')
        return f"postgresql:///{name}?host={self.socket_dir}&user=chatserver"

    def stop(self) -> None:
        if self.pid is not None:
            _stop(self.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
            self.pid = None
        shutil.rmtree(self.base, ignore_errors=True)


class Redis:
    """One redis-server in a temp dir, on a unix socket, keeping nothing on disk."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="chat-redis-"))
        self.socket = self.base / "redis.sock"
        self.log = self.base / "redis.log"
        self.pid: int | None = None
        self.url = f"unix://{self.socket}"

    def start(self) -> Redis:
        server = _program("redis-server", [])
        process = subprocess.Popen(
            [
                server,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base),
                "--logfile",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = process.pid
        _wait(self.socket.exists, "Redis", self.log)
        return self

    def stop(self) -> None:
        if self.pid is not None:
            _stop(self.pid)
            self.pid = None
        shutil.rmtree(self.base, ignore_errors=True)


_started: dict[str, Any] = {}


def _own(kind: str, make: Any) -> Any:
    if kind not in _started:
        server = make().start()
        _started[kind] = server
        atexit.register(server.stop)
    return _started[kind]


def postgres() -> Postgres:
    """The cluster of this process (started on first use, stopped at exit)."""
    server: Postgres = _own("postgres", Postgres)
    return server


_databases = 0


def postgres_url() -> str:
    """A fresh, empty database for one test: in the run's cluster
    (``CHATSERVER_TEST_POSTGRES``) or in one of this process's own."""
    global _databases
    _databases += 1
    name = f"t{os.getpid()}_{_databases}"
    shared = os.environ.get(POSTGRES_ENV)
    if shared:
        socket_dir = shared.split("host=", 1)[1].split("&", 1)[0]
        psql = _program("psql", _PG_DIRS)
        subprocess.run(
            [
                psql,
                "-h",
                socket_dir,
                "-U",
                "chatserver",
                "-d",
                "postgres",
                "-qAtc",
                f'CREATE DATABASE "{name}"',
            ],
            check=True,
            capture_output=True,
        )
        return f"postgresql:///{name}?host={socket_dir}&user=chatserver"
    return postgres().fresh_database(name)


def redis_url() -> str:
    """The run's Redis (``CHATSERVER_TEST_REDIS``) or this process's own."""
    shared = os.environ.get(REDIS_ENV)
    if shared:
        return shared
    server: Redis = _own("redis", Redis)
    return server.url


def missing() -> str | None:
    """Why the real servers cannot run here, or None (for ``skip``)."""
    try:
        _program("initdb", _PG_DIRS)
        _program("redis-server", [])
        if os.geteuid() == 0:
            _as_postgres()
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
        import txredisapi  # noqa: F401
    except (BackendMissing, ImportError) as e:
        return str(e)
    return None


def main() -> None:
    pg = Postgres().start()
    redis = Redis().start()
    print(f"{POSTGRES_ENV}={pg.url}\n{REDIS_ENV}={redis.url}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
