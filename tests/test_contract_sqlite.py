"""The Storage contract (tests/contract_storage.py) on SQLite, plus what
only the SQLite backend promises."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from chatserver.storage.interface import Storage
from chatserver.storage.sqlite import SqliteStorage
from tests.contract_storage import StorageContract, _event


class SqliteStorageContractTests(StorageContract, unittest.TestCase):
    def _new(self, path: Path) -> SqliteStorage:
        storage = SqliteStorage(path, "NORMAL", create=True, reactor=reactor)
        storage.startService()
        self.addCleanup(lambda: storage.running and storage.stopService())
        return storage

    async def make_storage(self) -> Storage:
        path = Path(self.mktemp()) / "chat.sqlite3"
        path.parent.mkdir()
        self.path = path
        return self._new(path)

    def commits(self, storage: Storage) -> int:
        assert isinstance(storage, SqliteStorage)
        return storage.events.commits

    async def test_a_restart_goes_on_from_the_last_committed_id(self) -> None:
        storage = await self.make_storage()
        for n in range(3):
            await storage.append(_event("room:r", str(n)))
        await storage.idle()
        assert isinstance(storage, SqliteStorage)
        storage.stopService()
        again = self._new(self.path)
        event = _event("room:r", "after the restart")
        await again.append(event)
        self.assertEqual(event["id"], 4)
