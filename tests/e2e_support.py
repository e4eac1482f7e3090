"""Clients with end-to-end encryption for the tests: each a real
``ReconnectingClient`` with its own device store (under a passphrase, at
a low scrypt cost) in the test's directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import endpoints, reactor
from twisted.trial import unittest

from chatclient.e2e.client import EndToEnd
from chatclient.e2e.store import open_store
from chatclient.reconnect import ReconnectingClient
from tests.support import PASSWORD, EventQueue, RunningServer

STORE_PASSPHRASE = "a store passphrase"


class Collected(EventQueue):
    """A client's events as its front end sees them (decrypted)."""

    def __init__(self, client: ReconnectingClient) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiters: list[Any] = []
        client.add_listener(self._received)


async def e2e_client(
    testcase: unittest.TestCase,
    server: RunningServer,
    user: str,
    store_dir: Path,
    register: bool = True,
    client_class: type[ReconnectingClient] = ReconnectingClient,
) -> tuple[ReconnectingClient, EndToEnd, Collected]:
    """A started, online client of ``user`` whose device lives in ``store_dir``."""
    store = open_store(store_dir, lambda: STORE_PASSPHRASE, prefer="passphrase", log2_n=10)
    testcase.addCleanup(store.close)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
    client = client_class(reactor, endpoint, lambda fp: True, user, PASSWORD, register=register)
    device = EndToEnd(store, user, reactor)
    device.attach(client)
    events = Collected(client)
    client.start()
    testcase.addCleanup(client.stop)
    await client.when_online()
    return client, device, events
