"""Rooms, direct messages, history, catch-up and session tokens, end to end.

Every test runs the real service tree on loopback with a real SQLite file
(``tests.support``) and talks to it through the real client library.  "A
client did not get an event" is checked after a ping round trip on that
client's connection, sent after the action that would have produced the
event was acknowledged: the server fans an event out before it answers the
request that caused it, so anything it sent has arrived by the pong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import endpoints, reactor, task
from twisted.trial import unittest

from chatclient.reconnect import ReconnectingClient
from chatclient.session import ChatSession, ServerError
from chatserver import accounts
from chatserver.storage.direct import open_direct
from tests.support import (
    PASSWORD,
    EventQueue,
    RunningServer,
    add_admin,
    logged_in,
    make_settings,
    open_session,
    start_server,
    until,
)


def of_stream(queue: EventQueue, stream: str) -> list[dict[str, Any]]:
    """The events of ``stream`` that ``queue`` collected (and nobody took)."""
    return [e for e in queue.events if e.get("stream") == stream]


def without_ref(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "ref"}


def room_entry(rooms_answer: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in rooms_answer["rooms"]:
        if entry["room"] == name:
            return entry
    return None


class Helpers(unittest.TestCase):
    async def refused(self, d: Any, code: str) -> dict[str, Any]:
        """``d`` fails with a ServerError of ``code``; returns the error event."""
        error = await self.assertFailure(d, ServerError)
        self.assertEqual(error.code, code, error.event)
        return error.event

    async def assertNothingOn(self, session: ChatSession, queue: EventQueue, stream: str) -> None:
        await session.ping()
        self.assertEqual(of_stream(queue, stream), [])

    @staticmethod
    def dm(session: ChatSession, to: str, body: str) -> Any:
        return session.request({"type": "dm", "to": to, "body": body})

    @staticmethod
    def history(session: ChatSession, stream: str, **params: Any) -> Any:
        return session.request(dict({"type": "history", "stream": stream}, **params))

    async def token_login(self, server: RunningServer, user: str, token: str) -> tuple[ChatSession, Any]:
        session = await open_session(self, server)
        welcome = session.request({"type": "login", "user": user, "token": token})
        return session, welcome


class PublicRoomTests(Helpers):
    async def test_create_list_join_say_part_topic(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        alice_q, bob_q, carol_q = EventQueue(alice), EventQueue(bob), EventQueue(carol)

        ack = await alice.request(
            {"type": "create", "room": "games", "kind": "public", "topic": "board games"}
        )
        self.assertEqual((ack["type"], ack["stream"], ack["id"]), ("ack", "room:games", 1))
        created = await alice_q.next(lambda e: e.get("stream") == "room:games")
        self.assertEqual((created["type"], created["user"], created["id"]), ("joined", "alice", 1))

        # Listed for everyone, with the creator as its one member.
        for session, mine in ((alice, True), (bob, False), (carol, False)):
            listed = room_entry(await session.request({"type": "rooms"}), "games")
            self.assertEqual(
                listed,
                {
                    "room": "games",
                    "kind": "public",
                    "topic": "board games",
                    "members": 1,
                    "encrypted": False,
                    "member": mine,
                },
            )

        # A message before bob joins does not reach him.
        await alice.request({"type": "say", "room": "games", "body": "before bob"})
        await self.assertNothingOn(bob, bob_q, "room:games")

        ack = await bob.request({"type": "join", "room": "games"})
        self.assertEqual((ack["stream"], ack["id"]), ("room:games", 3))
        joined = await alice_q.next(lambda e: e.get("type") == "joined" and e.get("room") == "games")
        self.assertEqual((joined["user"], joined["id"]), ("bob", 3))
        own = await bob_q.next(lambda e: e.get("stream") == "room:games")
        self.assertEqual((own["type"], own["user"]), ("joined", "bob"))
        listed = room_entry(await carol.request({"type": "rooms"}), "games")
        self.assertEqual((listed["members"], listed["member"]), (2, False))
        self.assertTrue(room_entry(await bob.request({"type": "rooms"}), "games")["member"])
        await self.refused(bob.request({"type": "join", "room": "games"}), "already_member")

        ack = await alice.request({"type": "say", "room": "games", "body": "hi bob"})
        got = await bob_q.next(lambda e: e.get("type") == "msg")
        self.assertEqual(
            got,
            {
                "type": "msg",
                "from": "alice",
                "body": "hi bob",
                "room": "games",
                "stream": "room:games",
                "id": ack["id"],
                "ts": ack["ts"],
            },
        )
        # Only members: carol, in the lobby with both of them, gets nothing.
        await self.assertNothingOn(carol, carol_q, "room:games")

        # A plain member may not set the topic; the owner may, and it is
        # announced to members and shown in the list.
        error = await self.refused(
            bob.request({"type": "topic", "room": "games", "topic": "mine now"}), "forbidden"
        )
        self.assertEqual(error["request"], "topic")
        await self.refused(carol.request({"type": "topic", "room": "games", "topic": "mine"}), "forbidden")
        ack = await alice.request({"type": "topic", "room": "games", "topic": "chess only"})
        topic = await bob_q.next(lambda e: e.get("type") == "topic")
        self.assertEqual(
            {k: topic[k] for k in ("room", "topic", "by", "id", "stream")},
            {"room": "games", "topic": "chess only", "by": "alice", "id": ack["id"], "stream": "room:games"},
        )
        self.assertEqual(room_entry(await carol.request({"type": "rooms"}), "games")["topic"], "chess only")
        await self.assertNothingOn(carol, carol_q, "room:games")

        # Part: bob sees his own "left", then nothing more from the room.
        ack = await bob.request({"type": "part", "room": "games"})
        left = await bob_q.next(lambda e: e.get("type") == "left")
        self.assertEqual((left["user"], left["room"], left["id"]), ("bob", "games", ack["id"]))
        left = await alice_q.next(lambda e: e.get("type") == "left")
        self.assertEqual(left["user"], "bob")
        await alice.request({"type": "say", "room": "games", "body": "bob is gone"})
        await self.assertNothingOn(bob, bob_q, "room:games")
        await self.refused(bob.request({"type": "say", "room": "games", "body": "hello?"}), "not_member")
        await self.refused(bob.request({"type": "part", "room": "games"}), "not_member")
        listed = room_entry(await bob.request({"type": "rooms"}), "games")
        self.assertEqual((listed["members"], listed["member"]), (1, False))

        # Names are unique.
        await self.refused(bob.request({"type": "create", "room": "games"}), "room_exists")
        await self.refused(alice.request({"type": "create", "room": "lobby"}), "room_exists")
        await self.refused(bob.request({"type": "join", "room": "nowhere"}), "no_such_room")


class PrivateRoomTests(Helpers):
    async def test_private_room_is_invisible_until_invited(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        alice_q, bob_q, carol_q = EventQueue(alice), EventQueue(bob), EventQueue(carol)

        await alice.request({"type": "create", "room": "secret", "kind": "private", "topic": "shh"})
        listed = room_entry(await alice.request({"type": "rooms"}), "secret")
        self.assertEqual(
            listed,
            {
                "room": "secret",
                "kind": "private",
                "topic": "shh",
                "members": 1,
                "encrypted": False,
                "member": True,
            },
        )
        await alice.request({"type": "say", "room": "secret", "body": "private thoughts"})

        async def same_as_missing(request: dict[str, Any], code: str) -> None:
            """Refused exactly as for a room that does not exist."""
            hidden = await self.refused(bob.request(dict(request, room="secret")), code)
            missing = await self.refused(bob.request(dict(request, room="nosuch")), code)
            self.assertEqual(
                without_ref(hidden),
                dict(without_ref(missing), message=missing["message"].replace("nosuch", "secret")),
            )

        self.assertIsNone(room_entry(await bob.request({"type": "rooms"}), "secret"))
        await same_as_missing({"type": "join"}, "no_such_room")
        await same_as_missing({"type": "who"}, "no_such_room")
        await same_as_missing({"type": "say", "body": "let me in"}, "no_such_room")
        await same_as_missing({"type": "topic", "topic": "mine"}, "no_such_room")
        await same_as_missing({"type": "invite", "user": "carol"}, "no_such_room")
        hidden = await self.refused(self.history(bob, "room:secret"), "no_such_room")
        missing = await self.refused(self.history(bob, "room:nosuch"), "no_such_room")
        self.assertEqual(hidden["code"], missing["code"])

        await alice.request({"type": "say", "room": "secret", "body": "still private"})
        await self.assertNothingOn(bob, bob_q, "room:secret")
        await self.assertNothingOn(carol, carol_q, "room:secret")

        # Only a moderator may invite: the owner does.
        answer = await alice.request({"type": "invite", "room": "secret", "user": "bob"})
        self.assertEqual(without_ref(answer), {"type": "invited", "room": "secret", "user": "bob"})
        notice = await bob_q.next(lambda e: e.get("type") == "invited")
        self.assertEqual((notice["room"], notice["by"]), ("secret", "alice"))
        await self.refused(
            alice.request({"type": "invite", "room": "secret", "user": "nobody"}), "no_such_user"
        )

        listed = room_entry(await bob.request({"type": "rooms"}), "secret")
        self.assertEqual((listed["kind"], listed["member"]), ("private", False))
        self.assertIsNone(room_entry(await carol.request({"type": "rooms"}), "secret"))
        await self.refused(carol.request({"type": "join", "room": "secret"}), "no_such_room")

        await bob.request({"type": "join", "room": "secret"})
        joined = await alice_q.next(
            lambda e: e.get("type") == "joined" and e.get("room") == "secret" and e["user"] == "bob"
        )
        self.assertEqual(joined["stream"], "room:secret")
        ack = await alice.request({"type": "say", "room": "secret", "body": "welcome bob"})
        got = await bob_q.next(lambda e: e.get("type") == "msg" and e.get("room") == "secret")
        self.assertEqual((got["body"], got["id"]), ("welcome bob", ack["id"]))
        who = await bob.request({"type": "who", "room": "secret"})
        self.assertEqual(who["users"], ["alice", "bob"])
        page = await self.history(bob, "room:secret")
        self.assertEqual(
            [e.get("body") for e in page["events"] if e["type"] == "msg"],
            ["private thoughts", "still private", "welcome bob"],
        )
        # A plain member may not invite others in.
        await self.refused(bob.request({"type": "invite", "room": "secret", "user": "carol"}), "forbidden")
        # And the outsider still sees nothing of it.
        await self.assertNothingOn(carol, carol_q, "room:secret")
        await self.refused(self.history(carol, "room:secret"), "no_such_room")
        await self.refused(carol.request({"type": "who", "room": "secret"}), "no_such_room")


class ReadOnlyRoomTests(Helpers):
    async def test_only_owner_and_moderators_may_say(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        bob_q = EventQueue(bob)
        await alice.request({"type": "create", "room": "news", "kind": "readonly"})
        self.assertEqual(room_entry(await bob.request({"type": "rooms"}), "news")["kind"], "readonly")
        await bob.request({"type": "join", "room": "news"})

        error = await self.refused(
            bob.request({"type": "say", "room": "news", "body": "me too"}), "read_only"
        )
        self.assertEqual(error["request"], "say")
        ack = await alice.request({"type": "say", "room": "news", "body": "headline"})
        got = await bob_q.next(lambda e: e.get("type") == "msg")
        self.assertEqual((got["room"], got["body"], got["id"]), ("news", "headline", ack["id"]))

        # Moderators are made by the owner only.
        await self.refused(bob.request({"type": "op", "room": "news", "user": "bob"}), "forbidden")
        ack = await alice.request({"type": "op", "room": "news", "user": "bob"})
        role = await bob_q.next(lambda e: e.get("type") == "role")
        self.assertEqual(
            {k: role[k] for k in ("room", "user", "role", "by", "id")},
            {"room": "news", "user": "bob", "role": "moderator", "by": "alice", "id": ack["id"]},
        )
        who = await bob.request({"type": "who", "room": "news"})
        self.assertIn({"user": "bob", "role": "moderator", "online": True}, who["members"])
        ack = await bob.request({"type": "say", "room": "news", "body": "correction"})
        self.assertEqual(ack["stream"], "room:news")

        # And unmade: back to read-only for bob.
        await alice.request({"type": "deop", "room": "news", "user": "bob"})
        await self.refused(bob.request({"type": "say", "room": "news", "body": "again"}), "read_only")


class LimitTests(Helpers):
    async def test_room_full_and_too_many_rooms(self) -> None:
        server = await start_server(self, max_room_members=2, max_rooms_per_user=3)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")

        # Everyone is in the lobby: that is one room of each user's three.
        await alice.request({"type": "create", "room": "r1"})
        await bob.request({"type": "join", "room": "r1"})
        error = await self.refused(carol.request({"type": "join", "room": "r1"}), "room_full")
        self.assertEqual(error["request"], "join")
        self.assertEqual(room_entry(await carol.request({"type": "rooms"}), "r1")["members"], 2)

        await alice.request({"type": "create", "room": "r2"})  # alice: lobby, r1, r2
        await self.refused(alice.request({"type": "create", "room": "r3"}), "too_many_rooms")
        # The refused room was not made: someone else may take the name.
        self.assertIsNone(room_entry(await carol.request({"type": "rooms"}), "r3"))
        await carol.request({"type": "create", "room": "r3"})
        await self.refused(alice.request({"type": "join", "room": "r3"}), "too_many_rooms")

        # Leaving a room frees a place.
        await alice.request({"type": "part", "room": "r2"})
        ack = await alice.request({"type": "join", "room": "r3"})
        self.assertEqual(ack["stream"], "room:r3")
        # And leaving r1 frees a seat in it.
        await bob.request({"type": "part", "room": "r1"})
        ack = await carol.request({"type": "join", "room": "r1"})
        self.assertEqual(ack["stream"], "room:r1")

    async def test_the_default_room_has_no_member_cap(self) -> None:
        """The spec (both "Sessions" and "Rooms and roles"): the default room
        has no member cap, neither for the membership of a first login nor
        for an explicit ``join``, so a wave of registrations cannot lock
        anyone out of it; other rooms keep the cap."""
        server = await start_server(self, max_room_members=2)
        alice = await logged_in(self, server, "alice")
        await logged_in(self, server, "bob")
        carol = await open_session(self, server)
        welcome = await carol.register("carol", PASSWORD)
        self.assertEqual(welcome["rooms"], ["lobby"])  # the third member of a room capped at two
        dave = await open_session(self, server)
        self.assertEqual((await dave.register("dave", PASSWORD))["rooms"], ["lobby"])
        self.assertEqual(sorted(await alice.who("lobby")), ["alice", "bob", "carol", "dave"])
        self.assertEqual(room_entry(await alice.request({"type": "rooms"}), "lobby")["members"], 4)
        # Someone who left comes back with a join, however full it is.
        await carol.request({"type": "part", "room": "lobby"})
        ack = await carol.request({"type": "join", "room": "lobby"})
        self.assertEqual(ack["stream"], "room:lobby")
        self.assertEqual(len(await alice.who("lobby")), 4)
        # Any other room is capped as before.
        await alice.request({"type": "create", "room": "small"})
        await carol.request({"type": "join", "room": "small"})
        await self.refused(dave.request({"type": "join", "room": "small"}), "room_full")

    async def test_a_user_banned_from_the_default_room_is_not_put_in_it(self) -> None:
        """The one thing that keeps a first login out of the default room."""
        server = await start_server(self, max_room_members=1)
        root = await open_session(self, server)
        add_admin(server)
        await root.login("root", PASSWORD)
        await root.request({"type": "ban", "room": "lobby", "user": "erin"})
        erin = await open_session(self, server)
        self.assertEqual((await erin.register("erin", PASSWORD))["rooms"], [])
        frank = await open_session(self, server)
        self.assertEqual((await frank.register("frank", PASSWORD))["rooms"], ["lobby"])


class RestartTests(Helpers):
    async def test_rooms_membership_roles_and_invites_survive_a_restart(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        await alice.request({"type": "create", "room": "club", "topic": "members only"})
        await bob.request({"type": "join", "room": "club"})
        await alice.request({"type": "op", "room": "club", "user": "bob"})
        await alice.request({"type": "create", "room": "vault", "kind": "private"})
        await alice.request({"type": "invite", "room": "vault", "user": "carol"})
        before = await alice.request({"type": "say", "room": "club", "body": "see you after the restart"})

        await server.stop()
        restarted = RunningServer(server.settings)
        await restarted.start()
        self.addCleanup(restarted.stop)

        alice = await logged_in(self, restarted, "alice", register=False)
        bob = await open_session(self, restarted)
        welcome = await bob.login("bob", PASSWORD)
        self.assertEqual(welcome["rooms"], ["club", "lobby"])
        self.assertEqual(welcome["streams"]["room:club"], before["id"])
        bob_q = EventQueue(bob)

        ack = await alice.request({"type": "say", "room": "club", "body": "still here"})
        self.assertEqual(ack["id"], before["id"] + 1)  # ids continue, none reused
        got = await bob_q.next(lambda e: e.get("type") == "msg")
        self.assertEqual((got["room"], got["body"], got["id"]), ("club", "still here", ack["id"]))

        who = await alice.request({"type": "who", "room": "club"})
        self.assertEqual(
            [(m["user"], m["role"]) for m in who["members"]], [("alice", "owner"), ("bob", "moderator")]
        )
        listed = room_entry(await bob.request({"type": "rooms"}), "club")
        self.assertEqual((listed["topic"], listed["members"], listed["member"]), ("members only", 2, True))
        # The moderator's role still counts.
        await bob.request({"type": "topic", "room": "club", "topic": "moderated"})
        # The invitation survived too.
        carol = await logged_in(self, restarted, "carol", register=False)
        self.assertEqual(room_entry(await carol.request({"type": "rooms"}), "vault")["member"], False)
        await carol.request({"type": "join", "room": "vault"})
        self.assertIsNone(room_entry(await bob.request({"type": "rooms"}), "vault"))
        page = await self.history(alice, "room:club")
        self.assertEqual(
            [e["body"] for e in page["events"] if e["type"] == "msg"],
            ["see you after the restart", "still here"],
        )


class DirectMessageTests(Helpers):
    async def test_live_delivery_to_recipient_and_all_sender_connections(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        alice2 = await logged_in(self, server, "alice", register=False)
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        queues = {
            name: EventQueue(s) for name, s in (("a1", alice), ("a2", alice2), ("bob", bob), ("carol", carol))
        }

        ack = await self.dm(alice, "bob", "psst")
        self.assertEqual((ack["type"], ack["stream"], ack["id"]), ("ack", "dm:alice:bob", 1))
        expected = {
            "type": "dm",
            "from": "alice",
            "to": "bob",
            "body": "psst",
            "stream": "dm:alice:bob",
            "id": 1,
            "ts": ack["ts"],
        }
        for name in ("bob", "a1", "a2"):
            got = await queues[name].next(lambda e: e.get("type") == "dm")
            self.assertEqual(got, expected, name)
        await self.assertNothingOn(carol, queues["carol"], "dm:alice:bob")

        # The stream is the pair's, whoever writes: same name, next id.
        ack = await self.dm(bob, "alice", "what?")
        self.assertEqual((ack["stream"], ack["id"]), ("dm:alice:bob", 2))
        for name in ("a1", "a2", "bob"):
            got = await queues[name].next(lambda e: e.get("type") == "dm")
            self.assertEqual((got["from"], got["to"], got["body"], got["id"]), ("bob", "alice", "what?", 2))
        await self.assertNothingOn(carol, queues["carol"], "dm:alice:bob")
        for queue in queues.values():
            self.assertEqual([e for e in queue.events if e.get("type") == "dm"], [])

    async def test_bad_recipients(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        error = await self.refused(self.dm(alice, "nobody", "hello?"), "no_such_user")
        self.assertEqual(error["field"], "to")
        error = await self.assertFailure(self.dm(alice, "alice", "note to self"), ServerError)
        self.assertEqual(error.event.get("field"), "to")
        # Names are case-insensitive: this is still herself.
        await self.assertFailure(self.dm(alice, "ALICE", "note to self"), ServerError)
        pong = await alice.ping()  # the connection is fine
        self.assertEqual(pong["type"], "pong")

    async def test_offline_messages_arrive_at_next_login_once_and_in_order(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await bob.close()
        await until(lambda: "bob" not in server.factory.chat.online)

        acks = [await self.dm(alice, "bob", f"offline {n}") for n in range(5)]
        self.assertEqual([a["id"] for a in acks], [1, 2, 3, 4, 5])

        bob = await open_session(self, server)
        bob_q = EventQueue(bob)
        welcome = await bob.login("bob", PASSWORD)
        self.assertEqual(welcome["streams"]["dm:alice:bob"], 5)
        got = [await bob_q.next(lambda e: e.get("type") == "dm") for _ in range(5)]
        await bob.ping()
        self.assertEqual([e for e in bob_q.events if e.get("type") == "dm"], [])  # no more, no repeats
        self.assertEqual([e["id"] for e in got], [1, 2, 3, 4, 5])
        self.assertEqual([e["body"] for e in got], [f"offline {n}" for n in range(5)])
        self.assertEqual([e["ts"] for e in got], [a["ts"] for a in acks])
        self.assertTrue(all(e["from"] == "alice" and e["to"] == "bob" for e in got))
        await bob.close()

        # Delivered once: the next login gets none of them again.  (A live
        # message after its welcome marks the end of anything pushed.)
        await until(lambda: "bob" not in server.factory.chat.online)
        again = await open_session(self, server)
        again_q = EventQueue(again)
        await again.login("bob", PASSWORD)
        marker = await self.dm(alice, "bob", "marker")
        await again_q.next(lambda e: e.get("type") == "dm" and e["id"] == marker["id"])
        await again.ping()
        self.assertEqual([e for e in again_q.events if e.get("type") == "dm"], [])

    async def test_offline_delivery_is_remembered_across_a_restart(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await bob.close()
        await until(lambda: "bob" not in server.factory.chat.online)
        for n in range(3):
            await self.dm(alice, "bob", f"offline {n}")
        bob = await open_session(self, server)
        bob_q = EventQueue(bob)
        await bob.login("bob", PASSWORD)
        got = [await bob_q.next(lambda e: e.get("type") == "dm") for _ in range(3)]
        self.assertEqual([e["id"] for e in got], [1, 2, 3])
        await bob.ping()

        await server.stop()
        restarted = RunningServer(server.settings)
        await restarted.start()
        self.addCleanup(restarted.stop)
        alice = await logged_in(self, restarted, "alice", register=False)
        bob = await open_session(self, restarted)
        bob_q = EventQueue(bob)
        welcome = await bob.login("bob", PASSWORD)
        self.assertEqual(welcome["streams"]["dm:alice:bob"], 3)
        marker = await self.dm(alice, "bob", "after the restart")
        self.assertEqual(marker["id"], 4)
        await bob_q.next(lambda e: e.get("type") == "dm" and e["id"] == 4)
        self.assertEqual([e for e in bob_q.events if e.get("type") == "dm"], [])

    async def test_messages_sent_while_the_recipient_logs_in_are_delivered_once_in_order(self) -> None:
        """Offline messages are pushed after the welcome while new ones
        arrive live: together each must come exactly once, in id order."""
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        total = 0
        for attempt in range(8):
            await bob.close()
            await until(lambda: "bob" not in server.factory.chat.online)
            for n in range(3):
                await self.dm(alice, "bob", f"round {attempt} offline {n}")
            bob = await open_session(self, server)
            bob_q = EventQueue(bob)
            login = bob.login("bob", PASSWORD)
            # Alice keeps writing, a few messages in flight at a time, from
            # before bob's login until after it: some are committed while
            # his login and the push of his offline messages go on.
            acks = []
            n = 0
            while not login.called or n < 20:
                window = [self.dm(alice, "bob", f"round {attempt} live {n + k}") for k in range(3)]
                n += 3
                acks.extend([await d for d in window])
            await login
            marker = await self.dm(alice, "bob", f"round {attempt} marker")
            await bob_q.next(lambda e, last=marker["id"]: e.get("type") == "dm" and e["id"] == last)
            ids = [e["id"] for e in bob_q.events if e.get("type") == "dm"]
            expected = list(range(total + 1, acks[-1]["id"] + 1))
            self.assertEqual(ids, expected, f"round {attempt}")
            total = marker["id"]


class HistoryTests(Helpers):
    async def test_paging_forwards_and_backwards(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        alice_q = EventQueue(alice)
        await alice.request({"type": "create", "room": "hist"})
        for n in range(30):
            await alice.request({"type": "say", "room": "hist", "body": f"message {n}"})
        await alice.ping()
        live = of_stream(alice_q, "room:hist")
        self.assertEqual(len(live), 31)  # alice's "joined" and 30 messages
        self.assertEqual([e["id"] for e in live], list(range(1, 32)))

        # Forwards from the start, ten at a time.
        pages = []
        after = 0
        while True:
            page = await self.history(alice, "room:hist", after=after, limit=10)
            self.assertEqual(page["stream"], "room:hist")
            pages.append(page)
            if not page["more"]:
                break
            after = page["events"][-1]["id"]
        self.assertEqual([len(p["events"]) for p in pages], [10, 10, 10, 1])
        self.assertEqual([p["more"] for p in pages], [True, True, True, False])
        self.assertEqual([e for p in pages for e in p["events"]], live)

        # Backwards from the end (scroll-back), ten at a time.
        pages = [await self.history(alice, "room:hist", limit=10)]
        while pages[-1]["more"]:
            pages.append(
                await self.history(alice, "room:hist", before=pages[-1]["events"][0]["id"], limit=10)
            )
        self.assertEqual([len(p["events"]) for p in pages], [10, 10, 10, 1])
        self.assertEqual([p["more"] for p in pages], [True, True, True, False])
        self.assertEqual([e for p in reversed(pages) for e in p["events"]], live)
        for page in pages:  # every page ascending, consecutive ids
            ids = [e["id"] for e in page["events"]]
            self.assertEqual(ids, list(range(ids[0], ids[0] + len(ids))))

        # Edges: a page that ends exactly at the end (or start) has no more.
        page = await self.history(alice, "room:hist", after=21, limit=10)
        self.assertEqual(([e["id"] for e in page["events"]], page["more"]), (list(range(22, 32)), False))
        page = await self.history(alice, "room:hist", before=11, limit=10)
        self.assertEqual(([e["id"] for e in page["events"]], page["more"]), (list(range(1, 11)), False))
        page = await self.history(alice, "room:hist", after=31)
        self.assertEqual((page["events"], page["more"]), ([], False))
        page = await self.history(alice, "room:hist", before=1)
        self.assertEqual((page["events"], page["more"]), ([], False))
        page = await self.history(alice, "room:hist", after=5, before=9)
        self.assertEqual([e["id"] for e in page["events"]], [6, 7, 8])
        page = await self.history(alice, "room:hist")  # default: the latest, up to 50
        self.assertEqual((page["events"], page["more"]), (live, False))
        await self.refused(self.history(alice, "room:hist", limit=0), "bad_field")

    async def test_dm_history_is_for_the_two_participants_only(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        bob_q = EventQueue(bob)
        await self.dm(alice, "bob", "one")
        await self.dm(bob, "alice", "two")
        await bob.ping()
        live = of_stream(bob_q, "dm:alice:bob")
        self.assertEqual([e["body"] for e in live], ["one", "two"])
        for session in (alice, bob):
            page = await self.history(session, "dm:alice:bob")
            self.assertEqual((page["events"], page["more"]), (live, False))
        error = await self.refused(self.history(carol, "dm:alice:bob"), "no_such_stream")
        self.assertEqual(error["field"], "stream")
        await self.refused(self.history(carol, "dm:alice:bob", after=0), "no_such_stream")
        await self.refused(self.history(carol, "dm:alice:bob", before=2), "no_such_stream")


class CatchUpTests(Helpers):
    async def test_reconnecting_client_fetches_exactly_what_it_missed(self) -> None:
        server = await start_server(self)
        first = await open_session(self, server)
        first_q = EventQueue(first)
        welcome = await first.register("alice", PASSWORD)
        token = welcome["token"]
        own = await first_q.next(lambda e: e.get("type") == "joined")
        self.assertEqual(welcome["streams"], {"room:lobby": own["id"]})

        bob = await logged_in(self, server, "bob")
        await bob.say("lobby", "while you are here")
        await first.ping()
        seen = max(e["id"] for e in of_stream(first_q, "room:lobby") + [own])
        await first.close()
        await until(lambda: "alice" not in server.factory.chat.online)

        missed = [await bob.say("lobby", f"missed {n}") for n in range(3)]
        await self.dm(bob, "alice", "also missed")

        second, answer = await self.token_login(server, "alice", token)
        second_q = EventQueue(second)
        welcome = await answer
        self.assertEqual(welcome["user"], "alice")
        self.assertEqual(welcome["streams"], {"room:lobby": missed[-1]["id"], "dm:alice:bob": 1})
        self.assertEqual(missed[-1]["id"], seen + 3)
        page = await self.history(second, "room:lobby", after=seen)
        self.assertFalse(page["more"])
        self.assertEqual(
            [(e["id"], e["body"], e["ts"]) for e in page["events"]],
            [(a["id"], f"missed {n}", a["ts"]) for n, a in enumerate(missed)],
        )
        dm = await second_q.next(lambda e: e.get("type") == "dm")
        self.assertEqual((dm["body"], dm["id"]), ("also missed", 1))

        # Nothing new since: the next welcome names the same last ids.
        third, answer = await self.token_login(server, "alice", token)
        welcome = await answer
        self.assertEqual(welcome["streams"], {"room:lobby": missed[-1]["id"], "dm:alice:bob": 1})


class ReconnectingClientTests(Helpers):
    async def test_a_room_left_or_kicked_from_is_not_followed_after_a_reconnect(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        for room in ("left", "kicked"):
            await bob.request({"type": "create", "room": room})
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
        alice = ReconnectingClient(
            reactor, endpoint, lambda fp: True, "alice", PASSWORD, register=True, initial_delay=0.05
        )
        got: list[dict[str, Any]] = []
        alice.add_listener(got.append)
        alice.start()
        self.addCleanup(alice.stop)
        await alice.when_online()
        for room in ("left", "kicked"):
            await alice.request({"type": "join", "room": room})
            await bob.say(room, f"{room}: while alice is in")
        await until(lambda: sum(1 for e in got if e.get("type") == "msg") == 2)
        await alice.request({"type": "part", "room": "left"})
        # Kicked while away: she learns of it by catch-up, once.
        await alice.stop()
        await bob.request({"type": "kick", "room": "kicked", "user": "alice"})
        for room in ("left", "kicked"):
            await bob.say(room, f"{room}: after alice")
        alice.start()
        await alice.when_online()
        await alice.session.ping()
        kicks = [e for e in got if e.get("type") == "kicked"]
        self.assertEqual([(e["room"], e["user"]) for e in kicks], [("kicked", "alice")])
        self.assertEqual([e for e in got if str(e.get("body", "")).endswith("after alice")], [])
        self.assertEqual(alice.rooms, {"lobby"})
        # And the next reconnect fetches neither room again.
        count = len(got)
        alice.session.protocol.transport.abortConnection()
        await until(lambda: alice.state == "reconnecting")
        await alice.when_online()
        await alice.session.ping()
        self.assertEqual(got[count:], [])


class TokenTests(Helpers):
    async def test_token_login_and_refusals(self) -> None:
        server = await start_server(self)
        first = await open_session(self, server)
        welcome = await first.register("alice", PASSWORD)
        token = welcome["token"]
        self.assertIsInstance(token, str)
        await logged_in(self, server, "bob")

        session, answer = await self.token_login(server, "alice", token)
        welcome = await answer
        self.assertEqual(
            (welcome["type"], welcome["user"], welcome["rooms"]), ("welcome", "alice", ["lobby"])
        )
        ack = await session.say("lobby", "no password needed")
        self.assertEqual(ack["type"], "ack")

        session, answer = await self.token_login(server, "alice", "x" * len(token))
        error = await self.refused(answer, "auth_failed")
        self.assertEqual(error["request"], "login")
        # A token is good for its own user only.
        session, answer = await self.token_login(server, "bob", token)
        await self.refused(answer, "auth_failed")
        # Password and token together are refused too.
        await self.refused(
            session.request({"type": "login", "user": "alice", "token": token, "password": PASSWORD}),
            "missing_field",
        )

    async def test_logout_revokes_that_sessions_token(self) -> None:
        server = await start_server(self)
        first = await logged_in(self, server, "alice")
        second = await open_session(self, server)
        token = (await second.login("alice", PASSWORD))["token"]
        # A token login answers with the same token.
        _, answer = await self.token_login(server, "alice", token)
        self.assertEqual((await answer)["token"], token)

        answer = await second.request({"type": "logout"})
        self.assertEqual(answer["type"], "logged_out")
        closed = await second.closed
        self.assertEqual((closed.clean, closed.code), (True, "logout"))

        _, answer = await self.token_login(server, "alice", token)
        await self.refused(answer, "auth_failed")
        # Other sessions and their tokens are unaffected.
        await first.ping()
        third = await open_session(self, server)
        fresh = (await third.login("alice", PASSWORD))["token"]
        self.assertNotEqual(fresh, token)
        _, answer = await self.token_login(server, "alice", fresh)
        self.assertEqual((await answer)["user"], "alice")

    async def test_expired_token_is_refused(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, session_token_ttl=60)
        session = await open_session(self, server)
        token = (await session.register("alice", PASSWORD))["token"]
        clock.advance(59)
        _, answer = await self.token_login(server, "alice", token)
        self.assertEqual((await answer)["user"], "alice")
        clock.advance(2)
        _, answer = await self.token_login(server, "alice", token)
        await self.refused(answer, "auth_failed")

    async def test_disabled_account_token_stops_working(self) -> None:
        settings = make_settings(Path(self.mktemp()))
        conn = open_direct(settings, create=True)
        try:
            accounts.add_user_now(conn, "root", PASSWORD, "admin", settings.password_hash_cost)
        finally:
            conn.close()
        server = RunningServer(settings)
        await server.start()
        self.addCleanup(server.stop)
        root = await logged_in(self, server, "root", register=False)
        alice = await open_session(self, server)
        token = (await alice.register("alice", PASSWORD))["token"]

        answer = await root.request({"type": "disable", "user": "alice"})
        self.assertEqual(without_ref(answer), {"type": "account", "user": "alice", "disabled": True})
        closed = await alice.closed
        self.assertEqual(closed.code, "account_disabled")
        _, answer = await self.token_login(server, "alice", token)
        error = await self.assertFailure(answer, ServerError)
        self.assertIn(error.code, ("auth_failed", "account_disabled"))
        session = await open_session(self, server)
        await self.refused(session.login("alice", PASSWORD), "account_disabled")

        # Enabling the account again does not revive the old token.
        await root.request({"type": "enable", "user": "alice"})
        _, answer = await self.token_login(server, "alice", token)
        await self.refused(answer, "auth_failed")
        welcome = await (await open_session(self, server)).login("alice", PASSWORD)
        self.assertEqual(welcome["user"], "alice")


class ReviewFixRoomTests(Helpers):
    async def test_history_of_an_unknown_room_names_the_stream_field(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        error = await self.assertFailure(
            alice.request({"type": "history", "stream": "room:nowhere", "limit": 5}), ServerError
        )
        self.assertEqual((error.code, error.event["field"]), ("no_such_room", "stream"))

    async def test_a_second_login_or_registration_does_no_account_work(self) -> None:
        # One failure would lock bob's account: a wrong password tried on
        # an already logged-in connection must not count as one.
        server = await start_server(self, login_failures_per_account=1)
        bob = await logged_in(self, server, "bob")
        await bob.close()
        alice = await logged_in(self, server, "alice")
        for request in (
            {"type": "register", "user": "mallory", "password": PASSWORD},
            {"type": "login", "user": "bob", "password": "wrong password!"},
        ):
            error = await self.assertFailure(alice.request(request), ServerError)
            self.assertEqual(error.code, "already_authenticated")
        self.assertEqual((await alice.ping())["type"], "pong")
        other = await open_session(self, server)
        error = await self.assertFailure(other.login("mallory", PASSWORD), ServerError)
        self.assertEqual(error.code, "auth_failed")  # no account was made
        welcome = await (await open_session(self, server)).login("bob", PASSWORD)
        self.assertEqual(welcome["user"], "bob")
