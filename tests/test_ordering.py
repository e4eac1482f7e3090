"""hub/ordering.py's ``InOrder`` with a clock, as the Redis hub runs it:
a gap is read from storage only if it is still open after the grace, so
that one process's publication overtaking another's costs no read.

Real storage (an SQLite file) behind the gap reads, a ``task.Clock`` for
the grace."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet import reactor, task
from twisted.trial import unittest

from chatserver.hub.ordering import GAP_GRACE, InOrder
from chatserver.storage.sqlite import SqliteStorage
from tests.contract_hub import Recorder
from tests.support import until

STREAM = "room:o"


class GraceTests(unittest.TestCase):
    async def setUp(self) -> None:
        path = Path(self.mktemp()) / "order.sqlite3"
        path.parent.mkdir()
        self.storage = SqliteStorage(path, "NORMAL", create=True, reactor=reactor)
        self.storage.startService()
        self.addCleanup(self.storage.stopService)
        self.stored = []
        for n in range(4):
            text = await self.storage.append(
                {"type": "msg", "stream": STREAM, "id": 0, "ts": n, "body": "stored"}
            )
            self.stored.append(text.encode())
        self.clock = task.Clock()
        self.recorder = Recorder()
        self.order = InOrder(self.recorder, self.storage.history, {}, clock=self.clock)

    def live(self, event_id: int) -> bytes:
        """The event as a publication carries it (told apart from storage's by its body)."""
        return json.dumps({"type": "msg", "stream": STREAM, "id": event_id, "body": "live"}).encode()

    def bodies(self) -> list[tuple[int, str]]:
        return [(i, json.loads(e)["body"]) for s, i, e in self.recorder.events if s == STREAM]

    def test_an_overtaken_event_is_waited_for_and_nothing_is_read(self) -> None:
        self.order.offer(STREAM, 1, self.live(1))
        self.order.offer(STREAM, 3, self.live(3))  # overtook 2
        self.clock.advance(GAP_GRACE / 2)
        self.assertEqual(self.bodies(), [(1, "live")])  # 3 waits for 2
        self.order.offer(STREAM, 2, self.live(2))
        self.assertEqual(self.bodies(), [(1, "live"), (2, "live"), (3, "live")])
        self.assertEqual(self.order.stats, {"gaps": 1, "fills": 0})
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the grace's call is gone

    async def test_a_gap_still_open_after_the_grace_is_read_from_storage(self) -> None:
        self.order.offer(STREAM, 1, self.live(1))
        self.order.offer(STREAM, 4, self.live(4))
        self.clock.advance(GAP_GRACE * 0.99)
        self.assertEqual(self.order.stats["fills"], 0)
        self.clock.advance(GAP_GRACE * 0.02)
        self.assertEqual(self.order.stats["fills"], 1)
        await until(lambda: len(self.recorder.events) == 4)
        self.assertEqual(self.bodies(), [(1, "live"), (2, "stored"), (3, "stored"), (4, "live")])
        self.order.offer(STREAM, 3, self.live(3))  # the late publication: a duplicate now
        self.assertEqual(len(self.recorder.events), 4)

    def test_forgetting_a_stream_or_stopping_cancels_the_wait(self) -> None:
        self.order.offer(STREAM, 1, self.live(1))
        self.order.offer(STREAM, 3, self.live(3))
        self.order.forget(STREAM)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.order.offer("room:p", 1, self.live(1))
        self.order.offer("room:p", 5, self.live(5))
        self.order.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(GAP_GRACE * 2)
        self.assertEqual(self.order.stats["fills"], 0)

    async def test_without_a_clock_a_gap_is_read_at_once(self) -> None:
        order = InOrder(self.recorder, self.storage.history, {})
        order.offer(STREAM, 1, self.live(1))
        order.offer(STREAM, 3, self.live(3))
        self.assertEqual(order.stats["fills"], 1)
        await until(lambda: len(self.recorder.events) == 3)
        self.assertEqual(self.bodies(), [(1, "live"), (2, "stored"), (3, "live")])
