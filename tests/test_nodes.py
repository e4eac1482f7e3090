"""Two servers (nodes) sharing one PostgreSQL database, one Redis and one
identity key, with real clients on each: what one node's users do
reaches the other's, and a client sees the same fingerprint on both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial import unittest

from tests import backends
from tests.support import (
    EventQueue,
    RunningServer,
    logged_in,
    make_settings,
    postgres_only,
    until,
)


class TwoNodesTests(unittest.TestCase):
    skip = backends.missing() or postgres_only("several nodes on one PostgreSQL and Redis")

    async def setUp(self) -> None:
        url = backends.postgres_url()
        shared = {
            "database": url,
            "hub_url": backends.redis_url(),
            "hub_prefix": urlsafe(url),
        }
        self.nodes: list[RunningServer] = []
        for n in (1, 2):
            node = RunningServer(make_settings(Path(self.mktemp()), hub_name=f"node{n}", **shared))
            await node.start()
            self.addCleanup(node.stop)
            self.nodes.append(node)

    async def test_both_nodes_show_one_key(self) -> None:
        one, two = self.nodes
        self.assertEqual(one.identity.fingerprint, two.identity.fingerprint)

    async def test_a_room_message_reaches_the_members_on_the_other_node(self) -> None:
        one, two = self.nodes
        alice = await logged_in(self, one, "alice")
        bob = await logged_in(self, two, "bob")
        bob_events = EventQueue(bob)
        # Presence is seen across: alice is online on node 1.
        members = await bob.all_pages({"type": "who", "room": "lobby"}, "members", "user")
        online = {m["user"]: m["online"] for m in members["members"]}
        self.assertEqual(online, {"alice": True, "bob": True})
        acks = [await alice.say("lobby", f"hello {n}") for n in range(5)]
        got = [await bob_events.next(lambda e: e["type"] == "msg") for _ in range(5)]
        self.assertEqual([e["id"] for e in got], [a["id"] for a in acks])
        self.assertEqual([e["body"] for e in got], [f"hello {n}" for n in range(5)])
        await bob.ping()
        self.assertEqual([e for e in bob_events.events if e["type"] == "msg"], [])  # once each

    async def test_direct_messages_cross_nodes_live_and_offline(self) -> None:
        one, two = self.nodes
        alice = await logged_in(self, one, "alice")
        bob = await logged_in(self, two, "bob")
        bob_events = EventQueue(bob)
        # The pair's first message, begun on node 1, reaches bob on node 2.
        ack = await alice.request({"type": "dm", "to": "bob", "body": "first"})
        live = await bob_events.next(lambda e: e["type"] == "dm")
        self.assertEqual((live["id"], live["body"]), (ack["id"], "first"))
        await bob.close()
        await until(lambda: not one.factory.chat.hub.is_online("bob"))
        for n in range(3):
            await alice.request({"type": "dm", "to": "bob", "body": f"offline {n}"})
        # Bob comes back on node 2, which did not see the pair begin: he
        # gets what he missed, in order, once, and not "first" again.
        again = await logged_in(self, two, "bob", register=False)
        events = EventQueue(again)
        pushed = [await events.next(lambda e: e["type"] == "dm") for _ in range(3)]
        self.assertEqual([e["body"] for e in pushed], ["offline 0", "offline 1", "offline 2"])
        await again.ping()
        self.assertEqual([e for e in events.events if e["type"] == "dm"], [])  # once each

    async def test_a_room_made_on_one_node_is_joined_on_the_other(self) -> None:
        one, two = self.nodes
        alice = await logged_in(self, one, "alice")
        carol = await logged_in(self, two, "carol")
        await alice.request({"type": "create", "room": "garden", "kind": "public"})
        await alice.request({"type": "topic", "room": "garden", "topic": "roses"})
        await until(lambda: "garden" in two.factory.chat.rooms)
        await carol.request({"type": "join", "room": "garden"})
        alice_events = EventQueue(alice)
        await carol.say("garden", "from node 2")
        got: Any = await alice_events.next(lambda e: e["type"] == "msg")
        self.assertEqual((got["room"], got["from"], got["body"]), ("garden", "carol", "from node 2"))
        await until(lambda: two.factory.chat.rooms["garden"].topic == "roses")

    async def test_a_disabled_account_and_a_removed_device_are_cut_off_on_the_other_node(self) -> None:
        from chatclient.e2e.device import Device
        from tests.test_device_directory import upload
        from tests.test_moderation import admin_session

        one, two = self.nodes
        admin = await admin_session(self, one)
        mallory = await logged_in(self, two, "mallory")
        alice = await logged_in(self, one, "alice")
        phone_session = await logged_in(self, two, "alice", register=False)
        phone = Device.new("alice")
        await upload(phone_session, phone)
        await admin.request({"type": "disable", "user": "mallory"})
        lost = await mallory.closed
        self.assertEqual((lost.clean, lost.code), (True, "account_disabled"))
        await alice.request({"type": "remove_device", "device": phone.device_id})
        lost = await phone_session.closed
        self.assertEqual((lost.clean, lost.code), (True, "device_removed"))
        self.assertEqual((await alice.ping())["type"], "pong")  # the deciding session stays


class FailoverTests(unittest.TestCase):
    skip = backends.missing() or postgres_only("several nodes on one PostgreSQL and Redis")

    async def test_a_client_fails_over_to_the_other_node_and_loses_nothing(self) -> None:
        import time

        from twisted.internet import endpoints, reactor

        from chatclient.endpoints import FailoverEndpoint
        from chatclient.reconnect import ReconnectingClient
        from tests.support import PASSWORD

        url = backends.postgres_url()
        shared = {"database": url, "hub_url": backends.redis_url(), "hub_prefix": urlsafe(url)}
        nodes = []
        for n in (1, 2):
            node = RunningServer(make_settings(Path(self.mktemp()), hub_name=f"node{n}", **shared))
            await node.start()
            self.addCleanup(node.stop)
            nodes.append(node)
        one, two = nodes
        switched: list[str] = []
        failover = FailoverEndpoint(
            [
                (f"node{n}", endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", node.port))
                for n, node in ((1, one), (2, two))
            ],
            switched.append,
        )
        alice = ReconnectingClient(
            reactor,
            failover,
            lambda fp: True,
            "alice",
            PASSWORD,
            register=True,
            initial_delay=0.1,
            max_delay=1.0,
        )
        received: list[tuple[int, str]] = []
        alice.add_listener(
            lambda e: received.append((e["id"], e["body"])) if e.get("type") == "msg" else None
        )
        alice.start()
        self.addCleanup(alice.stop)
        await alice.when_online()
        self.assertEqual(failover.name, "node1")
        token = alice.token
        bob = await logged_in(self, two, "bob")
        first = await bob.say("lobby", "before")
        await until(lambda: (first["id"], "before") in received)

        # Node 1 dies (its listener and connections go); bob, on node 2,
        # goes on talking meanwhile.
        died = time.monotonic()
        stopping = one.stop()
        during = [await bob.say("lobby", f"while away {n}") for n in range(5)]
        await stopping
        await alice.when_online()
        back = time.monotonic() - died
        self.assertEqual((failover.name, switched), ("node2", ["node2"]))
        self.assertEqual(alice.token, token)  # resumed with its session token
        await until(lambda: all((a["id"], f"while away {n}") in received for n, a in enumerate(during)))
        # Caught up in order, each once; and sending works on the new node.
        ids = [i for i, _ in received]
        self.assertEqual(ids, sorted(set(ids)))
        ack = await alice.say("lobby", "from node 2 now")
        self.assertEqual(ack["id"], during[-1]["id"] + 1)
        print(f"\nfailed over and caught up {back:.2f} s after the node's death")
        self.assertLess(back, 5.0)


def urlsafe(url: str) -> str:
    import urllib.parse

    return urllib.parse.urlsplit(url).path.strip("/") + ":"
