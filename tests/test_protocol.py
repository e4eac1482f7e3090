"""The secure channel under attack, end to end.

Every failure mode of the channel, played against the real server (the
service tree of ``twistd chatserver`` on a loopback port, see
``tests.support``) and, where the client is the one that must notice, the
real client library.  Each test checks what can be observed from outside:
the offending connection is closed, the peer got an ALERT (or nothing, or a
CLOSE), the server's log says why, and in many of them an honest client on
the same server can still send and receive a message afterwards.

Three test-side tools do the hand work; none of them replaces our own code:

* ``RawClient`` speaks the protocol itself with ``channel.ClientHandshake``
  and ``channel.SecureChannel``, so a test can put any line on the wire.
* ``TamperingProxy`` sits between the real client and the real server and
  forwards lines, except those a test wants to change, drop or reflect.
* ``LogCapture`` collects ``twisted.logger`` events and lets a test wait for
  the one that explains a disconnect.

Timeouts are driven with ``task.Clock`` (passed to the server as its clock)
or, for the byte-by-byte slowloris, by feeding a server protocol built by
the real factory through a ``StringTransport``.
"""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial import unittest

from chatclient.known_hosts import HostKeyMismatch, KnownHosts, server_id
from chatclient.session import ChatSession, ConnectionClosed, ServerError, connect
from chatserver.wire import channel, crypto
from tests.support import PASSWORD, EventQueue, RunningServer, logged_in, open_session, start_server

TIMEOUT = 5.0
PING = channel.encode_events([{"type": "ping"}])

#: X25519 public values whose shared secret with any key is all zeros
#: (the small-order points of Curve25519 and their non-canonical forms).
LOW_ORDER_SHARES = {
    "zero": bytes(32),
    "one": b"\x01" + bytes(31),
    "order 8 (a)": bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    "order 8 (b)": bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    "p - 1": bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    "p": bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    "p + 1": bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
}

# Reasons the server logs (``ChannelError.reason`` and friends).
AUTH_FAILED = "record failed authentication"
TIMED_OUT = "handshake or login not finished in time"


# --- small helpers ------------------------------------------------------------


def b64(record: bytes) -> bytes:
    """A record as a line, without the delimiter."""
    return base64.b64encode(record)


def unline(wire: bytes) -> bytes:
    """The one line in ``wire`` (as returned by ``SecureChannel.seal``)."""
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1, wire
    return wire[:-1]


def record_of(line: bytes) -> bytes:
    return channel.decode_line(line)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def with_timeout(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


def watch(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    """A new Deferred with ``d``'s (successful) result, leaving ``d`` as is."""
    out: Deferred[Any] = Deferred()

    def relay(result: Any) -> Any:
        if not out.called:
            out.callback(result)
        return result

    d.addCallback(relay)
    return with_timeout(out, seconds)


async def until(condition: Callable[[], bool], what: str, seconds: float = TIMEOUT) -> None:
    """Wait (polling the real reactor) until ``condition()`` holds."""
    deadline = reactor.seconds() + seconds
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await task.deferLater(reactor, 0.005, lambda: None)


def hello_fields(record: bytes) -> dict[str, Any]:
    """Parse a CLIENT_HELLO (for tampering in transit)."""
    assert record[0] == channel.CLIENT_HELLO
    pos = 1
    nv = record[pos]
    versions = list(struct.unpack(f">{nv}H", record[pos + 1 : pos + 1 + 2 * nv]))
    pos += 1 + 2 * nv
    ns = record[pos]
    suites = list(struct.unpack(f">{ns}H", record[pos + 1 : pos + 1 + 2 * ns]))
    pos += 1 + 2 * ns
    return {
        "versions": versions,
        "suites": suites,
        "random": record[pos : pos + 32],
        "share": record[pos + 32 : pos + 64],
    }


def build_client_hello(versions: list[int], suites: list[int], random: bytes, share: bytes) -> bytes:
    return (
        bytes((channel.CLIENT_HELLO, len(versions)))
        + struct.pack(f">{len(versions)}H", *versions)
        + bytes((len(suites),))
        + struct.pack(f">{len(suites)}H", *suites)
        + random
        + share
    )


# Offsets in a SERVER_HELLO: type, version u16, suite u16, random, share, spki.
SH_VERSION = slice(1, 3)
SH_SUITE = slice(3, 5)
SH_RANDOM = 5
SH_SHARE = slice(37, 69)


def replace_spki(server_hello: bytes, der: bytes) -> bytes:
    return server_hello[:69] + struct.pack(">H", len(der)) + der


def vector_key_fingerprint() -> str:
    """The fingerprint of a key that is *not* the test server's."""
    pem = (Path(__file__).parent / "vector_rsa.pem").read_bytes()
    return crypto.fingerprint(crypto.rsa_public_der(crypto.rsa_private_from_pem(pem)))


# --- log capture ----------------------------------------------------------------


class LogCapture:
    """Collects every log event while a test runs."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], Deferred[Any]]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        for item in list(self._waiters):
            match, d = item
            if match(event):
                self._waiters.remove(item)
                # Not synchronously: we are inside the server's log call.
                reactor.callLater(0, d.callback, event)

    def find(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [e for e in self.events if match(e)]

    def wait(self, match: Callable[[dict[str, Any]], bool], seconds: float = TIMEOUT) -> Deferred[Any]:
        for event in self.events:
            if match(event):
                return defer.succeed(event)
        d: Deferred[Any] = Deferred()
        self._waiters.append((match, d))
        return with_timeout(d, seconds)


def _reason_matches(expected: Any, actual: Any) -> bool:
    if callable(expected):
        return isinstance(actual, str) and bool(expected(actual))
    return actual == expected


def is_drop(reason: Any) -> Callable[[dict[str, Any]], bool]:
    """The server's warning that it disconnects a peer, for ``reason``."""

    def match(e: dict[str, Any]) -> bool:
        return (
            e.get("log_namespace") == "chatserver.protocol"
            and e.get("log_level") == LogLevel.warn
            and "disconnecting" in (e.get("log_format") or "")
            and _reason_matches(reason, e.get("reason"))
        )

    return match


def is_disconnect(reason: Any) -> Callable[[dict[str, Any]], bool]:
    """The connections log's line for a connection that has ended."""

    def match(e: dict[str, Any]) -> bool:
        return (
            e.get("log_namespace") == "chatserver.connections"
            and (e.get("log_format") or "").startswith("disconnect ")
            and _reason_matches(reason, e.get("reason"))
        )

    return match


def secure_channels(server: Any) -> int:
    """How many handshakes the server completed (full and resumed)."""
    counters = server.factory.metrics.counters
    return counters["handshakes"] + counters["resumptions"]


def any_drop(e: dict[str, Any]) -> bool:
    return is_drop(lambda r: True)(e)


# --- a hand-driven client -------------------------------------------------------


class RawClient(LineReceiver):
    """Speaks the protocol by hand: any line can go on the wire."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 24

    def __init__(self) -> None:
        self.lines: list[bytes] = []  # every line received, in order
        self._unread: list[bytes] = []
        self._waiters: list[Deferred[bytes]] = []
        self._lost_waiters: list[Deferred[Any]] = []
        self.lost_reason: Failure | None = None
        self.hs: channel.ClientHandshake | None = None
        self.channel: channel.SecureChannel | None = None

    # receiving

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        while self._waiters:
            d = self._waiters.pop(0)
            if not d.called:
                d.callback(line)
                return
        self._unread.append(line)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost_reason = reason
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.errback(reason)
        lost, self._lost_waiters = self._lost_waiters, []
        for d in lost:
            d.callback(None)  # not the Failure itself: that would errback

    def next_line(self, seconds: float = TIMEOUT) -> Deferred[bytes]:
        if self._unread:
            return defer.succeed(self._unread.pop(0))
        if self.lost_reason is not None:
            return defer.fail(self.lost_reason)
        d: Deferred[bytes] = Deferred()
        self._waiters.append(d)
        return with_timeout(d, seconds)

    async def next_record(self) -> bytes:
        return record_of(await self.next_line())

    async def next_events(self) -> list[dict[str, Any]] | None:
        assert self.channel is not None
        return self.channel.open(await self.next_line())

    def when_lost(self, seconds: float = TIMEOUT) -> Deferred[None]:
        """Fires (with None) once the connection has ended."""
        if self.lost_reason is not None:
            return defer.succeed(None)
        d: Deferred[Any] = Deferred()
        self._lost_waiters.append(d)
        return with_timeout(d, seconds)

    @property
    def unread(self) -> list[bytes]:
        return list(self._unread)

    # sending

    def send_line(self, line: bytes) -> None:
        self.transport.write(line + b"\n")

    def send_record(self, record: bytes) -> None:
        self.transport.write(channel.encode_line(record))

    def sealed_line(self, rtype: int, plaintext: bytes) -> bytes:
        """Seal a record (advancing our send sequence) without sending it."""
        assert self.channel is not None
        return unline(self.channel.seal(rtype, plaintext))

    def send_sealed(self, rtype: int, plaintext: bytes) -> bytes:
        """Seal and send (with a KEY_UPDATE first if one is due); returns
        the line of the record itself."""
        assert self.channel is not None
        wire = self.channel.seal(rtype, plaintext)
        self.transport.write(wire)
        return wire.rstrip(b"\n").rsplit(b"\n", 1)[-1]

    # protocol steps

    async def hello(self, hs: channel.ClientHandshake | None = None) -> bytes:
        """Send CLIENT_HELLO; return the SERVER_HELLO record."""
        self.hs = hs or channel.ClientHandshake()
        self.send_record(self.hs.hello())
        server_hello = await self.next_record()
        self.hs.receive_server_hello(server_hello)
        return server_hello

    async def do_handshake(self, hs: channel.ClientHandshake | None = None) -> channel.SecureChannel:
        await self.hello(hs)
        assert self.hs is not None
        for record in self.hs.key_exchange():
            self.send_record(record)
        self.channel = self.hs.receive_finished(await self.next_record())
        return self.channel

    async def ping(self, ref: int = 1) -> bytes:
        """A ping that must be answered; returns the raw answer line."""
        self.send_sealed(channel.DATA, channel.encode_events([{"type": "ping", "ref": ref}]))
        line = await self.next_line()
        assert self.channel is not None
        events = self.channel.open(line)
        assert events == [{"type": "pong", "ref": ref}], events
        return line


# --- a line-level man in the middle ---------------------------------------------

Tamper = Callable[["ProxyConnection", str, int, bytes], "list[bytes] | None"]


class _ProxyHalf(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 24

    def __init__(self, conn: "ProxyConnection", direction: str) -> None:
        self.conn = conn
        self.direction = direction  # of the lines this half receives

    def connectionMade(self) -> None:
        if self.direction == "c2s":
            self.conn.client_connected(self)

    def lineReceived(self, line: bytes) -> None:
        self.conn.line(self.direction, line)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.conn.half_lost(self.direction)


class ProxyConnection:
    """One client connection through the proxy and its server connection.

    ``seen[direction]`` holds every line as it arrived at the proxy, before
    any tampering; ``c2s`` is client to server, ``s2c`` server to client.
    """

    def __init__(self, proxy: "TamperingProxy") -> None:
        self.proxy = proxy
        self.seen: dict[str, list[bytes]] = {"c2s": [], "s2c": []}
        self.client_half: _ProxyHalf | None = None
        self.server_half: _ProxyHalf | None = None
        self._pending: list[bytes] = []
        self.lost = {"c2s": False, "s2c": False}
        self._closed_waiters: list[Deferred[None]] = []

    def client_connected(self, half: _ProxyHalf) -> None:
        self.client_half = half
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target_port)
        d = endpoints.connectProtocol(endpoint, _ProxyHalf(self, "s2c"))
        d.addCallbacks(self._server_connected, self._server_failed)

    def _server_connected(self, half: _ProxyHalf) -> None:
        self.server_half = half
        if self.lost["c2s"]:
            half.transport.loseConnection()
            return
        for line in self._pending:
            half.transport.write(line + b"\n")
        self._pending = []

    def _server_failed(self, failure: Failure) -> None:
        self.lost["s2c"] = True
        if self.client_half is not None:
            self.client_half.transport.abortConnection()
        self._check_closed()

    def line(self, direction: str, line: bytes) -> None:
        index = len(self.seen[direction])
        self.seen[direction].append(line)
        out = self.proxy.tamper(self, direction, index, line) if self.proxy.tamper else None
        for item in [line] if out is None else out:
            if direction == "c2s":
                self.to_server(item)
            else:
                self.to_client(item)

    def to_server(self, line: bytes) -> None:
        if self.server_half is None:
            self._pending.append(line)
        else:
            self.server_half.transport.write(line + b"\n")

    def to_client(self, line: bytes) -> None:
        assert self.client_half is not None
        self.client_half.transport.write(line + b"\n")

    def cut(self) -> None:
        """Drop both TCP connections at once, without any goodbye."""
        for half in (self.client_half, self.server_half):
            if half is not None and half.transport is not None:
                half.transport.abortConnection()

    def half_lost(self, direction: str) -> None:
        self.lost[direction] = True
        other = self.server_half if direction == "c2s" else self.client_half
        if other is not None and other.transport is not None:
            other.transport.loseConnection()
        self._check_closed()

    def _check_closed(self) -> None:
        if self.lost["c2s"] and (self.lost["s2c"] or self.server_half is None):
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    @property
    def closed(self) -> bool:
        return self.lost["c2s"] and (self.lost["s2c"] or self.server_half is None)

    def when_closed(self, seconds: float = TIMEOUT) -> Deferred[None]:
        if self.closed and (self.server_half is None or self.lost["s2c"]):
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return with_timeout(d, seconds)

    def records(self, direction: str) -> list[bytes]:
        return [record_of(line) for line in self.seen[direction]]


class TamperingProxy(Factory):
    def __init__(self, target_port: int, tamper: Tamper | None = None) -> None:
        self.target_port = target_port
        self.tamper = tamper
        self.connections: list[ProxyConnection] = []
        self.port = 0
        self._listening: Any = None

    def buildProtocol(self, addr: Any) -> _ProxyHalf:
        conn = ProxyConnection(self)
        self.connections.append(conn)
        return _ProxyHalf(conn, "c2s")

    async def start(self) -> "TamperingProxy":
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(self)
        self.port = self._listening.getHost().port
        return self

    async def stop(self) -> None:
        await defer.maybeDeferred(self._listening.stopListening)
        for conn in self.connections:
            conn.cut()
        for conn in self.connections:
            for direction, half in (("c2s", conn.client_half), ("s2c", conn.server_half)):
                if half is not None:
                    lost = conn.lost
                    await until(lambda lost=lost, d=direction: lost[d], f"proxy side {direction} closed")


def rewrite(direction: str, index: int, change: Callable[[bytes], bytes]) -> Tamper:
    """Change the record of one line in transit."""

    def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
        if d == direction and i == index:
            return [b64(change(record_of(line)))]
        return None

    return tamper


# --- the test case base ---------------------------------------------------------


class ChannelTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.logs = LogCapture(self)

    async def start(self, clock: Any = None, **overrides: Any) -> RunningServer:
        server = await start_server(self, clock=clock, **overrides)
        # Runs before server.stop (cleanups are LIFO): every connection the
        # server accepted must be gone, or the reactor is left dirty.
        self.addCleanup(self._quiesce, server)
        return server

    async def _quiesce(self, server: RunningServer) -> None:
        try:
            await until(lambda: not server.factory.connections, "the server closed all connections")
        finally:
            for protocol in list(server.factory.connections):
                if protocol.transport is not None and hasattr(protocol.transport, "abortConnection"):
                    protocol.transport.abortConnection()

    async def raw(self, port: int) -> RawClient:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = await endpoints.connectProtocol(endpoint, RawClient())
        self.addCleanup(self._close_raw, client)
        return client

    async def _close_raw(self, client: RawClient) -> None:
        if client.lost_reason is None:
            client.transport.abortConnection()
            await client.when_lost()

    async def proxy(self, target_port: int, tamper: Tamper | None = None) -> TamperingProxy:
        proxy = await TamperingProxy(target_port, tamper).start()
        self.addCleanup(proxy.stop)
        return proxy

    async def client(
        self,
        port: int,
        verify: Callable[[str], Any] | None = None,
        handshake: channel.ClientHandshake | None = None,
    ) -> ChatSession:
        """A real client session to ``port`` (closed at cleanup)."""
        session = await with_timeout(
            connect(reactor, f"tcp:host=127.0.0.1:port={port}", verify or (lambda fp: True), handshake)
        )
        self.addCleanup(session.close)
        return session

    async def connect_fails(
        self,
        port: int,
        error: type[Exception] = ConnectionClosed,
        verify: Callable[[str], Any] | None = None,
        handshake: channel.ClientHandshake | None = None,
    ) -> Any:
        d = connect(reactor, f"tcp:host=127.0.0.1:port={port}", verify or (lambda fp: True), handshake)
        return await self.assertFailure(with_timeout(d), error)

    # --- assertions ------------------------------------------------------

    async def assert_dropped(self, reason: Any) -> dict[str, Any]:
        """The server logged why it disconnects a peer, and the connection
        then really ended (the connections log records it with the same
        reason)."""
        warning = await self.logs.wait(is_drop(reason))
        self.assertIn(warning["reason"], formatEvent(warning))
        gone = await self.logs.wait(is_disconnect(lambda r: True))
        self.assertEqual(gone["reason"], warning["reason"], "the connections log gives another reason")
        self.assertIn(warning["reason"], formatEvent(gone))
        # One error, one warning: nothing the peer sent after it was handled.
        self.assertEqual([e["reason"] for e in self.logs.find(any_drop)], [warning["reason"]])
        return warning

    async def assert_aborted_after_handshake(self, raw: RawClient, reason: Any, lines_before: int) -> None:
        """``raw`` (past the handshake) was disconnected for ``reason``; the
        server sent nothing after the offending line except, possibly, a
        CLOSE record."""
        await raw.when_lost()
        await self.assert_dropped(reason)
        for line in raw.lines[lines_before:]:
            self.assertEqual(record_of(line)[0], channel.CLOSE, "only a CLOSE may follow an error")

    async def assert_alerted(self, raw: RawClient, code: int, reason: Any) -> None:
        """``raw`` (in the handshake) got an ALERT with ``code`` as the last
        thing before the server closed the connection, and the server
        logged ``reason``."""
        await raw.when_lost()
        self.assertTrue(raw.lines, "the server closed without an ALERT")
        alert = record_of(raw.lines[-1])
        self.assertEqual(alert[0], channel.ALERT, "the last record is not an ALERT")
        self.assertEqual(alert[1], code, f"wrong alert code; text: {alert[2:]!r}")
        warning = await self.assert_dropped(reason)
        # The alert's text tells the peer the same reason (it is safe text).
        self.assertEqual(alert[2:].decode("utf-8"), warning["reason"][:200])

    async def honest_pair(self, server: RunningServer) -> tuple[ChatSession, EventQueue]:
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        return alice, EventQueue(bob)

    async def assert_chat_works(
        self, alice: ChatSession, bob_events: EventQueue, body: str = "still here"
    ) -> None:
        ack = await with_timeout(alice.say("lobby", body))
        self.assertEqual(ack["type"], "ack")
        msg = await bob_events.next(lambda e: e.get("type") == "msg" and e.get("body") == body)
        self.assertEqual((msg["from"], msg["room"]), ("alice", "lobby"))


# ===============================================================================
# Tampered, replayed, reordered, dropped, foreign and reflected records
# ===============================================================================


class TamperedRecordTests(ChannelTestCase):
    """A sealed record that was changed in transit closes the connection."""

    async def _tampered(self, change: Callable[[bytes], bytes], reason: str, honest: bool = False) -> None:
        server = await self.start()
        if honest:
            alice, bob_events = await self.honest_pair(server)
        raw = await self.raw(server.port)
        await raw.do_handshake()
        await raw.ping(1)  # the channel works before the attack
        seen = len(raw.lines)
        # The tampered record is the very next one the server expects, so
        # only the change can make it fail.
        record = record_of(raw.sealed_line(channel.DATA, channel.encode_events([{"type": "ping", "ref": 2}])))
        raw.send_line(b64(change(record)))
        await self.assert_aborted_after_handshake(raw, reason, seen)
        if honest:
            await self.assert_chat_works(alice, bob_events)

    async def test_flipped_bit_in_ciphertext(self) -> None:
        await self._tampered(lambda r: flip(r, 3), AUTH_FAILED, honest=True)

    async def test_flipped_bit_in_tag(self) -> None:
        await self._tampered(lambda r: flip(r, len(r) - 1, 0x80), AUTH_FAILED)

    async def test_type_byte_data_to_close(self) -> None:
        """The type byte is authenticated: a DATA relabelled as CLOSE is no
        clean goodbye but a forgery."""
        await self._tampered(lambda r: bytes((channel.CLOSE,)) + r[1:], AUTH_FAILED)

    async def test_type_byte_data_to_key_update(self) -> None:
        await self._tampered(lambda r: bytes((channel.KEY_UPDATE,)) + r[1:], AUTH_FAILED)

    async def test_type_byte_unknown(self) -> None:
        await self._tampered(lambda r: b"\x19" + r[1:], "unexpected record type after handshake", honest=True)

    async def test_type_byte_plaintext_type_after_handshake(self) -> None:
        await self._tampered(
            lambda r: bytes((channel.CLIENT_HELLO,)) + r[1:], "unexpected record type after handshake"
        )

    async def test_key_update_relabelled_as_data(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        seen = len(raw.lines)
        record = record_of(raw.sealed_line(channel.KEY_UPDATE, b""))
        raw.send_line(b64(bytes((channel.DATA,)) + record[1:]))
        await self.assert_aborted_after_handshake(raw, AUTH_FAILED, seen)

    async def test_truncated_on_a_base64_boundary(self) -> None:
        """A line cut by a multiple of four characters still decodes, to a
        shorter record: its tag no longer verifies."""
        await self._tampered(lambda r: r[:-3], AUTH_FAILED)

    async def test_truncated_line(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        seen = len(raw.lines)
        line = raw.sealed_line(channel.DATA, PING)
        raw.send_line(line[:-1])
        await self.assert_aborted_after_handshake(raw, "line is not valid base64", seen)

    async def test_sealed_record_shorter_than_a_tag(self) -> None:
        server = await self.start()
        for body in (b"", b"\x00" * (channel.TAG_SIZE - 1)):
            raw = await self.raw(server.port)
            await raw.do_handshake()
            seen = len(raw.lines)
            raw.send_record(bytes((channel.DATA,)) + body)
            await self.assert_aborted_after_handshake(raw, "sealed record too short", seen)
            self.logs.events.clear()


class ReplayTests(ChannelTestCase):
    """Records must be opened exactly once, in order, in their own session."""

    async def test_replayed_record(self) -> None:
        server = await self.start()
        alice, bob_events = await self.honest_pair(server)
        raw = await self.raw(server.port)
        await raw.do_handshake()
        line = raw.send_sealed(channel.DATA, channel.encode_events([{"type": "ping", "ref": 1}]))
        self.assertEqual(await raw.next_events(), [{"type": "pong", "ref": 1}])
        seen = len(raw.lines)
        raw.send_line(line)  # the very same line again
        await self.assert_aborted_after_handshake(raw, AUTH_FAILED, seen)
        await self.assert_chat_works(alice, bob_events)

    async def test_reordered_records(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        first = raw.sealed_line(channel.DATA, channel.encode_events([{"type": "ping", "ref": 1}]))
        second = raw.sealed_line(channel.DATA, channel.encode_events([{"type": "ping", "ref": 2}]))
        seen = len(raw.lines)
        raw.transport.write(second + b"\n" + first + b"\n")
        await self.assert_aborted_after_handshake(raw, AUTH_FAILED, seen)
        self.assertEqual(raw.lines[seen:], [], "the server answered a reordered record")

    async def test_first_error_is_the_logged_reason(self) -> None:
        """A bad record followed by more lines in the same write: the
        server must log the bad record as the reason, once, and not go on
        to process (and log) the lines behind it."""
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        await raw.ping(1)
        bad = flip(
            record_of(raw.sealed_line(channel.DATA, channel.encode_events([{"type": "ping", "ref": 2}]))), 3
        )
        more = [
            raw.sealed_line(channel.DATA, channel.encode_events([{"type": "ping", "ref": r}])) for r in (3, 4)
        ]
        seen = len(raw.lines)
        raw.transport.write(b"".join(line + b"\n" for line in [b64(bad)] + more))
        await raw.when_lost()
        await self.logs.wait(is_disconnect(lambda r: True))
        self.assertEqual([e["reason"] for e in self.logs.find(any_drop)], [AUTH_FAILED])
        self.assertEqual([e["reason"] for e in self.logs.find(is_disconnect(lambda r: True))], [AUTH_FAILED])
        self.assertEqual(raw.lines[seen:], [])

    async def test_dropped_record(self) -> None:
        """If a record is lost, the next one fails."""
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        await raw.ping(1)
        raw.sealed_line(channel.DATA, channel.encode_events([{"type": "ping", "ref": 2}]))  # lost
        third = raw.sealed_line(channel.DATA, channel.encode_events([{"type": "ping", "ref": 3}]))
        seen = len(raw.lines)
        raw.send_line(third)
        await self.assert_aborted_after_handshake(raw, AUTH_FAILED, seen)
        self.assertEqual(raw.lines[seen:], [])

    async def test_dropped_key_update(self) -> None:
        """A lost KEY_UPDATE leaves the receiver on the old key."""
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        assert raw.channel is not None
        raw.channel.rekey_after = 1
        await raw.ping(1)  # seq 0 under the first key
        wire = raw.channel.seal(channel.DATA, channel.encode_events([{"type": "ping", "ref": 2}]))
        update, data = wire.split(b"\n")[:2]
        self.assertEqual(record_of(update)[0], channel.KEY_UPDATE)
        seen = len(raw.lines)
        raw.send_line(data)  # without the KEY_UPDATE before it
        await self.assert_aborted_after_handshake(raw, AUTH_FAILED, seen)

    async def test_record_from_another_session(self) -> None:
        server = await self.start()
        session_a = await self.raw(server.port)
        await session_a.do_handshake()
        session_b = await self.raw(server.port)
        await session_b.do_handshake()
        # Captured from A (the next record A's server side expects)...
        captured = session_a.sealed_line(channel.DATA, channel.encode_events([{"type": "ping", "ref": 7}]))
        seen = len(session_b.lines)
        session_b.send_line(captured)  # ...and sent in B.
        await self.assert_aborted_after_handshake(session_b, AUTH_FAILED, seen)
        # A is unaffected: the record is still good where it belongs.
        session_a.send_line(captured)
        self.assertEqual(await session_a.next_events(), [{"type": "pong", "ref": 7}])
        self.assertIsNone(session_a.lost_reason)

    async def test_server_record_reflected_to_server(self) -> None:
        server = await self.start()
        alice, bob_events = await self.honest_pair(server)
        raw = await self.raw(server.port)
        await raw.do_handshake()
        pong = await raw.ping(1)  # a DATA record sealed by the server
        seen = len(raw.lines)
        raw.send_line(pong)
        await self.assert_aborted_after_handshake(raw, AUTH_FAILED, seen)
        await self.assert_chat_works(alice, bob_events)

    async def test_server_finished_reflected_to_server(self) -> None:
        """The server's own FINISHED sent back after the handshake is a
        plaintext record out of place."""
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        server_finished = raw.lines[1]
        seen = len(raw.lines)
        raw.send_line(server_finished)
        await self.assert_aborted_after_handshake(raw, "unexpected record type after handshake", seen)

    async def test_record_limit_per_key(self) -> None:
        """A peer that seals more records under one key than the receive
        limit allows is disconnected; KEY_UPDATEs keep an honest one below it."""
        server = await self.start()
        honest = await self.raw(server.port)
        await honest.do_handshake()
        greedy = await self.raw(server.port)
        await greedy.do_handshake()
        await until(
            lambda: sum(p.channel is not None for p in server.factory.connections) == 2, "both are secure"
        )
        for protocol in server.factory.connections:
            protocol.channel.receive_limit = 3
        assert honest.channel is not None
        honest.channel.rekey_after = 2  # its KEY_UPDATE is the 3rd record
        for ref in range(1, 11):
            await honest.ping(ref)
        for ref in range(1, 4):
            await greedy.ping(ref)
        seen = len(greedy.lines)
        greedy.send_sealed(channel.DATA, channel.encode_events([{"type": "ping", "ref": 4}]))
        await self.assert_aborted_after_handshake(greedy, "peer exceeded the per-key record limit", seen)
        await honest.ping(11)


class ClientSideRecordTests(ChannelTestCase):
    """The client library rejects bad records from (or via) the network."""

    async def _client_sees(self, tamper: Tamper, message: str) -> None:
        """The tampering proxies below put the bad line and a good one
        behind it in one write, as any attacker can: the client must report
        the first error, not a consequence of it."""
        server = await self.start()
        proxy = await self.proxy(server.port, tamper)
        session = await self.client(proxy.port)
        closed = watch(session.closed)
        request = session.register("alice", PASSWORD)
        failure = await self.assertFailure(with_timeout(request), ConnectionClosed)
        info = await closed
        self.assertFalse(info.clean)
        self.assertEqual((info.code, info.message), ("protocol_error", message))
        self.assertEqual((failure.clean, failure.message), (False, message))
        # The server saw the connection end without a goodbye.
        await self.logs.wait(is_disconnect("connection lost"))

    async def test_tampered_server_record(self) -> None:
        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "s2c" and record_of(line)[0] == channel.DATA:
                return [b64(flip(record_of(line), 5)), line]
            return None

        await self._client_sees(tamper, AUTH_FAILED)

    async def test_forged_close_is_not_a_clean_close(self) -> None:
        """A server DATA relabelled as CLOSE must not end the session cleanly."""

        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "s2c" and record_of(line)[0] == channel.DATA:
                return [b64(bytes((channel.CLOSE,)) + record_of(line)[1:]), line]
            return None

        await self._client_sees(tamper, AUTH_FAILED)

    async def test_client_record_reflected_to_client(self) -> None:
        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "c2s" and record_of(line)[0] in channel.SEALED_TYPES:
                conn.to_client(line)  # back where it came from
                return []
            return None

        await self._client_sees(tamper, AUTH_FAILED)

    async def test_server_record_replayed_to_client(self) -> None:
        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "s2c" and record_of(line)[0] == channel.DATA:
                return [line, line, line]
            return None

        server = await self.start()
        proxy = await self.proxy(server.port, tamper)
        session = await self.client(proxy.port)
        closed = watch(session.closed)
        welcome = await with_timeout(session.register("alice", PASSWORD))  # the first copy is fine
        self.assertEqual(welcome["user"], "alice")
        info = await closed
        self.assertEqual((info.clean, info.code, info.message), (False, "protocol_error", AUTH_FAILED))

    async def test_plaintext_alert_after_handshake(self) -> None:
        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "s2c" and record_of(line)[0] == channel.DATA:
                return [b64(channel.alert_record(channel.ALERT_HANDSHAKE_FAILURE, "go away")), line]
            return None

        await self._client_sees(tamper, "unexpected record type after handshake")

    async def test_garbage_line_after_handshake(self) -> None:
        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "s2c" and record_of(line)[0] == channel.DATA:
                return [b"not base64!", line]
            return None

        await self._client_sees(tamper, "line is not valid base64")


# ===============================================================================
# Malformed lines and malformed plaintexts
# ===============================================================================


class MalformedLineTests(ChannelTestCase):
    async def _after_handshake(
        self, line: bytes, reason: str, honest: bool = False, **overrides: Any
    ) -> None:
        server = await self.start(**overrides)
        if honest:
            alice, bob_events = await self.honest_pair(server)
        raw = await self.raw(server.port)
        await raw.do_handshake()
        seen = len(raw.lines)
        raw.transport.write(line)
        await self.assert_aborted_after_handshake(raw, reason, seen)
        if honest:
            await self.assert_chat_works(alice, bob_events)

    async def _before_handshake(self, line: bytes, code: int, reason: str) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        raw.transport.write(line)
        await self.assert_alerted(raw, code, reason)
        self.assertEqual(len(raw.lines), 1, "the server sent more than the ALERT")

    # before the handshake: an ALERT decode_error, then the close

    async def test_bad_base64_first_line(self) -> None:
        await self._before_handshake(b"!!!!\n", channel.ALERT_DECODE_ERROR, "line is not valid base64")

    async def test_line_with_cr_first(self) -> None:
        hello = b64(channel.ClientHandshake().hello())
        await self._before_handshake(hello + b"\r\n", channel.ALERT_DECODE_ERROR, "line is not valid base64")

    async def test_empty_first_line(self) -> None:
        await self._before_handshake(b"\n", channel.ALERT_DECODE_ERROR, "empty record")

    async def test_non_canonical_base64_first_line(self) -> None:
        # "AR==" decodes to b"\x01" like the canonical "AQ==".
        self.assertEqual(base64.b64decode(b"AR=="), b"\x01")
        await self._before_handshake(b"AR==\n", channel.ALERT_DECODE_ERROR, "line is not canonical base64")

    async def test_junk_record_first_line(self) -> None:
        await self._before_handshake(
            b64(b"\x99" + os.urandom(40)) + b"\n", channel.ALERT_DECODE_ERROR, "unexpected record type 0x99"
        )

    # after the handshake: the server aborts

    async def test_bad_base64_after_handshake(self) -> None:
        await self._after_handshake(b"!!!!\n", "line is not valid base64", honest=True)

    async def test_empty_line_after_handshake(self) -> None:
        await self._after_handshake(b"\n", "empty record")

    async def test_non_canonical_base64_after_handshake(self) -> None:
        """The same record bytes in a non-canonical encoding are refused."""
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        # A record whose length is 1 mod 3 ends in "X==": the last character
        # carries 4 unused bits.  Pad the JSON to get there.
        plaintext = PING
        while (1 + len(plaintext) + channel.TAG_SIZE) % 3 != 1:
            plaintext += b" "
        line = raw.sealed_line(channel.DATA, plaintext)
        self.assertTrue(line.endswith(b"=="))
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        index = alphabet.index(line[-3:-2])
        self.assertEqual(index & 0x0F, 0)
        odd = line[:-3] + alphabet[index | 0x01 : (index | 0x01) + 1] + b"=="
        self.assertEqual(base64.b64decode(odd), base64.b64decode(line))  # same bytes
        seen = len(raw.lines)
        raw.send_line(odd)
        await self.assert_aborted_after_handshake(raw, "line is not canonical base64", seen)

    async def test_junk_base64_after_handshake(self) -> None:
        await self._after_handshake(b64(b"\x17" + os.urandom(40)) + b"\n", AUTH_FAILED)

    async def test_junk_type_after_handshake(self) -> None:
        await self._after_handshake(
            b64(b"\x99" + os.urandom(40)) + b"\n", "unexpected record type after handshake"
        )

    # line length

    async def test_oversized_line_before_handshake(self) -> None:
        """A line over max_line_length is not even waited for: as soon as
        the server has more than the limit buffered it answers with a
        decode_error ALERT (the only reply) and closes."""
        server = await self.start(max_line_length=2048)
        alice, bob_events = await self.honest_pair(server)
        raw = await self.raw(server.port)
        raw.transport.write(b"A" * 4000)  # no delimiter, ever
        await raw.when_lost()
        await self.assert_dropped("line longer than 2048 bytes")
        self.assertEqual(
            [base64.b64decode(line)[:2] for line in raw.lines],
            [bytes((channel.ALERT, channel.ALERT_DECODE_ERROR))],
        )
        await self.assert_chat_works(alice, bob_events)

    async def test_oversized_line_after_handshake(self) -> None:
        await self._after_handshake(b"A" * 2052 + b"\n", "line longer than 2048 bytes", max_line_length=2048)

    async def test_line_at_the_limit_is_accepted_one_more_is_not(self) -> None:
        server = await self.start(max_line_length=2048)
        raw = await self.raw(server.port)
        await raw.do_handshake()

        def padded_ping(record_length: int) -> bytes:
            # JSON allows whitespace, so pad the plaintext to any length.
            return PING + b" " * (record_length - 1 - channel.TAG_SIZE - len(PING))

        # 1536 record bytes are exactly 2048 base64 characters.
        line = raw.send_sealed(channel.DATA, padded_ping(1536))
        self.assertEqual(len(line), 2048)
        self.assertEqual(await raw.next_events(), [{"type": "pong"}])
        seen = len(raw.lines)
        line = raw.send_sealed(channel.DATA, padded_ping(1537))
        self.assertEqual(len(line), 2052)
        await self.assert_aborted_after_handshake(raw, "line longer than 2048 bytes", seen)


class MalformedPlaintextTests(ChannelTestCase):
    """Correctly sealed records whose plaintext is not what the spec says."""

    async def _sealed(
        self,
        plaintext: bytes,
        reason: str,
        rtype: int = channel.DATA,
        honest: bool = False,
        server: RunningServer | None = None,
        **overrides: Any,
    ) -> None:
        if server is None:
            server = await self.start(**overrides)
        if honest:
            alice, bob_events = await self.honest_pair(server)
        raw = await self.raw(server.port)
        await raw.do_handshake()
        await raw.ping()
        seen = len(raw.lines)
        raw.send_sealed(rtype, plaintext)
        await self.assert_aborted_after_handshake(raw, reason, seen)
        if honest:
            await self.assert_chat_works(alice, bob_events)

    async def test_bad_json(self) -> None:
        await self._sealed(b'[{"type":"ping"', "data is not JSON", honest=True)

    async def test_empty_plaintext(self) -> None:
        await self._sealed(b"", "data is not JSON")

    async def test_not_utf8(self) -> None:
        await self._sealed(b'[{"type":"say","room":"lobby","body":"\xff\xfe"}]', "data is not UTF-8")

    async def test_deep_nesting(self) -> None:
        await self._sealed(b"[" * 100000, "data is nested too deeply", honest=True, max_line_length=1 << 20)

    async def test_deep_nesting_of_objects(self) -> None:
        await self._sealed(b'{"a":' * 50000, "data is nested too deeply", max_line_length=1 << 20)

    async def test_lone_surrogate_escape(self) -> None:
        await self._sealed(b'[{"type":"ping","ref":"\\ud800"}]', "data is not UTF-8")

    async def test_nan(self) -> None:
        server = await self.start()
        for constant in (b"NaN", b"Infinity", b"-Infinity"):
            await self._sealed(
                b'[{"type":"ping","ref":' + constant + b"}]", "data is not JSON", server=server
            )
            self.logs.events.clear()

    async def test_empty_list(self) -> None:
        await self._sealed(b"[]", "data is not a non-empty list")

    async def test_object_instead_of_list(self) -> None:
        await self._sealed(b'{"type":"ping"}', "data is not a non-empty list")

    async def test_non_object_event(self) -> None:
        await self._sealed(b'["ping"]', "event is not an object with a type")

    async def test_event_without_string_type(self) -> None:
        server = await self.start()
        for events in (b'[{"type":1}]', b'[{"kind":"ping"}]', b'[{"type":"ping"},null]'):
            await self._sealed(events, "event is not an object with a type", server=server)
            self.logs.events.clear()

    async def test_key_update_with_a_body(self) -> None:
        await self._sealed(b"\x00", "KEY_UPDATE with a body", rtype=channel.KEY_UPDATE)


# ===============================================================================
# The handshake: versions, suites, tampering, low-order shares, order
# ===============================================================================


class NegotiationTests(ChannelTestCase):
    async def test_wrong_protocol_version(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        raw.send_record(channel.ClientHandshake(versions=(2,)).hello())
        await self.assert_alerted(raw, channel.ALERT_PROTOCOL_VERSION, "no protocol version in common")
        self.assertEqual(len(raw.lines), 1)

    async def test_wrong_protocol_version_real_client(self) -> None:
        server = await self.start()
        asked = []
        failure = await self.connect_fails(
            server.port, verify=asked.append, handshake=channel.ClientHandshake(versions=(2,))
        )
        self.assertFalse(failure.clean)
        self.assertEqual(failure.code, "protocol_error")
        self.assertEqual(failure.message, "peer alert 1: no protocol version in common")
        self.assertEqual(asked, [], "the client asked to verify a key it never got")
        await self.assert_dropped("no protocol version in common")

    async def test_no_common_suite(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        raw.send_record(channel.ClientHandshake(suites=(0x0002, 0xFFFF)).hello())
        await self.assert_alerted(raw, channel.ALERT_HANDSHAKE_FAILURE, "no cipher suite in common")

    async def test_unknown_versions_and_suites_are_ignored(self) -> None:
        """Control for the two above: extra unknown values do not hurt."""
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake(channel.ClientHandshake(versions=(7, 1), suites=(0x0F0F, 1)))
        await raw.ping()

    async def test_malformed_client_hellos(self) -> None:
        hello = channel.ClientHandshake().hello()
        fields = hello_fields(hello)
        cases = [
            (hello[:-1], "handshake record truncated"),
            (hello + b"\x00", "trailing bytes in handshake record"),
            (build_client_hello([], [1], fields["random"], fields["share"]), "empty list in hello"),
            (build_client_hello([1], [], fields["random"], fields["share"]), "empty list in hello"),
            (bytes((channel.CLIENT_HELLO,)), "handshake record truncated"),
        ]
        server = await self.start()
        for record, reason in cases:
            raw = await self.raw(server.port)
            raw.send_record(record)
            await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, reason)
            self.logs.events.clear()


class LowOrderShareTests(ChannelTestCase):
    async def test_low_order_client_share(self) -> None:
        server = await self.start()
        alice, bob_events = await self.honest_pair(server)
        for name, share in LOW_ORDER_SHARES.items():
            raw = await self.raw(server.port)
            hello = channel.ClientHandshake().hello()
            raw.send_record(hello[:-32] + share)
            await self.assert_alerted(raw, channel.ALERT_HANDSHAKE_FAILURE, "X25519 share has low order")
            self.assertEqual(len(raw.lines), 1, f"share {name}: the server sent more than the ALERT")
            self.logs.events.clear()
        await self.assert_chat_works(alice, bob_events)

    async def test_low_order_server_share_seen_by_client(self) -> None:
        server = await self.start()
        shares = list(LOW_ORDER_SHARES.items())

        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "s2c" and i == 0:  # the n-th connection gets the n-th share
                share = shares[proxy.connections.index(conn)][1]
                return [b64(record_of(line)[:37] + share + record_of(line)[69:])]
            return None

        proxy = await self.proxy(server.port, tamper)
        for n, (name, _) in enumerate(shares):
            failure = await self.connect_fails(proxy.port)
            self.assertEqual((failure.clean, failure.message), (False, "X25519 share has low order"), name)
            conn = proxy.connections[n]
            await conn.when_closed()
            self.assertEqual(len(conn.seen["c2s"]), 1, f"{name}: the client sent more than its hello")


class TamperedHandshakeTests(ChannelTestCase):
    """Changes to the hellos in transit break the FINISHED check."""

    async def _tampered_hello(self, tamper: Tamper, handshake: channel.ClientHandshake | None = None) -> None:
        server = await self.start()
        alice, bob_events = await self.honest_pair(server)
        proxy = await self.proxy(server.port, tamper)
        failure = await self.connect_fails(proxy.port, handshake=handshake)
        self.assertFalse(failure.clean)
        self.assertEqual(failure.message, "peer alert 2: client finished MAC is wrong")
        await self.assert_dropped("client finished MAC is wrong")
        conn = proxy.connections[0]
        await conn.when_closed()
        # The server refused with an ALERT and never sent its FINISHED.
        self.assertEqual([r[0] for r in conn.records("s2c")], [channel.SERVER_HELLO, channel.ALERT])
        self.assertEqual(secure_channels(server), 2)  # alice and bob only
        await self.assert_chat_works(alice, bob_events)

    async def test_client_random_changed(self) -> None:
        def change(record: bytes) -> bytes:
            f = hello_fields(record)
            return build_client_hello(f["versions"], f["suites"], flip(f["random"], 0), f["share"])

        await self._tampered_hello(rewrite("c2s", 0, change))

    async def test_offered_suites_stripped(self) -> None:
        def change(record: bytes) -> bytes:
            f = hello_fields(record)
            self.assertEqual(f["suites"], [1, 0x0A0A])
            return build_client_hello(f["versions"], [1], f["random"], f["share"])

        await self._tampered_hello(rewrite("c2s", 0, change), channel.ClientHandshake(suites=(1, 0x0A0A)))

    async def test_offered_versions_stripped(self) -> None:
        """A downgrade: the attacker removes the client's best version."""

        def change(record: bytes) -> bytes:
            f = hello_fields(record)
            self.assertEqual(f["versions"], [2, 1])
            return build_client_hello([1], f["suites"], f["random"], f["share"])

        await self._tampered_hello(rewrite("c2s", 0, change), channel.ClientHandshake(versions=(2, 1)))

    async def test_client_share_replaced(self) -> None:
        def change(record: bytes) -> bytes:
            f = hello_fields(record)
            _, mallory_share = crypto.x25519_keypair()
            return build_client_hello(f["versions"], f["suites"], f["random"], mallory_share)

        await self._tampered_hello(rewrite("c2s", 0, change))

    async def test_server_random_changed(self) -> None:
        """A changed SERVER_HELLO goes unnoticed by the client until the
        server checks the client's FINISHED over a different transcript."""
        await self._tampered_hello(rewrite("s2c", 0, lambda r: flip(r, SH_RANDOM)))

    async def test_raw_client_hello_changed_after_hashing(self) -> None:
        """The same attack with hand-made records: the transcript the client
        hashed differs from the bytes the server saw."""
        server = await self.start()
        raw = await self.raw(server.port)
        hs = channel.ClientHandshake()
        hello = hs.hello()
        raw.send_record(flip(hello, len(hello) - 40))  # a byte of client_random
        hs.receive_server_hello(await raw.next_record())
        for record in hs.key_exchange():
            raw.send_record(record)
        await self.assert_alerted(raw, channel.ALERT_HANDSHAKE_FAILURE, "client finished MAC is wrong")
        self.assertEqual(len(raw.lines), 2)  # SERVER_HELLO, ALERT: no FINISHED

    async def test_wrong_client_finished(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.hello()
        assert raw.hs is not None
        kex, finished = raw.hs.key_exchange()
        raw.send_record(kex)
        raw.send_record(flip(finished, 1))
        await self.assert_alerted(raw, channel.ALERT_HANDSHAKE_FAILURE, "client finished MAC is wrong")

    async def test_key_exchange_that_does_not_decrypt(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.hello()
        junk = os.urandom(384)
        raw.send_record(bytes((channel.KEY_EXCHANGE,)) + struct.pack(">H", len(junk)) + junk)
        await self.assert_alerted(raw, channel.ALERT_HANDSHAKE_FAILURE, "key exchange did not decrypt")

    async def test_premaster_of_wrong_size(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.hello()
        assert raw.hs is not None and raw.hs.server_key_der is not None
        public = crypto.rsa_public_from_der(raw.hs.server_key_der)
        encrypted = crypto.rsa_encrypt(public, b"short premaster")
        raw.send_record(bytes((channel.KEY_EXCHANGE,)) + struct.pack(">H", len(encrypted)) + encrypted)
        await self.assert_alerted(raw, channel.ALERT_HANDSHAKE_FAILURE, "premaster secret has the wrong size")

    async def test_key_exchange_length_mismatch(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.hello()
        assert raw.hs is not None
        kex, _ = raw.hs.key_exchange()
        raw.send_record(kex + b"\x00")
        await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, "trailing bytes in handshake record")


class ServerHelloSeenByClientTests(ChannelTestCase):
    """The client's own checks of the SERVER_HELLO: on failure it sends
    nothing after its CLIENT_HELLO and the server never gets a key exchange."""

    async def _refused_by_client(self, change: Callable[[bytes], bytes], message: str) -> None:
        server = await self.start()
        proxy = await self.proxy(server.port, rewrite("s2c", 0, change))
        failure = await self.connect_fails(proxy.port)
        self.assertEqual((failure.clean, failure.code, failure.message), (False, "protocol_error", message))
        conn = proxy.connections[0]
        await conn.when_closed()
        self.assertEqual([r[0] for r in conn.records("c2s")], [channel.CLIENT_HELLO])
        await self.logs.wait(is_disconnect("connection lost"))
        self.assertEqual(secure_channels(server), 0)

    async def test_version_not_offered(self) -> None:
        await self._refused_by_client(
            lambda r: r[:1] + struct.pack(">H", 2) + r[3:], "server chose a version we did not offer"
        )

    async def test_suite_not_offered(self) -> None:
        await self._refused_by_client(
            lambda r: r[:3] + struct.pack(">H", 2) + r[5:], "server chose a suite we did not offer"
        )

    async def test_rsa_key_too_small(self) -> None:
        small = crypto.rsa_public_der(crypto.rsa_generate(2048))
        await self._refused_by_client(lambda r: replace_spki(r, small), "RSA key size 2048 out of range")

    async def test_not_a_key(self) -> None:
        await self._refused_by_client(
            lambda r: replace_spki(r, b"\x30\x03\x02\x01\x00"), "not a DER public key"
        )

    async def test_trailing_bytes(self) -> None:
        await self._refused_by_client(lambda r: r + b"\x00", "trailing bytes in handshake record")

    async def test_alert_instead_of_server_hello(self) -> None:
        await self._refused_by_client(
            lambda r: channel.alert_record(channel.ALERT_INTERNAL_ERROR, "nope"), "peer alert 6: nope"
        )

    async def test_tampered_server_finished(self) -> None:
        """A wrong server FINISHED: the client refuses before it sends any
        sealed record."""
        server = await self.start()
        proxy = await self.proxy(server.port, rewrite("s2c", 1, lambda r: flip(r, 10)))
        failure = await self.connect_fails(proxy.port)
        self.assertEqual((failure.clean, failure.message), (False, "server finished MAC is wrong"))
        conn = proxy.connections[0]
        await conn.when_closed()
        self.assertEqual(
            [r[0] for r in conn.records("c2s")],
            [channel.CLIENT_HELLO, channel.KEY_EXCHANGE, channel.FINISHED],
        )
        await self.logs.wait(is_disconnect("connection lost"))


class OutOfOrderTests(ChannelTestCase):
    async def test_data_before_handshake(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        raw.send_record(bytes((channel.DATA,)) + os.urandom(40))
        await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, "unexpected record type 0x17")

    async def test_close_before_handshake(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        raw.send_record(bytes((channel.CLOSE,)) + os.urandom(40))
        await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, "unexpected record type 0x16")

    async def test_key_exchange_first(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        raw.send_record(bytes((channel.KEY_EXCHANGE,)) + struct.pack(">H", 4) + b"abcd")
        await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, "unexpected record type 0x03")

    async def test_finished_before_key_exchange(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.hello()
        raw.send_record(bytes((channel.FINISHED,)) + bytes(32))
        await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, "unexpected record type 0x04")

    async def test_data_instead_of_finished(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.hello()
        assert raw.hs is not None
        kex, _ = raw.hs.key_exchange()
        raw.send_record(kex)
        raw.send_record(bytes((channel.DATA,)) + os.urandom(40))
        await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, "unexpected record type 0x17")

    async def test_second_client_hello_during_handshake(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.hello()
        raw.send_record(channel.ClientHandshake().hello())
        await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, "unexpected record type 0x01")

    async def test_second_client_hello_after_handshake(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        seen = len(raw.lines)
        raw.send_record(channel.ClientHandshake().hello())
        await self.assert_aborted_after_handshake(raw, "unexpected record type after handshake", seen)

    async def test_alert_from_client(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.hello()
        raw.send_record(channel.alert_record(channel.ALERT_HANDSHAKE_FAILURE, "changed my mind"))
        await raw.when_lost()
        await self.assert_dropped("peer alert 2: changed my mind")

    async def test_alert_from_client_after_handshake(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        seen = len(raw.lines)
        raw.send_record(channel.alert_record(channel.ALERT_HANDSHAKE_FAILURE, "too late"))
        await self.assert_aborted_after_handshake(raw, "unexpected record type after handshake", seen)


# ===============================================================================
# Requests before login
# ===============================================================================


class BeforeLoginTests(ChannelTestCase):
    async def test_chat_commands_before_login(self) -> None:
        server = await self.start()
        alice, bob_events = await self.honest_pair(server)
        session = await open_session(self, server)
        error = await self.assertFailure(with_timeout(session.say("lobby", "hi")), ServerError)
        self.assertEqual(error.code, "not_authenticated")
        self.assertEqual(error.event.get("request"), "say")
        error = await self.assertFailure(with_timeout(session.who("lobby")), ServerError)
        self.assertEqual(error.code, "not_authenticated")
        self.assertEqual(error.event.get("request"), "who")
        # Nothing reached the room.
        pong = await with_timeout(alice.ping())
        self.assertEqual(pong["type"], "pong")
        self.assertEqual([e for e in bob_events.events if e.get("type") == "msg"], [])
        # The connection stays usable: log in and talk.
        welcome = await with_timeout(session.register("carol", PASSWORD))
        self.assertEqual(welcome["user"], "carol")
        await with_timeout(session.say("lobby", "hello, now"))
        msg = await bob_events.next(lambda e: e.get("type") == "msg")
        self.assertEqual((msg["from"], msg["body"]), ("carol", "hello, now"))
        self.assertEqual(self.logs.find(any_drop), [])

    async def test_unknown_and_malformed_requests_keep_the_connection(self) -> None:
        server = await self.start()
        session = await open_session(self, server)
        error = await self.assertFailure(with_timeout(session.request({"type": "launch"})), ServerError)
        self.assertEqual(error.code, "unknown_type")
        error = await self.assertFailure(
            with_timeout(session.request({"type": "login", "user": 5, "password": "x"})), ServerError
        )
        self.assertEqual(error.code, "bad_field")
        pong = await with_timeout(session.ping())
        self.assertEqual(pong["type"], "pong")


# ===============================================================================
# Deadlines: handshake timeout, slowloris, honest clients in time
# ===============================================================================


class DeadlineTests(ChannelTestCase):
    async def test_handshake_timeout(self) -> None:
        clock = task.Clock()
        server = await self.start(clock=clock, handshake_timeout=10)
        raw = await self.raw(server.port)
        await until(lambda: len(server.factory.connections) == 1, "the server has the connection")
        clock.advance(9.9)
        self.assertEqual(self.logs.find(any_drop), [])
        self.assertIsNone(raw.lost_reason)
        clock.advance(0.2)
        self.assertEqual([e["reason"] for e in self.logs.find(any_drop)], [TIMED_OUT])
        await self.assert_alerted(raw, channel.ALERT_TIMEOUT, TIMED_OUT)

    async def test_handshake_timeout_while_waiting_for_key_exchange(self) -> None:
        clock = task.Clock()
        server = await self.start(clock=clock, handshake_timeout=10)
        raw = await self.raw(server.port)
        await raw.hello()
        clock.advance(10)
        await self.assert_alerted(raw, channel.ALERT_TIMEOUT, TIMED_OUT)

    async def test_login_deadline_after_handshake(self) -> None:
        """The deadline covers the login too: a secure but anonymous session
        is dropped when it expires."""
        clock = task.Clock()
        server = await self.start(clock=clock, handshake_timeout=10)
        session = await open_session(self, server)
        closed = watch(session.closed)
        clock.advance(10)
        info = await closed
        self.assertFalse(info.clean)
        await self.assert_dropped(TIMED_OUT)

    async def test_pings_do_not_extend_the_deadline(self) -> None:
        """Slowloris with complete records: answered pings every 3 seconds
        (so the server demonstrably reads them) do not postpone the drop."""
        clock = task.Clock()
        server = await self.start(clock=clock, handshake_timeout=10)
        raw = await self.raw(server.port)
        await raw.do_handshake()
        for ref in range(1, 4):
            clock.advance(3)
            await raw.ping(ref)  # t = 3, 6, 9: still served
        self.assertEqual(self.logs.find(any_drop), [])
        seen = len(raw.lines)
        clock.advance(1)
        await self.assert_aborted_after_handshake(raw, TIMED_OUT, seen)

    def _string_connection(self, server: RunningServer) -> tuple[Any, StringTransport]:
        protocol = server.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        protocol.makeConnection(transport)
        self.addCleanup(self._lose, protocol, transport)
        return protocol, transport

    @staticmethod
    def _lose(protocol: Any, transport: StringTransport) -> None:
        if transport.connected:
            transport.connected = False
            protocol.connectionLost(Failure(ConnectionDone()))

    async def test_slowloris_never_finishing_a_line(self) -> None:
        clock = task.Clock()
        server = await self.start(clock=clock, handshake_timeout=10)
        protocol, transport = self._string_connection(server)
        hello = b64(channel.ClientHandshake().hello())
        for i in range(19):  # one byte every half second, for 9.5 seconds
            protocol.dataReceived(hello[i : i + 1])
            clock.advance(0.5)
            self.assertFalse(transport.disconnecting, f"dropped early, at t={clock.seconds()}")
        protocol.dataReceived(hello[19:20])
        clock.advance(0.5)
        self.assertTrue(transport.disconnecting, "not dropped at the deadline")
        self.assertEqual(
            channel.decode_line(transport.value().rstrip(b"\n")),
            channel.alert_record(channel.ALERT_TIMEOUT, TIMED_OUT),
        )
        self._lose(protocol, transport)
        await self.assert_dropped(TIMED_OUT)

    async def test_a_waiting_handshake_pauses_the_socket_only_when_more_arrives(self) -> None:
        """While a full hello waits for its answer the server stops reading
        lines, but leaves the socket alone (pausing and resuming it is a
        pair of system calls) unless the client sends more meanwhile: then
        the socket stops until the answer is out, and what came is read."""
        server = await self.start()
        protocol, transport = self._string_connection(server)
        hello = channel.encode_line(channel.ClientHandshake().hello())
        protocol.dataReceived(hello)
        self.assertEqual(transport.value(), b"", "a full hello is answered on a later turn")
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(hello)  # a second hello, too early
        self.assertEqual(transport.producerState, "paused", "more input while held stops the socket")
        await until(lambda: transport.value() != b"", "the server answered the hello")
        await until(lambda: transport.producerState == "producing", "the socket was resumed")
        # The early record was read after the answer: out of order for a
        # handshake, so the connection is dropped for it (not ignored).
        await until(lambda: transport.disconnecting, "the early record was read")

    async def test_slowloris_key_exchange(self) -> None:
        """A complete CLIENT_HELLO, then the KEY_EXCHANGE a byte at a time."""
        clock = task.Clock()
        server = await self.start(clock=clock, handshake_timeout=10)
        protocol, transport = self._string_connection(server)
        hs = channel.ClientHandshake()
        protocol.dataReceived(channel.encode_line(hs.hello()))
        # A full hello is answered on a later turn of the (real) reactor.
        await until(lambda: transport.value() != b"", "the server answered the hello")
        server_hello = channel.decode_line(transport.value().rstrip(b"\n"))
        transport.clear()
        hs.receive_server_hello(server_hello)
        kex = channel.encode_line(hs.key_exchange()[0])
        for i in range(99):  # t = 0.1 ... 9.9
            protocol.dataReceived(kex[i : i + 1])
            clock.advance(0.1)
            self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1 + 1e-9)
        self.assertTrue(transport.disconnecting, "not dropped at the deadline")
        self.assertEqual(
            channel.decode_line(transport.value().rstrip(b"\n"))[:2],
            bytes((channel.ALERT, channel.ALERT_TIMEOUT)),
        )
        self._lose(protocol, transport)
        await self.assert_dropped(TIMED_OUT)

    async def test_honest_client_in_time_is_not_dropped(self) -> None:
        """Handshake and login within the deadline: the deadline passes
        harmlessly; later the idle timeout ends the session with a clean,
        authenticated CLOSE."""
        clock = task.Clock()
        server = await self.start(clock=clock, handshake_timeout=10, idle_timeout=300)
        session = await open_session(self, server)
        clock.advance(4)
        await with_timeout(session.register("alice", PASSWORD))
        closed = watch(session.closed)
        clock.advance(20)  # far past the handshake deadline
        pong = await with_timeout(session.ping())
        self.assertEqual(pong["type"], "pong")
        self.assertEqual(self.logs.find(any_drop), [])
        self.assertFalse(closed.called)
        clock.advance(300)
        info = await closed
        self.assertEqual((info.clean, info.code), (True, "idle_timeout"))
        await self.logs.wait(is_disconnect(lambda r: r.startswith("idle_timeout")))


# ===============================================================================
# Server identity: changed and pinned keys
# ===============================================================================


class ServerKeyTests(ChannelTestCase):
    async def _refused(
        self, verify_for: Callable[[int], Callable[[str], Any]]
    ) -> tuple[HostKeyMismatch, ProxyConnection]:
        server = await self.start()
        proxy = await self.proxy(server.port)
        error = await self.connect_fails(proxy.port, HostKeyMismatch, verify=verify_for(proxy.port))
        conn = proxy.connections[0]
        await conn.when_closed()
        # Nothing after the CLIENT_HELLO: the server never got a key exchange.
        self.assertEqual([r[0] for r in conn.records("c2s")], [channel.CLIENT_HELLO])
        await self.logs.wait(is_disconnect("connection lost"))
        self.assertEqual(secure_channels(server), 0)
        self.assertEqual(error.actual, server.identity.fingerprint)
        return error, conn

    async def test_changed_server_key(self) -> None:
        pinned = vector_key_fingerprint()
        path = Path(self.mktemp())
        holder: dict[str, str] = {}

        def verify_for(port: int) -> Callable[[str], Any]:
            sid = server_id("127.0.0.1", port)
            holder["line"] = f"{sid} {pinned}\n"
            path.write_text("# pinned earlier\n" + holder["line"], encoding="utf-8")
            return lambda fp: KnownHosts(path).check(sid, fp)

        error, _ = await self._refused(verify_for)
        self.assertEqual(error.expected, pinned)
        self.assertNotEqual(error.actual, pinned)
        self.assertIn(pinned, str(error))
        self.assertIn(error.actual, str(error))
        self.assertIn(str(path), str(error))
        # The file still pins the old key only.
        self.assertEqual(path.read_text(encoding="utf-8"), "# pinned earlier\n" + holder["line"])

    async def test_fingerprint_option_mismatch(self) -> None:
        pinned = vector_key_fingerprint()
        path = Path(self.mktemp())

        def verify_for(port: int) -> Callable[[str], Any]:
            sid = server_id("127.0.0.1", port)
            return lambda fp: KnownHosts(path).check(sid, fp, pinned=pinned)

        error, _ = await self._refused(verify_for)
        self.assertEqual(error.expected, pinned)
        self.assertIn(pinned, str(error))
        self.assertIn(error.actual, str(error))
        self.assertIn("--fingerprint", str(error))
        self.assertFalse(path.exists(), "a refused key was recorded")

    async def test_key_substituted_in_transit(self) -> None:
        """A man in the middle shows the client his own (valid, in range)
        RSA key: the pin check refuses it before any key exchange."""
        pem = (Path(__file__).parent / "vector_rsa.pem").read_bytes()
        mallory = crypto.rsa_public_der(crypto.rsa_private_from_pem(pem))
        server = await self.start()
        proxy = await self.proxy(server.port, rewrite("s2c", 0, lambda r: replace_spki(r, mallory)))
        sid = server_id("127.0.0.1", proxy.port)
        error = await self.connect_fails(
            proxy.port,
            HostKeyMismatch,
            verify=lambda fp: KnownHosts(Path(self.mktemp())).check(
                sid, fp, pinned=server.identity.fingerprint
            ),
        )
        self.assertEqual(
            (error.expected, error.actual), (server.identity.fingerprint, crypto.fingerprint(mallory))
        )
        conn = proxy.connections[0]
        await conn.when_closed()
        self.assertEqual([r[0] for r in conn.records("c2s")], [channel.CLIENT_HELLO])

    async def test_substituted_key_accepted_on_first_use_fails_at_the_server(self) -> None:
        """Trust on first use accepts the attacker's key, but the server
        cannot decrypt a premaster encrypted to it: no session results."""
        pem = (Path(__file__).parent / "vector_rsa.pem").read_bytes()
        mallory = crypto.rsa_public_der(crypto.rsa_private_from_pem(pem))
        server = await self.start()
        proxy = await self.proxy(server.port, rewrite("s2c", 0, lambda r: replace_spki(r, mallory)))
        failure = await self.connect_fails(proxy.port)
        self.assertEqual(failure.message, "peer alert 2: key exchange did not decrypt")
        await self.assert_dropped("key exchange did not decrypt")

    async def test_matching_pin_is_accepted_and_first_use_recorded(self) -> None:
        """Control for the refusals above."""
        server = await self.start()
        path = Path(self.mktemp())
        sid = server_id("127.0.0.1", server.port)
        known = KnownHosts(path)
        # check() says whether the key was new; any answer but an exception
        # means the key is acceptable.
        session = await self.client(server.port, verify=lambda fp: known.check(sid, fp) or True)
        self.assertEqual(path.read_text(encoding="utf-8"), f"{sid} {server.identity.fingerprint}\n")
        await with_timeout(session.ping())
        again = await self.client(
            server.port, verify=lambda fp: known.check(sid, fp, pinned=server.identity.fingerprint) or True
        )
        await with_timeout(again.ping())


# ===============================================================================
# Endings: clean CLOSE versus a cut connection; busy
# ===============================================================================


class EndingTests(ChannelTestCase):
    async def test_server_close_is_clean_at_the_client(self) -> None:
        clock = task.Clock()
        server = await self.start(clock=clock, idle_timeout=60)
        proxy = await self.proxy(server.port)
        session = await self.client(proxy.port)
        await with_timeout(session.register("alice", PASSWORD))
        closed = watch(session.closed)
        clock.advance(60)
        info = await closed
        self.assertEqual(
            (info.clean, info.code, info.message), (True, "idle_timeout", "no traffic for too long")
        )
        self.assertEqual(proxy.connections[0].records("s2c")[-1][0], channel.CLOSE)

    async def test_dropped_tcp_is_not_clean_at_the_client(self) -> None:
        server = await self.start()
        proxy = await self.proxy(server.port)
        session = await self.client(proxy.port)
        await with_timeout(session.register("alice", PASSWORD))
        closed = watch(session.closed)
        pending = session.ping()
        proxy.connections[0].cut()
        info = await closed
        self.assertEqual((info.clean, info.code), (False, "lost"))
        await self.assertFailure(with_timeout(pending), ConnectionClosed)
        await self.logs.wait(is_disconnect("connection lost"))

    async def test_swallowed_close_is_not_clean(self) -> None:
        """Truncation: the attacker drops the server's CLOSE and then the
        connection; the client must not take that for a goodbye."""
        clock = task.Clock()
        server = await self.start(clock=clock, idle_timeout=60)

        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "s2c" and record_of(line)[0] == channel.CLOSE:
                return []
            return None

        proxy = await self.proxy(server.port, tamper)
        session = await self.client(proxy.port)
        await with_timeout(session.register("alice", PASSWORD))
        closed = watch(session.closed)
        clock.advance(60)
        info = await closed
        self.assertFalse(info.clean)
        self.assertEqual(proxy.connections[0].records("s2c")[-1][0], channel.CLOSE)

    async def test_client_close_is_logged_as_clean(self) -> None:
        server = await self.start()
        session = await logged_in(self, server, "alice")
        info = await with_timeout(session.close())
        self.assertEqual((info.clean, info.code), (True, "bye"))
        await self.logs.wait(is_disconnect("closed by peer (bye)"))
        self.assertEqual(self.logs.find(any_drop), [])

    async def test_client_drop_is_logged_as_lost(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        await raw.ping()
        raw.transport.loseConnection()
        await raw.when_lost()
        await self.logs.wait(is_disconnect("connection lost"))

    async def test_malformed_close_still_ends_the_connection(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        raw.send_sealed(channel.CLOSE, b"not json")
        await raw.when_lost()
        await self.logs.wait(is_disconnect("closed by peer (malformed)"))
        self.assertEqual(self.logs.find(any_drop), [])

    async def test_busy_server_refuses_with_an_alert(self) -> None:
        server = await self.start(max_connections=2)
        alice, bob_events = await self.honest_pair(server)
        raw = await self.raw(server.port)
        await raw.when_lost()
        self.assertEqual(raw.lines, [b64(channel.alert_record(channel.ALERT_BUSY, "server full"))])
        refused = await self.logs.wait(
            lambda e: e.get("log_namespace") == "chatserver.connections" and e.get("reason") == "server full"
        )
        self.assertIn("server full", formatEvent(refused))
        await self.assert_chat_works(alice, bob_events)


# ===============================================================================
# Key updates over a long exchange
# ===============================================================================


class RekeyTests(ChannelTestCase):
    async def test_long_exchange_across_many_key_updates(self) -> None:
        server = await self.start()
        server.factory.rekey_after = 3
        proxy = await self.proxy(server.port)
        alice = await self.client(proxy.port, handshake=channel.ClientHandshake(rekey_after=2))
        bob = await self.client(proxy.port, handshake=channel.ClientHandshake(rekey_after=2))
        await with_timeout(alice.register("alice", PASSWORD))
        await with_timeout(bob.register("bob", PASSWORD))
        alice_events, bob_events = EventQueue(alice), EventQueue(bob)
        for i in range(25):
            await with_timeout(alice.say("lobby", f"from alice {i}"))
            await with_timeout(bob.say("lobby", f"from bob {i}"))
        for i in range(25):
            for queue, sender in ((alice_events, "bob"), (bob_events, "alice")):
                msg = await queue.next(lambda e, s=sender: e.get("type") == "msg" and e.get("from") == s)
                self.assertEqual(msg["body"], f"from {sender} {i}")
        self.assertEqual((await with_timeout(alice.ping()))["type"], "pong")
        for conn in proxy.connections:
            for direction in ("c2s", "s2c"):
                updates = [r for r in conn.records(direction) if r[0] == channel.KEY_UPDATE]
                self.assertGreaterEqual(len(updates), 10, f"{direction}: too few KEY_UPDATEs")
        self.assertEqual(self.logs.find(any_drop), [])


class CoalescedRecordTests(ChannelTestCase):
    """What the server produces for a connection in one reactor turn
    leaves as one DATA record (answers and notifications in order), split
    only where a record would exceed the line limit; such records are
    authenticated exactly like single-event ones."""

    async def _through_proxy(self, tamper: Tamper | None = None) -> tuple[RunningServer, Any, ChatSession]:
        server = await self.start()
        proxy = await self.proxy(server.port, tamper)
        session = await self.client(proxy.port)
        seen: list[str] = []
        session.add_listener(lambda e: seen.append(e["type"]))
        await with_timeout(session.register("alice", PASSWORD))
        await until(lambda: "joined" in seen, "alice's own joined, after the welcome")
        return server, proxy.connections[0], session

    @staticmethod
    def data_lines(conn: Any) -> int:
        return sum(1 for line in conn.seen["s2c"] if record_of(line)[0] == channel.DATA)

    async def test_answers_of_one_turn_share_a_record_in_request_order(self) -> None:
        _, conn, session = await self._through_proxy()
        queue = EventQueue(session)
        before = self.data_lines(conn)
        # Twenty requests in one record: handled in one turn.
        session.protocol.send_events([{"type": "ping", "ref": f"p{n}"} for n in range(20)])
        pongs = [await queue.next(lambda e: e["type"] == "pong") for _ in range(20)]
        self.assertEqual([p["ref"] for p in pongs], [f"p{n}" for n in range(20)])
        self.assertEqual(self.data_lines(conn) - before, 1, "twenty answers, one sealed record")

    async def test_notifications_come_before_their_answer(self) -> None:
        _, conn, session = await self._through_proxy()
        seen: list[str] = []
        session.add_listener(lambda e: seen.append(e["type"]))
        before = self.data_lines(conn)
        ack = await with_timeout(session.say("lobby", "hello").addCallback(lambda a: seen.append("ack") or a))
        self.assertEqual(seen[-2:], ["msg", "ack"])
        self.assertEqual(ack["type"], "ack")
        self.assertEqual(self.data_lines(conn) - before, 1)

    async def test_a_turn_larger_than_a_record_is_split_under_the_line_limit(self) -> None:
        server, conn, session = await self._through_proxy()
        queue = EventQueue(session)
        bob = await logged_in(self, server, "bob")
        await EventQueue(session).next(lambda e: e["type"] == "joined" and e["user"] == "bob")
        before = len(conn.seen["s2c"])
        body = "b" * 3000
        for n in range(40):  # one record each (a record has the line limit too), in one write
            bob.protocol.send_events([{"type": "say", "room": "lobby", "body": f"{n:02d}{body}", "ref": n}])
        got = [await queue.next(lambda e: e["type"] == "msg") for _ in range(40)]
        self.assertEqual([int(e["body"][:2]) for e in got], list(range(40)))
        lines = conn.seen["s2c"][before:]
        self.assertGreaterEqual(len(lines), 3, "120 kB of events do not fit one record")
        self.assertLessEqual(max(len(line) for line in lines), server.settings.max_line_length)

    async def test_a_replayed_coalesced_record_is_rejected(self) -> None:
        replay = {"armed": False, "done": False}

        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            # The first record after the ping burst is sent twice.
            if d == "s2c" and record_of(line)[0] == channel.DATA and replay["armed"] and not replay["done"]:
                replay["done"] = True
                return [line, line]
            return None

        _, conn, session = await self._through_proxy(tamper)
        queue = EventQueue(session)
        closed = watch(session.closed)
        replay["armed"] = True
        session.protocol.send_events([{"type": "ping", "ref": f"p{n}"} for n in range(5)])
        pongs = [await queue.next(lambda e: e["type"] == "pong") for _ in range(5)]
        self.assertEqual(len(pongs), 5)  # the first copy is fine, all five answers in it
        info = await closed
        self.assertEqual((info.clean, info.code, info.message), (False, "protocol_error", AUTH_FAILED))

    async def test_reordered_coalesced_records_are_rejected(self) -> None:
        held: list[bytes] = []
        swap = {"armed": False}

        def tamper(conn: ProxyConnection, d: str, i: int, line: bytes) -> list[bytes] | None:
            if d == "s2c" and record_of(line)[0] == channel.DATA and swap["armed"]:
                if not held:
                    held.append(line)
                    return []
                swap["armed"] = False
                return [line, held[0]]
            return None

        _, conn, session = await self._through_proxy(tamper)
        closed = watch(session.closed)
        swap["armed"] = True
        session.protocol.send_events([{"type": "ping", "ref": f"a{n}"} for n in range(5)])
        await task.deferLater(reactor, 0.05, lambda: None)  # a second turn, a second record
        session.protocol.send_events([{"type": "ping", "ref": f"b{n}"} for n in range(5)])
        info = await closed
        self.assertEqual((info.clean, info.code, info.message), (False, "protocol_error", AUTH_FAILED))


class IdleContextSweepTests(ChannelTestCase):
    """The server drops the AES-GCM contexts of channel directions that
    carried nothing for a whole sweep period; traffic afterwards works."""

    async def test_idle_connections_give_back_their_contexts_and_work_after(self) -> None:
        clock = task.Clock()
        server = await self.start(clock=clock)
        factory = server.factory
        period = factory.CONTEXT_SWEEP_SECONDS
        alice = await self.client(server.port)
        bob = await self.client(server.port)
        await with_timeout(alice.register("alice", PASSWORD))
        await with_timeout(bob.register("bob", PASSWORD))
        bob_events = EventQueue(bob)
        clock.advance(period)  # the first sweep only notes the sequence numbers
        self.assertEqual(factory.contexts_dropped, 0)
        clock.advance(period)  # both connections idle: two directions each
        self.assertEqual(factory.contexts_dropped, 4)
        for conn in factory.connections:
            self.assertIsNone(conn.channel._send.aead)
            self.assertIsNone(conn.channel._recv.aead)

        for i in range(3):
            await with_timeout(alice.say("lobby", f"after the sweep {i}"))
        for i in range(3):
            msg = await bob_events.next(lambda e: e.get("type") == "msg")
            self.assertEqual(msg["body"], f"after the sweep {i}")
        self.assertEqual((await with_timeout(bob.ping()))["type"], "pong")
        # Used since: nothing dropped; idle for a period again: all four.
        clock.advance(period)
        self.assertEqual(factory.contexts_dropped, 4)
        clock.advance(period)
        self.assertEqual(factory.contexts_dropped, 8)
        self.assertEqual((await with_timeout(alice.ping()))["type"], "pong")


class NoDelayTests(ChannelTestCase):
    """Both ends turn Nagle's algorithm off: they coalesce per reactor turn
    themselves, and Nagle plus a delayed ACK held small records back by up
    to 40 ms (measured at 1,000 messages a second)."""

    async def test_server_and_client_sockets_have_tcp_nodelay(self) -> None:
        import socket

        server = await self.start()
        alice = await self.client(server.port)
        await with_timeout(alice.register("alice", PASSWORD))
        (conn,) = server.factory.connections
        for sock in (conn.transport.getHandle(), alice.protocol.transport.getHandle()):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_a_transport_without_the_option_is_left_alone(self) -> None:
        self.assertFalse(channel.send_without_delay(StringTransport()))
