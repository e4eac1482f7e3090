"""The chat core over its two interfaces, as two processes would use them.

Two ``ChatService`` cores, each with its own hub, stand for two server
processes on one database.  In the SQLite pass they share one
``SqliteStorage`` (one server per SQLite file: the file is locked) and
their hubs one ``LocalBus``; in the PostgreSQL pass each has its own
``PostgresStorage`` on one database.  (Only the first core writes events
here.)  What one core commits reaches the members connected to the
other, and a room change made on one is seen by the other after the
hub's invalidation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from chatserver.chat import ChatService
from chatserver.hub.local import LocalBus, LocalHub
from chatserver.storage.sqlite import SqliteStorage
from tests.support import backend, until


class Member:
    """A logged-in connection as the core sees it (chat.Member)."""

    def __init__(self, user: str, role: str = "user") -> None:
        self.user: str | None = user
        self.role = role
        self.device: str | None = None
        self.received: list[dict[str, Any]] = []
        self.closed: tuple[str, str] | None = None

    def deliver(self, encoded: bytes) -> None:
        self.received.append(json.loads(encoded))

    def close(self, code: str, message: str) -> None:
        self.closed = (code, message)


class TwoCoresTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.clock = task.Clock()
        bus = LocalBus()
        self.cores = []
        storages = self.storages()
        for user in ("alice", "bob", "carol"):
            await storages[0].add_user(user, "not a hash", "user")
        for name, storage in zip(("p1", "p2"), storages, strict=True):
            core = ChatService(storage, LocalHub(storage.history, bus, name=name), self.clock)
            await core.load()
            self.cores.append(core)
        # Every user's first login (which puts them in the lobby) on the
        # first core, the one that writes; the second learns of the
        # lobby's new members through the hub.
        one, two = self.cores
        for user in ("alice", "bob", "carol"):
            member = Member(user)
            await one.connect(member)
            one.disconnect(member)
        await until(lambda: set(two.rooms["lobby"].members) == {"alice", "bob", "carol"})

    def storages(self) -> list[Any]:
        """Each core's storage (started, stopped at cleanup)."""
        if backend() == "postgres":
            from chatserver.storage.postgres import PostgresStorage
            from tests import backends

            url = backends.postgres_url()
            made: list[Any] = [PostgresStorage(url, reactor=reactor) for _ in range(2)]
        else:
            path = Path(self.mktemp()) / "chat.sqlite3"
            path.parent.mkdir()
            made = [SqliteStorage(path, "NORMAL", create=True, reactor=reactor)]
        for storage in made:
            storage.startService()
            self.addCleanup(storage.stopService)
        return made * (2 // len(made))

    async def test_a_message_committed_by_one_reaches_members_on_the_other(self) -> None:
        one, two = self.cores
        alice, bob = Member("alice"), Member("bob")
        await one.connect(alice)
        await two.connect(bob)  # in the lobby: the second core follows it now
        event = await one.say(alice, "lobby", "across")

        await until(lambda: any(e["type"] == "msg" for e in bob.received))
        [msg] = [e for e in bob.received if e["type"] == "msg"]
        self.assertEqual((msg["id"], msg["body"], msg["from"]), (event["id"], "across", "alice"))
        self.assertEqual(two.last_ids["room:lobby"], event["id"])

    async def test_presence_is_seen_from_every_process(self) -> None:
        one, two = self.cores
        alice = Member("alice")
        await one.connect(alice)
        self.assertTrue(two.hub.is_online("alice"))
        self.assertEqual(two.hub.where("alice"), {"p1"})
        members, _ = two.who(Member("bob"), "lobby")
        self.assertEqual({m["user"]: m["online"] for m in members}["alice"], True)
        one.disconnect(alice)
        self.assertFalse(two.hub.is_online("alice"))

    async def test_a_room_change_on_one_is_reloaded_by_the_other(self) -> None:
        one, two = self.cores
        alice = Member("alice")
        carol = Member("carol")
        await one.connect(alice)
        await two.connect(carol)
        await one.create_room(alice, "garden", "public", "roses")
        # The other core had no such room; the invalidation makes it read it.
        await until(lambda: "garden" in two.rooms and "alice" in two.rooms["garden"].members)
        self.assertEqual(two.rooms["garden"].topic, "roses")
        await one.set_topic(alice, "garden", "tulips")
        await until(lambda: two.rooms["garden"].topic == "tulips")
        # Carol, on the other core, now sees the room that was not there.
        rooms, _ = two.list_rooms(carol)
        self.assertIn("garden", [r["room"] for r in rooms])
        # And her core delivers the room's events to her once she is in it
        # (her join written by the first core, as a second writer needs
        # the PostgreSQL storage).
        await one.join(Member("carol"), "garden")
        await until(lambda: "garden" in two.user_rooms.get("carol", ()))
        await one.say(alice, "garden", "welcome")
        await until(lambda: any(e.get("body") == "welcome" for e in carol.received))
