"""The ``Hub`` contract (chatserver/hub/interface.py), written against the
interface only.

A backend gets these tests by subclassing ``HubContract`` together with
``unittest.TestCase`` and providing ``make_hubs(count, storage)``: ``count``
started hubs that behave as that many processes, which fill gaps from
``storage``, stopped at cleanup.  Delivery is asynchronous by contract,
so the tests wait for what they expect (bounded), and then check that
nothing else came.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor

from chatserver.hub.interface import Hub
from chatserver.storage.sqlite import SqliteStorage
from tests.support import until


class Recorder:
    """A process's receiver: keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, bytes]] = []
        self.rooms_changed: list[str] = []
        self.closings: list[tuple[str, str | None, str]] = []
        self.rechecks = 0

    def deliver(self, stream: str, event_id: int, encoded: bytes) -> None:
        self.events.append((stream, event_id, encoded))

    def room_changed(self, room: str) -> None:
        self.rooms_changed.append(room)

    def close_sessions(self, user: str, device: str | None, code: str) -> None:
        self.closings.append((user, device, code))

    def recheck_sessions(self) -> None:
        self.rechecks += 1

    def ids(self, stream: str) -> list[int]:
        return [i for s, i, _ in self.events if s == stream]


def _encoded(stream: str, event_id: int) -> bytes:
    return json.dumps({"type": "msg", "stream": stream, "id": event_id}).encode()


class HubContract:
    # --- hooks --------------------------------------------------------------

    async def make_hubs(self, count: int, storage: SqliteStorage) -> list[Hub]:
        raise NotImplementedError

    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    mktemp: Any
    addCleanup: Any

    async def _setup(self, count: int) -> tuple[list[Hub], list[Recorder], SqliteStorage]:
        path = Path(self.mktemp()) / "hub.sqlite3"
        path.parent.mkdir()
        storage = SqliteStorage(path, "NORMAL", create=True, reactor=reactor)
        storage.startService()
        self.addCleanup(storage.stopService)
        hubs = await self.make_hubs(count, storage)
        recorders = [Recorder() for _ in hubs]
        for hub, recorder in zip(hubs, recorders, strict=True):
            await hub.start(recorder, {})
        return hubs, recorders, storage

    async def _settle(self, hub: Hub) -> None:
        """Give asynchronous delivery its time: a marker published after
        everything else reaches another process after all of it (its own
        publisher has it at once, before anything has gone out: a hub may
        send at the end of the reactor turn)."""
        self._markers = getattr(self, "_markers", 0) + 1
        marker = f"marker:{id(hub)}:{self._markers}"
        others = [h for h in self._receivers if h is not hub]
        witness = others[0] if others else hub
        if others:
            await witness.follow(marker)
        hub.publish(marker, 1, _encoded(marker, 1))
        receiver = self._receivers[witness]
        await until(lambda: any(s == marker for s, _, _ in receiver.events))
        if others:
            witness.unfollow(marker)

    async def _hubs(self, count: int) -> tuple[list[Hub], list[Recorder], SqliteStorage]:
        hubs, recorders, storage = await self._setup(count)
        self._receivers = dict(zip(hubs, recorders, strict=True))
        return hubs, recorders, storage

    # --- delivery --------------------------------------------------------------

    async def test_a_process_gets_its_own_publications_whatever_it_follows(self) -> None:
        [hub], [mine], _ = await self._hubs(1)
        for n in (1, 2, 3):
            hub.publish("room:a", n, _encoded("room:a", n))
        await until(lambda: mine.ids("room:a") == [1, 2, 3])
        self.assertEqual(mine.events[0][2], _encoded("room:a", 1))

    async def test_another_process_gets_a_stream_only_while_it_follows_it(self) -> None:
        (one, two), (_, theirs), _ = await self._hubs(2)
        one.publish("room:a", 1, _encoded("room:a", 1))
        await self._settle(one)
        self.assertEqual(theirs.ids("room:a"), [])
        await two.follow("room:a")
        await two.follow("room:a")  # two sessions there
        one.publish("room:a", 2, _encoded("room:a", 2))
        await until(lambda: theirs.ids("room:a") == [2])
        two.unfollow("room:a")  # one session left: still followed
        one.publish("room:a", 3, _encoded("room:a", 3))
        await until(lambda: theirs.ids("room:a") == [2, 3])
        two.unfollow("room:a")
        one.publish("room:a", 4, _encoded("room:a", 4))
        await self._settle(one)
        self.assertEqual(theirs.ids("room:a"), [2, 3])

    async def test_a_direct_message_reaches_the_process_where_its_user_is(self) -> None:
        (one, two, three), (_, at_two, at_three), _ = await self._hubs(3)
        await two.arrived("bob")
        one.publish("dm:alice:bob", 1, _encoded("dm:alice:bob", 1), users=("alice", "bob"))
        await until(lambda: at_two.ids("dm:alice:bob") == [1])
        await self._settle(one)
        self.assertEqual(at_three.ids("dm:alice:bob"), [])

    async def test_a_duplicate_is_delivered_once(self) -> None:
        (one, two), (_, theirs), _ = await self._hubs(2)
        await two.follow("room:d")
        for n in (1, 2, 2, 1, 3):
            one.publish("room:d", n, _encoded("room:d", n))
        await until(lambda: theirs.ids("room:d")[-1:] == [3])
        await self._settle(one)
        self.assertEqual(theirs.ids("room:d"), [1, 2, 3])

    async def test_an_early_event_waits_until_storage_fills_the_gap(self) -> None:
        (one, two), (_, theirs), storage = await self._hubs(2)
        await two.follow("room:g")
        texts = []
        for n in range(4):
            event = {"type": "msg", "stream": "room:g", "id": 0, "ts": n, "body": str(n)}
            texts.append(await storage.append(event))
        one.publish("room:g", 1, texts[0].encode())
        await until(lambda: theirs.ids("room:g") == [1])
        # 4 comes before 2 and 3 (two publishers, a reconnection): the
        # receiver must still see 2, 3, 4, and each once.
        one.publish("room:g", 4, texts[3].encode())
        await until(lambda: theirs.ids("room:g") == [1, 2, 3, 4])
        one.publish("room:g", 3, texts[2].encode())  # arrives late: a duplicate now
        await self._settle(one)
        self.assertEqual(theirs.ids("room:g"), [1, 2, 3, 4])
        # What filled the gap is the stored events themselves.
        bodies = [json.loads(encoded)["body"] for stream, _, encoded in theirs.events if stream == "room:g"]
        self.assertEqual(bodies, ["0", "1", "2", "3"])

    async def test_following_goes_on_from_where_the_stream_is(self) -> None:
        """A process that starts following a stream gets what comes after
        the position ``follow`` reports, not what it missed before."""
        (one, two), (_, theirs), storage = await self._hubs(2)
        texts = []
        for n in range(4):
            event = {"type": "msg", "stream": "room:f", "id": 0, "ts": n, "body": str(n)}
            texts.append(await storage.append(event))
            if n < 3:
                one.publish("room:f", n + 1, texts[-1].encode())  # before two follows
        await self._settle(one)
        position = await two.follow("room:f")
        self.assertIn(position, (None, 4))  # None: the hub's own count is exact
        one.publish("room:f", 4, texts[3].encode())
        more = await storage.append({"type": "msg", "stream": "room:f", "id": 0, "ts": 5, "body": "4"})
        one.publish("room:f", 5, more.encode())
        await until(lambda: theirs.ids("room:f")[-1:] == [5])
        await self._settle(one)
        self.assertEqual(theirs.ids("room:f"), [5] if position == 4 else [4, 5])

    # --- presence ----------------------------------------------------------------

    async def test_presence_is_counted_per_process_and_seen_from_all(self) -> None:
        (one, two), _, _ = await self._hubs(2)
        await one.arrived("alice")
        await one.arrived("alice")  # two sessions
        await two.arrived("alice")
        await two.arrived("bob")
        await until(lambda: one.where("alice") == {one.name, two.name} and one.is_online("bob"))
        self.assertEqual(two.online_count(), 2)
        one.left("alice")
        two.left("alice")
        await until(lambda: two.where("alice") == {one.name})
        one.left("alice")
        await until(lambda: not two.is_online("alice"))
        self.assertEqual(one.online_count(), 1)

    async def test_a_stopped_process_takes_its_users_offline(self) -> None:
        (one, two), _, _ = await self._hubs(2)
        await two.arrived("carol")
        await until(lambda: one.is_online("carol"))
        await two.stop()
        await until(lambda: not one.is_online("carol"))

    # --- invalidation ------------------------------------------------------------

    async def test_a_closing_reaches_every_other_process(self) -> None:
        (one, two, three), (mine, at_two, at_three), _ = await self._hubs(3)
        one.close_sessions("mallory", None, "account_disabled")
        one.close_sessions("bob", "PHONE_1", "device_removed")
        want = [("mallory", None, "account_disabled"), ("bob", "PHONE_1", "device_removed")]
        await until(lambda: at_two.closings == want and at_three.closings == want)
        await self._settle(one)
        self.assertEqual(mine.closings, [])

    async def test_an_invalidation_reaches_every_other_process(self) -> None:
        (one, two, three), (mine, at_two, at_three), _ = await self._hubs(3)
        one.invalidate("garden")
        await until(lambda: at_two.rooms_changed == ["garden"] and at_three.rooms_changed == ["garden"])
        await self._settle(one)
        self.assertEqual(mine.rooms_changed, [])
