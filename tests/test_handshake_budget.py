"""Full handshakes on a budget, and a cookie round trip under load (issue
13, item 3).

Each full handshake costs the server an RSA decryption.  They are
limited per address and per /24 (token buckets); resumptions are not.
When the queue of handshake work is long, a hello first gets a COOKIE
and RSA is done only for a client that echoes it.  Real attacker
connections from several loopback addresses against a real server; all
counts and waits are bounded.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints, reactor, task
from twisted.internet.defer import Deferred, gatherResults

from chatclient.session import connect
from chatserver.cookies import Cookies
from chatserver.wire import channel, crypto
from tests.support import PASSWORD, RunningServer, until
from tests.test_protocol import ChannelTestCase, RawClient, with_timeout
from tests.test_resumption import connection, logged_in_with_ticket

#: Buckets that hardly refill while a test runs.
SLOW = 0.001
#: Hellos of a burst (a few hundred open sockets at most).
FLOOD_HELLOS = 200


class BudgetTestCase(ChannelTestCase):
    async def raw_from(self, server: RunningServer, source: str) -> RawClient:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, bindAddress=(source, 0))
        client = await endpoints.connectProtocol(endpoint, RawClient())
        self.addCleanup(self._close_raw, client)
        return client

    async def hello_answer(self, server: RunningServer, source: str, hello: bytes | None = None) -> bytes:
        """The server's answer to a CLIENT_HELLO from ``source``."""
        raw = await self.raw_from(server, source)
        raw.send_record(hello or channel.ClientHandshake().hello())
        return await raw.next_record()


def is_alert(record: bytes, code: int, text: str = "") -> bool:
    return record[0] == channel.ALERT and record[1] == code and text in record[2:].decode()


class HandshakeBudgetTests(BudgetTestCase):
    async def test_per_address_then_per_network(self) -> None:
        server = await self.start(
            handshakes_rate=SLOW,
            handshakes_burst=3,
            handshakes_prefix_rate=SLOW,
            handshakes_prefix_burst=5,
        )
        for _ in range(3):
            self.assertEqual((await self.hello_answer(server, "127.0.0.2"))[0], channel.SERVER_HELLO)
        refused = await self.hello_answer(server, "127.0.0.2")
        self.assertTrue(is_alert(refused, channel.ALERT_BUSY, "from your address"), refused)
        # Another address of the /24: its own bucket, the network's shared.
        for _ in range(2):
            self.assertEqual((await self.hello_answer(server, "127.0.0.3"))[0], channel.SERVER_HELLO)
        refused = await self.hello_answer(server, "127.0.0.3")
        self.assertTrue(is_alert(refused, channel.ALERT_BUSY, "from your network"), refused)
        # Another network is not held back.
        self.assertEqual((await self.hello_answer(server, "127.1.0.1"))[0], channel.SERVER_HELLO)
        self.assertEqual(server.factory.metrics.counters["handshakes_refused"], 2)

    async def test_resumptions_do_not_count(self) -> None:
        server = await self.start(
            handshakes_rate=SLOW, handshakes_burst=1, handshakes_prefix_rate=SLOW, handshakes_prefix_burst=1
        )
        first, token = await logged_in_with_ticket(self, server, "alice")  # the one full handshake
        refused = await self.hello_answer(server, "127.0.0.1")
        self.assertTrue(is_alert(refused, channel.ALERT_BUSY), refused)
        ticket = first.tickets[0]
        for _ in range(3):
            conn = await connection(self, server, ticket)
            self.assertTrue(conn.resumed)
            await conn.session.request({"type": "login", "user": "alice", "token": token})
            await until(lambda conn=conn: conn.tickets)
            ticket = conn.tickets[0]

    async def test_a_resumption_is_answered_ahead_of_waiting_full_hellos(self) -> None:
        # A flood's burst of hellos must not make a returning client wait
        # for all of them: full hellos are answered a turn's budget at a
        # time (here one per turn), resumptions as they are read.
        server = await self.start()
        first, _ = await logged_in_with_ticket(self, server, "alice")
        server.factory.full_hellos.seconds_per_turn = 0.0
        flood = [await self.raw_from(server, f"127.0.0.{2 + n % 40}") for n in range(FLOOD_HELLOS)]
        for raw in flood:
            raw.send_record(channel.ClientHandshake().hello())
        resumed = await connection(self, server, first.tickets[0])
        self.assertTrue(resumed.resumed)
        answered = sum(1 for raw in flood if raw.lines)
        self.assertLess(answered, FLOOD_HELLOS // 2, "the resumption waited behind the full hellos")
        # ... and every one of them is answered in the end.
        await until(lambda: all(raw.lines for raw in flood), timeout=20)
        kinds = {channel.decode_line(raw.lines[0])[0] for raw in flood}
        self.assertEqual(kinds, {channel.SERVER_HELLO})


class CookieTests(BudgetTestCase):
    async def test_under_load_rsa_waits_for_the_echo(self) -> None:
        server = await self.start(cookie_threshold=0)  # always "under load"
        raw = await self.raw_from(server, "127.0.0.2")
        handshake = channel.ClientHandshake()
        hello = handshake.hello()
        raw.send_record(hello)
        cookie = await raw.next_record()
        self.assertEqual(cookie[0], channel.COOKIE)
        self.assertEqual(len(cookie), 1 + channel.COOKIE_SIZE)
        # Nothing more comes, and no handshake work was queued.
        self.assertEqual(server.factory.pool.pending, 0)
        echo, again = handshake.receive_cookie(cookie)
        self.assertEqual(again, hello)
        raw.send_record(echo)
        raw.send_record(again)
        self.assertEqual((await raw.next_record())[0], channel.SERVER_HELLO)
        # The reference client does that by itself, and logs in.
        session = await with_timeout(
            connect(reactor, f"tcp:host=127.0.0.1:port={server.port}", lambda fp: True)
        )
        self.addCleanup(session.close)
        welcome = await session.register("alice", PASSWORD)
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(server.factory.metrics.counters["cookies"], 2)

    async def test_a_cookie_is_worth_nothing_changed_elsewhere_or_for_another_hello(self) -> None:
        server = await self.start(cookie_threshold=0)
        hello = channel.ClientHandshake().hello()
        cookie = await self.hello_answer(server, "127.0.0.2", hello)

        async def echo(source: str, record: bytes, then: bytes) -> bytes:
            raw = await self.raw_from(server, source)
            raw.send_record(record)
            raw.send_record(then)
            answer = await raw.next_record()
            if answer[0] == channel.ALERT:
                await raw.when_lost()  # and the server closed it
            return answer

        changed = cookie[:5] + bytes((cookie[5] ^ 1,)) + cookie[6:]
        other_hello = channel.ClientHandshake().hello()
        for source, record, then in (
            ("127.0.0.2", changed, hello),  # tampered
            ("127.0.0.3", cookie, hello),  # another address
            ("127.0.0.2", cookie, other_hello),  # another hello
        ):
            answer = await echo(source, record, then)
            self.assertTrue(is_alert(answer, channel.ALERT_HANDSHAKE_FAILURE, "cookie"), answer)
        # The right one, from the right address, still works.
        self.assertEqual((await echo("127.0.0.2", cookie, hello))[0], channel.SERVER_HELLO)

    async def test_a_second_cookie_echo_is_a_decode_error(self) -> None:
        server = await self.start(cookie_threshold=0)
        raw = await self.raw_from(server, "127.0.0.2")
        hello = channel.ClientHandshake().hello()
        raw.send_record(hello)
        cookie = await raw.next_record()
        raw.send_record(cookie)
        raw.send_record(cookie)
        answer = await raw.next_record()
        self.assertTrue(is_alert(answer, channel.ALERT_DECODE_ERROR), answer)

    def test_a_cookie_lasts_one_to_two_periods(self) -> None:
        clock = task.Clock()
        cookies = Cookies(clock, threshold=0)
        made = cookies.make("192.0.2.1", b"hello")
        self.assertTrue(cookies.valid(made, "192.0.2.1", b"hello"))
        clock.advance(Cookies.SECRET_SECONDS)
        self.assertTrue(cookies.valid(made, "192.0.2.1", b"hello"), "the previous period's")
        clock.advance(Cookies.SECRET_SECONDS)
        self.assertFalse(cookies.valid(made, "192.0.2.1", b"hello"))
        self.assertFalse(cookies.valid(None, "192.0.2.1", b"hello"))


class FloodTests(BudgetTestCase):
    """A flood of full handshakes from 49 addresses of one /24, with random
    RSA ciphertext, while real users log in from another network."""

    FLOODERS = [f"127.0.0.{n}" for n in range(2, 51)]
    ROUNDS = 4  # handshakes per flooding address

    async def flood(self, server: RunningServer) -> list[bytes]:
        """Every flooder's answer to each of its hellos."""
        modulus_bytes = server.identity.key.key_size // 8
        answers: list[bytes] = []

        async def one(source: str) -> None:
            raw = await self.raw_from(server, source)
            raw.send_record(channel.ClientHandshake().hello())
            answer = await raw.next_record()
            answers.append(answer)
            if answer[0] == channel.SERVER_HELLO:
                junk = crypto.random_bytes(modulus_bytes)
                raw.send_record(bytes((channel.KEY_EXCHANGE,)) + len(junk).to_bytes(2, "big") + junk)
                raw.send_record(bytes((channel.FINISHED,)) + bytes(32))
            await raw.when_lost(10)

        for _ in range(self.ROUNDS):
            await gather([one(source) for source in self.FLOODERS])
        return answers

    async def test_real_logins_succeed_through_a_flood_from_one_network(self) -> None:
        server = await self.start(
            handshakes_rate=1,
            handshakes_burst=2,
            handshakes_prefix_rate=5,
            handshakes_prefix_burst=20,
        )
        # A returning user, with a ticket, from another network.
        first, token = await logged_in_with_ticket(self, server, "alice")
        results: dict[str, Any] = {}

        async def real_users() -> None:
            resumed = await connection(self, server, first.tickets[0], source="127.1.0.1")
            results["resumed"] = resumed.resumed
            results["resumed_login"] = await resumed.session.request(
                {"type": "login", "user": "alice", "token": token}
            )
            fresh = await connection(self, server, source="127.1.0.2")
            results["full_register"] = await fresh.session.register("bob", PASSWORD)

        answers, _ = await gather([self.flood(server), real_users()])
        self.assertEqual(len(answers), 49 * self.ROUNDS)
        self.assertTrue(results["resumed"])
        self.assertEqual(results["resumed_login"]["user"], "alice")
        self.assertEqual(results["full_register"]["user"], "bob")
        counts = server.factory.metrics.counters
        # The network's budget held the flood to its burst and a trickle.
        self.assertGreater(counts["handshakes_refused"], 49 * self.ROUNDS // 2)


async def gather(coroutines: list[Any]) -> list[Any]:
    """Run coroutines side by side on the reactor; their results."""
    return await gatherResults([Deferred.fromCoroutine(c) for c in coroutines])  # type: ignore[no-any-return]
