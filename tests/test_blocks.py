"""Flood blocks (issue 13): an address or network refused too often in one
second has its connections closed unread for a while.

The rules on a fake clock first, then real attacker connections from
loopback addresses against a real server, with bounded counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from chatclient.session import connect
from chatserver.blocks import Blocks
from chatserver.wire import channel
from tests.support import PASSWORD, RunningServer
from tests.test_handshake_budget import SLOW, BudgetTestCase, is_alert
from tests.test_protocol import with_timeout


class BlockRuleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1000.2)
        self.blocks = Blocks(self.clock, per_address=5, per_network=12, seconds=10)

    def refuse(self, address: str, times: int) -> None:
        for _ in range(times):
            self.blocks.refused(address)

    def test_an_address_is_blocked_at_its_threshold_within_one_second(self) -> None:
        self.refuse("198.51.100.7", 4)
        self.assertFalse(self.blocks.blocked("198.51.100.7"))
        self.refuse("198.51.100.7", 1)  # the fifth in this second
        self.assertTrue(self.blocks.blocked("198.51.100.7"))
        self.assertFalse(self.blocks.blocked("198.51.100.8"))  # its neighbour is not
        self.assertEqual(self.blocks.active(), 1)

    def test_refusals_spread_over_seconds_do_not_block(self) -> None:
        for _ in range(20):
            self.refuse("198.51.100.7", 3)
            self.clock.advance(1)
        self.assertFalse(self.blocks.blocked("198.51.100.7"))

    def test_the_block_ends_seconds_after_the_last_refusal(self) -> None:
        self.refuse("198.51.100.7", 5)
        self.clock.advance(9.5)
        self.assertTrue(self.blocks.blocked("198.51.100.7"))  # one attempt: not a flood, no renewal
        self.clock.advance(0.6)
        self.assertFalse(self.blocks.blocked("198.51.100.7"))
        self.assertEqual(self.blocks.active(), 0)

    def test_a_flood_that_goes_on_stays_blocked(self) -> None:
        self.refuse("198.51.100.7", 5)
        for _ in range(30):  # 30 s of 10 attempts a second, each closed unread
            self.clock.advance(1)
            for _ in range(10):
                self.assertTrue(self.blocks.blocked("198.51.100.7"))
        self.clock.advance(10.1)
        self.assertFalse(self.blocks.blocked("198.51.100.7"))

    def test_a_network_is_blocked_by_its_own_refusals(self) -> None:
        for host in range(1, 13):  # 12 addresses of one /24, refused by the network's budget
            self.blocks.refused(f"198.51.100.{host}", network=True)
        self.assertTrue(self.blocks.blocked("198.51.100.200"))  # never refused itself
        self.assertFalse(self.blocks.blocked("198.51.101.1"))

    def test_one_address_cannot_get_its_neighbours_blocked(self) -> None:
        for _ in range(100):  # refused for itself, then closed blocked, 100 times a second
            self.blocks.refused("198.51.100.7")
            self.blocks.blocked("198.51.100.7")
        self.assertTrue(self.blocks.blocked("198.51.100.7"))
        self.assertFalse(self.blocks.blocked("198.51.100.8"))

    def test_an_ipv6_host_is_blocked_by_its_64(self) -> None:
        for host in range(1, 13):  # a new address for each try, one /64
            self.blocks.refused(f"2001:db8:1:2::{host:x}", network=True)
        self.assertTrue(self.blocks.blocked("2001:db8:1:2:ffff::1"))
        self.assertFalse(self.blocks.blocked("2001:db8:1:3::1"))

    def test_a_network_block_is_renewed_by_its_blocked_connections(self) -> None:
        for host in range(1, 13):
            self.blocks.refused(f"198.51.100.{host}", network=True)
        for _ in range(30):  # 30 s of 20 attempts a second from all over the /24
            self.clock.advance(1)
            for host in range(20):
                self.assertTrue(self.blocks.blocked(f"198.51.100.{100 + host}"))
        self.clock.advance(10.1)
        self.assertFalse(self.blocks.blocked("198.51.100.100"))

    def test_no_block_outlasts_block_seconds_when_the_clock_goes_back(self) -> None:
        self.refuse("198.51.100.7", 5)
        self.clock.rightNow -= 3600  # the wall clock stepped back an hour
        self.assertTrue(self.blocks.blocked("198.51.100.7"))
        self.clock.advance(10.1)
        self.assertFalse(self.blocks.blocked("198.51.100.7"))

    def test_lowering_block_seconds_shortens_the_blocks_in_place(self) -> None:
        self.refuse("198.51.100.7", 5)
        self.blocks.configure(5, 12, 2)  # a reload
        self.clock.advance(2.1)
        self.assertFalse(self.blocks.blocked("198.51.100.7"))

    def test_peers_without_an_ip_address_are_never_blocked(self) -> None:
        self.refuse("?", 1000)  # every unix-socket client is "?"
        self.assertFalse(self.blocks.blocked("?"))

    def test_zero_never_blocks(self) -> None:
        self.blocks.configure(0, 0, 10)
        self.refuse("198.51.100.7", 1000)
        self.assertFalse(self.blocks.blocked("198.51.100.7"))

    def test_the_blocks_remembered_are_bounded(self) -> None:
        self.blocks.MAX_BLOCKS = 50
        self.blocks.configure(1, 0, 10)
        for n in range(200):
            self.blocks.refused(f"10.{n // 256}.{n % 256}.1")
        self.assertLessEqual(self.blocks.active(), 50)
        self.assertTrue(self.blocks.blocked("10.0.199.1"))  # the newest are kept
        self.assertFalse(self.blocks.blocked("10.0.0.1"))  # the oldest gave way


class BlockedConnectionTests(BudgetTestCase):
    async def start(self, clock: Any = None, **overrides: Any) -> RunningServer:
        server = await super().start(clock, **overrides)
        # Refusals count within one second of the clock; on the reactor's
        # clock a test's few refusals can straddle a second's boundary and
        # never reach the threshold (seen on a slow CI machine).  The same
        # rules on a clock that stands still make the counts exact.
        frozen = task.Clock()
        frozen.advance(1000.2)
        blocks = server.factory.blocks
        server.factory.blocks = Blocks(frozen, blocks.per_address, blocks.per_network, blocks.seconds)
        return server

    async def test_a_flooding_address_is_closed_unread_while_others_log_in(self) -> None:
        server = await self.start(
            handshakes_rate=SLOW,
            handshakes_burst=1,
            handshakes_prefix_rate=SLOW,
            handshakes_prefix_burst=1000,
            block_after_refusals=5,
            block_after_refusals_prefix=0,
        )
        self.assertEqual((await self.hello_answer(server, "127.0.0.2"))[0], channel.SERVER_HELLO)
        for _ in range(5):  # refused by the budget, with ALERT busy
            answer = await self.hello_answer(server, "127.0.0.2")
            self.assertTrue(is_alert(answer, channel.ALERT_BUSY, "from your address"), answer)
        # Blocked: accepted and closed at once, before anything is read or
        # written.
        for _ in range(3):
            raw = await self.raw_from(server, "127.0.0.2")
            raw.send_record(channel.ClientHandshake().hello())
            await raw.when_lost()
            self.assertEqual(raw.lines, [])
        counters = server.factory.metrics.counters
        self.assertEqual(counters["blocked"], 3)
        self.assertEqual(counters["handshakes_refused"], 5)
        self.assertEqual(server.factory.blocks.active(), 1)
        # Another address logs in as usual.
        session = await with_timeout(
            connect(reactor, f"tcp:host=127.0.0.1:port={server.port}:bindAddress=127.0.0.3", lambda fp: True)
        )
        self.addCleanup(session.close)
        self.assertEqual((await session.register("alice", PASSWORD))["type"], "welcome")

    async def test_connection_limit_refusals_count_too(self) -> None:
        server = await self.start(
            max_connections_per_address=1, block_after_refusals=3, block_after_refusals_prefix=0
        )
        await self.raw_from(server, "127.0.0.2")  # holds the address's one slot
        for _ in range(3):
            raw = await self.raw_from(server, "127.0.0.2")
            answer = await raw.next_record()
            self.assertTrue(is_alert(answer, channel.ALERT_BUSY, "too many connections"), answer)
        raw = await self.raw_from(server, "127.0.0.2")
        await raw.when_lost()
        self.assertEqual(raw.lines, [])
        self.assertEqual(server.factory.metrics.counters["blocked"], 1)

    async def test_behind_a_wrapping_listener_a_blocked_connection_gets_busy(self) -> None:
        # A TLS listener wraps the factory: no None from buildProtocol there,
        # the block is an ALERT busy instead.
        server = await self.start(
            max_connections_per_address=1, block_after_refusals=2, block_after_refusals_prefix=0
        )
        server.factory.close_blocked_at_accept = False
        await self.raw_from(server, "127.0.0.2")
        for _ in range(2):
            await (await self.raw_from(server, "127.0.0.2")).next_record()
        answer = await (await self.raw_from(server, "127.0.0.2")).next_record()
        self.assertTrue(is_alert(answer, channel.ALERT_BUSY, "too many refused connections"), answer)
        self.assertEqual(server.factory.metrics.counters["blocked"], 1)

    async def test_cookies_count_as_refusals(self) -> None:
        # A flooder that answers every cookie is never refused by a budget
        # while it has one; the cookies it costs the server count instead.
        server = await self.start(cookie_threshold=0, block_after_refusals=3, block_after_refusals_prefix=0)
        for _ in range(3):
            answer = await self.hello_answer(server, "127.0.0.2")
            self.assertEqual(answer[0], channel.COOKIE)
        raw = await self.raw_from(server, "127.0.0.2")
        raw.send_record(channel.ClientHandshake().hello())
        await raw.when_lost()
        self.assertEqual(raw.lines, [])
        self.assertEqual(server.factory.metrics.counters["blocked"], 1)
        self.assertEqual((await self.hello_answer(server, "127.0.0.3"))[0], channel.COOKIE)

    async def test_a_connection_opened_before_its_block_is_closed_at_its_next_line(self) -> None:
        server = await self.start(
            handshakes_rate=SLOW, handshakes_burst=1, block_after_refusals=3, block_after_refusals_prefix=0
        )
        early = await self.raw_from(server, "127.0.0.2")  # connected, silent
        other = await self.raw_from(server, "127.0.0.3")
        self.assertEqual((await self.hello_answer(server, "127.0.0.2"))[0], channel.SERVER_HELLO)
        for _ in range(3):  # the address's budget is spent: refused, then blocked
            answer = await self.hello_answer(server, "127.0.0.2")
            self.assertTrue(is_alert(answer, channel.ALERT_BUSY, "from your address"), answer)
        early.send_record(channel.ClientHandshake().hello())
        await early.when_lost()
        self.assertEqual(early.lines, [], "closed unread and unanswered")
        self.assertEqual(server.factory.metrics.counters["blocked"], 1)
        other.send_record(channel.ClientHandshake().hello())
        self.assertEqual((await other.next_record())[0], channel.SERVER_HELLO)

    async def test_behind_a_wrapping_listener_an_early_connection_gets_busy_at_its_next_line(self) -> None:
        server = await self.start(
            handshakes_rate=SLOW, handshakes_burst=1, block_after_refusals=2, block_after_refusals_prefix=0
        )
        server.factory.close_blocked_at_accept = False
        early = await self.raw_from(server, "127.0.0.2")
        await self.hello_answer(server, "127.0.0.2")
        for _ in range(2):
            await self.hello_answer(server, "127.0.0.2")
        early.send_record(channel.ClientHandshake().hello())
        answer = await early.next_record()
        self.assertTrue(is_alert(answer, channel.ALERT_BUSY, "too many refused connections"), answer)


class BlockSettingsTests(BudgetTestCase):
    async def test_a_reload_applies_the_block_settings(self) -> None:
        server = await self.start(block_after_refusals=0, block_after_refusals_prefix=0)
        reloaded = dataclasses.replace(
            server.settings, block_after_refusals=3, block_after_refusals_prefix=7, block_seconds=4.0
        )
        server.service._load = lambda: reloaded  # what SIGHUP reads from the file
        server.service.reload()
        blocks = server.factory.blocks
        self.assertEqual((blocks.per_address, blocks.per_network, blocks.seconds), (3, 7, 4.0))
