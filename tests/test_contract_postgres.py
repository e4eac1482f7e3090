"""The Storage contract (tests/contract_storage.py) on a real PostgreSQL
server (tests/backends.py), plus what only several writers need."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial import unittest

from chatserver.storage.interface import Storage
from tests import backends
from tests.contract_storage import StorageContract, _event
from tests.support import postgres_only


class PostgresStorageContractTests(StorageContract, unittest.TestCase):
    skip = backends.missing() or postgres_only("PostgreSQL itself")

    def _new(self, url: str) -> Storage:
        from chatserver.storage.postgres import PostgresStorage

        storage = PostgresStorage(url, reactor=reactor)
        storage.startService()
        self.addCleanup(lambda: storage.running and storage.stopService())
        return storage

    async def make_storage(self) -> Storage:
        self.url = backends.postgres_url()
        return self._new(self.url)

    def commits(self, storage: Storage) -> int:
        return int(storage.events.commits)  # type: ignore[attr-defined]

    async def test_two_writers_never_hand_out_the_same_id_and_leave_no_gap(self) -> None:
        """Two storages on one database stand for two processes."""
        one = await self.make_storage()
        two = self._new(self.url)
        appended = []
        for n in range(20):
            appended.append(one.append(_event("room:shared", f"one {n}")))
            appended.append(two.append(_event("room:shared", f"two {n}")))
        await defer.gatherResults(appended)
        texts = await one.history("room:shared", None, None, 100)
        self.assertEqual(len(texts), 40)
        import json

        ids = [json.loads(text)["id"] for text in texts]
        self.assertEqual(ids, list(range(1, 41)))
        self.assertEqual((await two.load_stream_ids())["room:shared"], 40)

    async def test_a_restart_goes_on_from_the_last_committed_id(self) -> None:
        storage = await self.make_storage()
        for n in range(3):
            await storage.append(_event("room:r", str(n)))
        await storage.idle()
        storage.stopService()  # type: ignore[attr-defined]
        again = self._new(self.url)
        event = _event("room:r", "after the restart")
        await again.append(event)
        self.assertEqual(event["id"], 4)
