"""``twistd chatserver`` on a real PostgreSQL database (tests/backends.py)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from chatclient.session import connect
from tests import backends
from tests.processes import start_twistd, stop_twistd
from tests.support import PASSWORD, install_identity, postgres_only


class PostgresServerTests(unittest.TestCase):
    skip = backends.missing() or postgres_only("PostgreSQL itself")

    async def session(self, port: int) -> object:
        session = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fingerprint: True)
        self.addCleanup(session.close)
        return session

    async def test_history_and_accounts_outlive_a_restart(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        install_identity(base / "data")
        url = backends.postgres_url()
        server, port, _ = await start_twistd(self, base, "--database", url)
        alice = await self.session(port)
        await alice.register("alice", PASSWORD)
        await alice.say("lobby", "stored in postgres")
        await alice.close()
        self.assertEqual(await stop_twistd(server), 0)
        # Nothing of it went into a SQLite file.
        self.assertFalse((base / "data" / "chatserver.sqlite3").exists())

        server, port, _ = await start_twistd(self, base, "--database", url)
        again = await self.session(port)
        await again.login("alice", PASSWORD)
        page = await again.request({"type": "history", "stream": "room:lobby", "limit": 10})
        bodies = [e.get("body") for e in page["events"]]
        self.assertIn("stored in postgres", bodies)
        await again.close()
        await stop_twistd(server)
