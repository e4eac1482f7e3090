"""Host lists and failover between the nodes of one deployment
(chatclient/endpoints.py), on real loopback sockets."""

from __future__ import annotations

import socket

from twisted.internet import endpoints, protocol, reactor
from twisted.trial import unittest

from chatclient.endpoints import BadHostList, FailoverEndpoint, format_hosts, parse_hosts


class HostListTests(unittest.TestCase):
    def test_entries_with_and_without_ports(self) -> None:
        self.assertEqual(
            parse_hosts("a.example:7071, b.example ,10.0.0.3:9,[::1]:7072,[fe80::1]", 7070),
            [("a.example", 7071), ("b.example", 7070), ("10.0.0.3", 9), ("::1", 7072), ("fe80::1", 7070)],
        )
        self.assertEqual(parse_hosts("::1", 7070), [("::1", 7070)])  # a bare IPv6 address
        self.assertEqual(format_hosts(parse_hosts("a:1,[::1]:2", 7070)), "a:1,[::1]:2")

    def test_mistakes_are_named(self) -> None:
        for text, why in (
            ("a,,b", "empty entry"),
            ("a:x", "the port must be a number"),
            ("a:0", "from 1 to 65535"),
            ("[::1", "no closing ]"),
            ("[::1]7070", "expected :PORT"),
            (":7070", "needs a host"),
        ):
            with self.assertRaises(BadHostList) as caught:
                parse_hosts(text, 7070)
            self.assertIn(why, str(caught.exception))


def _closed_port() -> int:
    """A loopback port nothing listens on (refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FailoverEndpointTests(unittest.TestCase):
    async def test_the_next_node_when_one_refuses_and_back_to_the_first_only_if_needed(self) -> None:
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        dead = _closed_port()
        switched: list[str] = []
        failover = FailoverEndpoint(
            [
                ("dead", endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", dead)),
                ("alive", endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)),
            ],
            switched.append,
        )
        client = protocol.Factory.forProtocol(protocol.Protocol)
        first = await failover.connect(client)
        self.addCleanup(first.transport.loseConnection)
        self.assertEqual((failover.name, switched), ("alive", ["alive"]))
        second = await failover.connect(client)  # starts with the one that worked
        self.addCleanup(second.transport.loseConnection)
        self.assertEqual(switched, ["alive"])

    async def test_all_refusing_fails_the_attempt(self) -> None:
        failover = FailoverEndpoint(
            [(str(n), endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", _closed_port())) for n in range(2)]
        )
        from twisted.internet.error import ConnectionRefusedError

        with self.assertRaises(ConnectionRefusedError):
            await failover.connect(protocol.Factory.forProtocol(protocol.Protocol))
