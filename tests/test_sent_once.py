"""Exactly-once sending: ``say`` and ``dm`` with a ``txn_id``, sent again
with ``resend`` after a lost acknowledgement, are stored once, and the
answer to the resend is the first event's."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from chatclient.session import ServerError
from tests.support import logged_in, start_server


class SentOnceTests(unittest.TestCase):
    async def history_bodies(self, session: object, stream: str) -> list[str]:
        page = await session.request({"type": "history", "stream": stream, "limit": 100})  # type: ignore[attr-defined]
        return [e["body"] for e in page["events"] if e["type"] in ("msg", "dm")]

    async def test_a_resent_message_is_stored_once_and_answered_with_the_first(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        first = await alice.request({"type": "say", "room": "lobby", "body": "once", "txn_id": "alice-0001"})
        again = await alice.request(
            {"type": "say", "room": "lobby", "body": "once", "txn_id": "alice-0001", "resend": True}
        )
        self.assertEqual(
            (again["stream"], again["id"], again["ts"]), (first["stream"], first["id"], first["ts"])
        )
        self.assertEqual(await self.history_bodies(alice, "room:lobby"), ["once"])
        # The id is the sender's own: it is in nobody's copy of the event.
        page = await alice.request({"type": "history", "stream": "room:lobby", "limit": 10})
        self.assertNotIn("txn_id", page["events"][-1])
        self.assertNotIn("_txn", page["events"][-1])

    async def test_a_resend_of_what_never_arrived_is_stored_then(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        ack = await alice.request(
            {"type": "say", "room": "lobby", "body": "lost", "txn_id": "alice-0002", "resend": True}
        )
        self.assertEqual(ack["type"], "ack")
        self.assertEqual(await self.history_bodies(alice, "room:lobby"), ["lost"])

    async def test_ids_are_per_sender_and_a_new_id_is_a_new_message(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await alice.request({"type": "say", "room": "lobby", "body": "a", "txn_id": "same-0001"})
        await bob.request(
            {"type": "say", "room": "lobby", "body": "b", "txn_id": "same-0001", "resend": True}
        )
        await alice.request({"type": "say", "room": "lobby", "body": "a", "txn_id": "other-001"})
        self.assertEqual(await self.history_bodies(alice, "room:lobby"), ["a", "b", "a"])

    async def test_a_resent_direct_message_is_stored_once(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        await logged_in(self, server, "bob")
        first = await alice.request({"type": "dm", "to": "bob", "body": "psst", "txn_id": "dm-000001"})
        again = await alice.request(
            {"type": "dm", "to": "bob", "body": "psst", "txn_id": "dm-000001", "resend": True}
        )
        self.assertEqual(again["id"], first["id"])
        self.assertEqual(await self.history_bodies(alice, first["stream"]), ["psst"])

    async def test_a_resend_while_the_first_is_being_stored_waits_for_it(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        # Both in one record: the second arrives before the first commits.
        one = alice.request({"type": "say", "room": "lobby", "body": "x", "txn_id": "race-0001"})
        two = alice.request(
            {"type": "say", "room": "lobby", "body": "x", "txn_id": "race-0001", "resend": True}
        )
        first, second = await one, await two
        self.assertEqual(second["id"], first["id"])
        self.assertEqual(await self.history_bodies(alice, "room:lobby"), ["x"])

    async def test_bad_ids_and_a_resend_without_one_are_refused(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        for request, field in (
            ({"type": "say", "room": "lobby", "body": "x", "txn_id": "short"}, "txn_id"),
            ({"type": "say", "room": "lobby", "body": "x", "txn_id": "has space 1"}, "txn_id"),
            ({"type": "say", "room": "lobby", "body": "x", "resend": True}, "resend"),
            ({"type": "dm", "to": "alice2", "body": "x", "txn_id": "ok-000001", "resend": "yes"}, "resend"),
        ):
            with self.assertRaises(ServerError) as refused:
                await alice.request(request)
            self.assertEqual(
                (refused.exception.code, refused.exception.event.get("field")), ("bad_field", field)
            )
        self.assertEqual(await self.history_bodies(alice, "room:lobby"), [])


class _AckEater:
    """A TCP relay between the client and the server that can swallow
    what the server sends (its acks), as a connection that dies after a
    request got through and before its answer came back."""

    def __init__(self, server_port: int) -> None:
        from twisted.protocols import portforward

        relay = self

        class Back(portforward.ProxyClient):
            def dataReceived(self, data: bytes) -> None:
                if not relay.swallowing:
                    super().dataReceived(data)

        class BackFactory(portforward.ProxyClientFactory):
            protocol = Back

        class Front(portforward.ProxyServer):
            clientProtocolFactory = BackFactory

            def connectionMade(self) -> None:
                relay.fronts.append(self)
                super().connectionMade()

        self.swallowing = False
        self.fronts: list[Any] = []
        self.factory = portforward.ProxyFactory("127.0.0.1", server_port)
        self.factory.protocol = Front


class ClientResendTests(unittest.TestCase):
    """The client library sends each message exactly once by itself."""

    async def test_a_message_stored_whose_ack_was_lost_is_not_stored_again(self) -> None:
        from twisted.internet import endpoints, reactor

        from chatclient.reconnect import ReconnectingClient
        from tests.support import PASSWORD, until

        server = await start_server(self)
        relay = _AckEater(server.port)
        port = reactor.listenTCP(0, relay.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = ReconnectingClient(
            reactor,
            endpoint,
            lambda fp: True,
            "alice",
            PASSWORD,
            register=True,
            initial_delay=0.05,
            max_delay=0.2,
        )
        client.start()
        self.addCleanup(client.stop)
        await client.when_online()
        chat = server.factory.chat
        bodies = []
        for n in range(5):
            relay.swallowing = True
            before = chat.last_ids.get("room:lobby", 0)
            sending = [client.say("lobby", f"lost ack {n}.{k}") for k in range(3)]
            bodies += [f"lost ack {n}.{k}" for k in range(3)]
            # Stored (and acknowledged into the void): now the connection dies.
            await until(lambda before=before: chat.last_ids.get("room:lobby", 0) >= before + 3)
            for front in relay.fronts:
                front.transport.abortConnection()
            relay.fronts.clear()
            relay.swallowing = False
            acks = [await d for d in sending]
            self.assertEqual([a["id"] for a in acks], list(range(before + 1, before + 4)))
        history = await client.request({"type": "history", "stream": "room:lobby", "limit": 100})
        stored = [e["body"] for e in history["events"] if e["type"] == "msg"]
        self.assertEqual(stored, bodies)  # each once, in order
