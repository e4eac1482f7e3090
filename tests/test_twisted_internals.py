"""chatserver.twisted_internals: what we take from Twisted beyond its
public API still is where we take it from, and the listener over the
public endpoint API.  Real loopback sockets, the real reactor."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, endpoints, error, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from chatserver import twisted_internals
from tests.support import until


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class DirectSendTests(unittest.TestCase):
    timeout = 20

    async def _pair(self) -> tuple[Any, Collect]:
        """A server-side tcp.Connection and the client that reads it."""
        accepted: defer.Deferred[Any] = defer.Deferred()

        class Accept(protocol.Protocol):
            def connectionMade(self) -> None:
                accepted.callback(self.transport)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Accept), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Collect()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoints.connectProtocol(endpoint, client)
        self.addCleanup(client.transport.loseConnection)
        transport = await accepted
        self.addCleanup(transport.loseConnection)
        return transport, client

    async def test_a_plain_tcp_connection_still_has_the_internals(self) -> None:
        # Fails if a Twisted release renames the write buffer or writeSomeData.
        transport, _ = await self._pair()
        self.assertTrue(twisted_internals.has_send_internals(transport))
        self.assertIsNotNone(twisted_internals.direct_sender(transport))

    async def test_a_direct_send_leaves_at_once(self) -> None:
        transport, client = await self._pair()
        send = twisted_internals.direct_sender(transport)
        assert send is not None
        self.assertEqual(send(b"one\n"), b"")
        # Already in the kernel: readable before the reactor's next turn.
        readable = socket.socket(fileno=socket.dup(client.transport.fileno()))
        self.addCleanup(readable.close)
        readable.setblocking(False)  # BlockingIOError if it were still queued here
        self.assertEqual(readable.recv(16, socket.MSG_PEEK), b"one\n")
        await until(lambda: client.data == b"one\n")

    async def test_behind_queued_data_a_send_keeps_its_turn(self) -> None:
        transport, client = await self._pair()
        send = twisted_internals.direct_sender(transport)
        assert send is not None
        transport.write(b"first\n")  # queued until the reactor's next turn
        self.assertEqual(send(b"second\n"), b"second\n", "nothing sent ahead of the queue")
        transport.write(b"second\n")
        await until(lambda: client.data == b"first\nsecond\n")  # both, in order

    def test_other_transports_take_the_public_path(self) -> None:
        self.assertIsNone(twisted_internals.direct_sender(StringTransport()))
        self.assertFalse(twisted_internals.has_send_internals(StringTransport()))


class ListenerTests(unittest.TestCase):
    timeout = 20

    async def test_it_listens_and_stops_listening(self) -> None:
        listener = twisted_internals.listener(
            reactor, "tcp:0:interface=127.0.0.1", protocol.Factory.forProtocol(Collect)
        )
        listener.startService()
        assert listener.listening is not None
        port = await listener.listening
        number = port.getHost().port
        with socket.create_connection(("127.0.0.1", number), timeout=5):
            pass
        await listener.stopService()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", number), timeout=5).close()

    def test_a_busy_port_raises_at_start(self) -> None:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        number = busy.getsockname()[1]
        listener = twisted_internals.listener(
            reactor, f"tcp:{number}:interface=127.0.0.1", protocol.Factory.forProtocol(Collect)
        )
        with self.assertRaises(error.CannotListenError):
            listener.startService()
        self.assertFalse(listener.running)
        self.assertIsNone(listener.stopService())

    def test_a_description_that_names_no_endpoint_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            twisted_internals.listener(reactor, "nosuch:1234", protocol.Factory.forProtocol(Collect))


class EndpointPortTests(unittest.TestCase):
    def test_a_tcp_endpoint_still_shows_its_port(self) -> None:
        # Fails if Twisted renames the attribute: then a port out of range
        # would only be refused at bind time.
        endpoint = endpoints.serverFromString(reactor, "tcp:7000:interface=127.0.0.1")
        self.assertEqual(twisted_internals.endpoint_port(endpoint), 7000)

    def test_an_endpoint_without_a_port_shows_none(self) -> None:
        endpoint = endpoints.serverFromString(reactor, "unix:/tmp/nowhere.sock")
        self.assertIsNone(twisted_internals.endpoint_port(endpoint))
