"""Session resumption (issue 13, item 1): a returning client skips RSA.

The channel's resumption handshake in memory first, then against a real
server over loopback: tickets at login, a resumed connection with a token
login, single use, expiry, tampering, logout, a disabled account, a
restart, key rotation, and the reconnecting client using it by itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial import unittest

from chatclient.reconnect import ReconnectingClient
from chatclient.session import ChatSession, ServerError, connect
from chatserver import tap
from chatserver.storage import sqlite as store
from chatserver.storage.direct import open_direct
from chatserver.tickets import Tickets
from chatserver.wire import channel, crypto
from tests.support import PASSWORD, RunningServer, add_admin, make_settings, start_server, until
from tests.test_protocol import ChannelTestCase

# --- the channel alone ----------------------------------------------------------


def _resumed_pair(psk: bytes, tamper: Any = None) -> tuple[channel.SecureChannel, channel.SecureChannel]:
    """A resumption between the channel's two sides; ``tamper(record)``
    may change the SERVER_RESUME on its way."""
    identity = crypto.rsa_private_from_pem(Path(__file__).with_name("vector_rsa.pem").read_bytes())
    ticket = channel.Ticket(b"opaque ticket", psk, expires_at=1e12)
    client = channel.ClientHandshake(ticket=ticket)
    server = channel.ServerHandshake(identity, crypto.rsa_public_der(identity))
    hello = server.read_hello(client.hello())
    assert hello.ticket == b"opaque ticket"
    if not server.binder_valid(psk):
        raise channel.ChannelError("binder")
    server_resume, server_finished = server.resume(psk)
    if tamper is not None:
        server_resume = tamper(server_resume)
    client.receive_server_resume(server_resume)
    client_finished, client_channel = client.receive_resumed_finished(server_finished)
    finished, server_channel = server.receive_finished(client_finished)
    assert finished is None
    return client_channel, server_channel


class ChannelResumptionTests(unittest.TestCase):
    def test_both_sides_agree_and_the_channel_works(self) -> None:
        client, server = _resumed_pair(b"p" * 32)
        self.assertTrue(client.resumed and server.resumed)
        self.assertEqual(server.open(client.seal_events([{"type": "ping"}])[:-1]), [{"type": "ping"}])
        self.assertEqual(client.open(server.seal_events([{"type": "pong"}])[:-1]), [{"type": "pong"}])
        # Each side can issue the next ticket from the same secret.
        self.assertEqual(client.resumption_secret, server.resumption_secret)

    def test_a_binder_under_another_psk_is_refused(self) -> None:
        identity = crypto.rsa_private_from_pem(Path(__file__).with_name("vector_rsa.pem").read_bytes())
        client = channel.ClientHandshake(ticket=channel.Ticket(b"t", b"a" * 32, 1e12))
        server = channel.ServerHandshake(identity, crypto.rsa_public_der(identity))
        server.read_hello(client.hello())
        self.assertFalse(server.binder_valid(b"b" * 32))
        self.assertRaises(channel.ChannelError, server.resume, b"b" * 32)

    def test_resume_checks_a_binder_not_checked_for_that_psk(self) -> None:
        identity = crypto.rsa_private_from_pem(Path(__file__).with_name("vector_rsa.pem").read_bytes())
        for checked_first in (b"a" * 32, None):  # the right PSK checked, or none
            client = channel.ClientHandshake(ticket=channel.Ticket(b"t", b"a" * 32, 1e12))
            server = channel.ServerHandshake(identity, crypto.rsa_public_der(identity))
            server.read_hello(client.hello())
            if checked_first is not None:
                self.assertTrue(server.binder_valid(checked_first))
            # resume() with another PSK than the one found valid is refused.
            self.assertRaises(channel.ChannelError, server.resume, b"b" * 32)

    def test_a_changed_server_resume_fails_the_finished_check(self) -> None:
        def flip(record: bytes) -> bytes:
            return record[:10] + bytes((record[10] ^ 1,)) + record[11:]

        self.assertRaises(channel.ChannelError, _resumed_pair, b"p" * 32, flip)

    def test_a_declined_ticket_gets_a_full_handshake_over_the_same_hello(self) -> None:
        identity = crypto.rsa_private_from_pem(Path(__file__).with_name("vector_rsa.pem").read_bytes())
        client = channel.ClientHandshake(ticket=channel.Ticket(b"t", b"a" * 32, 1e12))
        server = channel.ServerHandshake(identity, crypto.rsa_public_der(identity))
        server.read_hello(client.hello())
        client.receive_server_hello(server.server_hello())
        kex, finished = client.key_exchange()
        server.receive_key_exchange(kex)
        server.derive()
        server_finished, server_channel = server.receive_finished(finished)
        assert server_finished is not None
        client_channel = client.receive_finished(server_finished)
        self.assertFalse(client_channel.resumed or server_channel.resumed)
        self.assertEqual(
            server_channel.open(client_channel.seal_events([{"type": "x"}])[:-1]), [{"type": "x"}]
        )

    def test_a_resume_hello_with_a_bad_ticket_length_is_a_decode_error(self) -> None:
        hello = channel.ClientHandshake(ticket=channel.Ticket(b"t" * 10, b"a" * 32, 1e12)).hello()
        # The ticket length field sits 32 + 10 bytes before the end.
        at = len(hello) - 32 - 10 - 2
        for length in (0, channel.MAX_TICKET_SIZE + 1, 11):
            bad = hello[:at] + length.to_bytes(2, "big") + hello[at + 2 :]
            with self.assertRaises(channel.ChannelError) as caught:
                channel.read_hello(bad)
            self.assertEqual(caught.exception.alert, channel.ALERT_DECODE_ERROR)


class TicketNoticeTests(unittest.TestCase):
    """The client reads a ``ticket`` notice exactly as the spec types it."""

    GOOD = {"type": "ticket", "ticket": "dGlja2V0", "nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "lifetime": 60}

    def test_a_well_formed_notice_gives_a_ticket(self) -> None:
        on = channel.SecureChannel(b"s" * 32, b"r" * 32, resumption_secret=b"m" * 32)
        ticket = channel.Ticket.from_event(self.GOOD, on, now=1000.0)
        self.assertEqual((ticket.ticket, ticket.expires_at), (b"ticket", 1060.0))
        self.assertEqual(ticket.psk, channel.ticket_psk(b"m" * 32, bytes(16)))

    def test_every_malformed_notice_is_refused(self) -> None:
        on = channel.SecureChannel(b"s" * 32, b"r" * 32, resumption_secret=b"m" * 32)
        bad: list[dict[str, Any]] = [
            {**self.GOOD, "ticket": 1234},
            {**self.GOOD, "ticket": ""},
            {**self.GOOD, "ticket": "not base64!"},
            {**self.GOOD, "ticket": "é"},
            {**self.GOOD, "nonce": "AAAA"},
            {**self.GOOD, "lifetime": "60"},
            {**self.GOOD, "lifetime": 1.5},
            {**self.GOOD, "lifetime": True},
            {**self.GOOD, "lifetime": 0},
            {**self.GOOD, "lifetime": -10},
            {**self.GOOD, "lifetime": float("inf")},
            {k: v for k, v in self.GOOD.items() if k != "nonce"},
        ]
        for event in bad:
            with self.assertRaises(channel.ChannelError, msg=repr(event)) as caught:
                channel.Ticket.from_event(event, on, now=0.0)
            self.assertEqual(caught.exception.alert, channel.ALERT_DECODE_ERROR)


# --- against a real server --------------------------------------------------------


class Connection:
    """One client connection: its session, the tickets it got, and the
    fingerprints its verifier was asked about (a full handshake's)."""

    def __init__(self, session: ChatSession, tickets: list[channel.Ticket], verified: list[str]) -> None:
        self.session = session
        self.tickets = tickets
        self.verified = verified

    @property
    def resumed(self) -> bool:
        assert self.session.protocol.channel is not None
        return self.session.protocol.channel.resumed


async def connection(
    testcase: unittest.TestCase, server: RunningServer, ticket: channel.Ticket | None = None, source: str = ""
) -> Connection:
    tickets: list[channel.Ticket] = []
    verified: list[str] = []

    def verify(fingerprint: str) -> bool:
        verified.append(fingerprint)
        return fingerprint == server.identity.fingerprint

    bind = f":bindAddress={source}" if source else ""
    session = await connect(
        reactor,
        f"tcp:host=127.0.0.1:port={server.port}{bind}",
        verify,
        ticket=ticket,
        on_ticket=tickets.append,
    )
    testcase.addCleanup(session.close)
    return Connection(session, tickets, verified)


async def logged_in_with_ticket(
    testcase: unittest.TestCase, server: RunningServer, user: str, ticket: channel.Ticket | None = None
) -> tuple[Connection, str]:
    """A connection logged in as ``user`` (registered if new), and its
    token; returns once the server's ticket has arrived."""
    conn = await connection(testcase, server, ticket)
    try:
        welcome = await conn.session.login(user, PASSWORD)
    except Exception:
        welcome = await conn.session.register(user, PASSWORD)
    await until(lambda: conn.tickets)
    return conn, welcome["token"]


def counters(server: RunningServer) -> tuple[int, int]:
    counts = server.factory.metrics.counters
    return counts["handshakes"], counts["resumptions"]


class ServerResumptionTests(unittest.TestCase):
    async def test_a_ticket_resumes_without_rsa_and_the_token_logs_in(self) -> None:
        server = await start_server(self)
        first, token = await logged_in_with_ticket(self, server, "alice")
        self.assertFalse(first.resumed)
        self.assertEqual(first.verified, [server.identity.fingerprint])
        self.assertEqual(counters(server), (1, 0))
        second = await connection(self, server, first.tickets[0])
        self.assertTrue(second.resumed)
        self.assertEqual(second.verified, [], "a resumption shows no server key to verify")
        self.assertEqual(second.session.fingerprint, server.identity.fingerprint)
        welcome = await second.session.request({"type": "login", "user": "alice", "token": token})
        self.assertEqual(welcome["user"], "alice")
        self.assertEqual(counters(server), (1, 1))
        # ... and that login brings the next ticket, which resumes again.
        await until(lambda: second.tickets)
        third = await connection(self, server, second.tickets[0])
        self.assertTrue(third.resumed)

    async def test_the_resumed_token_login_is_checked_as_any_other(self) -> None:
        """The account read when the ticket was taken serves the token
        login that follows, for that token and that user only; a disable
        in between is seen."""
        server = await start_server(self)
        add_admin(server)
        first, token = await logged_in_with_ticket(self, server, "alice")
        _, bob_token = await logged_in_with_ticket(self, server, "bob")
        # Another user's name with alice's token: refused.
        conn = await connection(self, server, first.tickets[0])
        self.assertTrue(conn.resumed)
        with self.assertRaises(ServerError) as caught:
            await conn.session.request({"type": "login", "user": "bob", "token": token})
        self.assertEqual(caught.exception.code, "auth_failed")
        # Another token than the ticket's: read from the database as usual.
        again, _ = await logged_in_with_ticket(self, server, "alice")
        conn = await connection(self, server, again.tickets[0])
        welcome = await conn.session.request({"type": "login", "user": "bob", "token": bob_token})
        self.assertEqual(welcome["user"], "bob")
        # Disabled between the resumption and its login: refused.
        third, token = await logged_in_with_ticket(self, server, "alice")
        resumed = await connection(self, server, third.tickets[0])
        self.assertTrue(resumed.resumed)
        admin = await connection(self, server)
        await admin.session.login("root", PASSWORD)
        await admin.session.request({"type": "disable", "user": "alice"})
        with self.assertRaises(ServerError) as caught:
            await resumed.session.request({"type": "login", "user": "alice", "token": token})
        self.assertEqual(caught.exception.code, "auth_failed")

    async def test_a_ticket_is_single_use(self) -> None:
        server = await start_server(self)
        first, _ = await logged_in_with_ticket(self, server, "alice")
        ticket = first.tickets[0]
        self.assertTrue((await connection(self, server, ticket)).resumed)
        again = await connection(self, server, ticket)
        self.assertFalse(again.resumed)
        self.assertEqual(again.verified, [server.identity.fingerprint])
        self.assertEqual(counters(server), (2, 1))

    async def test_two_connections_at_once_with_one_ticket_resume_once(self) -> None:
        server = await start_server(self)
        first, _ = await logged_in_with_ticket(self, server, "alice")
        ticket = first.tickets[0]
        both = await gatherResults(
            [Deferred.fromCoroutine(connection(self, server, ticket)) for _ in range(2)]
        )
        self.assertEqual(sorted(c.resumed for c in both), [False, True])
        # The database learns of it soon (one commit for a batch).
        await until(lambda: _redeemed_count(server) == 1)

    async def test_an_expired_ticket_gets_a_full_handshake(self) -> None:
        clock = task.Clock()
        clock.advance(1_000_000)
        server = await start_server(self, clock=clock, ticket_lifetime=60)
        first, _ = await logged_in_with_ticket(self, server, "alice")
        clock.advance(61)
        # The server's clock says it expired (the client's own does not).
        self.assertFalse((await connection(self, server, first.tickets[0])).resumed)

    async def test_a_tampered_ticket_gets_a_full_handshake(self) -> None:
        server = await start_server(self)
        first, _ = await logged_in_with_ticket(self, server, "alice")
        good = first.tickets[0]
        for at in (0, 10, len(good.ticket) - 1):
            changed = bytearray(good.ticket)
            changed[at] ^= 0x01
            bad = channel.Ticket(bytes(changed), good.psk, good.expires_at)
            self.assertFalse((await connection(self, server, bad)).resumed, at)
        # A ticket with another PSK (someone who saw it on the wire) too.
        stolen = channel.Ticket(good.ticket, b"\0" * 32, good.expires_at)
        self.assertFalse((await connection(self, server, stolen)).resumed)
        # None of those used it up.
        self.assertTrue((await connection(self, server, good)).resumed)

    async def test_logout_ends_the_tickets_of_its_token(self) -> None:
        server = await start_server(self)
        first, _ = await logged_in_with_ticket(self, server, "alice")
        await first.session.request({"type": "logout"})
        self.assertFalse((await connection(self, server, first.tickets[0])).resumed)

    async def test_a_disabled_account_loses_its_tickets(self) -> None:
        server = await start_server(self)
        add_admin(server)
        first, _ = await logged_in_with_ticket(self, server, "alice")
        admin = await connection(self, server)
        await admin.session.login("root", PASSWORD)
        await admin.session.request({"type": "disable", "user": "alice"})
        self.assertFalse((await connection(self, server, first.tickets[0])).resumed)

    async def test_tickets_survive_a_restart(self) -> None:
        base = Path(self.mktemp())
        server = RunningServer(make_settings(base))
        await server.start()
        self.addCleanup(server.stop)
        first, token = await logged_in_with_ticket(self, server, "alice")
        await first.session.close()
        await server.stop()
        again = RunningServer(make_settings(base))
        await again.start()
        self.addCleanup(again.stop)
        resumed = await connection(self, again, first.tickets[0])
        self.assertTrue(resumed.resumed)
        welcome = await resumed.session.request({"type": "login", "user": "alice", "token": token})
        self.assertEqual(welcome["user"], "alice")

    async def test_resumption_off_issues_no_tickets(self) -> None:
        server = await start_server(self, ticket_lifetime=0)
        conn = await connection(self, server)
        await conn.session.register("alice", PASSWORD)
        await conn.session.ping()  # the welcome's follow-ups have come
        self.assertEqual(conn.tickets, [])

    async def test_the_reconnecting_client_resumes_by_itself(self) -> None:
        server = await start_server(self)
        client = ReconnectingClient(
            reactor,
            _endpoint(server),
            lambda fp: fp == server.identity.fingerprint,
            "alice",
            PASSWORD,
            register=True,
            initial_delay=0.05,
            max_delay=0.1,
        )
        client.start()
        self.addCleanup(client.stop)
        session = await client.when_online()
        assert session.protocol.channel is not None
        self.assertFalse(session.protocol.channel.resumed)
        await until(lambda: client.ticket is not None)
        for _ in range(2):  # the server cuts it; the client comes back, resumed
            for conn in list(server.factory.connections):
                conn.transport.abortConnection()
            await until(lambda old=session: client.state == "online" and client.session is not old)
            session = await client.when_online()
            assert session.protocol.channel is not None
            self.assertTrue(session.protocol.channel.resumed)
            await until(lambda: client.ticket is not None)
        self.assertEqual(counters(server), (1, 2))


def _endpoint(server: RunningServer) -> Any:
    from twisted.internet import endpoints

    return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)


class TicketKeyTests(unittest.TestCase):
    """The keys rotate, old ones open their tickets until those expire."""

    async def test_rotation_keeps_old_keys_until_their_tickets_expired(self) -> None:
        clock = task.Clock()
        clock.advance(1_000_000)
        base = Path(self.mktemp())
        settings = make_settings(base)
        settings.data_path.mkdir(parents=True)
        db = tap.open_storage(settings, reactor)  # SQLite or PostgreSQL, as the suite runs
        db.startService()
        self.addCleanup(db.stopService)
        tickets = Tickets(db, clock, lifetime=1000, rotation=100)
        await tickets.load()
        tickets.stop()  # the test rotates by hand
        secure = channel.SecureChannel(b"s" * 32, b"r" * 32, resumption_secret=b"m" * 32)
        db_conn = open_direct(settings)
        self.addCleanup(db_conn.close)
        db_conn.run(store.add_token, _hash("tok"), "alice", 0, 1 << 40)
        old = tickets.issue(secure, "tok")
        assert old is not None
        clock.advance(150)
        await tickets.rotate_if_due()
        new = tickets.issue(secure, "tok")
        assert new is not None
        self.assertNotEqual(_key_id(old), _key_id(new))
        self.assertIsNotNone(tickets.open(_bytes(old)), "the previous key still opens")
        # Once no ticket of the old key can be valid, the key goes.
        for _ in range(12):
            clock.advance(100)
            await tickets.rotate_if_due()
        self.assertIsNone(tickets.open(_bytes(old)))
        self.assertLess(len(await db.run(store.ticket_keys)), 15)


def _redeemed_count(server: RunningServer) -> int:
    conn = open_direct(server.settings)
    try:
        return int(conn.fetch("SELECT COUNT(*) FROM redeemed_tickets")[0][0])
    finally:
        conn.close()


def _hash(token: str) -> str:
    from chatserver.accounts import token_hash

    return token_hash(token)


def _bytes(event: dict[str, Any]) -> bytes:
    import base64

    return base64.b64decode(event["ticket"])


def _key_id(event: dict[str, Any]) -> int:
    return int.from_bytes(_bytes(event)[:4], "big")


class TicketRecordTests(ChannelTestCase):
    async def test_the_ticket_travels_in_the_welcomes_record(self) -> None:
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        raw.send_sealed(
            channel.DATA, channel.encode_events([{"type": "register", "user": "alice", "password": PASSWORD}])
        )
        events = await raw.next_events()
        assert events is not None
        # After the welcome and what was held for it (the default room's
        # "joined"), in the same record.
        self.assertEqual([e["type"] for e in events], ["welcome", "joined", "ticket"])
