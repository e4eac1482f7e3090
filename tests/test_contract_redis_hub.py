"""The Hub contract (tests/contract_hub.py) on the Redis hub, over a real
redis-server (tests/backends.py), plus what only a network needs: a
Redis that restarts, or stops answering, loses nothing and reorders
nothing."""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from chatserver.hub.interface import Hub
from chatserver.storage.sqlite import SqliteStorage
from tests import backends
from tests.contract_hub import HubContract, Recorder
from tests.support import until

_names = itertools.count(1)


def _prefix() -> str:
    """Keys and channels of one test apart from every other test's on the
    run's shared Redis."""
    return f"t{os.getpid()}_{next(_names)}:"


def make_redis_hubs(testcase: Any, count: int, storage: Any, url: str, heartbeat: float = 0.2) -> list[Hub]:
    from chatserver.hub.redis import RedisHub

    prefix = _prefix()
    hubs: list[Hub] = [
        RedisHub(url, storage.history, f"p{n}", reactor=reactor, prefix=prefix, heartbeat=heartbeat)
        for n in range(count)
    ]
    for hub in hubs:
        testcase.addCleanup(hub.stop)
    return hubs


class RedisHubContractTests(HubContract, unittest.TestCase):
    skip = backends.missing()

    async def make_hubs(self, count: int, storage: SqliteStorage) -> list[Hub]:
        return make_redis_hubs(self, count, storage, backends.redis_url())


class BatchTests(unittest.TestCase):
    """What one reactor turn publishes to a channel goes out as one
    message (hub/redis.py, ``BATCH_BYTES``), and arrives as the events it
    holds, in order, each once."""

    skip = backends.missing()

    async def setUp(self) -> None:
        path = Path(self.mktemp()) / "hub.sqlite3"
        path.parent.mkdir()
        storage = SqliteStorage(path, "NORMAL", create=True, reactor=reactor)
        storage.startService()
        self.addCleanup(storage.stopService)
        self.hubs: list[Any] = make_redis_hubs(self, 2, storage, backends.redis_url())
        self.receivers = [Recorder() for _ in self.hubs]
        for hub, receiver in zip(self.hubs, self.receivers, strict=True):
            await hub.start(receiver, {})
        await self.hubs[1].follow("room:b")
        await self.hubs[1].arrived("bob")

    def encoded(self, stream: str, n: int, size: int = 0) -> bytes:
        # A body with what JSON escapes: a newline in it must not split the batch.
        body = "line\none " + "x" * size
        return json.dumps(
            {"type": "msg", "stream": stream, "id": n, "body": body}, separators=(",", ":")
        ).encode()

    async def test_one_turns_events_are_one_publication_and_arrive_in_order(self) -> None:
        one, two = self.hubs
        before = one.stats["publications"]
        for n in range(1, 101):
            one.publish("room:b", n, self.encoded("room:b", n))
        for n in range(1, 4):
            one.publish("dm:alice:bob", n, self.encoded("dm:alice:bob", n), users=("alice", "bob"))
        # The channels of room:b, of the DM stream, of alice and of bob:
        # four publications for 103 events.
        await until(lambda: one.stats["publications"] == before + 4)
        await until(
            lambda: len(self.receivers[1].ids("room:b")) == 100 and self.receivers[1].ids("dm:alice:bob")
        )
        self.assertEqual(self.receivers[1].ids("room:b"), list(range(1, 101)))
        await until(lambda: self.receivers[1].ids("dm:alice:bob") == [1, 2, 3])
        got = {i: e for s, i, e in self.receivers[1].events if s == "room:b"}
        self.assertEqual(got[7], self.encoded("room:b", 7))  # each event as it was published

    async def test_a_batch_over_its_size_goes_out_at_once_in_parts(self) -> None:
        from chatserver.hub.redis import BATCH_BYTES

        one, _ = self.hubs
        before = one.stats["publications"]
        size = BATCH_BYTES // 4
        for n in range(1, 11):
            one.publish("room:b", n, self.encoded("room:b", n, size))
        self.assertGreaterEqual(one.stats["publications"], before + 2)  # not waiting for the turn's end
        await until(lambda: len(self.receivers[1].ids("room:b")) == 10)
        self.assertEqual(self.receivers[1].ids("room:b"), list(range(1, 11)))


def _event(stream: str, n: int) -> dict[str, Any]:
    return {"type": "msg", "stream": stream, "id": 0, "ts": n, "body": f"m{n}"}


class RedisOutageTests(unittest.TestCase):
    """A private redis-server per test, restarted or paused mid-traffic."""

    skip = backends.missing()

    async def setUp(self) -> None:
        self.redis = backends.Redis().start()
        self.addCleanup(lambda: self.redis.stop())
        path = Path(self.mktemp()) / "hub.sqlite3"
        path.parent.mkdir()
        self.storage = SqliteStorage(path, "NORMAL", create=True, reactor=reactor)
        self.storage.startService()
        self.addCleanup(self.storage.stopService)
        self.hubs = make_redis_hubs(self, 2, self.storage, self.redis.url)
        self.receivers = [Recorder() for _ in self.hubs]
        for hub, receiver in zip(self.hubs, self.receivers, strict=True):
            await hub.start(receiver, {})
        await self.hubs[1].follow("room:o")
        self.sent = 0

    async def send(self, count: int) -> None:
        """``count`` committed events of room:o, published by the first hub."""
        for _ in range(count):
            self.sent += 1
            text = await self.storage.append(_event("room:o", self.sent))
            self.hubs[0].publish("room:o", json.loads(text)["id"], text.encode())
            await task.deferLater(reactor, 0.005, lambda: None)

    def received(self) -> list[int]:
        return self.receivers[1].ids("room:o")

    async def test_a_restarted_redis_loses_nothing_and_reorders_nothing(self) -> None:
        await self.send(20)
        await until(lambda: len(self.received()) == 20)
        socket = self.redis.socket
        self.redis.stop()
        self.redis = backends.Redis()
        self.redis.base.rmdir()
        self.redis.base = socket.parent  # the same socket path again
        self.redis.socket, self.redis.log = socket, socket.parent / "redis.log"
        self.redis.base.mkdir(parents=True, exist_ok=True)
        await self.send(20)  # while Redis is away: published to nobody
        self.redis.start()
        # With no later event to reveal the gap, the reconnection's replay
        # from storage alone must bring these.
        await until(lambda: len(self.received()) >= 40, timeout=20)
        self.assertEqual(self.received(), list(range(1, 41)))
        await self.send(20)
        await until(lambda: len(self.received()) >= 60, timeout=20)
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(self.received(), list(range(1, 61)))
        hub: Any = self.hubs[1]
        self.assertGreaterEqual(hub.stats["reconnects"], 1)
        self.assertGreater(hub.stats["outage_seconds"], 0)

    async def test_a_paused_redis_is_noticed_and_nothing_is_lost(self) -> None:
        await self.send(10)
        await until(lambda: len(self.received()) == 10)
        assert self.redis.pid is not None
        os.kill(self.redis.pid, signal.SIGSTOP)
        try:
            await self.send(10)
            await task.deferLater(reactor, 1.0, lambda: None)  # five heartbeats
        finally:
            os.kill(self.redis.pid, signal.SIGCONT)
        await until(lambda: len(self.received()) >= 20, timeout=20)  # by the replay alone
        # Closings are not replayed: the receivers check their sessions.
        self.assertGreaterEqual(self.receivers[1].rechecks, 1)
        await self.send(10)
        await until(lambda: len(self.received()) >= 30, timeout=20)
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(self.received(), list(range(1, 31)))
        hub: Any = self.hubs[1]
        self.assertGreaterEqual(hub.stats["reconnects"], 1)

    async def test_a_process_killed_without_goodbye_goes_offline_by_itself(self) -> None:
        one, two = self.hubs
        await two.arrived("dave")
        await until(lambda: one.is_online("dave"))
        # Its heartbeats stop, and nothing says goodbye (as after SIGKILL).
        hub: Any = two
        hub._beat.stop()
        for factory in hub._factories:
            factory.stopTrying()
            for conn in list(factory.pool):
                conn.transport.abortConnection()
        await until(lambda: not one.is_online("dave"), timeout=10)
