"""Test harness: a real server on loopback, real clients, real files.

Nothing here fakes our own code.  ``RunningServer`` builds the same service
tree as ``twistd chatserver`` (``tap.build_service``) in a temporary
directory, listening on an ephemeral loopback port.  Only the RSA identity
key is shared between tests, because generating one per test would
dominate the suite's run time.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, reactor
from twisted.trial import unittest

from chatclient.known_hosts import KnownHosts
from chatclient.session import ChatSession, connect
from chatserver import tap
from chatserver.config import Settings, load_settings
from chatserver.wire import crypto

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"

_KEY_PEM: bytes | None = None


def identity_pem() -> bytes:
    global _KEY_PEM
    if _KEY_PEM is None:
        _KEY_PEM = crypto.rsa_private_to_pem(crypto.rsa_generate())
    return _KEY_PEM


def install_identity(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / "server_key.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(identity_pem())


def make_settings(base: Path, **overrides: Any) -> Settings:
    """Settings for a test server under ``base``: fast password hashing,
    an ephemeral loopback port, and whatever the test overrides."""
    values: dict[str, Any] = {
        "endpoint": "tcp:0:interface=127.0.0.1",
        "data_dir": str(base / "data"),
        "log_dir": str(base / "log"),
        "password_hash_cost": 10,
        # Rate limits out of the way, except in the tests about them.
        "messages_rate": 1e6,
        "messages_burst": 1_000_000,
        "joins_rate": 1e6,
        "joins_burst": 1_000_000,
        "rooms_rate": 1e6,
        "rooms_burst": 1_000_000,
        "logins_rate": 1e6,
        "logins_burst": 1_000_000,
        "lookups_rate": 1e6,
        "lookups_burst": 1_000_000,
        "registrations_rate": 1e6,
        "registrations_burst": 1_000_000,
        "registrations_prefix_rate": 1e6,
        "registrations_prefix_burst": 1_000_000,
        "handshakes_rate": 1e6,
        "handshakes_burst": 1_000_000,
        "handshakes_prefix_rate": 1e6,
        "handshakes_prefix_burst": 1_000_000,
        # Off: the tests of refusals count every one (test_blocks turns it on).
        "block_after_refusals": 0,
        "block_after_refusals_prefix": 0,
        # A monitor child per test server would only slow the suite; the
        # monitoring tests turn it on.
        "monitor_enabled": False,
    }
    if backend() == "postgres" and "database" not in overrides:
        from tests import backends

        # A fresh database for each server directory; the same one again
        # for the same directory (a restart).
        key = str(base.resolve())
        if key not in _POSTGRES_DATABASES:
            _POSTGRES_DATABASES[key] = backends.postgres_url()
        values["database"] = _POSTGRES_DATABASES[key]
        if "hub_url" not in overrides:
            # Redis, shared by the whole run: each server directory's
            # keys and channels apart (a restart finds its own again).
            values["hub_url"] = backends.redis_url()
            database = urllib.parse.urlsplit(_POSTGRES_DATABASES[key]).path.strip("/")
            values["hub_prefix"] = f"{database}:"
    values.update(overrides)
    return Settings(**values)


_POSTGRES_DATABASES: dict[str, str] = {}

#: Which storage and hub the suite runs on: "sqlite" (the embedded default:
#: SQLite and the in-process hub) or "postgres" (PostgreSQL and Redis,
#: started by tests/backends.py).  tools/run_trial.py runs the suite once
#: with each.
BACKEND_ENV = "CHATSERVER_TEST_BACKEND"


def backend() -> str:
    return os.environ.get(BACKEND_ENV, "sqlite")


def sqlite_only(why: str) -> str | None:
    """A ``skip`` for a test about SQLite itself (its file, its locks):
    it runs in the SQLite pass of the suite only."""
    return f"about SQLite ({why}): runs in the SQLite pass" if backend() != "sqlite" else None


def postgres_only(why: str) -> str | None:
    """A ``skip`` for a test that needs PostgreSQL whatever the pass (a
    copy into it, several writers): it runs in the PostgreSQL pass only,
    on the cluster that pass starts."""
    return f"about PostgreSQL ({why}): runs in the PostgreSQL pass" if backend() != "postgres" else None


class RunningServer:
    """A started server; ``port`` is its loopback port."""

    def __init__(self, settings: Settings, clock: Any = None) -> None:
        self.settings = settings
        install_identity(settings.data_path)
        self.service = tap.build_service({"settings": settings}, reactor, clock=clock, quiet=True)
        self.factory = self.service.factory
        self.identity = self.service.identity
        self.port = 0

    @defer.inlineCallbacks
    def start(self) -> Any:
        self.service.startService()
        port = yield self.service.core.ready
        self.port = port.getHost().port
        return self

    def stop(self) -> Any:
        """Stop the server (again at cleanup is fine)."""
        if not self.service.running:
            return defer.succeed(None)
        return self.service.stopService()


async def start_server(testcase: unittest.TestCase, clock: Any = None, **overrides: Any) -> RunningServer:
    base = Path(testcase.mktemp())
    server = RunningServer(make_settings(base, **overrides), clock=clock)
    await server.start()
    testcase.addCleanup(server.stop)
    return server


def add_admin(server: RunningServer, name: str = "root") -> bool:
    """An account with the server role ``admin``, made as the admin tool
    does, beside the running server."""
    from chatserver import accounts

    db = direct(server)
    try:
        return accounts.add_user_now(db, name, PASSWORD, "admin", server.settings.password_hash_cost)
    finally:
        db.close()


def direct(server: RunningServer) -> Any:
    """The server's database opened beside it, as the admin tool opens it
    (storage.direct): each ``run(query, *args)`` is one transaction."""
    from chatserver.storage.direct import open_direct

    return open_direct(server.settings)


async def open_session(
    testcase: unittest.TestCase, server: RunningServer, known_hosts: Path | None = None
) -> ChatSession:
    """A secure session to ``server`` (closed at cleanup)."""
    if known_hosts is None:
        known_hosts = Path(testcase.mktemp())
    known = KnownHosts(known_hosts)

    def verify(fingerprint: str) -> bool:
        known.check(f"127.0.0.1:{server.port}", fingerprint)
        return True

    session = await connect(reactor, f"tcp:host=127.0.0.1:port={server.port}", verify)
    testcase.addCleanup(_close, session)
    return session


def _close(session: ChatSession) -> Any:
    return session.close()


async def logged_in(
    testcase: unittest.TestCase, server: RunningServer, user: str, register: bool = True
) -> ChatSession:
    session = await open_session(testcase, server)
    if register:
        await session.register(user, PASSWORD)
    else:
        await session.login(user, PASSWORD)
    return session


async def until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Wait (bounded) until ``predicate()`` is true: for server-side state
    that no client-visible event announces."""
    from twisted.internet import task

    for _ in range(int(timeout / interval)):
        if predicate():
            return
        await task.deferLater(reactor, interval, lambda: None)
    raise AssertionError(f"condition not reached within {timeout} s")


class EventQueue:
    """Collects a session's unsolicited events; ``next()`` waits for one."""

    def __init__(self, session: ChatSession) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiters: list[tuple[Any, defer.Deferred[dict[str, Any]]]] = []
        session.add_listener(self._received)

    def _received(self, event: dict[str, Any]) -> None:
        for item in list(self._waiters):
            match, d = item
            if match(event):
                self._waiters.remove(item)
                d.callback(event)
                return
        self.events.append(event)

    def next(self, match: Any = lambda e: True, timeout: float = 5.0) -> defer.Deferred[dict[str, Any]]:
        """The first (queued or future) event for which ``match`` is true."""
        for event in self.events:
            if match(event):
                self.events.remove(event)
                return defer.succeed(event)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.append((match, d))
        return d.addTimeout(timeout, reactor)


def python_env() -> dict[str, str]:
    """Environment for child processes that import this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


PYTHON = sys.executable

__all__ = [
    "EventQueue",
    "PASSWORD",
    "PYTHON",
    "ROOT",
    "RunningServer",
    "install_identity",
    "load_settings",
    "logged_in",
    "make_settings",
    "open_session",
    "python_env",
    "start_server",
]
_unused = endpoints


def assert_spec_says(testcase: Any, *fragments: str) -> None:
    """Each fragment stands in docs/protocol.rst, whatever the line breaks
    and indentation."""
    flat = re.sub(r"\s+", " ", (ROOT / "docs" / "protocol.rst").read_text(encoding="utf-8"))
    for fragment in fragments:
        wanted = re.sub(r"\s+", " ", fragment)
        testcase.assertTrue(wanted in flat, f"docs/protocol.rst does not say: {wanted}")
