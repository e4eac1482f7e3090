"""Connection slots (issue 13, item 4): limits per network as well as per
address, a share of the slots for connections not logged in, and eviction
of the oldest of those (of the network holding the most) to make room.

10,000 bare sockets from 157 addresses once took every slot and real
clients got ``server full``.  The attackers here are real connections on
loopback from chosen source addresses (Linux routes all of 127/8 to lo),
against a real server; IPv6 prefixes, which loopback cannot give, and the
choice of whom to evict are checked on the factory itself.
"""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, endpoints, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from chatserver import tap
from chatserver.config import ConfigError, Settings, load_settings
from chatserver.protocol import ChatFactory
from chatserver.wire import channel
from chatserver.wire.channel import PeerClosed
from tests.support import RunningServer, assert_spec_says, logged_in, until
from tests.test_protocol import ChannelTestCase, RawClient, b64, is_drop, record_of

EVICTED = "server full: slot given to a newer connection"


def busy_alert(text: str) -> bytes:
    return b64(channel.alert_record(channel.ALERT_BUSY, text))


class SlotTestCase(ChannelTestCase):
    async def raw_from(self, server: RunningServer, host: str, hello: bool = True) -> RawClient:
        """A raw connection from source address ``host``; with ``hello``,
        one the server has admitted (it answered the CLIENT_HELLO)."""
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, bindAddress=(host, 0))
        client = await endpoints.connectProtocol(endpoint, RawClient())
        self.addCleanup(self._close_raw, client)
        if hello:
            await client.hello()
        return client

    async def finish_handshake(self, raw: RawClient) -> None:
        """The rest of the handshake of a connection that said hello."""
        assert raw.hs is not None
        for record in raw.hs.key_exchange():
            raw.send_record(record)
        raw.channel = raw.hs.receive_finished(await raw.next_record())

    def live(self, server: RunningServer) -> int:
        factory = server.factory
        return len(factory.connections) - len(factory._evicted)

    async def assert_evicted_in_handshake(self, raw: RawClient) -> None:
        await raw.when_lost()
        self.assertEqual(raw.lines[-1], busy_alert(EVICTED))


class PrefixLimitTests(SlotTestCase):
    async def test_one_network_is_refused_past_its_limit_while_another_connects(self) -> None:
        server = await self.start(max_connections_per_prefix=3)
        same_net = [await self.raw_from(server, f"127.3.0.{n}") for n in (1, 2, 3)]
        # A fourth address of 127.3.0.0/24: refused, though its address
        # has no connection yet.
        refused = await self.raw_from(server, "127.3.0.4", hello=False)
        await refused.when_lost()
        self.assertEqual(refused.lines, [busy_alert("too many connections from your network")])
        await self.logs.wait(
            lambda e: (
                e.get("log_namespace") == "chatserver.connections"
                and e.get("reason") == "too many connections from your network"
            )
        )
        # Another /24 is not affected, and no one was evicted for it.
        other = await self.raw_from(server, "127.4.0.1", hello=False)
        await other.do_handshake()
        await other.ping()
        self.assertEqual([r.lost_reason for r in same_net], [None] * 3)
        self.assertEqual(server.factory.metrics.counters["evictions"], 0)
        # A slot of the network freed: it may connect again.
        transport: Any = same_net[0].transport
        transport.abortConnection()
        await same_net[0].when_lost()
        await until(lambda: server.factory.per_prefix["127.3.0.0/24"] == 2)
        again = await self.raw_from(server, "127.3.0.4")
        self.assertIsNone(again.lost_reason)

    async def test_the_address_limit_still_applies_within_the_network(self) -> None:
        server = await self.start(max_connections_per_address=2, max_connections_per_prefix=10)
        await self.raw_from(server, "127.3.1.1")
        await self.raw_from(server, "127.3.1.1")
        refused = await self.raw_from(server, "127.3.1.1", hello=False)
        await refused.when_lost()
        self.assertEqual(refused.lines, [busy_alert("too many connections from your address")])
        await self.raw_from(server, "127.3.1.2")


class EvictionTests(SlotTestCase):
    async def test_a_full_share_gives_the_oldest_slot_to_the_newcomer(self) -> None:
        server = await self.start(max_unauthenticated=3)
        # One network: the one holding the most, so its oldest goes first.
        first = await self.raw_from(server, "127.5.0.1")  # in the handshake
        second = await self.raw_from(server, "127.5.0.2", hello=False)
        await second.do_handshake()  # past it, not logged in
        third = await self.raw_from(server, "127.5.0.3")
        newcomer = await self.raw_from(server, "127.5.0.4")  # admitted: hello answered
        await self.assert_evicted_in_handshake(first)
        await self.logs.wait(is_drop(EVICTED))
        # The next one takes the slot of the one past the handshake, which
        # gets a sealed CLOSE busy.
        lines_before = len(second.lines)
        await self.raw_from(server, "127.5.0.5")
        await second.when_lost()
        assert second.channel is not None
        closes = []
        for line in second.lines[lines_before:]:
            self.assertEqual(record_of(line)[0], channel.CLOSE)
            try:
                second.channel.open(line)
            except PeerClosed as e:
                closes.append((e.code, e.message))
        self.assertEqual(closes, [("busy", EVICTED)])
        self.assertIsNone(third.lost_reason)
        # The newcomer is a full client: it logs in and chats.
        await self.finish_handshake(newcomer)
        newcomer.send_sealed(
            channel.DATA,
            channel.encode_events([{"type": "register", "user": "newcomer", "password": "x" * 12}]),
        )
        for _ in range(20):
            events = await newcomer.next_events() or []
            if any(e.get("type") == "welcome" for e in events):
                break
        else:
            self.fail("no welcome")
        self.assertEqual(server.factory.metrics.counters["evictions"], 2)
        self.assertEqual(server.factory.unauthenticated_count, 2)  # third and the last

    async def test_a_flooding_network_evicts_its_own_not_an_older_real_client(self) -> None:
        server = await self.start(max_unauthenticated=4)
        real = await self.raw_from(server, "127.6.0.1")  # the oldest of all
        flood = [await self.raw_from(server, f"127.7.0.{n}") for n in (1, 2, 3)]
        # From a third network: evicts from 127.7.0.0/24, which holds the most.
        await self.raw_from(server, "127.8.0.1")
        await self.assert_evicted_in_handshake(flood[0])
        # From the flooding network, however many more: its own go.
        more = [await self.raw_from(server, f"127.7.0.{n}") for n in range(4, 14)]
        await until(lambda: server.factory.metrics.counters["evictions"] == 11)
        for raw in [*flood[1:], *more[:-2]]:
            await self.assert_evicted_in_handshake(raw)
        self.assertEqual([r.lost_reason for r in more[-2:]], [None, None])
        self.assertIsNone(real.lost_reason)
        # The real client, older than all of them, still gets through.
        await self.finish_handshake(real)
        await real.ping()

    async def test_logged_in_clients_keep_their_slots_and_chat_through_a_flood(self) -> None:
        # Five slots, two of them logged in: the server as a whole fills
        # up (the share, 4, would not), and the bare sockets take turns.
        server = await self.start(max_connections=5, max_unauthenticated=4)
        alice, bob_events = await self.honest_pair(server)
        flood_size = 40
        connecting = [
            endpoints.connectProtocol(
                endpoints.TCP4ClientEndpoint(
                    reactor, "127.0.0.1", server.port, bindAddress=(f"127.10.0.{n + 1}", 0)
                ),
                RawClient(),
            )
            for n in range(flood_size)
        ]
        # While the bare sockets arrive.
        await self.assert_chat_works(alice, bob_events, "during the flood")
        flood = await defer.gatherResults(connecting)
        for raw in flood:
            self.addCleanup(self._close_raw, raw)
        # Three bare sockets hold the three free slots; every other one
        # was evicted to make room, and never a logged-in client.
        await until(lambda: server.factory.metrics.counters["evictions"] == flood_size - 3)
        await until(lambda: sum(1 for r in flood if r.lost_reason is not None) == flood_size - 3)
        for raw in flood:
            if raw.lost_reason is not None:
                self.assertEqual(raw.lines, [busy_alert(EVICTED)])
        await until(lambda: len(server.factory.connections) == 5)
        self.assertEqual(self.live(server), 5)
        self.assertEqual(sorted(server.factory.chat.online), ["alice", "bob"])
        await self.assert_chat_works(alice, bob_events, "after the flood")
        # A real client still gets in: it takes a bare socket's slot.
        carol = await logged_in(self, server, "carol")
        self.assertEqual(server.factory.metrics.counters["evictions"], flood_size - 2)
        self.assertIn("carol", server.factory.chat.online)
        await carol.say("lobby", "made it")
        msg = await bob_events.next(lambda e: e.get("type") == "msg" and e.get("body") == "made it")
        self.assertEqual(msg["from"], "carol")

    async def test_when_every_slot_is_logged_in_the_newcomer_is_refused(self) -> None:
        server = await self.start(max_connections=3)
        alice, bob_events = await self.honest_pair(server)
        await logged_in(self, server, "carol")
        newcomer = await self.raw_from(server, "127.11.0.1", hello=False)
        await newcomer.when_lost()
        self.assertEqual(newcomer.lines, [busy_alert("server full")])
        self.assertEqual(server.factory.metrics.counters["evictions"], 0)
        self.assertEqual(sorted(server.factory.chat.online), ["alice", "bob", "carol"])
        await self.assert_chat_works(alice, bob_events)


# --- the admission logic itself, with made-up peers ---------------------------


class FakeConnection:
    """What admit and release look at, and what an eviction calls."""

    def __init__(self, peer: str, past_handshake: bool = False) -> None:
        self.peer = peer
        self.channel: Any = object() if past_handshake else None
        self.account: Any = None
        self.ending = False
        self.ended: tuple[str, Any, str] | None = None

    def _drop(self, reason: str, alert: Any = None) -> None:
        self.ending = True
        self.ended = ("alert", alert, reason)

    def close(self, code: str, message: str) -> None:
        self.ending = True
        self.ended = ("close", code, message)


def factory(**overrides: Any) -> ChatFactory:
    clock = Clock()
    return ChatFactory(
        dataclasses.replace(Settings(), **overrides),
        identity=None,  # type: ignore[arg-type]
        chat=SimpleNamespace(),  # type: ignore[arg-type]
        accounts=None,  # type: ignore[arg-type]
        pool=None,  # type: ignore[arg-type]
        clock=clock,
        reactor=clock,
    )


class AdmitTests(unittest.TestCase):
    def admit(self, f: ChatFactory, peer: str, **kwargs: Any) -> tuple[FakeConnection, str | None]:
        conn = FakeConnection(peer, **kwargs)
        return conn, f.admit(conn)  # type: ignore[arg-type]

    def test_ipv6_counts_per_64(self) -> None:
        f = factory(max_connections_per_prefix=2)
        self.assertIsNone(self.admit(f, "2001:db8:0:1::1")[1])
        self.assertIsNone(self.admit(f, "2001:db8:0:1:ffff:ffff:ffff:ffff")[1])
        # Another address of the same /64: its network is full.
        held, refusal = self.admit(f, "2001:db8:0:1:abcd::7")
        self.assertEqual(refusal, "too many connections from your network")
        # The next /64 is another network.
        other, refusal = self.admit(f, "2001:db8:0:2::1")
        self.assertIsNone(refusal)
        self.assertEqual(f.per_prefix["2001:db8:0:1::/64"], 2)
        first = next(c for c in f.connections if c.peer == "2001:db8:0:1::1")
        f.release(first)
        self.assertIsNone(self.admit(f, "2001:db8:0:1:abcd::7")[1])

    def test_ipv4_mapped_addresses_count_with_their_ipv4_network(self) -> None:
        f = factory(max_connections_per_prefix=2)
        self.assertIsNone(self.admit(f, "::ffff:10.1.2.3")[1])
        self.assertIsNone(self.admit(f, "10.1.2.200")[1])
        self.assertEqual(self.admit(f, "::ffff:10.1.2.9")[1], "too many connections from your network")
        self.assertIsNone(self.admit(f, "10.1.3.1")[1])

    def test_what_the_evicted_connection_is_told(self) -> None:
        f = factory(max_unauthenticated=2)
        in_handshake, _ = self.admit(f, "192.0.2.1")
        past_it, _ = self.admit(f, "192.0.2.2", past_handshake=True)
        self.admit(f, "192.0.2.3")
        self.assertEqual(in_handshake.ended, ("alert", channel.ALERT_BUSY, EVICTED))
        self.admit(f, "192.0.2.4")
        self.assertEqual(past_it.ended, ("close", "busy", EVICTED))
        self.assertEqual(f.metrics.counters["evictions"], 2)

    def test_logged_in_connections_are_never_evicted(self) -> None:
        f = factory(max_connections=3, max_unauthenticated=3)
        members = []
        for n in range(3):
            conn, refusal = self.admit(f, f"192.0.2.{n}")
            self.assertIsNone(refusal)
            conn.account = object()
            f.authenticated(conn)  # type: ignore[arg-type]
            members.append(conn)
        self.assertEqual(self.admit(f, "198.51.100.1")[1], "server full")
        self.assertEqual([m.ended for m in members], [None] * 3)
        f.release(members[0])  # type: ignore[arg-type]
        newcomer, refusal = self.admit(f, "198.51.100.1")
        self.assertIsNone(refusal)
        # The server is full again, with one not logged in: it goes.
        self.assertIsNone(self.admit(f, "198.51.100.2")[1])
        self.assertEqual(newcomer.ended, ("alert", channel.ALERT_BUSY, EVICTED))
        self.assertEqual([m.ended for m in members[1:]], [None] * 2)

    def test_an_evicted_connection_gives_up_its_slot_at_once(self) -> None:
        """It stays in ``connections`` until really gone, but its slot is
        the newcomer's: live connections never exceed max_connections."""
        f = factory(max_connections=2, max_unauthenticated=2)
        a, _ = self.admit(f, "192.0.2.1")
        self.admit(f, "192.0.2.2")
        self.assertIsNone(self.admit(f, "192.0.2.3")[1])  # evicts a, still closing
        self.assertEqual((len(f.connections), len(f._evicted)), (3, 1))
        self.assertIsNone(self.admit(f, "192.0.2.4")[1])  # evicts another, not a again
        self.assertEqual((len(f.connections), len(f._evicted)), (4, 2))
        f.release(a)  # type: ignore[arg-type]
        self.assertEqual((len(f.connections), len(f._evicted)), (3, 1))
        self.assertEqual(f.per_address["192.0.2.1"], 0)

    def test_the_victim_follows_the_rule_in_random_traffic(self) -> None:
        """Against a plain model: the victim is the oldest of a network
        holding the most connections not logged in (counted before the
        newcomer), the newcomer's own if it holds that many; and the
        factory's counts stay right through logins and losses."""
        rng = random.Random(13)
        f = factory(
            max_connections=40,
            max_unauthenticated=12,
            max_connections_per_prefix=1000,
            max_connections_per_address=1000,
        )
        open_: list[FakeConnection] = []
        evictions = 0
        for step in range(3000):
            action = rng.random()
            if action < 0.6 or not open_:
                net = rng.choice(["10.0.0", "10.0.1", "10.0.2", "10.0.3", "10.0.4"])
                peer = f"{net}.{rng.randrange(256)}"
                prefix = f"{net}.0/24"
                unauth = [c for c in open_ if c.account is None and not c.ending]
                held: dict[str, list[FakeConnection]] = {}
                for c in unauth:
                    held.setdefault(c.peer.rsplit(".", 1)[0] + ".0/24", []).append(c)
                most = max((len(v) for v in held.values()), default=0)
                live = len(open_) - sum(1 for c in open_ if c.ending)
                full = live >= 40 or len(unauth) >= 12
                conn, refusal = self.admit(f, peer)
                if full and not unauth:
                    self.assertEqual(refusal, "server full", step)
                    continue
                self.assertIsNone(refusal, step)
                if full:
                    victims = [c for c in unauth if c.ending]
                    self.assertEqual(len(victims), 1, step)
                    victim = victims[0]
                    victim_prefix = victim.peer.rsplit(".", 1)[0] + ".0/24"
                    self.assertEqual(len(held[victim_prefix]), most, step)
                    self.assertIs(held[victim_prefix][0], victim, step)  # its oldest
                    if len(held.get(prefix, [])) == most:
                        self.assertEqual(victim_prefix, prefix, step)
                    evictions += 1
                open_.append(conn)
            elif action < 0.8:
                candidates = [c for c in open_ if c.account is None and not c.ending]
                if candidates:
                    conn = rng.choice(candidates)
                    conn.account = object()
                    f.authenticated(conn)  # type: ignore[arg-type]
            else:
                conn = open_.pop(rng.randrange(len(open_)))
                f.release(conn)  # type: ignore[arg-type]
            unauth = [c for c in open_ if c.account is None and not c.ending]
            self.assertEqual(f.unauthenticated_count, len(unauth), step)
            counts: dict[str, int] = {}
            for c in unauth:
                key = c.peer.rsplit(".", 1)[0] + ".0/24"
                counts[key] = counts.get(key, 0) + 1
            self.assertEqual({p: len(d) for p, d in f.unauthenticated.items()}, counts, step)
            self.assertEqual(f._most_held, max(counts.values(), default=0), step)
            self.assertEqual(len(f.connections), len(open_), step)
        self.assertGreater(evictions, 100)
        self.assertEqual(f.metrics.counters["evictions"], evictions)


class SettingsTests(unittest.TestCase):
    def test_defaults(self) -> None:
        settings = Settings()
        self.assertEqual(settings.max_connections_per_prefix, 256)
        self.assertEqual(settings.unauthenticated_slots, 2500)
        self.assertEqual(dataclasses.replace(settings, max_connections=100).unauthenticated_slots, 25)
        self.assertEqual(dataclasses.replace(settings, max_connections=2).unauthenticated_slots, 1)
        self.assertEqual(dataclasses.replace(settings, max_unauthenticated=7).unauthenticated_slots, 7)

    def test_more_unauthenticated_than_connections_is_one_clear_error(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nmax_connections = 100\nmax_unauthenticated = 101\n")
        error = self.assertRaises(ConfigError, load_settings, path)
        self.assertEqual(
            str(error),
            f"{path}: [server] max_unauthenticated = 101:"
            " must not be more than [server] max_connections (100)",
        )
        self.assertEqual(load_settings(path, max_unauthenticated="100").unauthenticated_slots, 100)
        error = self.assertRaises(ConfigError, load_settings, None, max_unauthenticated="20000")
        self.assertNotIn("\n", str(error))
        self.assertIn("max_unauthenticated = 20000", str(error))

    def test_they_need_a_restart(self) -> None:
        """Sized with max_connections (and the file descriptors), which
        needs one too: a SIGHUP names them instead of applying them."""
        running = Settings()
        loaded = dataclasses.replace(running, max_connections_per_prefix=10, max_unauthenticated=5)
        self.assertEqual(
            tap.needs_restart(running, loaded),
            ["[server] max_connections_per_prefix", "[server] max_unauthenticated"],
        )


class SpecTextTests(unittest.TestCase):
    def says(self, *fragments: str) -> None:
        assert_spec_says(self, *fragments)

    def test_the_slot_rules_are_specified(self) -> None:
        self.says(
            "``[server] max_connections_per_prefix``",
            "``[server] max_unauthenticated``",
            "Logged-in connections are never evicted",
            "the oldest connection not logged in of the network that holds the most of them",
            "CLOSE ``busy``",
            "too many connections from your network",
        )
