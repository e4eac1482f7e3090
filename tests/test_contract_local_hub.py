"""The Hub contract (tests/contract_hub.py) on the in-process hub: several
LocalHubs on one LocalBus stand for several processes."""

from __future__ import annotations

from twisted.trial import unittest

from chatserver.hub.interface import Hub
from chatserver.hub.local import LocalBus, LocalHub
from chatserver.storage.sqlite import SqliteStorage
from tests.contract_hub import HubContract


class LocalHubContractTests(HubContract, unittest.TestCase):
    async def make_hubs(self, count: int, storage: SqliteStorage) -> list[Hub]:
        bus = LocalBus()
        hubs: list[Hub] = [LocalHub(storage.history, bus, name=f"p{n}") for n in range(count)]
        for hub in hubs:
            self.addCleanup(hub.stop)
        return hubs
