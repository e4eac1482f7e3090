"""Input memory: one budget for the unfinished lines of all connections,
and a deadline for a logged-in connection's unfinished line (issue 13,
item 5).

A thousand connections each holding a 64 KB partial line doubled the
server's memory; each may hold one for its whole idle timeout.  Real
attacker connections on loopback (``RawClient``), a real server.
"""

from __future__ import annotations

from twisted.internet import reactor, task

from chatserver.wire import channel
from tests.support import until
from tests.test_protocol import ChannelTestCase, is_drop
from tests.test_spec_points import logged_in_raw

HALF_LINE = b"A" * 60_000  # valid base64 so far, no LF: a line being sent


class InputBudgetTests(ChannelTestCase):
    async def test_past_the_budget_the_biggest_holders_are_dropped(self) -> None:
        server = await self.start(max_input_buffers=200_000)
        alice, bob_events = await self.honest_pair(server)
        holders = []
        for n in range(3):
            raw = await self.raw(server.port)
            raw.transport.write(HALF_LINE)
            holders.append(raw)
            await until(lambda n=n: server.factory.held_input >= len(HALF_LINE) * (n + 1))
        small = await self.raw(server.port)
        small.transport.write(b"AAAA")
        await until(lambda: server.factory.held_input >= 3 * len(HALF_LINE) + 4)
        # The fourth big one tips it over: one of the big ones goes.
        last = await self.raw(server.port)
        last.transport.write(HALF_LINE)
        holders.append(last)
        dropped = await self.logs.wait(is_drop(lambda r: r.startswith("input memory budget")))
        self.assertEqual(dropped["reason"], "input memory budget: holding 60000 bytes of unfinished input")
        await until(lambda: sum(1 for h in holders if h.lost_reason is not None) == 1)
        self.assertLessEqual(server.factory.held_input, 200_000)
        self.assertIsNone(small.lost_reason)
        await self.assert_chat_works(alice, bob_events)
        for raw in [*holders, small]:
            if raw.lost_reason is None:
                raw.transport.abortConnection()
                await raw.when_lost()
        await until(lambda: server.factory.held_input == 0)

    async def test_a_logged_in_connection_may_not_keep_a_line_unfinished(self) -> None:
        server = await self.start(partial_line_timeout=0.3)
        raw = await logged_in_raw(self, server.port)
        await raw.ping()  # finished lines are fine
        raw.transport.write(b"AAAA")
        await raw.when_lost()
        dropped = self.logs.find(is_drop(lambda r: r.startswith("line unfinished")))
        self.assertEqual([d["reason"] for d in dropped], ["line unfinished for 0.3 s"])

    async def test_a_line_finished_in_time_is_not_cut(self) -> None:
        server = await self.start(partial_line_timeout=0.5)
        raw = await logged_in_raw(self, server.port)
        assert raw.channel is not None
        wire = raw.channel.seal(channel.DATA, b'[{"type":"ping","ref":5}]')
        raw.transport.write(wire[:10])
        await task.deferLater(reactor, 0.3, lambda: None)
        raw.transport.write(wire[10:])
        events = await raw.next_events()
        self.assertEqual(events, [{"type": "pong", "ref": 5}])
        await task.deferLater(reactor, 0.4, lambda: None)
        self.assertIsNone(raw.lost_reason)
