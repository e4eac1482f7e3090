"""The lobby: two and more real clients through a real server."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from chatclient.session import ServerError
from tests.support import EventQueue, logged_in, start_server, until


class LobbyTests(unittest.TestCase):
    async def test_two_clients_exchange_messages(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        alice_events = EventQueue(alice)
        await alice_events.next(lambda e: e["type"] == "joined" and e["user"] == "alice")
        bob = await logged_in(self, server, "bob")
        bob_events = EventQueue(bob)
        joined = await alice_events.next(lambda e: e["type"] == "joined")
        self.assertEqual((joined["room"], joined["user"]), ("lobby", "bob"))

        ack = await alice.say("lobby", "hello bob ✓")
        self.assertEqual(ack["type"], "ack")
        got = await bob_events.next(lambda e: e["type"] == "msg")
        self.assertEqual(
            {k: got[k] for k in ("room", "from", "body", "id")},
            {"room": "lobby", "from": "alice", "body": "hello bob ✓", "id": ack["id"]},
        )
        self.assertEqual(got["ts"], ack["ts"])
        echo = await alice_events.next(lambda e: e["type"] == "msg")
        self.assertEqual(echo["id"], ack["id"])

        reply = await bob.say("lobby", "hi alice")
        self.assertGreater(reply["id"], ack["id"])
        got = await alice_events.next(lambda e: e["type"] == "msg")
        self.assertEqual((got["from"], got["body"]), ("bob", "hi alice"))

        self.assertEqual(await bob.who("lobby"), ["alice", "bob"])
        await bob.close()
        # Membership outlives the connection; presence is what changes.
        await until(lambda: "bob" not in server.factory.chat.online)
        members = (await alice.request({"type": "who", "room": "lobby"}))["members"]
        self.assertEqual(
            members,
            [
                {"user": "alice", "role": "member", "online": True},
                {"user": "bob", "role": "member", "online": False},
            ],
        )

    async def test_ids_increase_and_every_member_sees_every_message_in_order(self) -> None:
        server = await start_server(self)
        sessions = [await logged_in(self, server, f"user{i}") for i in range(4)]
        queues = [EventQueue(s) for s in sessions]
        acks = []
        for n in range(10):
            acks.append(await sessions[n % 4].say("lobby", f"message {n}"))
        ids = [a["id"] for a in acks]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 10)
        for queue in queues:
            seen = [await queue.next(lambda e: e["type"] == "msg") for _ in range(10)]
            self.assertEqual([e["body"] for e in seen], [f"message {n}" for n in range(10)])
            self.assertEqual([e["id"] for e in seen], ids)

    async def test_same_user_twice_joins_once(self) -> None:
        server = await start_server(self)
        watcher = await logged_in(self, server, "watcher")
        events = EventQueue(watcher)
        first = await logged_in(self, server, "alice")
        second = await logged_in(self, server, "alice", register=False)
        await first.close()
        await watcher.ping()  # everything the server sent before this has arrived
        kinds = [(e["type"], e.get("user")) for e in events.events]
        self.assertEqual(kinds.count(("joined", "alice")), 1)
        ack = await second.say("lobby", "still here")
        self.assertEqual(ack["type"], "ack")


class RequestValidationTests(unittest.TestCase):
    async def assertRefused(
        self, session: Any, event: dict[str, Any], code: str, field: str | None
    ) -> dict[str, Any]:
        error = await self.assertFailure(session.request(event), ServerError)
        self.assertEqual(error.code, code)
        self.assertEqual(error.event.get("field"), field)
        self.assertEqual(error.event["request"], event["type"])
        return error.event

    async def test_bad_requests_get_clear_errors_and_the_connection_survives(self) -> None:
        server = await start_server(self, max_body_length=50)
        session = await logged_in(self, server, "alice")
        await self.assertRefused(session, {"type": "say", "room": "lobby", "body": ""}, "bad_body", "body")
        await self.assertRefused(session, {"type": "say", "room": "lobby", "body": "   "}, "bad_body", "body")
        await self.assertRefused(
            session, {"type": "say", "room": "lobby", "body": "x" * 51}, "bad_body", "body"
        )
        await self.assertRefused(
            session, {"type": "say", "room": "lobby", "body": "a\x1b[2Jb"}, "bad_body", "body"
        )
        await self.assertRefused(session, {"type": "say", "room": "lobby", "body": 42}, "bad_field", "body")
        await self.assertRefused(session, {"type": "say", "room": "lobby"}, "missing_field", "body")
        await self.assertRefused(session, {"type": "say", "room": "Lobby!", "body": "x"}, "bad_room", "room")
        await self.assertRefused(
            session, {"type": "say", "room": "lobby", "body": "x", "extra": 1}, "unknown_field", "extra"
        )
        await self.assertRefused(
            session, {"type": "say", "room": "elsewhere", "body": "x"}, "no_such_room", "room"
        )
        error = await self.assertRefused(session, {"type": "fly"}, "unknown_type", "type")
        self.assertIn("fly", error["message"])
        # Multi-line bodies and the maximum length are fine.
        ack = await session.say("lobby", "line one\nline two\ttab")
        self.assertEqual(ack["type"], "ack")
        ack = await session.say("lobby", "y" * 50)
        self.assertEqual(ack["type"], "ack")

    async def test_bad_ref_is_refused(self) -> None:
        server = await start_server(self)
        session = await logged_in(self, server, "alice")
        queue = EventQueue(session)
        session.protocol.send_events([{"type": "ping", "ref": [1, 2]}])
        error = await queue.next(lambda e: e["type"] == "error")
        self.assertEqual((error["code"], error["field"]), ("bad_field", "ref"))
        self.assertNotIn("ref", error)

    async def test_one_frame_may_carry_several_requests(self) -> None:
        """A DATA record is a list of events; all are handled, in order."""
        server = await start_server(self)
        session = await logged_in(self, server, "alice")
        queue = EventQueue(session)
        session.protocol.send_events(
            [
                {"type": "say", "room": "lobby", "body": "one", "ref": "a"},
                {"type": "say", "room": "lobby", "body": "two", "ref": "b"},
                {"type": "ping", "ref": "c"},
            ]
        )
        answers = [await queue.next(lambda e: "ref" in e) for _ in range(3)]
        self.assertEqual(
            [(a["type"], a["ref"]) for a in answers], [("ack", "a"), ("ack", "b"), ("pong", "c")]
        )
        self.assertLess(answers[0]["id"], answers[1]["id"])


class IdleTests(unittest.TestCase):
    async def test_idle_connections_close_and_keepalive_prevents_it(self) -> None:
        from twisted.internet import reactor

        server = await start_server(self, idle_timeout=0.6)
        kept = await logged_in(self, server, "alice")
        quiet = await logged_in(self, server, "bob")
        quiet._keepalive.stop()  # this client stops pinging
        info = await quiet.closed.addTimeout(5, reactor)
        self.assertTrue(info.clean)
        self.assertEqual(info.code, "idle_timeout")
        self.assertFalse(kept.closed.called)
        pong = await kept.ping()
        self.assertEqual(pong["type"], "pong")


class ConnectCancelTests(unittest.TestCase):
    async def test_cancelled_connect_closes_the_connection(self) -> None:
        """Cancelling connect() while the key is being checked must not
        leave the TCP connection waiting for the server's deadline."""
        from twisted.internet import defer, reactor

        from chatclient.session import connect
        from tests.support import until

        server = await start_server(self)
        checking: defer.Deferred[bool] = defer.Deferred()
        d = connect(reactor, f"tcp:host=127.0.0.1:port={server.port}", lambda fp: checking)
        await until(lambda: len(server.factory.connections) == 1)
        d.cancel()
        await self.assertFailure(d, defer.CancelledError)
        await until(lambda: not server.factory.connections)
