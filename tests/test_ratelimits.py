"""Rate limits: token buckets per connection and per account, abuse
strikes, and what a flood costs everyone else.

Real server, real clients.  The buckets run on the server's clock: most
tests give it a ``task.Clock`` so "quick succession" is exact and refills
happen only when the test advances it.  Advancing it also runs connection
deadlines, so only logged-in connections (idle timeout 300 s) are open
across an advance, or the advance stays below the handshake timeout.

The latency test floods from a child process (the real client library),
so what it measures is the server's cost of a flood, not the test
process's own work of sealing thousands of requests.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from chatclient.session import ChatSession, ConnectionClosed, ServerError, connect
from tests.processes import spawn
from tests.support import PASSWORD, PYTHON, EventQueue, logged_in, open_session, start_server, until

NEVER = 10**9  # abuse strikes that never disconnect


async def limited(
    testcase: unittest.TestCase, d: Any, request: str, retry_after: float | None = None
) -> dict[str, Any]:
    """``d`` fails with ``rate_limited`` for ``request``; the event."""
    error = await testcase.assertFailure(d, ServerError)
    testcase.assertEqual(error.code, "rate_limited", error.event)
    testcase.assertEqual(error.event["request"], request)
    testcase.assertGreater(error.event["retry_after"], 0)
    if retry_after is not None:
        testcase.assertAlmostEqual(error.event["retry_after"], retry_after, places=3)
    return error.event


async def acked(session: ChatSession, room: str = "lobby", body: str = "hi") -> dict[str, Any]:
    ack = await session.say(room, body)
    assert ack["type"] == "ack", ack
    return ack


class LogLines:
    """Formatted log lines of the server, by namespace."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.lines: list[tuple[str, str]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        self.lines.append((event.get("log_namespace", ""), formatEvent(event)))

    def matching(self, namespace: str, text: str) -> list[str]:
        return [line for ns, line in self.lines if ns == namespace and text in line]


# --- messages ---------------------------------------------------------------------


class MessageLimitTests(unittest.TestCase):
    async def test_burst_then_refused_then_refilled(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, messages_rate=1, messages_burst=5, abuse_strikes=NEVER)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        bob_events = EventQueue(bob)
        acks = [await acked(alice, body=f"m{n}") for n in range(5)]
        self.assertEqual([a["id"] for a in acks], sorted({a["id"] for a in acks}))
        event = await limited(self, alice.say("lobby", "m5"), "say", retry_after=1.0)
        self.assertNotIn("field", event)
        # A direct message draws from the same bucket.
        await limited(self, alice.request({"type": "dm", "to": "bob", "body": "psst"}), "dm")
        # The refused message went nowhere.
        await bob.ping()
        bodies = [e["body"] for e in bob_events.events if e["type"] == "msg"]
        self.assertEqual(bodies, [f"m{n}" for n in range(5)])
        # The connection is fine otherwise.
        self.assertEqual((await alice.ping())["type"], "pong")
        self.assertEqual((await alice.request({"type": "who", "room": "lobby"}))["type"], "who")

        clock.advance(0.5)
        await limited(self, alice.say("lobby", "m5"), "say", retry_after=0.5)
        clock.advance(0.5)
        await acked(alice, body="m5")
        await limited(self, alice.say("lobby", "m6"), "say", retry_after=1.0)
        clock.advance(3)
        for n in range(3):
            await acked(alice, body=f"later {n}")
        await limited(self, alice.say("lobby", "one too many"), "say")

    async def test_limit_is_per_account_and_others_are_unaffected(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, messages_rate=1, messages_burst=5, abuse_strikes=NEVER)
        first = await logged_in(self, server, "alice")
        second = await logged_in(self, server, "alice", register=False)
        bob = await logged_in(self, server, "bob")
        for n in range(3):
            await acked(first, body=f"first {n}")
        for n in range(2):
            await acked(second, body=f"second {n}")
        # Five for the account, whichever connection sent them.
        await limited(self, first.say("lobby", "x"), "say", retry_after=1.0)
        await limited(self, second.say("lobby", "x"), "say", retry_after=1.0)
        # A new connection of the same account does not reset it.
        third = await logged_in(self, server, "alice", register=False)
        await limited(self, third.say("lobby", "x"), "say")
        await limited(self, third.request({"type": "dm", "to": "bob", "body": "x"}), "dm")
        # Bob has his own bucket.
        for n in range(5):
            await acked(bob, body=f"bob {n}")
        await limited(self, bob.say("lobby", "x"), "say")

        clock.advance(1)
        await acked(second, body="refilled")
        await limited(self, first.say("lobby", "x"), "say", retry_after=1.0)
        clock.advance(1)
        await acked(first, body="refilled too")

    async def test_waiting_retry_after_is_enough(self) -> None:
        """A client that waits the ``retry_after`` it was told is served:
        the advertised wait must not be shorter than the real one."""
        clock = task.Clock()
        server = await start_server(self, clock=clock, messages_rate=1, messages_burst=1, abuse_strikes=NEVER)
        alice = await logged_in(self, server, "alice")
        await acked(alice)
        clock.advance(0.06)  # the bucket holds 0.06 tokens: the real wait is 0.94 s
        event = await limited(self, alice.say("lobby", "too soon"), "say")
        self.assertGreaterEqual(event["retry_after"], 0.94)
        clock.advance(event["retry_after"])
        await acked(alice, body="waited as told")

    async def test_retry_after_is_positive_at_high_rates(self) -> None:
        """With 50 messages a second the wait is 20 ms: still a wait."""
        clock = task.Clock()
        server = await start_server(
            self, clock=clock, messages_rate=50, messages_burst=1, abuse_strikes=NEVER
        )
        alice = await logged_in(self, server, "alice")
        await acked(alice)
        event = await limited(self, alice.say("lobby", "too soon"), "say")
        self.assertGreaterEqual(event["retry_after"], 0.02)
        clock.advance(event["retry_after"])
        await acked(alice, body="waited as told")

    async def test_recovers_in_real_time(self) -> None:
        """Without a fake clock: small burst, fast refill, a bounded wait."""
        server = await start_server(self, messages_rate=20, messages_burst=3, abuse_strikes=NEVER)
        alice = await logged_in(self, server, "alice")
        sent = [alice.say("lobby", f"n{n}") for n in range(6)]
        outcomes = []
        for d in sent:
            try:
                outcomes.append((await d)["type"])
            except ServerError as e:
                outcomes.append(e.code)
        self.assertEqual(outcomes[:3], ["ack"] * 3)
        self.assertIn("rate_limited", outcomes[3:])

        async def served() -> bool:
            try:
                await alice.say("lobby", "again")
            except ServerError as e:
                self.assertEqual(e.code, "rate_limited")
                return False
            return True

        start = time.monotonic()
        while not await served():
            self.assertLess(time.monotonic() - start, 5, "never refilled")
            await task.deferLater(reactor, 0.02, lambda: None)


# --- joins, rooms, logins ---------------------------------------------------------------------


class OtherLimitTests(unittest.TestCase):
    async def test_joins_are_limited(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, joins_rate=0.5, joins_burst=2, abuse_strikes=NEVER)
        owner = await logged_in(self, server, "olivia")
        for name in ("r1", "r2", "r3", "r4"):
            await owner.request({"type": "create", "room": name})
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        await bob.request({"type": "join", "room": "r1"})
        await bob.request({"type": "join", "room": "r2"})
        await limited(self, bob.request({"type": "join", "room": "r3"}), "join", retry_after=2.0)
        self.assertNotIn("bob", await owner.who("r3"))
        # Other requests and other users are not affected.
        await acked(bob, "r1")
        await carol.request({"type": "join", "room": "r3"})
        clock.advance(2)
        await bob.request({"type": "join", "room": "r3"})
        self.assertIn("bob", await owner.who("r3"))
        await limited(self, bob.request({"type": "join", "room": "r4"}), "join")

    async def test_join_and_create_limits_count_per_account_too(self) -> None:
        """A fresh connection of the same account does not get fresh
        buckets: reconnecting is no way around a limit."""
        clock = task.Clock()
        server = await start_server(
            self,
            clock=clock,
            joins_rate=0.5,
            joins_burst=1,
            rooms_rate=0.05,
            rooms_burst=1,
            abuse_strikes=NEVER,
        )
        for owner, room in (("olivia", "r1"), ("oscar", "r2")):
            session = await logged_in(self, server, owner)
            await session.request({"type": "create", "room": room})
        bob = await logged_in(self, server, "bob")
        await bob.request({"type": "join", "room": "r1"})
        await bob.request({"type": "create", "room": "bobs"})
        await bob.close()
        again = await logged_in(self, server, "bob", register=False)
        await limited(self, again.request({"type": "join", "room": "r2"}), "join", retry_after=2.0)
        await limited(self, again.request({"type": "create", "room": "more"}), "create", retry_after=20.0)
        clock.advance(2)
        await again.request({"type": "join", "room": "r2"})

    async def test_room_creation_is_limited(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, rooms_rate=0.05, rooms_burst=2, abuse_strikes=NEVER)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await alice.request({"type": "create", "room": "a1"})
        await alice.request({"type": "create", "room": "a2"})
        await limited(self, alice.request({"type": "create", "room": "a3"}), "create", retry_after=20.0)
        rooms = {r["room"] for r in (await bob.request({"type": "rooms"}))["rooms"]}
        self.assertEqual(rooms, {"lobby", "a1", "a2"})
        await bob.request({"type": "create", "room": "b1"})
        clock.advance(20)
        await alice.request({"type": "create", "room": "a3"})
        await limited(self, alice.request({"type": "create", "room": "a4"}), "create")

    async def test_login_attempts_are_limited(self) -> None:
        clock = task.Clock()
        server = await start_server(
            self,
            clock=clock,
            logins_rate=1,
            logins_burst=3,
            abuse_strikes=NEVER,
            login_failures_per_account=100,
            handshake_timeout=10,
        )
        await logged_in(self, server, "alice")
        session = await open_session(self, server)
        for _ in range(3):
            error = await self.assertFailure(session.login("alice", "wrong password"), ServerError)
            self.assertEqual(error.code, "auth_failed")
        # Refused before the password is even looked at.
        await limited(self, session.login("alice", PASSWORD), "login", retry_after=1.0)
        await limited(self, session.register("newcomer", PASSWORD), "register", retry_after=1.0)
        self.assertEqual((await session.ping())["type"], "pong")
        clock.advance(1)  # below the handshake timeout: the session lives on
        welcome = await session.login("alice", PASSWORD)
        self.assertEqual(welcome["user"], "alice")


# --- abuse -----------------------------------------------------------------------------


class AbuseTests(unittest.TestCase):
    async def test_repeated_abuse_disconnects_and_others_carry_on(self) -> None:
        logs = LogLines(self)
        clock = task.Clock()
        server = await start_server(self, clock=clock, messages_rate=1, messages_burst=3, abuse_strikes=5)
        flooder = await logged_in(self, server, "flooder")
        bob = await logged_in(self, server, "bob")
        bob_events = EventQueue(bob)
        for n in range(3):
            await acked(flooder, body=f"ok {n}")
        for _ in range(4):  # strikes 1 to 4
            await limited(self, flooder.say("lobby", "more"), "say")
        self.assertFalse(flooder.closed.called)
        error = await self.assertFailure(flooder.say("lobby", "and more"), ConnectionClosed)
        self.assertTrue(error.clean)
        self.assertEqual(error.code, "flooding")
        info = await flooder.closed
        self.assertEqual((info.clean, info.code), (True, "flooding"))
        await until(lambda: "flooder" not in server.factory.chat.online)
        self.assertEqual(len(server.factory.connections), 1)

        self.assertEqual(
            len(logs.matching("chatserver.protocol", "user=flooder: flooding; disconnecting")), 1
        )
        self.assertEqual(
            len(logs.matching("chatserver.connections", "user=flooder: flooding: too many requests")), 1
        )
        await acked(bob, body="still here")
        got = await bob_events.next(lambda e: e["type"] == "msg" and e["from"] == "bob")
        self.assertEqual(got["body"], "still here")

    async def test_a_burst_in_one_frame_is_cut_off(self) -> None:
        """Many requests in one record: handling stops at the strike that
        closes the connection; nothing after it is published."""
        logs = LogLines(self)
        clock = task.Clock()
        server = await start_server(self, clock=clock, messages_rate=1, messages_burst=3, abuse_strikes=5)
        flooder = await logged_in(self, server, "flooder")
        bob = await logged_in(self, server, "bob")
        bob_events = EventQueue(bob)
        flooder.protocol.send_events(
            [{"type": "say", "room": "lobby", "body": f"b{n}", "ref": f"r{n}"} for n in range(200)]
        )
        info = await flooder.closed.addTimeout(5, reactor)
        self.assertEqual((info.clean, info.code), (True, "flooding"))
        await acked(bob, body="after the flood")
        await bob_events.next(lambda e: e["type"] == "msg" and e["from"] == "bob")
        flood = [e["body"] for e in bob_events.events if e["type"] == "msg" and e["from"] == "flooder"]
        self.assertEqual(flood, ["b0", "b1", "b2"])
        self.assertEqual(len(logs.matching("chatserver.protocol", "flooding; disconnecting")), 1)

    async def test_strikes_spread_over_time_do_not_disconnect(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, messages_rate=1, messages_burst=1, abuse_strikes=5)
        alice = await logged_in(self, server, "alice")
        for _ in range(3):
            await acked(alice)
            for _ in range(4):
                await limited(self, alice.say("lobby", "x"), "say")
            clock.advance(61)  # the strikes age out of the one-minute window
        self.assertFalse(alice.closed.called)
        self.assertEqual(len(server.factory.connections), 1)


# --- order -------------------------------------------------------------------------------


class OrderTests(unittest.TestCase):
    async def test_deep_pipeline_is_answered_completely_and_in_order(self) -> None:
        """Far more requests in flight than the server reads at once (one
        frame of 150, then 200 frames in one write): reading pauses and
        resumes, and every request is answered, in order."""
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        queue = EventQueue(alice)
        kinds = [
            {"type": "history", "stream": "room:lobby", "limit": 1},
            {"type": "ping"},
            {"type": "say", "room": "lobby", "body": "pipelined"},
        ]
        one_frame = [dict(kinds[n % 3], ref=f"f{n}") for n in range(150)]
        alice.protocol.send_events(one_frame)
        channel = alice.protocol.channel
        assert channel is not None
        alice.protocol.transport.write(
            b"".join(channel.seal_events([dict(kinds[n % 3], ref=f"l{n}")]) for n in range(200))
        )
        expected = [e["ref"] for e in one_frame] + [f"l{n}" for n in range(200)]
        answers = [await queue.next(lambda e: "ref" in e) for _ in expected]
        self.assertEqual([a["ref"] for a in answers], expected)
        self.assertEqual(
            [a["type"] for a in answers],
            [("history", "pong", "ack")[n % 3] for n in range(150)]
            + [("history", "pong", "ack")[n % 3] for n in range(200)],
        )
        # And the connection is still in good order afterwards.
        self.assertEqual((await alice.ping())["type"], "pong")

    async def test_rate_limit_errors_answer_in_order(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, messages_rate=1, messages_burst=2, abuse_strikes=NEVER)
        alice = await logged_in(self, server, "alice")
        await logged_in(self, server, "bob")
        queue = EventQueue(alice)
        alice.protocol.send_events(
            [
                {"type": "say", "room": "lobby", "body": "one", "ref": "a"},
                {"type": "say", "room": "lobby", "body": "two", "ref": "b"},
                {"type": "say", "room": "lobby", "body": "three", "ref": "c"},
                {"type": "ping", "ref": "d"},
                {"type": "dm", "to": "bob", "body": "x", "ref": "e"},
                {"type": "who", "room": "lobby", "ref": "f"},
                {"type": "say", "room": "lobby", "body": "four", "ref": "g"},
            ]
        )
        answers = [await queue.next(lambda e: "ref" in e) for _ in range(7)]
        self.assertEqual(
            [(a["ref"], a["type"], a.get("code")) for a in answers],
            [
                ("a", "ack", None),
                ("b", "ack", None),
                ("c", "error", "rate_limited"),
                ("d", "pong", None),
                ("e", "error", "rate_limited"),
                ("f", "who", None),
                ("g", "error", "rate_limited"),
            ],
        )
        self.assertEqual([answers[i]["request"] for i in (2, 4, 6)], ["say", "dm", "say"])

        # The same through the client library, one record per request.
        clock.advance(2)
        order: list[str] = []
        pending = []
        for name, event in [
            ("say1", {"type": "say", "room": "lobby", "body": "1"}),
            ("say2", {"type": "say", "room": "lobby", "body": "2"}),
            ("say3", {"type": "say", "room": "lobby", "body": "3"}),
            ("ping", {"type": "ping"}),
            ("say4", {"type": "say", "room": "lobby", "body": "4"}),
            ("who", {"type": "who", "room": "lobby"}),
        ]:
            d = alice.request(event)
            d.addBoth(lambda result, name=name: order.append(name) or result)
            pending.append(d)
        results = []
        for d in pending:
            try:
                results.append((await d)["type"])
            except ServerError as e:
                results.append(e.code)
        self.assertEqual(order, ["say1", "say2", "say3", "ping", "say4", "who"])
        self.assertEqual(results, ["ack", "ack", "rate_limited", "pong", "rate_limited", "who"])


# --- a flood does not slow the others down --------------------------------------------------

FLOODER = r"""
import json
import sys
from twisted.internet import reactor
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer
from chatclient.session import connect

port, body, total = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
state = {"answers": 0, "report": 0, "partial": b""}


def count(data):
    # Once flooding, answers are counted straight off the socket: the
    # server seals everything a turn produced for us into one record, so
    # records are opened and their events counted.
    *lines, state["partial"] = (state["partial"] + data).split(b"\n")
    for line in lines:
        state["answers"] += len(session.protocol.channel.open(line) or ())
    if state["answers"] >= state["report"]:
        state["report"] += 100
        print("answered %d" % state["answers"], flush=True)


@implementer(IPullProducer)
class Flood:
    # Sealed requests, 500 at a time, whenever the socket has taken the
    # last; ``total`` of them, or without end if it is 0.
    def __init__(self, protocol):
        self.protocol = protocol
        self.sent = 0

    def resumeProducing(self):
        if total and self.sent >= total:
            self.protocol.transport.unregisterProducer()
            print("sent %d" % self.sent, flush=True)
            return
        seal = self.protocol.channel.seal_events
        request = json.loads(body)
        chunk = []
        for n in range(self.sent, self.sent + 500):
            request["ref"] = n
            chunk.append(seal([request]))
        self.sent += 500
        self.protocol.transport.write(b"".join(chunk))

    def stopProducing(self):
        pass


def flood(_):
    protocol = session.protocol
    protocol.dataReceived = count
    print("flooding", flush=True)
    protocol.transport.registerProducer(Flood(protocol), False)


def started(s):
    global session
    session = s
    session.closed.addCallback(lambda info: (print("closed", info.code, flush=True), reactor.stop()))
    d = session.register("flooder", "correct horse battery")
    d.addCallback(flood)
    d.addErrback(lambda f: (print("failed", f.getErrorMessage(), flush=True), reactor.stop()))


d = connect(reactor, "tcp:host=127.0.0.1:port=%d" % port, lambda fingerprint: True)
d.addCallbacks(started, lambda f: (print("failed", f.getErrorMessage(), flush=True), reactor.stop()))
reactor.run()
"""

FLOOD_COUNT = re.compile(r"^answered (\d+)$")


class FloodLatencyTests(unittest.TestCase):
    """An honest client's round trips before and during a flood.

    Probes start every ``SPACING`` seconds whether or not the previous one
    is back, so they sample the flood evenly; the median is compared with
    the median of the same probes without a flood.
    """

    SPACING = 0.02

    async def measure(
        self,
        flood: dict[str, Any],
        total: int = 0,
        probe: str = "ping",
        probes: int = 50,
        **overrides: Any,
    ) -> tuple[float, float, str]:
        server = await start_server(self, **overrides)
        honest = await logged_in(self, server, "honest")
        queue = EventQueue(honest)

        async def round_trip() -> float:
            start = time.perf_counter()
            if probe == "ping":
                answer = await honest.ping().addTimeout(30, reactor)
                self.assertEqual(answer["type"], "pong")
            else:  # say: the ack, and the message itself back
                ack = await honest.say("lobby", "probe").addTimeout(30, reactor)
                await queue.next(lambda e: e["type"] == "msg" and e["id"] == ack["id"])
            return time.perf_counter() - start

        async def median_round_trip(count: int) -> float:
            probes = []
            for _ in range(count):
                probes.append(defer.ensureDeferred(round_trip()))
                await task.deferLater(reactor, self.SPACING, lambda: None)  # pacing only
            return statistics.median([await d for d in probes])

        await median_round_trip(10)  # warm up
        baseline = await median_round_trip(probes)

        flooder = spawn(
            self, "flooder", [PYTHON, "-c", FLOODER, str(server.port), json.dumps(flood), str(total)]
        )
        await flooder.wait_for(r"^flooding$")
        await flooder.wait_for(r"^answered [1-9]\d{3,}$")  # well under way

        def answered() -> int:
            return max(int(m.group(1)) for m in map(FLOOD_COUNT.search, flooder.lines[1]) if m)

        before = answered()
        started = time.perf_counter()
        flooded = await median_round_trip(probes)
        elapsed = time.perf_counter() - started
        during = answered() - before
        # The flood went on during the probes (the flooder reports every 100
        # answers: at least one report came meanwhile; at 500 a slow
        # machine's PostgreSQL pass, answering history from the database,
        # sometimes gave none in the probes' time), and the flooder is
        # still there.
        self.assertGreater(during, 0, flooder.output())
        self.assertNotIn("closed", flooder.output())
        self.assertEqual(len(server.factory.connections), 2)
        # Stop the flood before the server stops, so nothing is in flight then.
        flooder.signal("KILL")
        await flooder.ended
        await until(lambda: len(server.factory.connections) == 1)
        report = (
            f"{probe} round trip median: {baseline * 1000:.2f} ms without a flood, "
            f"{flooded * 1000:.2f} ms during a flood of {flood['type']} requests "
            f"({during} of them answered in the {elapsed * 1000:.0f} ms of probing)"
        )
        print("\n" + report)
        return baseline, flooded, report

    async def test_rate_limited_flood_does_not_slow_the_others_down(self) -> None:
        """Thousands of say requests a second, all but five refused."""
        baseline, flooded, report = await self.measure(
            {"type": "say", "room": "lobby", "body": "flood"},
            messages_rate=1,
            messages_burst=5,
            abuse_strikes=NEVER,  # keep the flooder connected
        )
        # This guards LINES_PER_TURN: without the per-turn line budget the
        # ping waited 69 to 107 ms behind each read of the flood.
        self.assertLess(flooded, 5 * baseline + 0.020, report)

    async def test_unlimited_request_flood_does_not_delay_messages(self) -> None:
        """``history`` has no rate limit (nor strikes); a burst of them must
        not hold up other users' messages for long either."""
        baseline, flooded, report = await self.measure(
            {"type": "history", "stream": "room:lobby", "limit": 1}, total=20_000, probe="say", probes=20
        )
        # What this guards is MAX_UNANSWERED: without it (measured with the
        # cap at 100000) the probes waited behind the queued database jobs,
        # 4 to 9 s each on either backend.  Working, they take 3 to 42 ms
        # on a loaded two-core machine, so the bound sits between the two
        # with a wide margin each way: a timing bound that tracked the
        # baseline closely (5 x + 20 ms) failed when a busy CI machine
        # slowed one run.  The speed itself is the bench's to measure.
        self.assertLess(flooded, 5 * baseline + 0.500, report)


# --- lookups of other users (enumeration) ---------------------------------------


class LookupLimitTests(unittest.TestCase):
    """``invite`` and a first ``dm`` tell whether a name exists: they draw
    from a bucket per account and one per address."""

    async def test_invite_and_dm_lookups_are_limited_per_account_and_address(self) -> None:
        clock = task.Clock()
        server = await start_server(self, clock=clock, lookups_rate=0.5, lookups_burst=6, abuse_strikes=NEVER)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await alice.request({"type": "create", "room": "den", "kind": "private"})
        for n in range(3):
            error = await self.assertFailure(
                alice.request({"type": "invite", "room": "den", "user": f"guess{n}"}), ServerError
            )
            self.assertEqual(error.code, "no_such_user")
        for n in range(3):
            error = await self.assertFailure(
                alice.request({"type": "dm", "to": f"guess{n}", "body": "hi"}), ServerError
            )
            self.assertEqual(error.code, "no_such_user")
        await limited(self, alice.request({"type": "invite", "room": "den", "user": "guess9"}), "invite", 2.0)
        await limited(self, alice.request({"type": "dm", "to": "guess9", "body": "hi"}), "dm", 2.0)
        # bob has his own account bucket, but shares the address's.
        await limited(self, bob.request({"type": "dm", "to": "guess10", "body": "hi"}), "dm", 2.0)
        clock.advance(2)
        ack = await alice.request({"type": "dm", "to": "bob", "body": "a real one"})
        self.assertEqual(ack["type"], "ack")
        # A peer already known needs no lookup: not limited.
        for n in range(10):
            await alice.request({"type": "dm", "to": "bob", "body": f"again {n}"})
        await limited(self, alice.request({"type": "invite", "room": "den", "user": "bob"}), "invite")


# --- registrations per address and per network (issue 13, item 6) --------------


class RegistrationLimitTests(unittest.TestCase):
    async def from_address(self, server: Any, source: str) -> ChatSession:
        """A session whose connection comes from ``source`` (loopback)."""
        session = await connect(
            reactor, f"tcp:host=127.0.0.1:port={server.port}:bindAddress={source}", lambda fp: True
        )
        self.addCleanup(session.close)
        return session

    async def test_per_address_then_per_prefix(self) -> None:
        clock = task.Clock()
        server = await start_server(
            self,
            clock=clock,
            registrations_rate=0.01,
            registrations_burst=3,
            registrations_prefix_rate=0.01,
            registrations_prefix_burst=5,
            abuse_strikes=NEVER,
        )
        for n in range(3):
            welcome = await (await self.from_address(server, "127.0.0.1")).register(f"one{n}", PASSWORD)
            self.assertEqual(welcome["type"], "welcome")
        session = await self.from_address(server, "127.0.0.1")
        await limited(self, session.register("one3", PASSWORD), "register", 100.0)
        # Another address of the same /24 has its own bucket, but shares
        # the network's: two more, then no more.
        for n in range(2):
            await (await self.from_address(server, "127.0.0.2")).register(f"two{n}", PASSWORD)
        session = await self.from_address(server, "127.0.0.2")
        await limited(self, session.register("two2", PASSWORD), "register")
        # Another network is not held back.
        welcome = await (await self.from_address(server, "127.1.0.1")).register("elsewhere", PASSWORD)
        self.assertEqual(welcome["user"], "elsewhere")
        # A login is no registration.
        session = await connect(reactor, f"tcp:host=127.0.0.1:port={server.port}", lambda fp: True)
        self.addCleanup(session.close)
        await session.login("one0", PASSWORD)

    def test_network_prefixes(self) -> None:
        from chatserver.ratelimit import network_prefix

        self.assertEqual(network_prefix("203.0.113.66"), "203.0.113.0/24")
        self.assertEqual(network_prefix("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(network_prefix("::ffff:203.0.113.9"), "203.0.113.0/24")
        self.assertEqual(network_prefix("?"), "?")
